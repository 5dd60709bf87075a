"""The checks Tetragon itself makes when it loads a TracingPolicy, run before the policy ships.

The JSON Schema says which fields exist and which values an enumeration takes;
this module checks what only makes sense with the whole policy in view: a
selector filters on an argument the hook declares, the operator fits the type
of that argument, the selector and action counts stay within what Tetragon's
BPF programs hold, Override only where the kernel can override the outcome, and
actions carry the argument they need. Limits and rules follow Tetragon's
selector parser (pkg/selectors) and its documentation ("Selectors",
"Enforcement").

Input is a schema-valid TracingPolicy `Document`; every finding points at the
offending node. Codes:

`tp-arg-index`           matchArgs/matchData/matchReturnArgs or sizeArgIndex refers to an undeclared argument
`tp-operator-type`       operator does not fit the argument's type
`tp-value`               a value the operator cannot parse (address, port, integer, namespace, range)
`tp-too-many-values`     more values than the operator takes (4 for integer comparisons and ranges)
`tp-too-many-selectors`  more than 5 selectors on a hook
`tp-too-many-actions`    more than 3 actions in a selector
`tp-too-many-filters`    more than 5 matchArgs+matchData filters in a selector
`tp-match-binaries`      more than one matchBinaries/matchParentBinaries entry, or followChildren misuse
`tp-namespaces`          matchNamespaces/matchNamespaceChanges limits
`tp-capability`          unknown capability name
`tp-override`            Override where the hook cannot override the call's result
`tp-action-arg`          an action without the argument it needs (argSig, argError, argUrl, argFqdn)
`tp-action`              an action or option used where Tetragon refuses it (rateLimit off Post, Set off usdts)
`tp-enforcer`            NotifyEnforcer without spec.enforcers
`tp-list`                'list:NAME' naming no list of spec.lists
`tp-macro`               a selector macro naming no entry of spec.selectorsMacros
`tp-return`              return selectors on a hook that does not hook the return (warning)
`tp-duplicate-hook`      the same hook twice in one policy (warning)
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bpf.policy import POLICY_MODES
from reconciler.findings import Finding
from reconciler.repository.source import Document, JsonPath

HOOK_KINDS = ("kprobes", "fentries", "tracepoints", "lsmhooks", "uprobes", "usdts")

MAX_SELECTORS = 5  # "A TracingPolicy can contain from 0 to 5 selectors" (per hook)
MAX_ACTIONS = 3  # ParseMatchActions
MAX_ARG_FILTERS = 5  # ParseMatchArgs: matchArgs + matchData, kernels >= 5.3
MAX_MATCH_VALUES = 4  # MAX_MATCH_VALUES of the BPF side, for integer comparisons and ranges
MAX_NAMESPACE_FILTERS = 10
MAX_NAMESPACE_VALUES = 4

_INT = frozenset({"int", "sint8", "int8", "uint8", "sint16", "int16", "uint16", "uint32", "sint32", "int32",
                  "ulong", "uint64", "size_t", "long", "sint64", "int64", "syscall64"})
_RANGE_INT = frozenset({"int", "sint32", "int32", "size_t", "uint32", "sint64", "int64", "long", "syscall64",
                        "uint64", "ulong"})
_CAPS = frozenset({"kernel_cap_t", "cap_inheritable", "cap_permitted", "cap_effective"})
_SOCK = frozenset({"sock", "skb", "sockaddr", "socket"})
_STRINGY = frozenset({"string", "char_buf", "char_iovec", "filename", "file", "path", "fd", "linux_binprm",
                      "data_loc", "dentry", "net_device", "kiocb"})

_PORT_OPS = frozenset({"SPort", "NotSPort", "DPort", "NotDPort"})
_ADDR_OPS = frozenset({"SAddr", "NotSAddr", "DAddr", "NotDAddr"})
_PRIV_OPS = frozenset({"SPortPriv", "NotSportPriv", "DPortPriv", "NotDPortPriv"})
_NET_OPS = _PORT_OPS | _ADDR_OPS | _PRIV_OPS | {"Protocol", "Family", "State"}
# a sockaddr holds a single address, which Tetragon reads as the source side
_SOCKADDR_REFUSED = frozenset({"DPort", "NotDPort", "DAddr", "NotDAddr", "DPortPriv", "NotDPortPriv",
                               "Protocol", "State"})
_STRING_OPS = frozenset({"Prefix", "NotPrefix", "Postfix", "NotPostfix", "SubString", "SubStringIgnCase"})
_INT_OPS = frozenset({"Mask", "GT", "LT", "GreaterThan", "LessThan"})
_RANGE_OPS = frozenset({"InRange", "NotInRange"})
_MAP_OPS = frozenset({"InMap", "NotInMap"})

_CAPABILITIES = frozenset({
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL",
    "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP", "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER", "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT",
    "CAP_SYS_NICE", "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE",
    "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP", "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG",
    "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ", "CAP_PERFMON", "CAP_BPF", "CAP_CHECKPOINT_RESTORE",
})

# actions and the argument each needs
# (TrackSock/UntrackSock default argSock to 0, the first argument, which is how Tetragon's own examples use them)
_ACTION_ARGS = {"Signal": "argSig", "GetUrl": "argUrl", "DnsLookup": "argFqdn", "Override": "argError"}
_GO_OCTAL = re.compile(r"^[+-]?0[0-7]+$")
# policies shipped as templates (envsubst, Helm) carry ${VAR} placeholders filled in before they are applied
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}|\{\{.*\}\}")


@dataclass(frozen=True)
class _Arg:
    """What a selector filter resolved to: the declared argument's type ('auto' when not given)."""

    type: str


def check_policy(doc: Document) -> list[Finding]:
    """Findings for what Tetragon would refuse (or silently ignore) when loading this policy."""
    plain = doc.plain if isinstance(doc.plain, dict) else {}
    spec = plain.get("spec")
    if not isinstance(spec, dict):
        return []
    return list(_Checker(doc, spec).run())


class _Checker:
    def __init__(self, doc: Document, spec: dict[str, Any]) -> None:
        self.doc = doc
        self.spec = spec
        # the schema has vouched for the shapes; the guards below keep a misuse from raising
        self.lists = {str(lst.get("name")) for lst in _seq(spec.get("lists")) if isinstance(lst, dict)}
        macros = spec.get("selectorsMacros")
        self.macros = {str(k) for k in macros} if isinstance(macros, dict) else set()
        self.has_enforcers = bool(spec.get("enforcers"))

    def err(self, path: JsonPath, code: str, message: str) -> Finding:
        return self.doc.error(path, code, message)

    def warn(self, path: JsonPath, code: str, message: str) -> Finding:
        return self.doc.warning(path, code, message)

    # --- policy level ------------------------------------------------------------------------

    def run(self) -> Iterator[Finding]:
        for kind in HOOK_KINDS:
            hooks = _seq(self.spec.get(kind))
            seen: dict[str, int] = {}
            for i, hook in enumerate(hooks):
                if not isinstance(hook, dict):
                    continue
                where: JsonPath = ("spec", kind, i)
                yield from self.hook(kind, where, hook)
                ident = _hook_identity(kind, hook)
                if ident in seen:
                    yield self.warn(where, "tp-duplicate-hook",
                                    f"{kind}[{i}] repeats {kind}[{seen[ident]}] ({ident}); merge their "
                                    "selectors into one hook")
                else:
                    seen[ident] = i
        for i, enf in enumerate(_seq(self.spec.get("enforcers"))):
            for j, call in enumerate(_seq(enf.get("calls") if isinstance(enf, dict) else None)):
                yield from self.list_ref(call, ("spec", "enforcers", i, "calls", j))
        for i, opt in enumerate(_seq(self.spec.get("options"))):
            if isinstance(opt, dict) and opt.get("name") == "policy-mode" and \
                    opt.get("value") not in POLICY_MODES:
                yield self.err(("spec", "options", i, "value"), "tp-policy-mode",
                               f"policy-mode {opt.get('value')!r} is not a mode; Tetragon refuses the policy "
                               f"(modes: {', '.join(POLICY_MODES)})")
            elif isinstance(opt, dict) and opt.get("name") == "policy-mode" and opt.get("value") == "monitor" \
                    and _enforcing_actions(self.spec):
                yield self.warn(("spec", "options", i, "value"), "tp-policy-mode",
                                f"policy-mode monitor: its {', '.join(sorted(_enforcing_actions(self.spec)))} "
                                "never acts, even where the ladder says enforced (at most would-have-acted events)")
        macros = self.spec.get("selectorsMacros")
        for name, macro in (macros.items() if isinstance(macros, dict) else ()):
            if isinstance(macro, dict):
                yield from self.selector("kprobes", {}, ("spec", "selectorsMacros", name), macro, macro_def=True)

    def list_ref(self, value: Any, path: JsonPath) -> Iterator[Finding]:
        if isinstance(value, str) and value.startswith("list:") and value[5:] not in self.lists:
            known = ", ".join(sorted(str(n) for n in self.lists)) or "none"
            yield self.err(path, "tp-list", f"{value!r} names no list of spec.lists (lists: {known})")

    # --- one hook ----------------------------------------------------------------------------

    def hook(self, kind: str, where: JsonPath, hook: dict[str, Any]) -> Iterator[Finding]:
        if kind in ("kprobes", "fentries"):
            yield from self.list_ref(hook.get("call"), (*where, "call"))
        if kind == "kprobes" and hook.get("return") is True and hook.get("returnArg") is None:
            yield self.err((*where, "return"), "tp-return",
                           "return: true needs a returnArg (its index and type); the CRD refuses it without one")
        args = [a for a in _seq(hook.get("args")) if isinstance(a, dict)]
        for j, a in enumerate(args):
            index = a.get("index")
            if kind == "tracepoints" and hook.get("raw") and isinstance(index, int) and index > 5:
                yield self.err((*where, "args", j, "index"), "tp-arg-index",
                               f"a raw tracepoint passes at most 6 arguments (index 0-5), not index {index}")
            size = a.get("sizeArgIndex")
            if isinstance(size, int) and size > 0 and size > len(args) and \
                    (size - 1) not in [x.get("index") for x in args]:
                yield self.err((*where, "args", j, "sizeArgIndex"), "tp-arg-index",
                               f"sizeArgIndex {size} refers to argument {size - 1}, which this hook does not "
                               "declare (sizeArgIndex counts from 1)")
        selectors = _seq(hook.get("selectors"))
        if len(selectors) > MAX_SELECTORS:
            yield self.err((*where, "selectors", MAX_SELECTORS), "tp-too-many-selectors",
                           f"{len(selectors)} selectors on one hook; Tetragon takes at most {MAX_SELECTORS} "
                           "(split the hook, or merge selectors with the same actions)")
        for j, sel in enumerate(selectors):
            if isinstance(sel, dict):
                yield from self.selector(kind, hook, (*where, "selectors", j), sel)

    # --- one selector ------------------------------------------------------------------------

    def selector(self, kind: str, hook: Mapping[str, Any], where: JsonPath, sel: dict[str, Any],
                 macro_def: bool = False) -> Iterator[Finding]:
        for name in ("matchActions", "matchReturnActions"):
            acts = _seq(sel.get(name))
            if len(acts) > MAX_ACTIONS:
                yield self.err((*where, name, MAX_ACTIONS), "tp-too-many-actions",
                               f"{len(acts)} actions in {name}; Tetragon takes at most {MAX_ACTIONS} per selector")
        for name in ("matchBinaries", "matchParentBinaries"):
            entries = _seq(sel.get(name))
            if len(entries) > 1:
                yield self.err((*where, name, 1), "tp-match-binaries",
                               f"{len(entries)} {name} entries; Tetragon takes one per selector (put every path "
                               "in its values, or use another selector)")
            for k, b in enumerate(entries):
                if isinstance(b, dict) and b.get("followChildren") and b.get("operator") not in ("In", "NotIn"):
                    yield self.err((*where, name, k, "followChildren"), "tp-match-binaries",
                                   f"followChildren works only with operator In or NotIn, not {b.get('operator')}")
        filters = len(_seq(sel.get("matchArgs"))) + len(_seq(sel.get("matchData")))
        if filters > MAX_ARG_FILTERS:
            yield self.err((*where, "matchArgs"), "tp-too-many-filters",
                           f"{filters} matchArgs/matchData filters in one selector; Tetragon takes at most "
                           f"{MAX_ARG_FILTERS}")
        yield from self.namespaces(where, sel)
        for name in ("matchCapabilities", "matchCapabilityChanges"):
            for k, c in enumerate(_seq(sel.get(name))):
                for m, v in enumerate(_seq(c.get("values") if isinstance(c, dict) else None)):
                    if isinstance(v, str) and v.strip().upper() not in _CAPABILITIES:
                        yield self.err((*where, name, k, "values", m), "tp-capability",
                                       f"unknown capability {v!r} (expected a name like CAP_SYS_ADMIN)")
        for k, m in enumerate(_seq(sel.get("macros"))):
            if str(m) not in self.macros:
                yield self.err((*where, "macros", k), "tp-macro",
                               f"macro {m!r} is not defined in spec.selectorsMacros")
        if not macro_def:
            args = [a for a in _seq(hook.get("args")) if isinstance(a, dict)]
            data = [a for a in _seq(hook.get("data")) if isinstance(a, dict)]
            for k, f in enumerate(_seq(sel.get("matchArgs"))):
                if isinstance(f, dict):
                    yield from self.arg_filter(kind, args, (*where, "matchArgs", k), f, by_position=False)
            for k, f in enumerate(_seq(sel.get("matchData"))):
                if isinstance(f, dict):
                    yield from self.arg_filter(kind, data, (*where, "matchData", k), f, by_position=True)
            yield from self.return_selectors(kind, hook, where, sel)
        for name in ("matchActions", "matchReturnActions"):
            for k, act in enumerate(_seq(sel.get(name))):
                if isinstance(act, dict):
                    yield from self.action(kind, hook, (*where, name, k), act, on_return=name != "matchActions",
                                           macro_def=macro_def)

    def namespaces(self, where: JsonPath, sel: dict[str, Any]) -> Iterator[Finding]:
        nss = _seq(sel.get("matchNamespaces"))
        if len(nss) > MAX_NAMESPACE_FILTERS:
            yield self.err((*where, "matchNamespaces", MAX_NAMESPACE_FILTERS), "tp-namespaces",
                           f"{len(nss)} matchNamespaces filters; Tetragon takes at most {MAX_NAMESPACE_FILTERS}")
        for k, ns in enumerate(nss):
            values = _seq(ns.get("values") if isinstance(ns, dict) else None)
            if len(values) > MAX_NAMESPACE_VALUES:
                yield self.err((*where, "matchNamespaces", k, "values"), "tp-namespaces",
                               f"{len(values)} values; matchNamespaces takes at most {MAX_NAMESPACE_VALUES} "
                               "per filter")
            for m, v in enumerate(values):
                if isinstance(v, str) and v != "host_ns" and not (v.isdigit() and int(v) < 2**32):
                    yield self.err((*where, "matchNamespaces", k, "values", m), "tp-value",
                                   f"namespace value {v!r} must be an inode number or host_ns")
        changes = _seq(sel.get("matchNamespaceChanges"))
        if len(changes) > 1:
            yield self.err((*where, "matchNamespaceChanges", 1), "tp-namespaces",
                           "matchNamespaceChanges takes a single filter per selector")

    # --- argument filters --------------------------------------------------------------------

    def resolve(self, kind: str, declared: Sequence[dict[str, Any]], f: dict[str, Any],
                by_position: bool) -> tuple[_Arg | None, str | None]:
        """The argument a filter refers to, or why it refers to none."""
        positions = [p for p in _seq(f.get("args")) if isinstance(p, int) and p >= 0]
        if positions:
            p = positions[0]
            if p >= len(declared):
                return None, f"args refers to position {p}, but the hook declares {len(declared)} argument(s)"
            return _Arg(str(declared[p].get("type", "auto"))), None
        index = f.get("index", 0)
        if not isinstance(index, int) or index < 0:
            return _Arg("auto"), None
        if by_position:
            if index < len(declared):
                return _Arg(str(declared[index].get("type", "auto"))), None
            return None, f"index {index} is past the {len(declared)} declared data value(s)"
        for a in declared:
            if a.get("index") == index:
                return _Arg(str(a.get("type", "auto"))), None
        # Tetragon renumbers tracepoint filters: an index that is no declared field counts as a position
        if kind == "tracepoints" and index < len(declared):
            return _Arg(str(declared[index].get("type", "auto"))), None
        have = sorted(int(a["index"]) for a in declared if isinstance(a.get("index"), int))
        listed = ", ".join(map(str, have)) if have else "none"
        return None, f"index {index} is not declared in this hook's args (declared: {listed}); add " \
                     f"{{index: {index}, type: ...}} to args"

    def arg_filter(self, kind: str, declared: Sequence[dict[str, Any]], where: JsonPath, f: dict[str, Any],
                   by_position: bool, what: str = "argument") -> Iterator[Finding]:
        arg, why = self.resolve(kind, declared, f, by_position)
        if arg is None:
            yield self.err((*where, "index") if "index" in f else where, "tp-arg-index", why or "unknown argument")
            return
        yield from self.operator(declared, where, f, arg)

    def operator(self, declared: Sequence[dict[str, Any]], where: JsonPath, f: dict[str, Any],
                 arg: _Arg) -> Iterator[Finding]:
        op = f.get("operator")
        if not isinstance(op, str):
            return
        ty = arg.type
        values = [v for v in _seq(f.get("values"))]
        at_op: JsonPath = (*where, "operator")
        known = ty != "auto"
        if op in _NET_OPS:
            if known and ty not in _SOCK:
                yield self.err(at_op, "tp-operator-type",
                               f"operator {op} needs a sock, skb, sockaddr or socket argument; this one is {ty}")
                return
            if ty == "sockaddr" and op in _SOCKADDR_REFUSED:
                yield self.err(at_op, "tp-operator-type",
                               f"operator {op} does not apply to a sockaddr argument: a sockaddr holds one "
                               "address, matched with SAddr/NotSAddr, SPort/NotSPort, SPortPriv/NotSportPriv "
                               "or Family")
                return
            yield from self.net_values(where, op, values)
            return
        if op in ("Equal", "NotEqual"):
            if ty in _SOCK:
                yield self.err(at_op, "tp-operator-type",
                               f"operator {op} does not apply to a {ty} argument; use the address, port, "
                               "protocol or family operators")
            elif ty in _INT:
                yield from self.int_values(where, op, values)
            return
        # only types that are surely numbers (or surely text) are refused: Tetragon reads some structs
        # (module, bpf_map, cred...) as names or numbers depending on the field
        if op in _STRING_OPS:
            if ty in _INT or ty in _SOCK or ty in _CAPS:
                yield self.err(at_op, "tp-operator-type",
                               f"operator {op} compares text and needs a string, char_buf, file or path "
                               f"argument; this one is {ty}")
            return
        if op in _INT_OPS:
            if ty in _STRINGY or ty in _SOCK:
                yield self.err(at_op, "tp-operator-type",
                               f"operator {op} compares numbers and needs an integer argument; this one is {ty}")
            elif ty in _INT:
                yield from self.int_values(where, op, values)
            return
        if op in _RANGE_OPS:
            if known and ty not in _RANGE_INT:
                yield self.err(at_op, "tp-operator-type",
                               f"operator {op} needs a 32- or 64-bit integer argument; this one is {ty}")
                return
            if len(values) > MAX_MATCH_VALUES:
                yield self.err((*where, "values"), "tp-too-many-values",
                               f"{len(values)} ranges; {op} takes at most {MAX_MATCH_VALUES}")
            for m, v in enumerate(values):
                lo, sep, hi = str(v).partition(":")
                if not sep or _go_int(lo) is None or _go_int(hi) is None:
                    yield self.err((*where, "values", m), "tp-value", f"{op} value {v!r} must be a range MIN:MAX")
            return
        if op in _MAP_OPS:
            if known and ty not in _INT:
                yield self.err(at_op, "tp-operator-type",
                               f"operator {op} needs an integer argument; this one is {ty}")
            for m, v in enumerate(values):
                yield from self.list_ref(v, (*where, "values", m))
            return
        if op == "CapabilitiesGained":
            positions = _seq(f.get("args"))
            types = [str(declared[p].get("type")) for p in positions
                     if isinstance(p, int) and 0 <= p < len(declared)]
            if len(positions) != 2:
                yield self.err(at_op, "tp-operator-type",
                               "CapabilitiesGained needs args: [NEW, OLD], the positions of two capability "
                               "arguments")
            elif any(t not in _CAPS for t in types):
                yield self.err(at_op, "tp-operator-type",
                               "CapabilitiesGained compares capability sets: both args must be of type "
                               "kernel_cap_t, cap_effective, cap_permitted or cap_inheritable")

    def int_values(self, where: JsonPath, op: str, values: list[Any]) -> Iterator[Finding]:
        if len(values) > MAX_MATCH_VALUES and not any(str(v).startswith("list:") for v in values):
            yield self.err((*where, "values"), "tp-too-many-values",
                           f"{len(values)} values; {op} on an integer takes at most {MAX_MATCH_VALUES} "
                           "(use InMap for longer lists)")
        for m, v in enumerate(values):
            if _go_int(str(v)) is None and not _is_cap_list(str(v)) and not _PLACEHOLDER.search(str(v)):
                yield self.err((*where, "values", m), "tp-value",
                               f"{op} value {v!r} is not an integer (decimal, 0x hex or 0 octal)")

    def net_values(self, where: JsonPath, op: str, values: list[Any]) -> Iterator[Finding]:
        for m, v in enumerate(values):
            text = str(v)
            if _PLACEHOLDER.search(text):
                continue
            if op in _ADDR_OPS:
                try:
                    ipaddress.ip_network(text, strict=False)
                except ValueError:
                    yield self.err((*where, "values", m), "tp-value",
                                   f"{op} value {text!r} is not an IP address or CIDR range")
            elif op in _PORT_OPS:
                parts = text.split(":")
                if len(parts) > 2 or not all(p.isdigit() and int(p) <= 65535 for p in parts):
                    yield self.err((*where, "values", m), "tp-value",
                                   f"{op} value {text!r} is not a port (0-65535) or a range LOW:HIGH")

    def return_selectors(self, kind: str, hook: Mapping[str, Any], where: JsonPath,
                         sel: dict[str, Any]) -> Iterator[Finding]:
        filters = _seq(sel.get("matchReturnArgs"))
        if not filters and not sel.get("matchReturnActions"):
            return
        if not hook.get("return"):
            name = "matchReturnArgs" if filters else "matchReturnActions"
            yield self.warn((*where, name), "tp-return",
                            f"{name} is ignored: the hook does not set return: true")
            return
        ret = hook.get("returnArg")
        for k, f in enumerate(filters):
            if not isinstance(f, dict):
                continue
            if not isinstance(ret, dict):
                yield self.err((*where, "matchReturnArgs", k), "tp-arg-index",
                               "matchReturnArgs needs the hook's returnArg (its index and type)")
                continue
            if f.get("index", 0) != ret.get("index") and isinstance(f.get("index", 0), int):
                yield self.err((*where, "matchReturnArgs", k, "index"), "tp-arg-index",
                               f"index {f.get('index', 0)} is not the returnArg index ({ret.get('index')})")
                continue
            yield from self.operator([ret], (*where, "matchReturnArgs", k), f, _Arg(str(ret.get("type", "auto"))))

    # --- actions -----------------------------------------------------------------------------

    def action(self, kind: str, hook: Mapping[str, Any], where: JsonPath, act: dict[str, Any],
               on_return: bool, macro_def: bool) -> Iterator[Finding]:
        name = act.get("action")
        at: JsonPath = (*where, "action")
        if act.get("rateLimit") is not None and name != "Post":
            yield self.err((*where, "rateLimit"), "tp-action", f"rateLimit applies to Post only, not {name}")
        needed = _ACTION_ARGS.get(str(name))
        uprobe_regs = name == "Override" and kind == "uprobes" and bool(act.get("argRegs"))
        if needed and needed not in act and not uprobe_regs:
            yield self.err(at, "tp-action-arg", f"{name} needs {needed}" + _ACTION_HINT.get(str(name), ""))
        if name == "NotifyEnforcer" and not self.has_enforcers:
            yield self.err(at, "tp-enforcer", "NotifyEnforcer needs spec.enforcers listing the syscalls to enforce")
        if name == "Set" and kind != "usdts" and not macro_def:
            yield self.err(at, "tp-action", "Set works on usdts hooks only")
        if name == "Override" and not macro_def:
            problem = _override_problem(kind, hook, on_return)
            if problem:
                yield self.err(at, "tp-override", problem)


_ACTION_HINT = {
    "Override": " (the value the call returns, e.g. -1 for EPERM)",
    "Signal": " (the signal number, e.g. 9)",
}


def _override_problem(kind: str, hook: Mapping[str, Any], on_return: bool) -> str | None:
    """Why Override cannot work on this hook, or None when it can."""
    if on_return:
        return "Override in matchReturnActions comes too late: the call has already returned"
    if kind == "tracepoints":
        return ("Override cannot change the outcome of a tracepoint; hook the syscall with a kprobe "
                "(syscall: true) or an lsmhook, or use Sigkill")
    if kind in ("kprobes", "fentries"):
        call = str(hook.get("call", ""))
        if hook.get("syscall", True) or call.startswith(("security_", "list:")):
            return None
        return (f"Override needs a function that allows error injection: a syscall (syscall: true), a "
                f"security_* hook or a function marked ALLOW_ERROR_INJECTION; {call} is none of these "
                "as written")
    if kind == "usdts":
        return "Override does not apply to usdts"
    return None  # lsmhooks deny by return value; uprobes override through argRegs


def _hook_identity(kind: str, hook: Mapping[str, Any]) -> str:
    if kind in ("kprobes", "fentries"):
        return f"call {hook.get('call')}" + (" with return" if hook.get("return") else "")
    if kind == "tracepoints":
        return f"tracepoint {hook.get('subsystem')}/{hook.get('event')}"
    if kind == "lsmhooks":
        return f"hook {hook.get('hook')}"
    if kind == "uprobes":
        return f"uprobe {hook.get('path')} {hook.get('symbols')} {hook.get('offsets')} {hook.get('addrs')}"
    return f"usdt {hook.get('path')} {hook.get('provider')}:{hook.get('name')}"


def _seq(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _go_int(text: str) -> int | None:
    """An integer as Go's strconv.ParseInt(s, 0, 64) reads it (0x, 0o, 0b and leading-0 octal)."""
    t = text.strip()
    try:
        return int(t, 0)
    except ValueError:
        if _GO_OCTAL.match(t):
            return int(t, 8)
        return None


def _is_cap_list(text: str) -> bool:
    """Capability arguments take values like 'CAP_SYS_ADMIN,CAP_NET_RAW'."""
    return all(p.strip().upper() in _CAPABILITIES for p in text.split(","))


_ENFORCING = frozenset({"Sigkill", "Signal", "Override", "NotifyEnforcer"})


def _enforcing_actions(spec: Mapping[str, Any]) -> set[str]:
    """The enforcing actions any selector of any hook takes."""
    found: set[str] = set()
    for kind in HOOK_KINDS:
        for hook in _seq(spec.get(kind)):
            for sel in _seq(hook.get("selectors") if isinstance(hook, dict) else None):
                for act in _seq(sel.get("matchActions") if isinstance(sel, dict) else None):
                    if isinstance(act, dict) and act.get("action") in _ENFORCING:
                        found.add(str(act["action"]))
    return found
