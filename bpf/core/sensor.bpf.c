// SPDX-License-Identifier: GPL-2.0
/*
 * Palisade base sensor (CO-RE): process_exec / process_exit for every process, and an
 * in-kernel process cache keyed by tgid.
 *
 * Built against a vmlinux.h generated from the running kernel's BTF (bpf/core/build.py);
 * every kernel structure is read with BPF_CORE_READ, so libbpf relocates field offsets
 * to whichever kernel loads the object.
 *
 * exec_id material follows Tetragon: (tgid, ktime) where ktime is the exec time for a
 * process seen exec'ing and the task's start_time for one never seen (older than the
 * sensor). The parent of an exec is the previous image when the process exec'd before
 * (exec in place), otherwise the real parent's cache entry (the first exec after fork).
 *
 * Each exec also records the task's capability sets (from its cred, after the exec committed
 * them) and its namespaces' inode numbers, in the process cache too, so an exit whose exec
 * the reader missed still carries them.
 *
 * The record layout is mirrored by bpf/core/records.py (HEADER, PROC) and procfs.py (ENTRY):
 * keep them in step (tests/bpf/core/test_core_build.py compares the sizes through the
 * object's BTF).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>

char LICENSE[] SEC("license") = "GPL";

#define KIND_EXEC 1
#define KIND_EXIT 2

#define F_CLONE        (1u << 0) /* first exec seen since the process was forked */
#define F_PARENT_CACHE (1u << 1) /* parent key came from the process cache */
#define F_BIN_TRUNC    (1u << 2)
#define F_CWD_TRUNC    (1u << 3)
#define F_ARGS_TRUNC   (1u << 4)
#define F_CACHED       (1u << 5) /* exit: the process was in the cache */
#define F_ROOTCWD      (1u << 6)
#define F_BIN_UNREACH  (1u << 7) /* the walk ended outside a mount root: path is partial */
#define F_PROCFS       (1u << 8) /* cache entry seeded from /proc by the agent (never set here) */

#define PATH_MAX_ 4096
#define PATH_MASK (PATH_MAX_ - 1)
#define NAME_MASK 255
#define DEPTH_MAX 48
#define ARGS_MAX 1024
#define ARGS_MASK (ARGS_MAX - 1)
#define DATA_SIZE 16384
#define DATA_MASK (DATA_SIZE - 1)
#define CACHE_BIN 256

/* namespace slots, in tetragon.proto's Namespaces order */
enum {
	NS_UTS, NS_IPC, NS_MNT, NS_PID, NS_PID_FOR_CHILDREN, NS_NET, NS_TIME, NS_TIME_FOR_CHILDREN,
	NS_CGROUP, NS_USER, NS_COUNT,
};

/* what the cache keeps of a process besides its identity: credentials' capabilities, namespaces */
struct proc_info {
	__u64 cap_permitted;
	__u64 cap_effective;
	__u64 cap_inheritable;
	__u32 ns[NS_COUNT];
	__u32 nspid; /* the pid in its own pid namespace (Tetragon's pod.container.pid) */
	__u32 pad;
};

struct event_hdr {
	__u32 kind;
	__u32 pid;        /* tgid */
	__u32 tid;
	__u32 ppid;       /* parent tgid (of the exec_id parent) */
	__u64 ktime;      /* exec_id ktime */
	__u64 pktime;     /* parent exec_id ktime */
	__u64 task_start; /* task->start_time of the group leader */
	__u64 event_time; /* bpf_ktime_get_ns() when emitted */
	__u32 uid;
	__u32 euid;
	__u32 auid;
	__u32 exit_code;
	__u32 flags;
	__u16 binary_len;
	__u16 cwd_len;
	__u16 args_len;
	__u16 pad0;
	__u32 pad1;
	__u64 cgroup_id;  /* cgroup v2 id of the task (the agent maps it to its workload) */
	struct proc_info info;
};

struct event {
	struct event_hdr h;
	char data[DATA_SIZE]; /* binary, cwd, args; lengths in the header */
};

struct proc_entry {
	__u64 ktime;
	__u64 pktime;
	__u32 pid;
	__u32 ppid;
	__u32 flags;
	__u16 binary_len;
	__u16 pad;
	struct proc_info info;
	char binary[CACHE_BIN];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 32768);
	__type(key, __u32);
	__type(value, struct proc_entry);
} proc_cache SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct event);
} event_scratch SEC(".maps");

/* records the ring buffer had no room for (per CPU; the reader sums them) */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} drops SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct proc_entry);
} entry_scratch SEC(".maps");

struct path_buf {
	char b[2 * PATH_MAX_];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct path_buf);
} path_scratch SEC(".maps");

/* Older kernels may not describe struct mount; the walk then stops at the first mount root. */
static __always_inline struct mount *real_mount_of(struct vfsmount *vfs)
{
	return (struct mount *)((void *)vfs - bpf_core_field_offset(struct mount, mnt));
}

struct walk {
	struct vfsmount *vfs;
	struct mount *mnt;
	struct dentry *dentry;
	int pos;
	__u32 flags;
	__u32 trunc;
	bool have_mount;
	bool done;
};

/*
 * One step of the walk from a dentry towards the root, prepending its name to
 * path_scratch at w->pos. Run through bpf_loop so the verifier checks the body once
 * rather than once per level (an unrolled walk of DEPTH_MAX levels exceeds its budget).
 * At a mount root the walk continues from the mountpoint in the parent mount.
 */
static long walk_step(__u64 index, void *arg)
{
	struct walk *w = arg;
	/* locals: BPF_CORE_READ on w->x would record a relocation against struct walk */
	struct dentry *dentry = w->dentry;
	struct vfsmount *vfs = w->vfs;
	struct mount *mnt = w->mnt;
	struct dentry *root = BPF_CORE_READ(vfs, mnt_root);
	struct dentry *parent = BPF_CORE_READ(dentry, d_parent);
	struct path_buf *buf;
	__u32 zero = 0, len;
	int pos;

	if (dentry == root || dentry == parent) {
		struct mount *mparent;

		if (dentry != root || !w->have_mount) {
			if (dentry != root)
				w->flags |= F_BIN_UNREACH;
			w->done = true;
			return 1;
		}
		mparent = BPF_CORE_READ(mnt, mnt_parent);
		if (mparent == mnt) {
			w->done = true; /* the root of the mount tree */
			return 1;
		}
		w->dentry = BPF_CORE_READ(mnt, mnt_mountpoint);
		w->mnt = mparent;
		w->vfs = (struct vfsmount *)((void *)mparent + bpf_core_field_offset(struct mount, mnt));
		return 0;
	}
	buf = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!buf)
		return 1;
	len = BPF_CORE_READ(dentry, d_name.len) & NAME_MASK;
	pos = w->pos;
	if (pos - (int)len - 1 < 1) {
		w->flags |= w->trunc;
		w->done = true;
		return 1;
	}
	pos -= len + 1;
	buf->b[pos & PATH_MASK] = '/';
	bpf_probe_read_kernel(&buf->b[(pos + 1) & PATH_MASK], len, BPF_CORE_READ(dentry, d_name.name));
	w->pos = pos;
	w->dentry = parent;
	return 0;
}

/*
 * Write the path of (vfs, dentry) at the end of buf->b[0..PATH_MAX_) and return the index
 * of its first byte (its length is PATH_MAX_ - index). *flags gets `trunc` when the path
 * did not fit or was deeper than DEPTH_MAX.
 */
static __always_inline int resolve_path(struct path_buf *buf, struct vfsmount *vfs, struct dentry *dentry,
					__u32 *flags, __u32 trunc)
{
	struct walk w = {
		.vfs = vfs,
		.dentry = dentry,
		.pos = PATH_MAX_,
		.trunc = trunc,
		.have_mount = bpf_core_type_exists(struct mount),
	};
	int pos;

	if (w.have_mount)
		w.mnt = real_mount_of(vfs);
	bpf_loop(DEPTH_MAX, walk_step, &w, 0);
	if (!w.done)
		w.flags |= trunc;
	*flags |= w.flags;
	pos = w.pos;
	if (pos >= PATH_MAX_ || pos < 1) {
		pos = PATH_MAX_ - 1;
		buf->b[pos & PATH_MASK] = '/';
	}
	return pos;
}

/* Append the path to ev->data at *off; returns its length. */
static __always_inline __u16 put_path(struct event *ev, __u32 *off, struct path_buf *buf, struct vfsmount *vfs,
				      struct dentry *dentry, __u32 trunc)
{
	int pos = resolve_path(buf, vfs, dentry, &ev->h.flags, trunc);
	__u32 len = (PATH_MAX_ - pos) & PATH_MASK;

	bpf_probe_read_kernel(&ev->data[*off & (DATA_MASK >> 1)], len, &buf->b[pos & PATH_MASK]);
	*off += len;
	return len;
}

static __always_inline struct event *scratch_event(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&event_scratch, &zero);
}

static __always_inline void emit(struct event *ev, __u32 off)
{
	__u64 size = sizeof(struct event_hdr) + (off & DATA_MASK);

	if (bpf_ringbuf_output(&events, ev, size, 0) < 0) {
		__u32 zero = 0;
		__u64 *n = bpf_map_lookup_elem(&drops, &zero);

		if (n)
			*n += 1;
	}
}

static __always_inline void fill_creds(struct event *ev, struct task_struct *task)
{
	ev->h.uid = BPF_CORE_READ(task, cred, uid.val);
	ev->h.euid = BPF_CORE_READ(task, cred, euid.val);
	ev->h.auid = (__u32)-1;
	if (bpf_core_field_exists(task->loginuid))
		ev->h.auid = BPF_CORE_READ(task, loginuid.val);
}

/* the header fields an exec and an exit event fill alike, about `task` (current: the task exec'ing or
 * exiting); returns its tgid */
static __always_inline __u32 fill_head(struct event *ev, struct task_struct *task, __u32 kind, __u64 now)
{
	__u32 tgid = BPF_CORE_READ(task, tgid);

	ev->h.kind = kind;
	ev->h.pid = tgid;
	ev->h.tid = BPF_CORE_READ(task, pid);
	ev->h.event_time = now;
	ev->h.task_start = BPF_CORE_READ(task, group_leader, start_time);
	ev->h.flags = 0;
	ev->h.cgroup_id = bpf_get_current_cgroup_id();
	fill_creds(ev, task);
	return tgid;
}

/*
 * Local views of the kernel's namespace structures, with only what is read. libbpf matches
 * `struct x___p` to the kernel's `struct x` (the ___ suffix is a CO-RE flavour), so offsets
 * still come from the running kernel's BTF, while the object's own BTF stays small: naming
 * vmlinux.h's nsproxy would pull struct net and the other namespaces whole into it (twice
 * the BTF, a third more load time).
 */
struct ns_common___p {
	unsigned int inum;
} __attribute__((preserve_access_index));

/* every namespace structure embeds its ns_common as `ns`; one view per kernel name, as CO-RE matches by name */
#define NS_VIEW(name) struct name##___p { struct ns_common___p ns; } __attribute__((preserve_access_index))
NS_VIEW(uts_namespace);
NS_VIEW(ipc_namespace);
NS_VIEW(mnt_namespace);
NS_VIEW(pid_namespace);
NS_VIEW(net);
NS_VIEW(time_namespace);
NS_VIEW(cgroup_namespace);
NS_VIEW(user_namespace);

struct nsproxy___p {
	struct uts_namespace___p *uts_ns;
	struct ipc_namespace___p *ipc_ns;
	struct mnt_namespace___p *mnt_ns;
	struct pid_namespace___p *pid_ns_for_children;
	struct net___p *net_ns;
	struct time_namespace___p *time_ns;
	struct time_namespace___p *time_ns_for_children;
	struct cgroup_namespace___p *cgroup_ns;
} __attribute__((preserve_access_index));

struct upid___p {
	int nr;
	struct pid_namespace___p *ns;
} __attribute__((preserve_access_index));

struct pid___p {
	unsigned int level;
	struct upid___p numbers[1];
} __attribute__((preserve_access_index));

struct cred___p {
	kernel_cap_t cap_inheritable;
	kernel_cap_t cap_permitted;
	kernel_cap_t cap_effective;
	struct user_namespace___p *user_ns;
} __attribute__((preserve_access_index));

struct task_struct___p {
	struct cred___p *cred;
	struct nsproxy___p *nsproxy;
	struct pid___p *thread_pid;
} __attribute__((preserve_access_index));

/* kernel_cap_t is a u64 since 6.3 and __u32 cap[2] before: 8 bytes at its offset either way (LE) */
#define READ_CAP(dst, cred, field) bpf_core_read(&(dst), sizeof(__u64), &(cred)->field)

static __always_inline void fill_info(struct proc_info *info, struct task_struct *t)
{
	struct task_struct___p *task = (struct task_struct___p *)t;
	struct cred___p *cred = BPF_CORE_READ(task, cred);
	struct nsproxy___p *nsp = BPF_CORE_READ(task, nsproxy);
	struct pid___p *pid = BPF_CORE_READ(task, thread_pid);
	unsigned int level = BPF_CORE_READ(pid, level);

	info->cap_permitted = 0;
	info->cap_effective = 0;
	info->cap_inheritable = 0;
	READ_CAP(info->cap_permitted, cred, cap_permitted);
	READ_CAP(info->cap_effective, cred, cap_effective);
	READ_CAP(info->cap_inheritable, cred, cap_inheritable);
	info->ns[NS_USER] = BPF_CORE_READ(cred, user_ns, ns.inum);
	/* the pid namespace the task is in, and its pid there: its struct pid's number at the deepest level */
	info->ns[NS_PID] = BPF_CORE_READ(pid, numbers[level & 31].ns, ns.inum);
	info->nspid = BPF_CORE_READ(pid, numbers[level & 31].nr);
	info->pad = 0;
	if (!nsp) { /* already released: no namespace to tell */
		info->ns[NS_UTS] = info->ns[NS_IPC] = info->ns[NS_MNT] = info->ns[NS_PID_FOR_CHILDREN] = 0;
		info->ns[NS_NET] = info->ns[NS_TIME] = info->ns[NS_TIME_FOR_CHILDREN] = info->ns[NS_CGROUP] = 0;
		return;
	}
	info->ns[NS_UTS] = BPF_CORE_READ(nsp, uts_ns, ns.inum);
	info->ns[NS_IPC] = BPF_CORE_READ(nsp, ipc_ns, ns.inum);
	info->ns[NS_MNT] = BPF_CORE_READ(nsp, mnt_ns, ns.inum);
	info->ns[NS_PID_FOR_CHILDREN] = BPF_CORE_READ(nsp, pid_ns_for_children, ns.inum);
	info->ns[NS_NET] = BPF_CORE_READ(nsp, net_ns, ns.inum);
	info->ns[NS_TIME] = 0;
	info->ns[NS_TIME_FOR_CHILDREN] = 0;
	if (bpf_core_field_exists(nsp->time_ns)) { /* time namespaces: 5.6 and later */
		info->ns[NS_TIME] = BPF_CORE_READ(nsp, time_ns, ns.inum);
		info->ns[NS_TIME_FOR_CHILDREN] = BPF_CORE_READ(nsp, time_ns_for_children, ns.inum);
	}
	info->ns[NS_CGROUP] = BPF_CORE_READ(nsp, cgroup_ns, ns.inum);
}

SEC("raw_tp/sched_process_exec")
int palisade_exec(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct linux_binprm *bprm = (struct linux_binprm *)ctx->args[2];
	struct event *ev = scratch_event();
	struct path_buf *buf;
	struct proc_entry *prev, *entry;
	__u32 zero = 0, off = 0, tgid;
	__u64 now = bpf_ktime_get_ns();

	if (!ev)
		return 0;
	/* the cache entry is built in a per-CPU map, not on the stack: with the path walk's frame it would
	 * pass the 512 bytes kernels before 6.x allow a call chain */
	entry = bpf_map_lookup_elem(&entry_scratch, &zero);
	if (!entry)
		return 0;
	__builtin_memset(entry, 0, sizeof(*entry));
	buf = bpf_map_lookup_elem(&path_scratch, &zero);
	if (!buf)
		return 0;

	tgid = fill_head(ev, task, KIND_EXEC, now);
	ev->h.ktime = now;
	ev->h.exit_code = 0;
	fill_info(&ev->h.info, task);

	prev = bpf_map_lookup_elem(&proc_cache, &tgid);
	if (prev) {
		/* exec in place: the parent is the image this one replaces */
		ev->h.ppid = prev->pid;
		ev->h.pktime = prev->ktime;
		ev->h.flags |= F_PARENT_CACHE;
	} else {
		struct task_struct *parent = BPF_CORE_READ(task, real_parent);
		__u32 ptgid = BPF_CORE_READ(parent, tgid);
		struct proc_entry *pe = bpf_map_lookup_elem(&proc_cache, &ptgid);

		ev->h.flags |= F_CLONE;
		ev->h.ppid = ptgid;
		if (pe) {
			ev->h.pktime = pe->ktime;
			ev->h.flags |= F_PARENT_CACHE;
		} else {
			ev->h.pktime = BPF_CORE_READ(parent, group_leader, start_time);
		}
	}

	/* the file that runs, not the path the caller typed */
	struct file *file = BPF_CORE_READ(bprm, file);

	ev->h.binary_len = put_path(ev, &off, buf, BPF_CORE_READ(file, f_path.mnt),
				    BPF_CORE_READ(file, f_path.dentry), F_BIN_TRUNC);

	struct fs_struct *fs = BPF_CORE_READ(task, fs);
	struct dentry *pwd = BPF_CORE_READ(fs, pwd.dentry);

	if (pwd == BPF_CORE_READ(fs, root.dentry))
		ev->h.flags |= F_ROOTCWD;
	ev->h.cwd_len = put_path(ev, &off, buf, BPF_CORE_READ(fs, pwd.mnt), pwd, F_CWD_TRUNC);

	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	__u64 astart = BPF_CORE_READ(mm, arg_start), aend = BPF_CORE_READ(mm, arg_end);
	__u64 alen = aend > astart ? aend - astart : 0;

	if (alen > ARGS_MAX) {
		alen = ARGS_MAX;
		ev->h.flags |= F_ARGS_TRUNC;
	}
	alen &= ARGS_MASK;
	if (bpf_probe_read_user(&ev->data[off & (DATA_MASK >> 1)], alen, (void *)astart) < 0)
		alen = 0;
	ev->h.args_len = alen;
	off += alen;

	entry->ktime = now;
	entry->pktime = ev->h.pktime;
	entry->pid = tgid;
	entry->ppid = ev->h.ppid;
	entry->flags = ev->h.flags;
	entry->info = ev->h.info;
	entry->binary_len = ev->h.binary_len < CACHE_BIN - 1 ? ev->h.binary_len : CACHE_BIN - 1;
	bpf_probe_read_kernel(entry->binary, entry->binary_len & (CACHE_BIN - 1), ev->data);
	bpf_map_update_elem(&proc_cache, &tgid, entry, BPF_ANY);

	emit(ev, off);
	return 0;
}

SEC("raw_tp/sched_process_exit")
int palisade_exit(struct bpf_raw_tracepoint_args *ctx)
{
	struct task_struct *task = (struct task_struct *)ctx->args[0];
	struct event *ev;
	struct proc_entry *pe;
	__u32 tgid, off = 0;

	/* one event per process: the last thread out (do_exit decremented signal->live before) */
	if (BPF_CORE_READ(task, signal, live.counter) != 0)
		return 0;
	ev = scratch_event();
	if (!ev)
		return 0;

	tgid = fill_head(ev, task, KIND_EXIT, bpf_ktime_get_ns());
	ev->h.exit_code = BPF_CORE_READ(task, exit_code);
	ev->h.cwd_len = 0;
	ev->h.args_len = 0;

	pe = bpf_map_lookup_elem(&proc_cache, &tgid);
	if (pe) {
		ev->h.ktime = pe->ktime;
		ev->h.pktime = pe->pktime;
		ev->h.ppid = pe->ppid;
		ev->h.flags = pe->flags | F_CACHED;
		ev->h.info = pe->info; /* as they were at exec, the image the exit ends */
		off = pe->binary_len & (CACHE_BIN - 1);
		bpf_probe_read_kernel(ev->data, off, pe->binary);
		bpf_map_delete_elem(&proc_cache, &tgid);
	} else {
		struct task_struct *parent = BPF_CORE_READ(task, real_parent);

		ev->h.ktime = ev->h.task_start;
		ev->h.ppid = BPF_CORE_READ(parent, tgid);
		ev->h.pktime = BPF_CORE_READ(parent, group_leader, start_time);
		fill_info(&ev->h.info, task); /* the namespaces are released after this tracepoint */
	}
	ev->h.binary_len = off;
	emit(ev, off);
	return 0;
}
