"""Built-in rule templates (DESIGN.md §2): each renders to an ordinary TracingPolicy.

A template is code generation, not enforcement: it returns the plain document a
team could have written by hand (and `kubectl apply` to a real Tetragon), built
from syscall tracepoints because those load on every kernel we run on (kprobes
may be missing, see DESIGN.md §6). Tracepoint argument indexes count the fields
of the tracepoint's format file: 0-3 are common fields, 4 is `__syscall_nr`, so
the first syscall argument is index 5. A selector's `matchArgs` index, as in
Tetragon, is the position in the hook's `args` list (0 for the first declared).

Exceptions become selectors placed before the enforcing one, with the `NoPost`
action: Tetragon evaluates selectors in order and the first that matches decides,
so an excepted binary neither triggers the action nor an event.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Tetragon's limit: selectors per hook.
MAX_SELECTORS = 5

_CLONE_NEWUSER = 0x10000000
#: Every CLONE_NEW* flag (mount, cgroup, uts, ipc, user, pid, net) ...
_CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000
#: ... and CLONE_NEWTIME, which only unshare and clone3 take (in clone() the bit is part of the exit signal).
_CLONE_NEWTIME = 0x00000080
_PTRACE_ATTACH = 16
_PTRACE_SEIZE = 0x4206
_BPF_PROG_LOAD = 5
_AF_INET, _AF_INET6, _AF_PACKET = 2, 10, 17
_SOCK_RAW = 3
_S_ISUID_ISGID = 0o6000
#: open(2) flags that create a file, so that its mode applies: O_CREAT, __O_TMPFILE.
_O_CREATING = 0o100 | 0o20000000
_EPERM = 1
_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_RAISE = 47, 2


@dataclass(frozen=True)
class Param:
    name: str
    kind: str  # "paths" (list of absolute paths) | "ints" | "bool"
    description: str
    default: Any


@dataclass(frozen=True)
class TemplateException:
    """The part of a rule exception that rendering needs (reason and expiry are the reconciler's)."""

    binary: str | None = None
    parent_binary: str | None = None


@dataclass(frozen=True)
class Template:
    name: str
    description: str
    params: tuple[Param, ...]
    _hooks: Callable[[Mapping[str, Any]], dict[str, Any]]

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)


def _kill() -> list[dict[str, Any]]:
    return [{"action": "Sigkill"}]


def _syscall(event: str, *, args: Sequence[dict[str, Any]] = (), match: Sequence[dict[str, Any]] = (),
             actions: list[dict[str, Any]] | None = None,
             alternatives: Sequence[Sequence[dict[str, Any]]] = ()) -> dict[str, Any]:
    """One syscall tracepoint hook; `alternatives` are further matchArgs sets, each its own selector
    (selectors are ORed, the matchArgs inside one are ANDed)."""
    selectors = []
    for m in (match, *alternatives):
        selector: dict[str, Any] = {}
        if m:
            selector["matchArgs"] = list(m)
        selector["matchActions"] = actions if actions is not None else _kill()
        selectors.append(selector)
    hook: dict[str, Any] = {"subsystem": "syscalls", "event": event}
    if args:
        hook["args"] = list(args)
    hook["selectors"] = selectors
    return hook


def _arg(index: int, type_: str) -> dict[str, Any]:
    return {"index": index, "type": type_}


def _m(index: int, operator: str, values: Sequence[Any]) -> dict[str, Any]:
    return {"index": index, "operator": operator, "values": [str(v) for v in values]}


def _tracepoints(*hooks: dict[str, Any]) -> dict[str, Any]:
    return {"tracepoints": list(hooks)}


def _kmod(_: Mapping[str, Any]) -> dict[str, Any]:
    return _tracepoints(_syscall("sys_enter_init_module"), _syscall("sys_enter_finit_module"))


def _clone_hooks(mask: int) -> list[dict[str, Any]]:
    """clone() and clone3() with any flag of `mask`; clone3 takes its flags in a user struct
    (`struct clone_args`, whose first member they are), read through `btfType`/`resolve`."""
    return [
        _syscall("sys_enter_clone", args=[_arg(5, "uint64")],
                 match=[_m(0, "Mask", [mask & ~_CLONE_NEWTIME])]),
        _syscall("sys_enter_clone3", args=[{"index": 5, "type": "uint64", "btfType": "clone_args",
                                            "resolve": "flags"}],
                 match=[_m(0, "Mask", [mask])]),
    ]


def _userns(_: Mapping[str, Any]) -> dict[str, Any]:
    # created by unshare, clone or clone3; entered by setns with CLONE_NEWUSER, or with 0 ("any type":
    # the kind of namespace behind the fd is not known at the call)
    return _tracepoints(
        _syscall("sys_enter_unshare", args=[_arg(5, "uint64")], match=[_m(0, "Mask", [_CLONE_NEWUSER])]),
        *_clone_hooks(_CLONE_NEWUSER),
        _syscall("sys_enter_setns", args=[_arg(6, "uint64")], match=[_m(0, "Mask", [_CLONE_NEWUSER])],
                 alternatives=[[_m(0, "Equal", [0])]]),
    )


def _unshare(_: Mapping[str, Any]) -> dict[str, Any]:
    # every way a process leaves its namespaces: unshare, a clone into new ones, setns into others
    return _tracepoints(_syscall("sys_enter_unshare"), *_clone_hooks(_CLONE_NEW_ANY | _CLONE_NEWTIME),
                        _syscall("sys_enter_setns"))


def _raw_sockets(_: Mapping[str, Any]) -> dict[str, Any]:
    # Inet raw sockets (IPv4 and IPv6) are denied (EPERM) on the cgroup sock_create hook. Packet
    # sockets (AF_PACKET, raw or cooked) read and forge whole frames, but no cgroup hook sees their
    # creation: the creating process is killed instead. Netlink's SOCK_RAW is not a raw network socket.
    return {
        "kprobes": [
            {
                "call": "security_socket_create",
                "syscall": False,
                "args": [_arg(0, "int"), _arg(1, "int"), _arg(2, "int")],
                "selectors": [
                    {
                        "matchArgs": [_m(0, "Equal", [_AF_INET, _AF_INET6]), _m(1, "Equal", [_SOCK_RAW])],
                        "matchActions": [{"action": "Override", "argError": -_EPERM}],
                    },
                    {"matchArgs": [_m(0, "Equal", [_AF_PACKET])], "matchActions": _kill()},
                ],
            },
        ]
    }


def _capset(_: Mapping[str, Any]) -> dict[str, Any]:
    # The capability sets are in user memory; the tracepoint sees only the call.
    # Every capset() outside the exceptions is killed: add the daemons that drop
    # privileges at start as exceptions.
    # prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE) changes the ambient set, which execve carries over
    return _tracepoints(_syscall("sys_enter_capset"),
                        _syscall("sys_enter_prctl", args=[_arg(5, "int"), _arg(6, "uint64")],
                                 match=[_m(0, "Equal", [_PR_CAP_AMBIENT]), _m(1, "Equal", [_PR_CAP_AMBIENT_RAISE])]))


def _ptrace(_: Mapping[str, Any]) -> dict[str, Any]:
    # process_vm_readv/writev read and write another process's memory under the same access check
    # as a ptrace attach, without attaching
    return _tracepoints(
        _syscall("sys_enter_ptrace", args=[_arg(5, "int64")],
                 match=[_m(0, "Equal", [_PTRACE_ATTACH, _PTRACE_SEIZE])]),
        _syscall("sys_enter_process_vm_readv"),
        _syscall("sys_enter_process_vm_writev"),
    )


def _execve_tmp(params: Mapping[str, Any]) -> dict[str, Any]:
    dirs = [d.rstrip("/") + "/" for d in params["directories"]]
    # The exec hook judges the file that runs wherever it was reached from (`//tmp/x`, `./x`, a symlink,
    # /proc/self/fd/N, execveat, `#!/tmp/x`, `ld.so /tmp/x`); the syscall hooks also catch a script in
    # one of the directories started by its path (the file that runs is then its interpreter).
    return _tracepoints(
        _syscall("sys_enter_execve", args=[_arg(5, "string")], match=[_m(0, "Prefix", dirs)]),
        _syscall("sys_enter_execveat", args=[_arg(6, "string")], match=[_m(0, "Prefix", dirs)]),
        {"subsystem": "sched", "event": "sched_process_exec",
         "selectors": [{"matchBinaries": [{"operator": "Prefix", "values": dirs}], "matchActions": _kill()}]},
    )


def _calls(*events: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    """Kill every call of these syscalls."""
    return lambda _: _tracepoints(*(_syscall(e) for e in events))


# mount(2) and the mount API: fsopen/fsconfig/fsmount build a new mount, fspick + fsconfig reconfigure
# (remount) one, open_tree clones a tree (detached until move_mount attaches it), mount_setattr changes
# a mount's flags (nosuid, noexec, ro) as a remount does
_mount = _calls(*(f"sys_enter_{call}" for call in (
    "mount", "fsopen", "fspick", "fsconfig", "fsmount", "move_mount", "open_tree", "mount_setattr")))


def _bpf_load(_: Mapping[str, Any]) -> dict[str, Any]:
    return _tracepoints(
        _syscall("sys_enter_bpf", args=[_arg(5, "int")], match=[_m(0, "Equal", [_BPF_PROG_LOAD])])
    )


def _chmod_suid(_: Mapping[str, Any]) -> dict[str, Any]:
    def hook(event: str, index: int) -> dict[str, Any]:
        return _syscall(event, args=[_arg(index, "uint32")], match=[_m(0, "Mask", [_S_ISUID_ISGID])])

    def creating(event: str, flags: int, mode: int) -> dict[str, Any]:
        # open with O_CREAT/O_TMPFILE applies `mode` to the new file, setuid bit included
        return _syscall(event, args=[_arg(flags, "uint32"), _arg(mode, "uint32")],
                        match=[_m(0, "Mask", [_O_CREATING]), _m(1, "Mask", [_S_ISUID_ISGID])])

    return _tracepoints(
        hook("sys_enter_chmod", 6), hook("sys_enter_fchmod", 6),
        hook("sys_enter_fchmodat", 7), hook("sys_enter_fchmodat2", 7),
        # a file created setuid: creat, open, openat, openat2 (mode in struct open_how), mknod(at)
        hook("sys_enter_creat", 6), creating("sys_enter_open", 6, 7), creating("sys_enter_openat", 7, 8),
        _syscall("sys_enter_openat2", args=[{"index": 7, "type": "uint64", "btfType": "open_how",
                                             "resolve": "mode"}],
                 match=[_m(0, "Mask", [_S_ISUID_ISGID])]),
        hook("sys_enter_mknod", 6), hook("sys_enter_mknodat", 7),
    )


_TMP_DIRS = Param("directories", "paths", "directories from which executing is forbidden",
                  ["/tmp", "/var/tmp", "/dev/shm"])

TEMPLATES: Mapping[str, Template] = {
    t.name: t
    for t in (
        Template("block-kmod-load", "kill processes that load kernel modules", (), _kmod),
        Template("block-user-namespace",
                 "kill processes creating or entering user namespaces (unshare, clone, clone3, setns)", (),
                 _userns),
        Template("block-raw-sockets",
                 "deny creating inet raw sockets (EPERM); kill processes creating packet sockets", (),
                 _raw_sockets),
        Template("block-capset-sysadmin", "kill processes changing their capability sets (capset, raising "
                 "ambient capabilities)", (),
                 _capset),
        Template("kill-ptrace-attach", "kill processes attaching to others with ptrace or reaching into their "
                 "memory (process_vm_readv/writev)", (), _ptrace),
        Template("block-execve-tmp", "kill processes executing files from temporary directories",
                 (_TMP_DIRS,), _execve_tmp),
        Template("block-memfd-create", "kill processes creating anonymous memory files (fileless exec)",
                 (), _calls("sys_enter_memfd_create")),
        Template("block-pivot-root", "kill processes calling pivot_root", (), _calls("sys_enter_pivot_root")),
        Template("block-mount-syscall", "kill processes mounting or remounting file systems (mount and the "
                 "mount API)", (), _mount),
        Template("block-unshare", "kill processes leaving their namespaces (unshare, clone/clone3 into new "
                 "namespaces, setns)", (), _unshare),
        Template("block-bpf-load", "kill processes loading BPF programs (the node agent itself is exempt)", (),
                 _bpf_load),
        Template("block-chmod-suid", "kill processes setting the setuid/setgid bit (chmod family, or creating "
                 "a file with it)", (), _chmod_suid),
    )
}
#: `custom` carries its own TracingPolicy and is not in TEMPLATES.
CUSTOM = "custom"
NAMES: tuple[str, ...] = (*TEMPLATES, CUSTOM)


def check_params(template: str, params: Mapping[str, Any]) -> list[str]:
    """Problems with a rule's template name and parameters, as messages (empty when fine)."""
    if template == CUSTOM:
        return [f"parameter {k!r}: template custom takes no parameters" for k in params]
    t = TEMPLATES.get(template)
    if t is None:
        return [f"unknown template {template!r}; built-in templates are {', '.join(NAMES)}"]
    problems = []
    for key, value in params.items():
        p = t.param(key)
        if p is None:
            known = ", ".join(x.name for x in t.params) or "none"
            problems.append(f"unknown parameter {key!r} for template {template} (parameters: {known})")
        elif p.kind == "paths" and not (
            isinstance(value, list) and value and all(isinstance(v, str) and v.startswith("/") for v in value)
        ):
            problems.append(f"parameter {key!r} must be a non-empty list of absolute paths")
    return problems


def render(template: str, name: str, params: Mapping[str, Any] | None = None,
           exceptions: Sequence[TemplateException] = ()) -> dict[str, Any]:
    """The TracingPolicy document for a rule; raises ValueError on a bad template or parameters."""
    params = dict(params or {})
    problems = check_params(template, params)
    if problems:
        raise ValueError("; ".join(problems))
    t = TEMPLATES[template]
    values = {p.name: params.get(p.name, p.default) for p in t.params}
    spec = t._hooks(values)
    if exceptions:
        spec = apply_exceptions(spec, exceptions)
    return {
        "apiVersion": "cilium.io/v1alpha1",
        "kind": "TracingPolicy",
        "metadata": {"name": name, "annotations": {"palisade.dev/template": template}},
        "spec": spec,
    }


def exception_selectors(exceptions: Sequence[TemplateException]) -> list[dict[str, Any]]:
    """`NoPost` selectors, one per kind of exception, that must come before the enforcing ones."""
    binaries = sorted({e.binary for e in exceptions if e.binary and not e.parent_binary})
    parents = sorted({e.parent_binary for e in exceptions if e.parent_binary and not e.binary})
    both = sorted({(e.binary, e.parent_binary) for e in exceptions if e.binary and e.parent_binary})
    out: list[dict[str, Any]] = []
    if binaries:
        out.append({"matchBinaries": [{"operator": "In", "values": binaries}],
                    "matchActions": [{"action": "NoPost"}]})
    if parents:
        out.append({"matchParentBinaries": [{"operator": "In", "values": parents}],
                    "matchActions": [{"action": "NoPost"}]})
    for binary, parent in both:
        out.append({"matchBinaries": [{"operator": "In", "values": [binary]}],
                    "matchParentBinaries": [{"operator": "In", "values": [parent]}],
                    "matchActions": [{"action": "NoPost"}]})
    return out


def apply_exceptions(spec: dict[str, Any], exceptions: Sequence[TemplateException]) -> dict[str, Any]:
    """Put the exception selectors in front of every hook's selectors (in place; returns `spec`)."""
    pre = exception_selectors(exceptions)
    for hooks in spec.values():
        for hook in hooks:
            selectors = pre + hook["selectors"]
            if len(selectors) > MAX_SELECTORS:
                raise ValueError(
                    f"{len(pre)} exception selectors leave no room under Tetragon's limit of "
                    f"{MAX_SELECTORS} selectors per hook; combine exceptions that share a parent binary"
                )
            hook["selectors"] = selectors
    return spec
