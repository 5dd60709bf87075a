"""`spec.loader: true`: Tetragon's process_loader events, one per executable file a process maps.

Tetragon learns of those mappings from the kernel's perf mmap records (a kprobe on
perf_event_mmap_output), which needs kprobes. The same mappings are seen here on any
kernel with syscall tracepoints and BTF:

- a library or any file mapped executable by `mmap(..., PROT_EXEC, ..., fd, ...)`: the
  entry (sys_enter_mmap) notes the descriptor per thread, the return (sys_exit_mmap)
  reports the file if the mapping was made;
- the program and its ELF interpreter, which the kernel maps itself during exec (no mmap
  call): sched_process_exec reports `mm->exe_file`, and the file mapped at the
  interpreter's load address (AT_BASE of the new image), found with bpf_find_vma.

Each event carries the file's path and its inode and device numbers; bpf/events.py reads the
file's GNU build ID from its ELF notes (bpf/elf.py) and drops it when the file at that path
is no longer the inode that was mapped. Loader policies only report: they have no selectors.
"""
from __future__ import annotations

__all__ = ["EXEC_FN", "MMAP_ENTER_FN", "MMAP_EXIT_FN", "source"]

MMAP_ENTER_FN = "pl_h%d_ldm"
MMAP_EXIT_FN = "pl_h%d_ldx"
EXEC_FN = "pl_h%d_lde"

_SOURCE = r"""
/* spec.loader (bpf/loader.py): thread -> the descriptor of a PROT_EXEC mmap in progress */
PL_MAP(pl_loader_mm, BPF_MAP_TYPE_LRU_HASH, u64, s64, 4096);
static __always_inline int pl_loader_post(u32 tgid, u64 pid_tgid, struct file *f, struct pl_cfg *cfg,
                                          struct pl_scratch *sc) {
    if (!f) return 0;
    struct pl_event *e = bpf_ringbuf_reserve(&pl_events, sizeof(struct pl_event), 0);
    if (!e) { pl_count(3); return 0; }
    e->ktime = bpf_ktime_get_ns();
    e->cgroup = bpf_get_current_cgroup_id();
    e->pid = tgid; e->tid = (u32)pid_tgid;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->hook = %(hook)d; e->sel = 0; e->action = 0; e->mode = cfg->mode; e->acted = 0; e->sig = 0; e->pad = 0;
    struct inode *ino = BPF_CORE_READ(f, f_inode);
    e->ints[0] = BPF_CORE_READ(ino, i_ino);
    e->ints[1] = BPF_CORE_READ(ino, i_sb, s_dev);
    pl_file_path(f, e->strs[0]);
    pl_exe_path(e->bin);
    bpf_ringbuf_submit(e, 0);
    pl_count(0);
    return 0;
}
static __always_inline struct pl_cfg *pl_loader_cfg(u32 tgid) {
    int z = 0;
    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);
    if (!cfg || cfg->mode >= %(mode_off)d) return 0;
    if (cfg->scoped && !pl_in_scope_of(tgid)) return 0;
    if (bpf_map_lookup_elem(&pl_self, &tgid)) return 0;  /* the engine itself */
    return cfg;
}
int %(enter)s(void *ctx) {
    if (!(*(u64 *)((char *)ctx + %(prot)d) & 4)) return 0;  /* PROT_EXEC */
    s64 fd = *(s64 *)((char *)ctx + %(fd)d);
    if (fd < 0) return 0;  /* anonymous: no file */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    if (!pl_loader_cfg(pid_tgid >> 32)) return 0;
    bpf_map_update_elem(&pl_loader_mm, &pid_tgid, &fd, BPF_ANY);
    return 0;
}
int %(exit)s(void *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    s64 *fdp = bpf_map_lookup_elem(&pl_loader_mm, &pid_tgid);
    if (!fdp) return 0;
    s64 fd = *fdp;
    bpf_map_delete_elem(&pl_loader_mm, &pid_tgid);
    s64 ret = *(s64 *)((char *)ctx + %(ret)d);
    if (ret < 0 && ret > -4096) return 0;  /* the mapping failed */
    u32 tgid = pid_tgid >> 32;
    struct pl_cfg *cfg = pl_loader_cfg(tgid);
    int z = 0;
    struct pl_scratch *sc = bpf_map_lookup_elem(&pl_scratch, &z);
    if (!cfg || !sc) return 0;
    return pl_loader_post(tgid, pid_tgid, pl_fd_file(fd), cfg, sc);
}
%(interp)s
int %(exec)s(void *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    struct pl_cfg *cfg = pl_loader_cfg(tgid);
    int z = 0;
    struct pl_scratch *sc = bpf_map_lookup_elem(&pl_scratch, &z);
    if (!cfg || !sc) return 0;
    struct task_struct *t = bpf_get_current_task_btf();
    pl_loader_post(tgid, pid_tgid, t->mm->exe_file, cfg, sc);
%(interp_call)s
    return 0;
}
"""

#: The interpreter: the VMA at AT_BASE (auxv entry 7), whose file is the ld.so the kernel mapped.
_INTERP = r"""
static long pl_loader_vma(struct task_struct *t, struct vm_area_struct *vma, void *out) {
    *(struct file **)out = vma->vm_file;
    return 0;
}
static __always_inline u64 pl_loader_base(struct task_struct *t) {
    struct mm_struct *mm = t->mm;
#pragma unroll
    for (int k = 6; k < 9; k++)
        if (mm->saved_auxv[2 * k] == 7) return mm->saved_auxv[2 * k + 1];
    return 0;
}
"""
_INTERP_CALL = r"""    u64 base = pl_loader_base(t);
    struct file *interp = 0;
    if (base && bpf_find_vma(t, base, pl_loader_vma, &interp, 0) == 0 && interp)
        pl_loader_post(tgid, pid_tgid, interp, cfg, sc);"""


def source(hook: int, *, prot: int, fd: int, ret: int, mode_off: int, find_vma: bool) -> str:
    """The programs of hook `hook`, the loader; `prot` and `fd` are sys_enter_mmap's field offsets, `ret`
    sys_exit_mmap's. Without bpf_find_vma (before 5.17) the interpreter of an exec is not reported."""
    return _SOURCE % {"hook": hook, "mode_off": mode_off, "enter": MMAP_ENTER_FN % hook,
                      "exit": MMAP_EXIT_FN % hook, "exec": EXEC_FN % hook, "prot": prot, "fd": fd, "ret": ret,
                      "interp": _INTERP if find_vma else "", "interp_call": _INTERP_CALL if find_vma else ""}
