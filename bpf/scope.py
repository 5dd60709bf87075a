"""Keeping a scoped workload inside its policies: a process may not leave the scope and run on unseen.

A scoped policy (podSelector, containerSelector, a namespaced policy: loaded with the
workload's cgroups) judges a process by its cgroup. A root process in the workload can
write its pid, or a child's, into another cgroup's `cgroup.procs` and would then be out
of every scoped policy. What the kernel here offers decides the defence:

- there is no hook that sees a cgroup move *before* it happens and can deny it (that is
  the BPF LSM, which does not load here); `cgroup:cgroup_attach_task` fires right after
  the move, in the context of the process that wrote `cgroup.procs`, with the moved pid
  and the destination;
- `bpf_send_signal` kills only the current process; the kfuncs that signal another task
  (`bpf_task_from_pid` + `bpf_send_signal_task`) exist only from 6.13, so the engine does not
  use them (Debian's stock 6.1 kernels have neither);
- after the move the moved process's old cgroup is gone from everything the program can
  read, so "was it in scope?" must be known beforehand.

So scope membership is *sticky*: every scoped policy keeps `pl_members`, the tasks of its
scope (tgid/tid → 1), filled at load from the scope cgroups' `cgroup.procs`, on exec in a
scope cgroup, and on fork from a member (children inherit), emptied on exit. The scope
test of every tracepoint program is "member, or in a scope cgroup", so a member stays
under the policy wherever it is moved. When `cgroup_attach_task` moves a member out of
the scope:

- written by a member (the workload moving itself or its children): in `enforced` mode the
  writer is killed on the spot (it is current); a moved process other than the writer is
  marked doomed (2) and the engine kills it when it reads the event (`Engine.poll_events`),
  the last resort because no kernel program can signal it; until then it is still a member;
- written by anyone else (the container runtime, systemd, an operator): the move is
  allowed and the process stays a member, under the policy;
- written by the engine itself (`pl_self`): the move is the agent's own, and the process
  stops being a member.

A member's `clone3(CLONE_INTO_CGROUP)` starts a child in a cgroup of its choice without any
move (no `cgroup_attach_task`); the program on `sys_enter_clone3` kills such a caller in
`enforced` mode before the child exists (the kernel aborts a fork whose caller has a fatal
signal pending). The cgroup fd's target is unknown there, so this holds for targets inside
the scope too.

Every escape is an event (`process_tracepoint`: `cgroup:cgroup_attach_task` with the
moved pid and the destination path, or `syscalls:sys_enter_clone3` with the flags) in
every mode; `observe`/`enforce_ready` only report what `enforced` would have killed.
Moves inside the scope (into a sub-cgroup of a workload) are not escapes: the
destination's id is a scope cgroup, or its path lies under one (`pl_cgpaths`, an LPM
trie of "<path>/").

Limits: a 32-bit (compat) clone3 is not watched here (its child is still a member); the
cgroup socket hooks (egress, raw sockets) stay attached to the workload cgroups, so a
member moved out by a non-member (not killed) is judged there no more; `pl_members`
holds `MEMBERS` tasks (a scope with more is tracked only by cgroup).
"""
from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .tpformat import Field, Formats

MEMBERS = 16384
#: Member values.
MEMBER, DOOMED = 1, 2
#: (program, tracepoint) of the membership programs, attached before the hooks and seeded after.
MEMBERSHIP_SITES = (("pl_scope_fork", "sched_process_fork"), ("pl_scope_exec", "sched_process_exec"),
                    ("pl_scope_exit", "sched_process_exit"))
CLONE_INTO_CGROUP = 1 << 33


@dataclass(frozen=True)
class Escape:
    """One way out of the scope that a program watches; its events read as this tracepoint's."""

    hook: int  # `pl_event.hook` of its records (policy hooks count from 0)
    program: str
    tracepoint: tuple[str, str]
    args: tuple[tuple[str, str], ...]  # (label, Tetragon type) of the event's operands


#: A cgroup move (moved pid, destination), and a clone3 that starts its child in another cgroup
#: (CLONE_INTO_CGROUP: no move happens, so cgroup_attach_task never fires; the caller is killed
#: before the child exists, since the kernel aborts a fork whose caller has a fatal signal pending).
ESCAPES = (Escape(255, "pl_scope_attach", ("cgroup", "cgroup_attach_task"), (("pid", "int"), ("dst_path", "string"))),
           Escape(254, "pl_scope_clone3", ("syscalls", "sys_enter_clone3"), (("flags", "uint64"),)))
ATTACH_TRACEPOINT = ESCAPES[0].tracepoint

#: The layout of the tracepoints where tracefs is absent (the reconciler's CI): kernel 6.x.
_DEFAULT_OFFSETS = {("cgroup", "cgroup_attach_task", "dst_root"): 8,
                    ("cgroup", "cgroup_attach_task", "dst_id"): 16,
                    ("cgroup", "cgroup_attach_task", "pid"): 24,
                    ("cgroup", "cgroup_attach_task", "dst_path"): 28,
                    ("syscalls", "sys_enter_clone3", "uargs"): 16}


def offsets(formats: Formats) -> dict[str, int] | None:
    """Field offsets the scope programs read, from the running kernel's formats; None when the
    cgroup_attach_task tracepoint is missing (a scoped policy cannot be kept in scope then)."""
    out = {}
    for (sub, ev, name), default in _DEFAULT_OFFSETS.items():
        fields: tuple[Field, ...] | None = formats(sub, ev)
        if fields is None and sub != "sched":
            return None
        f = next((f for f in fields or () if f.name == name), None)
        out[name] = f.offset if f is not None else default
    return out


def source(off: dict[str, int], mode_off: int) -> str:
    """The membership and escape programs (C, after the prelude of a scoped policy)."""
    return _SOURCE % {**off, "mode_off": mode_off, "doomed": DOOMED, "member": MEMBER, "attach": ESCAPES[0].hook,
                      "clone3": ESCAPES[1].hook, "into_cgroup": CLONE_INTO_CGROUP}


_SOURCE = r"""
static __always_inline void pl_escape_event(struct pl_cfg *cfg, u32 hook, int writer, u32 acted, s64 arg0,
                                            char *path) {
    struct pl_event *e = bpf_ringbuf_reserve(&pl_events, sizeof(struct pl_event), 0);
    if (!e) {
        pl_count(3);
        return;
    }
    u64 pid_tgid = bpf_get_current_pid_tgid();
    __builtin_memset(e, 0, sizeof(*e));
    e->ktime = bpf_ktime_get_ns();
    e->cgroup = bpf_get_current_cgroup_id();
    e->pid = pid_tgid >> 32; e->tid = (u32)pid_tgid;
    e->uid = (u32)bpf_get_current_uid_gid();
    e->hook = hook; e->sel = writer ? 0 : 1; e->action = writer ? 1 : 0; e->mode = cfg->mode;
    e->acted = acted; e->sig = writer ? 9 : 0;
    e->ints[0] = arg0;
    if (path) PL_COPY(e->strs[0], path, PL_STRLEN);
    bpf_ringbuf_submit(e, 0);
    pl_count(0);
}
int pl_scope_clone3(void *ctx) {
    int z = 0;
    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);
    if (!cfg || cfg->mode >= %(mode_off)d || !cfg->scoped) return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (bpf_map_lookup_elem(&pl_self, &tgid)) return 0;
    u64 flags = 0;
    bpf_probe_read_user(&flags, sizeof(flags), *(void **)((char *)ctx + %(uargs)d));
    if (!(flags & %(into_cgroup)dULL) || !pl_in_scope()) return 0;
    u32 acted = 0;
    if (cfg->mode == 2) {
        bpf_send_signal(9);
        acted = 1;
        pl_count(1);
    } else {
        pl_count(2);
    }
    pl_escape_event(cfg, %(clone3)d, 1, acted, (s64)flags, 0);
    return 0;
}
int pl_scope_fork(void *ctx) {
    int z = 0;
    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);
    if (!cfg || cfg->mode >= %(mode_off)d) return 0;
    u32 parent = bpf_get_current_pid_tgid() >> 32;
    struct task_struct *ct = (struct task_struct *)((struct bpf_raw_tracepoint_args *)ctx)->args[1];
    u32 child = BPF_CORE_READ(ct, pid);
    u8 v = %(member)d;
    u8 *pv = bpf_map_lookup_elem(&pl_members, &parent);
    if (pv) v = *pv;  /* a doomed member's children are doomed too */
    else if (!pl_in_cgroups()) return 0;
    bpf_map_update_elem(&pl_members, &child, &v, BPF_ANY);
    return 0;
}
int pl_scope_exec(void *ctx) {
    int z = 0;
    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);
    if (!cfg || cfg->mode >= %(mode_off)d || !pl_in_cgroups()) return 0;
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u8 v = %(member)d;
    bpf_map_update_elem(&pl_members, &tgid, &v, BPF_NOEXIST);  /* keeps a doomed mark */
    return 0;
}
int pl_scope_exit(void *ctx) {
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32, tid = (u32)pid_tgid;
    if (tid != tgid) bpf_map_delete_elem(&pl_members, &tid);
    if (pl_group_dead()) bpf_map_delete_elem(&pl_members, &tgid);
    return 0;
}
int pl_scope_attach(void *ctx) {
    int z = 0;
    struct pl_cfg *cfg = bpf_map_lookup_elem(&pl_cfg, &z);
    if (!cfg || cfg->mode >= %(mode_off)d || !cfg->scoped) return 0;
    if (*(s32 *)((char *)ctx + %(dst_root)d) != 0) return 0;  /* a cgroup v1 hierarchy: scopes are cgroup2 */
    u64 pid_tgid = bpf_get_current_pid_tgid();
    u32 tgid = pid_tgid >> 32;
    u32 moved = *(u32 *)((char *)ctx + %(pid)d);
    if (bpf_map_lookup_elem(&pl_self, &tgid)) {  /* the engine's own move: the process leaves the scope for good */
        bpf_map_delete_elem(&pl_members, &moved);
        return 0;
    }
    if (!bpf_map_lookup_elem(&pl_members, &moved)) return 0;
    u64 dst = *(u64 *)((char *)ctx + %(dst_id)d);
    if (bpf_map_lookup_elem(&pl_scope, &dst)) return 0;
    if (moved == (u32)pid_tgid && pl_in_cgroups()) return 0;  /* moved itself, still under a scope cgroup */
    struct pl_scratch *sc = bpf_map_lookup_elem(&pl_scratch, &z);
    if (!sc) return 0;
    char *path = sc->str[0].s;
    PL_ZERO(path, PL_STRLEN);
    u32 loc = *(u32 *)((char *)ctx + %(dst_path)d);
    int n = bpf_probe_read_kernel_str(path, PL_STRLEN, (char *)ctx + (loc & 0xffff));
    u32 len = n > 0 ? n - 1 : 0;
    PL_COPY(sc->lpm.s, path, PL_STRLEN);
    sc->lpm.plen = (len & (PL_STRLEN - 1)) * 8;
    if (bpf_map_lookup_elem(&pl_cgpaths, &sc->lpm)) return 0;  /* into a sub-cgroup of a workload */
    int writer = bpf_map_lookup_elem(&pl_members, &tgid) != 0 || pl_in_cgroups();
    u32 acted = 0;
    if (writer) {
        if (cfg->mode == 2) {
            bpf_send_signal(9);
            acted = 1;
            pl_count(1);
            if (moved != tgid && moved != (u32)pid_tgid) {
                u8 doomed = %(doomed)d;
                bpf_map_update_elem(&pl_members, &moved, &doomed, BPF_ANY);
            }
        } else {
            pl_count(2);
        }
    }
    pl_escape_event(cfg, %(attach)d, writer, acted, moved, path);
    return 0;
}
"""


def _procs(cgroup: Path) -> Iterator[int]:
    for procs in (cgroup, *(p for p in cgroup.rglob("*") if p.is_dir())):
        with contextlib.suppress(OSError, ValueError):
            yield from (int(x) for x in (procs / "cgroup.procs").read_text().split())


def seed(members_fd: int, cgroups: Iterable[str]) -> None:
    """Make every process already in the scope cgroups (and their sub-cgroups) a member."""
    from . import syscall

    value = bytes([MEMBER])
    for c in cgroups:
        for pid in _procs(Path(c)):
            with contextlib.suppress(OSError):  # already a member (the programs ran first), or full
                syscall.map_update_elem(members_fd, struct.pack("<I", pid), value, 1)  # BPF_NOEXIST


#: The deepest level of the cgroup hierarchy a scope cgroup may be at (the root is level 0).
MAX_LEVEL = 31
#: Set in every scoped load's `pl_cfg.scoped`, so that a scope of no cgroups is still a scope (of nothing).
SCOPED = 1 << 31


def level(cgroup: str, root: Path) -> int:
    """How deep `cgroup` is in the hierarchy mounted at `root` (the root itself is level 0)."""
    rel = os.path.relpath(os.path.realpath(cgroup), os.path.realpath(root))
    return 0 if rel == "." else len(Path(rel).parts)


def level_mask(cgroups: Iterable[str], root: Path) -> int:
    """`pl_cfg.scoped` of a load scoped to `cgroups` (each above MAX_LEVEL): SCOPED, and bit l for each
    level l of the hierarchy a scope cgroup is at. The kernel then asks for a task's ancestors at those
    levels only."""
    mask = SCOPED
    for c in cgroups:
        n = level(c, root)
        assert n < MAX_LEVEL, (c, n)
        mask |= 1 << n
    return mask


def path_keys(cgroups: Iterable[str], root: Path) -> Iterator[bytes]:
    """`pl_cgpaths` keys: "<path under the cgroup2 root>/" of each scope cgroup, as LPM keys."""
    for c in cgroups:
        rel = "/" + os.path.relpath(c, root).strip("/") + "/"
        raw = rel.encode()[:255]
        yield struct.pack("<I", len(raw) * 8) + raw.ljust(256, b"\0")


def is_member(members_fd: int, pid: int) -> int:
    """The member value of `pid` (0: not a member)."""
    from . import syscall

    raw = syscall.map_lookup_elem(members_fd, struct.pack("<I", pid), 1)
    return raw[0] if raw else 0
