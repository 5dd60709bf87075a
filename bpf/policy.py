"""Typed model of a Tetragon TracingPolicy / TracingPolicyNamespaced document.

Parsed once, at the edge, from the plain dict of a `cilium.io/v1alpha1`
document. Malformed input raises `PolicyError` carrying the JSON path of the
offending node, so callers can point at a line. Well-formed fields that this
engine does not implement are kept (by name, in `unsupported`) rather than
rejected here: whether they can run is the compiler's question, not the parser's.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .errors import JsonPath, PolicyError

API_VERSION = "cilium.io/v1alpha1"
KINDS = ("TracingPolicy", "TracingPolicyNamespaced")

_HOOK_SECTIONS = ("kprobes", "tracepoints", "lsmhooks", "uprobes", "usdts")
_KNOWN_SPEC = {*_HOOK_SECTIONS, "lists", "enforcers", "options", "podSelector", "containerSelector", "loader"}


@dataclass(frozen=True)
class Arg:
    index: int
    type: str | None
    label: str | None = None
    max_data: bool = False
    return_copy: bool = False
    size_arg_index: int | None = None
    resolve: str | None = None
    #: Tetragon's `btfType`: the type `resolve` reads the argument as.
    btf_type: str | None = None


@dataclass(frozen=True)
class ArgFilter:
    """One `matchArgs` (or `matchReturnArgs`) entry: `values` are kept as strings, typed by the compiler."""

    index: int
    operator: str
    values: tuple[str, ...]
    path: JsonPath


@dataclass(frozen=True)
class BinariesFilter:
    operator: str
    values: tuple[str, ...]
    follow_children: bool
    path: JsonPath


@dataclass(frozen=True)
class PidsFilter:
    operator: str
    values: tuple[int, ...]
    is_namespace_pid: bool
    follow_forks: bool
    path: JsonPath


@dataclass(frozen=True)
class NamespacesFilter:
    namespace: str
    operator: str
    values: tuple[str, ...]
    path: JsonPath


@dataclass(frozen=True)
class CapabilitiesFilter:
    """One `matchCapabilities` entry: `type` is Effective, Inheritable or Permitted."""

    type: str
    operator: str
    values: tuple[str, ...]
    is_namespace_capability: bool
    path: JsonPath


@dataclass(frozen=True)
class NamespaceChangesFilter:
    """The `matchNamespaceChanges` entry: `values` name namespace kinds (Mnt, Net, ...) whose change since the
    process's exec the selector looks for (In), or whose change it ignores (NotIn: any other kind's change)."""

    operator: str
    values: tuple[str, ...]
    path: JsonPath


@dataclass(frozen=True)
class Action:
    action: str
    arg_error: int | None
    arg_sig: int | None
    path: JsonPath
    #: Other keys given (argFd, rateLimit, ...), which the compiler may refuse.
    extra: tuple[str, ...] = ()
    #: TrackSock/UntrackSock: the argument holding the socket (Tetragon's default: 0).
    arg_sock: int | None = None
    #: Post's `kernelStackTrace` / `userStackTrace`: the event carries the stack of the call.
    kernel_stack: bool = False
    user_stack: bool = False
    #: GetUrl's `argUrl` and DnsLookup's `argFqdn`: what the agent requests when the selector matches.
    arg_url: str | None = None
    arg_fqdn: str | None = None
    #: Set's `argIndex` (a position in the hook's args) and `argValue` (what it writes there; usdts only).
    arg_index: int | None = None
    arg_value: int | None = None
    #: Post's `rateLimit` ("30", "5m", "1h") and `rateLimitScope` (thread, process, global).
    rate_limit: str | None = None
    rate_limit_scope: str | None = None
    #: An lsm hook's `imaHash: true` (an enrichment of its events; also named in `extra`).
    ima_hash: bool = False


@dataclass(frozen=True)
class Selector:
    match_args: tuple[ArgFilter, ...]
    match_binaries: tuple[BinariesFilter, ...]
    match_parent_binaries: tuple[BinariesFilter, ...]
    match_pids: tuple[PidsFilter, ...]
    match_namespaces: tuple[NamespacesFilter, ...]
    match_actions: tuple[Action, ...]
    #: Keys present with a non-empty value that the model does not type (matchCapabilities, ...).
    unsupported: tuple[str, ...]
    path: JsonPath
    #: Filters on a kretprobe's return value (`index` 0).
    match_return_args: tuple[ArgFilter, ...] = ()
    match_capabilities: tuple[CapabilitiesFilter, ...] = ()
    #: Capabilities and namespaces compared with those the process had at its exec (Tetragon's exec tracking).
    match_capability_changes: tuple[CapabilitiesFilter, ...] = ()
    match_namespace_changes: tuple[NamespaceChangesFilter, ...] = ()


@dataclass(frozen=True)
class UprobeTarget:
    """Where in a user-space ELF file one uprobe goes: a function (`symbol`, maybe `name+offset`), a file
    offset (Tetragon's `offsets`) or a virtual address (`addrs`); exactly one of the three is set."""

    #: The file as the policy names it (also what events report, as Tetragon does).
    path: str
    symbol: str | None = None
    offset: int | None = None
    address: int | None = None

    def describe(self) -> str:
        """`/bin/bash readline`, `/bin/bash offset 0x1000`, `/bin/bash address 0x401000`."""
        if self.symbol is not None:
            return f"{self.path} {self.symbol}"
        if self.offset is not None:
            return f"{self.path} offset {self.offset:#x}"
        return f"{self.path} address {self.address or 0:#x}"


@dataclass(frozen=True)
class UsdtTarget:
    """A USDT probe of a user-space ELF file: the `provider` and `name` of its SDT note (bpf.usdt)."""

    #: The file as the policy names it (also what events report, as Tetragon does).
    path: str
    provider: str
    name: str

    def describe(self) -> str:
        """`/usr/bin/prog test:usdt3`."""
        return f"{self.path} {self.provider}:{self.name}"


@dataclass(frozen=True)
class Hook:
    """A kprobe, tracepoint, lsmhook, uprobe (one per symbol, offset or address of a `uprobes` entry), or a
    usdt."""

    section: str  # "kprobes" | "tracepoints" | "lsmhooks" | "uprobes" | "usdts"
    #: kprobe `call`, lsm `hook`, `subsystem:event` for tracepoints, the path for uprobes.
    target: str
    subsystem: str | None
    event: str | None
    syscall: bool
    return_probe: bool
    args: tuple[Arg, ...]
    selectors: tuple[Selector, ...]
    unsupported: tuple[str, ...]
    path: JsonPath
    #: `message` and `tags` of the hook, carried into its events as Tetragon does.
    message: str | None = None
    tags: tuple[str, ...] = ()
    #: A kretprobe's `returnArg` (the value the function returns, typed) and `returnArgAction`.
    return_arg: Arg | None = None
    return_arg_action: str | None = None
    #: A uprobe's place (section "uprobes"; `target` is then its path).
    uprobe: UprobeTarget | None = None
    #: A usdt's probe (section "usdts"; `target` is then its path).
    usdt: UsdtTarget | None = None
    #: A kprobe's `ignore: {callNotFound: true}`: a kernel without the function runs the policy without it.
    ignore_call_not_found: bool = False
    #: A tracepoint's `raw: true`: its arguments are the tracepoint's TP_PROTO arguments, by index.
    raw: bool = False

    def arg(self, index: int) -> Arg | None:
        return next((a for a in self.args if a.index == index), None)


@dataclass(frozen=True)
class LabelSelector:
    match_labels: tuple[tuple[str, str], ...]
    match_expressions: tuple[tuple[str, str, tuple[str, ...]], ...]


@dataclass(frozen=True)
class CallList:
    """A `spec.lists` entry, named by `list:<name>` in a kprobe's `call` or an `InMap` value."""

    name: str
    type: str  # "syscalls" | "generated_syscalls" | "generated_ftrace"
    values: tuple[str, ...]
    pattern: str | None
    path: JsonPath


@dataclass(frozen=True)
class TracingPolicy:
    kind: str
    name: str
    namespace: str | None
    hooks: tuple[Hook, ...]
    pod_selector: LabelSelector | None
    container_selector: LabelSelector | None
    #: spec keys present that this engine does not type (lists, enforcers, ...).
    unsupported: tuple[str, ...]
    #: The document as given (plain JSON values), for pinning metadata and re-rendering.
    document: Mapping[str, Any]
    #: Tetragon's `policy-mode` option: "enforce", "monitor", or None (not set: enforce).
    policy_mode: str | None = None
    lists: tuple[CallList, ...] = ()
    #: `spec.loader`: report each executable file a process maps (Tetragon's process_loader events).
    loader: bool = False
    #: `spec.options` as (name, value) in the order given: Tetragon agent tuning the engine does not run
    #: (besides policy-mode), kept so that comparing two policies sees a changed option.
    options: tuple[tuple[str, str], ...] = ()
    #: `metadata.labels` and `metadata.annotations`, sorted: carried with the policy, never run.
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    def call_list(self, name: str) -> CallList | None:
        return next((cl for cl in self.lists if cl.name == name), None)

    @property
    def key(self) -> str:
        """Unique name on a node: `name`, or `namespace:name` for a namespaced policy."""
        return f"{self.namespace}:{self.name}" if self.namespace else self.name

    def renamed(self, name: str) -> TracingPolicy:
        """The same policy under another `metadata.name`, in its document too (the agent loads each version
        of a policy under a name of its own); a PolicyError if the name is not one `parse` would accept."""
        _check_name(name)
        meta = {**_map(self.document.get("metadata"), ("metadata",)), "name": name}
        return replace(self, name=name, document={**self.document, "metadata": meta})


# --------------------------------------------------------------------------- parsing


def parse(doc: Any) -> TracingPolicy:
    """The typed policy of a plain `cilium.io/v1alpha1` TracingPolicy(Namespaced) document."""
    d = _map(doc, ())
    api = d.get("apiVersion")
    if api != API_VERSION:
        raise PolicyError(("apiVersion",), f"expected {API_VERSION!r}, got {api!r}")
    kind = d.get("kind")
    if kind not in KINDS:
        raise PolicyError(("kind",), f"expected one of {', '.join(KINDS)}, got {kind!r}")
    meta = _map(d.get("metadata"), ("metadata",))
    name = _check_name(_str(meta.get("name"), ("metadata", "name")))
    namespace: str | None = None
    if kind == "TracingPolicyNamespaced":
        ns = meta.get("namespace")
        namespace = _str(ns, ("metadata", "namespace")) if ns is not None else "default"
    spec = _map(d.get("spec", {}), ("spec",))
    hooks: list[Hook] = []
    for section in _HOOK_SECTIONS:
        items = _list(spec.get(section, []), ("spec", section))
        for i, item in enumerate(items):
            if section == "uprobes":
                hooks.extend(_uprobe_hooks(item, ("spec", section, i)))
            elif section == "usdts":
                hooks.append(_usdt_hook(item, ("spec", section, i)))
            else:
                hooks.append(_hook(section, item, ("spec", section, i)))
    policy_mode = _policy_mode(spec.get("options"), ("spec", "options"))
    unsupported = tuple(
        k for k in spec if k not in _HOOK_SECTIONS and spec[k] not in (None, [], {}, False)
        and k not in ("options", "lists", "loader")
    )
    loader = spec.get("loader", False)
    if not isinstance(loader, bool):
        raise PolicyError(("spec", "loader"), f"expected true or false, got {type(loader).__name__}")
    lists = tuple(_call_list(x, ("spec", "lists", i))
                  for i, x in enumerate(_list(spec.get("lists", []), ("spec", "lists"))))
    pod = _label_selector(spec.get("podSelector"), ("spec", "podSelector"))
    container = _label_selector(spec.get("containerSelector"), ("spec", "containerSelector"))
    if pod is not None and kind != "TracingPolicyNamespaced":
        # Tetragon accepts podSelector on both kinds; it only narrows.
        pass
    return TracingPolicy(
        kind=str(kind),
        name=name,
        namespace=namespace,
        hooks=tuple(hooks),
        pod_selector=pod,
        container_selector=container,
        unsupported=tuple(k for k in unsupported if k not in ("podSelector", "containerSelector")),
        document=d,
        policy_mode=policy_mode,
        lists=lists,
        loader=loader,
        options=tuple((str(o.get("name")), str(o.get("value")))
                      for o in _list(spec.get("options") or [], ("spec", "options")) if isinstance(o, Mapping)),
        labels=_pairs(meta.get("labels")),
        annotations=_pairs(meta.get("annotations")),
    )


def _pairs(raw: Any) -> tuple[tuple[str, str], ...]:
    # metadata the engine never reads: taken as given (Kubernetes checks it), not refused here
    return tuple(sorted((str(k), str(v)) for k, v in raw.items())) if isinstance(raw, Mapping) else ()


def _check_name(name: str) -> str:
    if not name or len(name) > 200 or "/" in name or name in (".", ".."):
        raise PolicyError(("metadata", "name"), f"invalid policy name {name!r}")
    return name


_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def fill_placeholders(doc: Any, values: Mapping[str, Sequence[str]]) -> Any:
    """`doc` with each `matchArgs` value "${NAME}" (Tetragon's `${PODCIDR}`, `${SERVICECIDR}`) replaced by
    the values this node's agent is configured with for NAME (a placeholder may stand for several). A
    placeholder the node has no values for is a PolicyError at its path."""
    if not isinstance(doc, Mapping) or not isinstance(doc.get("spec"), Mapping):
        return doc
    spec = dict(doc["spec"])
    for section in _HOOK_SECTIONS:
        hooks = spec.get(section)
        if not isinstance(hooks, list):
            continue
        new_hooks = []
        for hi, h in enumerate(hooks):
            if isinstance(h, Mapping) and isinstance(h.get("selectors"), list):
                h = dict(h)
                h["selectors"] = [_fill_selector(s, values, ("spec", section, hi, "selectors", si))
                                  for si, s in enumerate(h["selectors"])]
            new_hooks.append(h)
        spec[section] = new_hooks
    return {**doc, "spec": spec}


def _fill_selector(sel: Any, values: Mapping[str, Sequence[str]], path: JsonPath) -> Any:
    if not isinstance(sel, Mapping):
        return sel
    out = dict(sel)
    for key in ("matchArgs", "matchReturnArgs"):
        filters = sel.get(key)
        if not isinstance(filters, list):
            continue
        filled = []
        for fi, f in enumerate(filters):
            if isinstance(f, Mapping) and isinstance(f.get("values"), list):
                vals: list[Any] = []
                for vi, v in enumerate(f["values"]):
                    m = _PLACEHOLDER.fullmatch(v) if isinstance(v, str) else None
                    if m is None:
                        vals.append(v)
                    elif m.group(1) in values:
                        vals += list(values[m.group(1)])
                    else:
                        raise PolicyError((*path, key, fi, "values", vi),
                                          f"placeholder {v} has no value on this node (set it under "
                                          "`placeholders` in agent.yaml)")
                f = {**f, "values": vals}
            filled.append(f)
        out[key] = filled
    return out


def _call_list(raw: Any, path: JsonPath) -> CallList:
    m = _map(raw, path)
    pattern = m.get("pattern")
    return CallList(name=_str(m.get("name"), (*path, "name")), type=_str(m.get("type", "syscalls"), (*path, "type")),
                    values=_values(m.get("values"), (*path, "values")),
                    pattern=_str(pattern, (*path, "pattern")) if pattern is not None else None, path=path)


#: Values of Tetragon's `policy-mode` option.
POLICY_MODES = ("enforce", "monitor")


def _policy_mode(raw: Any, path: JsonPath) -> str | None:
    """The `policy-mode` of `spec.options` (other options are Tetragon agent tuning and change nothing here)."""
    mode: str | None = None
    for i, opt in enumerate(_list(raw or [], path)):
        o = _map(opt, (*path, i))
        if o.get("name") == "policy-mode":
            value = _str(o.get("value"), (*path, i, "value"))
            if value not in POLICY_MODES:
                raise PolicyError((*path, i, "value"), f"policy-mode {value!r} is not a mode; Tetragon's modes "
                                                       f"are {', '.join(POLICY_MODES)}")
            mode = value
    return mode


def effective_mode(policy: TracingPolicy, ladder_mode: str) -> str:
    """The less enforcing of the ladder's mode and the policy's own `policy-mode`.

    `monitor` elides enforcement and keeps the events, which is the ladder's
    `enforce_ready` (loaded in enforcement form, nothing acted on); at `observe` it
    changes nothing.
    """
    if policy.policy_mode == "monitor" and ladder_mode == "enforced":
        return "enforce_ready"
    return ladder_mode


def _hook(section: str, raw: Any, path: JsonPath) -> Hook:
    h = _map(raw, path)
    subsystem = event = None
    syscall = return_probe = False
    if section == "kprobes":
        target = _str(h.get("call"), (*path, "call"))
        # the CRD's default (and Palisade's schema and validator): a kprobe names a syscall unless it says not
        syscall = _bool(h.get("syscall", True), (*path, "syscall"))
        return_probe = _bool(h.get("return", False), (*path, "return"))
        if return_probe and h.get("returnArg") is None:
            raise PolicyError((*path, "return"), "return: true needs a returnArg (the CRD refuses it without one)")
        known = {"call", "syscall", "return", "args", "selectors", "returnArg", "returnArgAction",
                 "message", "tags", "ignore", "data"}
    elif section == "tracepoints":
        subsystem = _str(h.get("subsystem"), (*path, "subsystem"))
        event = _str(h.get("event"), (*path, "event"))
        target = f"{subsystem}:{event}"
        known = {"subsystem", "event", "args", "selectors", "message", "tags", "raw"}
    elif section == "lsmhooks":
        target = _str(h.get("hook"), (*path, "hook"))
        known = {"hook", "args", "selectors", "message", "tags"}
    else:
        target = str(h.get("path") or h.get("name") or section)
        known = set(h)
    args = tuple(_arg(a, (*path, "args", i)) for i, a in enumerate(_list(h.get("args", []), (*path, "args"))))
    sels_raw = _list(h.get("selectors", []), (*path, "selectors"))
    selectors = tuple(_selector(s, (*path, "selectors", i)) for i, s in enumerate(sels_raw))
    unsupported = [k for k in h if k not in known]
    raw = _bool(h.get("raw", False), (*path, "raw")) if section == "tracepoints" else False
    return_arg = _arg(h["returnArg"], (*path, "returnArg")) if section == "kprobes" and h.get("returnArg") else None
    return_arg_action = (_str(h["returnArgAction"], (*path, "returnArgAction"))
                         if section == "kprobes" and h.get("returnArgAction") is not None else None)
    if section == "kprobes" and h.get("data"):
        unsupported.append("data")
    message = _str(h["message"], (*path, "message")) if h.get("message") is not None else None
    tags = _values(h.get("tags"), (*path, "tags"))
    return Hook(section=section, target=target, subsystem=subsystem, event=event, syscall=syscall,
                return_probe=return_probe, args=args, selectors=selectors,
                unsupported=tuple(unsupported), path=path, message=message, tags=tags, return_arg=return_arg,
                return_arg_action=return_arg_action, ignore_call_not_found=_call_not_found(section, h, path),
                raw=raw)


def _call_not_found(section: str, h: dict[str, Any], path: JsonPath) -> bool:
    ignore = h.get("ignore")
    if section != "kprobes" or ignore is None:
        return False
    flag = _map(ignore, (*path, "ignore")).get("callNotFound", False)
    return _bool(flag, (*path, "ignore", "callNotFound"))


#: Keys of a `uprobes` entry the engine runs; any other one given is kept as unsupported.
_UPROBE_KEYS = {"path", "symbols", "offsets", "addrs", "args", "selectors", "message", "tags"}


def _uprobe_hooks(raw: Any, path: JsonPath) -> list[Hook]:
    """One hook per symbol, offset or address of a `uprobes` entry (Tetragon attaches one uprobe each and
    names the symbol in its events); they share the entry's args, selectors, message and tags."""
    h = _map(raw, path)
    file = _str(h.get("path"), (*path, "path"))
    base = _hook("uprobes", h, path)
    symbols = [_str(s, (*path, "symbols", k)) for k, s in enumerate(_list(h.get("symbols"), (*path, "symbols")))]
    offsets = [_int(o, (*path, "offsets", k)) for k, o in enumerate(_list(h.get("offsets"), (*path, "offsets")))]
    addrs = [_int(a, (*path, "addrs", k)) for k, a in enumerate(_list(h.get("addrs"), (*path, "addrs")))]
    if sum(1 for x in (symbols, offsets, addrs) if x) != 1:
        raise PolicyError(path, "a uprobe needs exactly one of symbols, offsets or addrs (Tetragon refuses it "
                                "otherwise)")
    for key, vals in (("offsets", offsets), ("addrs", addrs)):
        for k, v in enumerate(vals):
            if v < 0:
                raise PolicyError((*path, key, k), f"expected a non-negative integer, got {v}")
    targets = ([UprobeTarget(file, symbol=s) for s in symbols] + [UprobeTarget(file, offset=o) for o in offsets]
               + [UprobeTarget(file, address=a) for a in addrs])
    unsupported = tuple(k for k in h if k not in _UPROBE_KEYS and h[k] not in (None, [], {}, False))
    return [replace(base, target=file, unsupported=unsupported, uprobe=t) for t in targets]


#: Keys of a `usdts` entry the engine runs; any other one given is kept as unsupported.
_USDT_KEYS = {"path", "provider", "name", "args", "selectors", "message", "tags"}


def _usdt_hook(raw: Any, path: JsonPath) -> Hook:
    """A `usdts` entry: the probe `provider`:`name` of the ELF file `path` (every site of it in the file)."""
    h = _map(raw, path)
    target = UsdtTarget(_str(h.get("path"), (*path, "path")), _str(h.get("provider"), (*path, "provider")),
                        _str(h.get("name"), (*path, "name")))
    base = _hook("usdts", h, path)
    unsupported = tuple(k for k in h if k not in _USDT_KEYS and h[k] not in (None, [], {}, False))
    return replace(base, target=target.path, unsupported=unsupported, usdt=target)


def _arg(raw: Any, path: JsonPath) -> Arg:
    a = _map(raw, path)
    size_idx = a.get("sizeArgIndex")
    return Arg(
        index=_int(a.get("index"), (*path, "index")),
        type=_str(a["type"], (*path, "type")) if a.get("type") is not None else None,
        label=_str(a["label"], (*path, "label")) if a.get("label") is not None else None,
        max_data=_bool(a.get("maxData", False), (*path, "maxData")),
        return_copy=_bool(a.get("returnCopy", False), (*path, "returnCopy")),
        size_arg_index=_int(size_idx, (*path, "sizeArgIndex")) if size_idx is not None else None,
        resolve=_str(a["resolve"], (*path, "resolve")) if a.get("resolve") else None,
        btf_type=_str(a["btfType"], (*path, "btfType")) if a.get("btfType") else None,
    )


_SELECTOR_TYPED = {"matchArgs", "matchBinaries", "matchParentBinaries", "matchPIDs", "matchNamespaces",
                   "matchActions", "matchReturnArgs", "matchCapabilities", "matchCapabilityChanges",
                   "matchNamespaceChanges"}


def _selector(raw: Any, path: JsonPath) -> Selector:
    s = _map(raw, path)

    def items(key: str) -> list[tuple[Any, JsonPath]]:
        return [(x, (*path, key, i)) for i, x in enumerate(_list(s.get(key, []), (*path, key)))]

    return Selector(
        match_args=tuple(_arg_filter(x, p) for x, p in items("matchArgs")),
        match_binaries=tuple(_binaries(x, p) for x, p in items("matchBinaries")),
        match_parent_binaries=tuple(_binaries(x, p) for x, p in items("matchParentBinaries")),
        match_pids=tuple(_pids(x, p) for x, p in items("matchPIDs")),
        match_namespaces=tuple(_namespaces(x, p) for x, p in items("matchNamespaces")),
        match_actions=tuple(_action(x, p) for x, p in items("matchActions")),
        match_return_args=tuple(_arg_filter(x, p) for x, p in items("matchReturnArgs")),
        match_capabilities=tuple(_capabilities(x, p) for x, p in items("matchCapabilities")),
        match_capability_changes=tuple(_capabilities(x, p) for x, p in items("matchCapabilityChanges")),
        match_namespace_changes=tuple(_namespace_changes(x, p) for x, p in items("matchNamespaceChanges")),
        unsupported=tuple(k for k in s if k not in _SELECTOR_TYPED and s[k] not in (None, [], {})),
        path=path,
    )


def _values(raw: Any, path: JsonPath) -> tuple[str, ...]:
    vals = _list(raw if raw is not None else [], path)
    out = []
    for i, v in enumerate(vals):
        if isinstance(v, bool) or not isinstance(v, str | int):
            raise PolicyError((*path, i), f"expected a string or integer value, got {type(v).__name__}")
        out.append(str(v))
    return tuple(out)


def _arg_filter(raw: Any, path: JsonPath) -> ArgFilter:
    m = _map(raw, path)
    if "index" not in m and "args" in m:
        idx_list = _list(m["args"], (*path, "args"))
        if len(idx_list) != 1:
            raise PolicyError((*path, "args"), "only one argument per matchArgs entry is supported")
        index = _int(idx_list[0], (*path, "args", 0))
    else:
        index = _int(m.get("index"), (*path, "index"))
    return ArgFilter(index=index, operator=_str(m.get("operator"), (*path, "operator")),
                     values=_values(m.get("values"), (*path, "values")), path=path)


def _binaries(raw: Any, path: JsonPath) -> BinariesFilter:
    m = _map(raw, path)
    return BinariesFilter(operator=_str(m.get("operator"), (*path, "operator")),
                          values=_values(m.get("values"), (*path, "values")),
                          follow_children=_bool(m.get("followChildren", False), (*path, "followChildren")),
                          path=path)


def _pids(raw: Any, path: JsonPath) -> PidsFilter:
    m = _map(raw, path)
    vals = _values(m.get("values"), (*path, "values"))
    ints = []
    for i, v in enumerate(vals):
        try:
            ints.append(int(v, 0))
        except ValueError:
            raise PolicyError((*path, "values", i), f"expected a pid, got {v!r}") from None
    return PidsFilter(operator=_str(m.get("operator"), (*path, "operator")), values=tuple(ints),
                      is_namespace_pid=_bool(m.get("isNamespacePID", False), (*path, "isNamespacePID")),
                      follow_forks=_bool(m.get("followForks", False), (*path, "followForks")), path=path)


def _namespaces(raw: Any, path: JsonPath) -> NamespacesFilter:
    m = _map(raw, path)
    return NamespacesFilter(namespace=_str(m.get("namespace"), (*path, "namespace")),
                            operator=_str(m.get("operator"), (*path, "operator")),
                            values=_values(m.get("values"), (*path, "values")), path=path)


def _namespace_changes(raw: Any, path: JsonPath) -> NamespaceChangesFilter:
    m = _map(raw, path)
    return NamespaceChangesFilter(operator=_str(m.get("operator"), (*path, "operator")),
                                  values=_values(m.get("values"), (*path, "values")), path=path)


def _capabilities(raw: Any, path: JsonPath) -> CapabilitiesFilter:
    m = _map(raw, path)
    return CapabilitiesFilter(type=_str(m.get("type", "Effective"), (*path, "type")),
                              operator=_str(m.get("operator"), (*path, "operator")),
                              values=_values(m.get("values"), (*path, "values")),
                              is_namespace_capability=_bool(m.get("isNamespaceCapability", False),
                                                            (*path, "isNamespaceCapability")),
                              path=path)


def _action(raw: Any, path: JsonPath) -> Action:
    m = _map(raw, path)
    err = m.get("argError")
    sig = m.get("argSig")
    sock = m.get("argSock")
    stacks = ("kernelStackTrace", "userStackTrace")
    name = _str(m.get("action"), (*path, "action"))
    set_args = ("argIndex", "argValue") if name == "Set" else ()
    return Action(
        action=name,
        arg_error=_int(err, (*path, "argError")) if err is not None else None,
        arg_sig=_int(sig, (*path, "argSig")) if sig is not None else None,
        arg_sock=_int(sock, (*path, "argSock")) if sock is not None else None,
        path=path,
        extra=tuple(k for k in m if k not in ("action", "argError", "argSig", *stacks, *set_args,
                                              "rateLimit", "rateLimitScope")),
        rate_limit=str(m["rateLimit"]).strip() if m.get("rateLimit") is not None else None,
        rate_limit_scope=(_str(m["rateLimitScope"], (*path, "rateLimitScope"))
                          if m.get("rateLimitScope") is not None else None),
        kernel_stack=_bool(m.get("kernelStackTrace", False), (*path, "kernelStackTrace")),
        user_stack=_bool(m.get("userStackTrace", False), (*path, "userStackTrace")),
        ima_hash=m.get("imaHash") is True,
        arg_url=_str(m["argUrl"], (*path, "argUrl")) if m.get("argUrl") is not None else None,
        arg_fqdn=_str(m["argFqdn"], (*path, "argFqdn")) if m.get("argFqdn") is not None else None,
        arg_index=_int(m["argIndex"], (*path, "argIndex")) if set_args and m.get("argIndex") is not None else None,
        arg_value=_int(m["argValue"], (*path, "argValue")) if set_args and m.get("argValue") is not None else None,
    )


def _label_selector(raw: Any, path: JsonPath) -> LabelSelector | None:
    if raw is None:
        return None
    m = _map(raw, path)
    labels = _map(m.get("matchLabels", {}), (*path, "matchLabels"))
    exprs = []
    for i, e in enumerate(_list(m.get("matchExpressions", []), (*path, "matchExpressions"))):
        ep = (*path, "matchExpressions", i)
        em = _map(e, ep)
        exprs.append((_str(em.get("key"), (*ep, "key")), _str(em.get("operator"), (*ep, "operator")),
                      _values(em.get("values"), (*ep, "values"))))
    return LabelSelector(match_labels=tuple(sorted((str(k), str(v)) for k, v in labels.items())),
                         match_expressions=tuple(exprs))


# --------------------------------------------------------------------------- primitives


def _map(v: Any, path: JsonPath) -> dict[str, Any]:
    if not isinstance(v, Mapping):
        raise PolicyError(path, f"expected a mapping, got {_tname(v)}")
    return dict(v)


def _list(v: Any, path: JsonPath) -> list[Any]:
    if v is None:
        return []
    if not isinstance(v, list | tuple):
        raise PolicyError(path, f"expected a list, got {_tname(v)}")
    return list(v)


def _str(v: Any, path: JsonPath) -> str:
    if not isinstance(v, str) or not v:
        raise PolicyError(path, f"expected a non-empty string, got {_tname(v)}")
    return v


def _int(v: Any, path: JsonPath) -> int:
    if isinstance(v, bool):
        raise PolicyError(path, "expected an integer, got a boolean")
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        try:
            return int(v, 0)
        except ValueError:
            pass
    raise PolicyError(path, f"expected an integer, got {_tname(v)}")


def _bool(v: Any, path: JsonPath) -> bool:
    if not isinstance(v, bool):
        raise PolicyError(path, f"expected true or false, got {_tname(v)}")
    return v


def _tname(v: Any) -> str:
    if v is None:
        return "nothing"
    if isinstance(v, str):
        return f"string {v!r}" if v else "an empty string"
    return type(v).__name__
