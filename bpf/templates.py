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
_PTRACE_ATTACH = 16
_PTRACE_SEIZE = 0x4206
_BPF_PROG_LOAD = 5
_SOCK_RAW = 3
_S_ISUID_ISGID = 0o6000
_EPERM = 1


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
             actions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    selector: dict[str, Any] = {}
    if match:
        selector["matchArgs"] = list(match)
    selector["matchActions"] = actions if actions is not None else _kill()
    hook: dict[str, Any] = {"subsystem": "syscalls", "event": event}
    if args:
        hook["args"] = list(args)
    hook["selectors"] = [selector]
    return hook


def _arg(index: int, type_: str) -> dict[str, Any]:
    return {"index": index, "type": type_}


def _m(index: int, operator: str, values: Sequence[Any]) -> dict[str, Any]:
    return {"index": index, "operator": operator, "values": [str(v) for v in values]}


def _tracepoints(*hooks: dict[str, Any]) -> dict[str, Any]:
    return {"tracepoints": list(hooks)}


def _kmod(_: Mapping[str, Any]) -> dict[str, Any]:
    return _tracepoints(_syscall("sys_enter_init_module"), _syscall("sys_enter_finit_module"))


def _userns(_: Mapping[str, Any]) -> dict[str, Any]:
    # clone3 passes its flags in user memory, which Tetragon's matchArgs cannot read:
    # user namespaces created through clone3 are not covered by this template.
    return _tracepoints(
        _syscall("sys_enter_unshare", args=[_arg(5, "uint64")], match=[_m(0, "Mask", [_CLONE_NEWUSER])]),
        _syscall("sys_enter_clone", args=[_arg(5, "uint64")], match=[_m(0, "Mask", [_CLONE_NEWUSER])]),
    )


def _raw_sockets(_: Mapping[str, Any]) -> dict[str, Any]:
    # A real denial (EPERM) where a denying hook exists: the engine enforces
    # security_socket_create on the cgroup sock_create hook.
    return {
        "kprobes": [
            {
                "call": "security_socket_create",
                "syscall": False,
                "args": [_arg(0, "int"), _arg(1, "int"), _arg(2, "int")],
                "selectors": [
                    {
                        "matchArgs": [_m(1, "Equal", [_SOCK_RAW])],
                        "matchActions": [{"action": "Override", "argError": -_EPERM}],
                    }
                ],
            }
        ]
    }


def _capset(_: Mapping[str, Any]) -> dict[str, Any]:
    # The capability sets are in user memory; the tracepoint sees only the call.
    # Every capset() outside the exceptions is killed: add the daemons that drop
    # privileges at start as exceptions.
    return _tracepoints(_syscall("sys_enter_capset"))


def _ptrace(_: Mapping[str, Any]) -> dict[str, Any]:
    return _tracepoints(
        _syscall("sys_enter_ptrace", args=[_arg(5, "int64")],
                 match=[_m(0, "Equal", [_PTRACE_ATTACH, _PTRACE_SEIZE])])
    )


def _execve_tmp(params: Mapping[str, Any]) -> dict[str, Any]:
    dirs = [d.rstrip("/") + "/" for d in params["directories"]]
    return _tracepoints(
        _syscall("sys_enter_execve", args=[_arg(5, "string")], match=[_m(0, "Prefix", dirs)]),
        _syscall("sys_enter_execveat", args=[_arg(6, "string")], match=[_m(0, "Prefix", dirs)]),
    )


def _single(event: str) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda _: _tracepoints(_syscall(event))


def _mount(_: Mapping[str, Any]) -> dict[str, Any]:
    return _tracepoints(_syscall("sys_enter_mount"), _syscall("sys_enter_fsmount"),
                        _syscall("sys_enter_move_mount"))


def _bpf_load(_: Mapping[str, Any]) -> dict[str, Any]:
    return _tracepoints(
        _syscall("sys_enter_bpf", args=[_arg(5, "int")], match=[_m(0, "Equal", [_BPF_PROG_LOAD])])
    )


def _chmod_suid(_: Mapping[str, Any]) -> dict[str, Any]:
    def hook(event: str, index: int) -> dict[str, Any]:
        return _syscall(event, args=[_arg(index, "uint32")], match=[_m(0, "Mask", [_S_ISUID_ISGID])])

    return _tracepoints(hook("sys_enter_chmod", 6), hook("sys_enter_fchmod", 6),
                        hook("sys_enter_fchmodat", 7), hook("sys_enter_fchmodat2", 7))


_TMP_DIRS = Param("directories", "paths", "directories from which executing is forbidden",
                  ["/tmp", "/var/tmp", "/dev/shm"])

TEMPLATES: Mapping[str, Template] = {
    t.name: t
    for t in (
        Template("block-kmod-load", "kill processes that load kernel modules", (), _kmod),
        Template("block-user-namespace", "kill processes creating user namespaces (unshare/clone)", (),
                 _userns),
        Template("block-raw-sockets", "deny creating raw sockets (EPERM)", (), _raw_sockets),
        Template("block-capset-sysadmin", "kill processes changing their capability sets (capset)", (),
                 _capset),
        Template("kill-ptrace-attach", "kill processes attaching to others with ptrace", (), _ptrace),
        Template("block-execve-tmp", "kill processes executing files from temporary directories",
                 (_TMP_DIRS,), _execve_tmp),
        Template("block-memfd-create", "kill processes creating anonymous memory files (fileless exec)",
                 (), _single("sys_enter_memfd_create")),
        Template("block-pivot-root", "kill processes calling pivot_root", (), _single("sys_enter_pivot_root")),
        Template("block-mount-syscall", "kill processes mounting file systems", (), _mount),
        Template("block-unshare", "kill processes calling unshare", (), _single("sys_enter_unshare")),
        Template("block-bpf-load", "kill processes loading BPF programs (the node agent itself is exempt)", (),
                 _bpf_load),
        Template("block-chmod-suid", "kill processes setting the setuid/setgid bit", (), _chmod_suid),
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
