"""`palisade-agent try FILE...`: which TracingPolicies load on this node's kernel, before pushing them.

    palisade-agent try policies/*.yaml
    palisade-agent try -o json policy.yaml | jq '.policies[] | select(.loaded | not)'

Every TracingPolicy(Namespaced) document of the files (a file may hold several,
separated by `---`; documents of other kinds are listed as skipped) is loaded
into this kernel by the real engine, in observe mode and scoped to an empty
cgroup the command creates, so nothing on the node is observed or affected; then
it is unloaded again. Each policy is reported `loaded` or `refused:` with the
engine's first reason (`(+N more)` when it gave several); a file that is not
valid YAML, or a document that is not a valid TracingPolicy, is refused with the
line and column of the error. The command's pin root (/sys/fs/bpf/palisade-try-*)
and cgroup are removed at the end, also when it is interrupted.

Tetragon's `${PODCIDR}`-style matchArgs placeholders are filled as the node's agent
fills them: from the `placeholders` of its configuration (`--config agent.yaml`)
and `--placeholder NAME=VALUE[,VALUE]`; without either, a policy using one is
refused, saying so.

Exit codes: 0 every policy loads; 1 some are refused; 2 usage or environment
error (a file that does not exist, no TracingPolicy in the files, not root, no
bpffs or cgroup2, or something the command loaded could not be removed);
130 interrupted by Ctrl-C (143 SIGTERM, 129 SIGHUP), after cleaning up.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import re
import secrets
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from agent.cli import add_output
from agent.errors import AgentError, ConfigError

if TYPE_CHECKING:
    from bpf.engine import Engine
    from bpf.policy import TracingPolicy

__all__ = ["Outcome", "Skipped", "register"]

BPFFS = Path("/sys/fs/bpf")
#: The name of the command's pin root and of its cgroup: `palisade-try-<pid>-<random>`.
PREFIX = "palisade-try-"


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("try", help="which TracingPolicies load on this kernel (loaded in observe mode, "
                                   "scoped to an empty cgroup, and unloaded again)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="YAML files of TracingPolicies")
    p.add_argument("--config", type=Path, metavar="AGENT_YAML",
                   help="the node's agent configuration: its `placeholders` fill ${PODCIDR}-style values")
    p.add_argument("--placeholder", action="append", default=[], type=_placeholder, metavar="NAME=VALUE[,VALUE]",
                   help="a placeholder's values (repeatable; wins over --config), e.g. PODCIDR=10.244.0.0/16")
    add_output(p)
    p.set_defaults(func=_try)


def _placeholder(text: str) -> tuple[str, tuple[str, ...]]:
    name, sep, values = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) or not values.strip(","):
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE[,VALUE...] (e.g. PODCIDR=10.244.0.0/16)")
    return name, tuple(v for v in values.split(",") if v)


# ---------------------------------------------------------------- values


@dataclass(frozen=True)
class Outcome:
    """What became of one policy (or of a whole file that could not be read as YAML: `document` None)."""

    file: str
    document: int | None
    name: str | None
    loaded: bool
    reasons: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def reason(self) -> str | None:
        """The first reason, and how many more there are."""
        if not self.reasons:
            return None
        more = len(self.reasons) - 1
        return self.reasons[0] + (f" (+{more} more)" if more else "")

    def text(self) -> str:
        where = self.file if self.document is None else f"{self.file}#{self.document}"
        if self.name:
            where += f" {self.name}"
        return f"{where}: loaded" if self.loaded else f"{where}: refused: {self.reason}"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "document": self.document, "name": self.name, "loaded": self.loaded,
                "reason": self.reason, "reasons": list(self.reasons), "notes": list(self.notes)}


@dataclass(frozen=True)
class Skipped:
    """A YAML document that is not a TracingPolicy (a Pod next to a policy, a config file)."""

    file: str
    document: int
    kind: str | None

    def text(self) -> str:
        what = f"kind {self.kind} is" if self.kind else "a document without a kind is"
        return f"{self.file}#{self.document}: skipped: {what} not a TracingPolicy"

    def to_json(self) -> dict[str, Any]:
        return {"file": self.file, "document": self.document, "kind": self.kind}


@dataclass(frozen=True)
class _Candidate:
    """A policy to load, or an outcome already known without the kernel (YAML or schema error)."""

    file: str
    policy: TracingPolicy | None = None
    document: int | None = None
    refused: Outcome | None = None
    skipped: Skipped | None = None


@dataclass
class _Signals:
    """Termination signals. The first stops the run after the policy being loaded (raising there could
    land in a libbpf callback, where ctypes swallows it); a second one while loading stops at once
    (`_Signalled`). While cleaning up they are only noted."""

    received: list[int] = field(default_factory=list)
    deferring: bool = False

    def handle(self, signum: int, _frame: FrameType | None) -> None:
        self.received.append(signum)
        if len(self.received) > 1 and not self.deferring:
            raise _Signalled(signum)


class _Signalled(BaseException):
    """A second SIGINT, SIGTERM or SIGHUP arrived: stop now, clean up, exit 128 + the first signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


# ---------------------------------------------------------------- reading the files


def read_file(path: Path, shown: str, placeholders: Mapping[str, Sequence[str]] | None = None) -> list[_Candidate]:
    """The documents of one file, parsed (nothing loaded); `${NAME}` values filled from `placeholders`
    as the agent fills them."""
    from bpf import yamldocs
    from bpf.errors import PolicyError
    from bpf.policy import KINDS, fill_placeholders, parse

    try:
        size = path.stat().st_size
        data = path.read_bytes() if size <= yamldocs.MAX_FILE_BYTES else None
    except OSError as e:
        raise ConfigError(f"{shown}: {e.strerror or e}") from None
    if data is None:
        reason = f"the file is {size} bytes; the limit is {yamldocs.MAX_FILE_BYTES}"
        return [_Candidate(shown, refused=Outcome(shown, None, None, False, (reason,)))]
    try:
        docs = yamldocs.read(shown, data)  # the reader of the reconciler's repository files
    except yamldocs.YamlError as e:
        at = f" (line {e.line}, column {e.column})" if e.line else ""
        return [_Candidate(shown, refused=Outcome(shown, None, None, False, (f"{e}{at}",)))]
    out = []
    for d in docs:
        if d.kind not in KINDS:
            out.append(_Candidate(shown, skipped=Skipped(shown, d.index, d.kind)))
            continue
        try:
            try:
                doc = fill_placeholders(d.plain, placeholders or {})
            except PolicyError as e:
                raise PolicyError(e.path, f"{e.message}; or give it here with --config or --placeholder") from None
            out.append(_Candidate(shown, policy=parse(doc), document=d.index))
        except PolicyError as e:
            line, col = d.locate(e.path)
            why = f"invalid TracingPolicy (line {line}, column {col}): {e}"
            out.append(_Candidate(shown, refused=Outcome(shown, d.index, d.name, False, (why,))))
    return out


# ---------------------------------------------------------------- the command


def _try(args: argparse.Namespace) -> int:
    files: Sequence[Path] = args.files
    for path in files:
        try:
            mode = path.stat().st_mode
        except FileNotFoundError:
            raise ConfigError(f"no such file: {path}") from None
        except OSError as e:
            raise ConfigError(f"{path}: {e.strerror or e}") from None
        if stat.S_ISDIR(mode):
            raise ConfigError(f"{path} is a directory; give the YAML files (e.g. {path}/*.yaml)")
    placeholders: dict[str, tuple[str, ...]] | None = None
    if args.config is not None or args.placeholder:
        from agent.config import load_placeholders

        placeholders = dict(load_placeholders(args.config)) if args.config is not None else {}
        placeholders.update(dict(args.placeholder))
    candidates = [c for path in files for c in read_file(path, str(path), placeholders)]
    if all(c.skipped is not None for c in candidates):
        raise ConfigError(f"no TracingPolicy document in {', '.join(map(str, files))}")
    cgroup_root = _check_environment()
    as_json = args.output == "json"
    # stdout lines are the progress when they go to a terminal; otherwise one line per file on a terminal stderr
    progress = sys.stderr.isatty() and (as_json or not sys.stdout.isatty())
    outcomes: list[Outcome] = []
    skipped: list[Skipped] = []

    def report(item: Outcome | Skipped) -> None:
        if isinstance(item, Outcome):
            outcomes.append(item)
        else:
            skipped.append(item)
        if not as_json:
            print(item.text(), flush=True)

    signals = _Signals()
    with _handling(signals):
        problems = _load_all(candidates, cgroup_root, report, progress, signals)
    for problem in problems:
        print(f"palisade-agent try: {problem}", file=sys.stderr)
    if signals.received:
        if not problems:
            print("palisade-agent try: interrupted; everything it loaded is unloaded", file=sys.stderr)
        return 128 + signals.received[0]
    release = platform.release()
    n_loaded = sum(o.loaded for o in outcomes)
    if as_json:
        print(json.dumps({"kernel_release": release, "policies": [o.to_json() for o in outcomes],
                          "skipped": [s.to_json() for s in skipped]}, indent=2))
    else:
        print(f"{n_loaded} of {len(outcomes)} load on this kernel ({release})")
    if problems:
        raise AgentError("the command could not remove everything it loaded (see above); "
                         "`palisade-agent reset --pin-root <dir>` removes what is left")
    return 0 if n_loaded == len(outcomes) else 1


def _check_environment() -> Path:
    """The cgroup2 root, once it is clear the engine can run here (root, bpffs, cgroup2)."""
    from bpf.core.errors import LibbpfMissing
    from bpf.core.libbpf import lib
    from bpf.syscall import SyscallError, cgroup2_root

    if os.geteuid() != 0:
        raise AgentError("try needs root (it loads BPF programs)")
    if not any(fstype == "bpf" for mnt, fstype in _mounts() if Path(mnt) == BPFFS):
        raise AgentError(f"bpffs is not mounted at {BPFFS} (mount -t bpf bpf {BPFFS})")
    try:
        lib()
    except LibbpfMissing as e:
        raise AgentError(str(e)) from None
    try:
        return cgroup2_root()
    except SyscallError as e:
        raise AgentError(str(e)) from None


def _mounts() -> Iterator[tuple[str, str]]:
    with open("/proc/self/mounts") as f:
        for line in f:
            fields = line.split()
            if len(fields) > 2:
                yield fields[1].replace("\\040", " "), fields[2]


@contextlib.contextmanager
def _handling(signals: _Signals) -> Iterator[None]:
    """Termination signals go to `signals` (only the main thread can install handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, signals.handle) for s in _HANDLED}
    unraisable = sys.unraisablehook

    def hook(u: Any) -> None:
        # a second signal raised inside a ctypes callback is swallowed there; the loop sees it anyway
        if not isinstance(u.exc_value, _Signalled):
            unraisable(u)

    sys.unraisablehook = hook
    try:
        yield
    finally:
        sys.unraisablehook = unraisable
        for s, h in previous.items():
            signal.signal(s, h)


def _load_all(candidates: Sequence[_Candidate], cgroup_root: Path, report: Callable[[Outcome | Skipped], None],
              progress: bool, signals: _Signals) -> list[str]:
    """Load and unload every candidate, reporting each, until a signal arrives; returns what could not be
    cleaned up. Cleans up whatever happens."""
    from bpf.engine import Engine

    name = f"{PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    pin_root = BPFFS / name
    cgroup = cgroup_root / name
    engine: Engine | None = None
    problems: list[str] = []
    try:
        try:
            cgroup.mkdir()
        except OSError as e:
            raise AgentError(f"cannot create an empty cgroup to scope the policies to ({cgroup}): "
                             f"{e.strerror or e}") from None
        engine = Engine(pin_root=pin_root, node_name=f"try-{platform.node()}")
        numbers = {f: i + 1 for i, f in enumerate(dict.fromkeys(c.file for c in candidates))}
        current = None
        for c in candidates:
            if signals.received:
                break
            if progress and c.file != current:
                print(f"[{numbers[c.file]}/{len(numbers)}] {c.file}", file=sys.stderr, flush=True)
            current = c.file
            if c.skipped is not None:
                report(c.skipped)
            elif c.refused is not None:
                report(c.refused)
            elif c.policy is not None:
                outcome = _load_one(engine, c.file, c.document, c.policy, cgroup, problems)
                if not signals.received:  # else the signal may have killed its clang: not a finding
                    report(outcome)
    except _Signalled:
        pass  # signals.received says which
    finally:
        problems += _cleanup(engine, pin_root, cgroup, signals)
    return problems


def _load_one(engine: Engine, file: str, document: int | None, policy: TracingPolicy, cgroup: Path,
              problems: list[str]) -> Outcome:
    """Load `policy` in observe mode scoped to the empty `cgroup`, then unload it (failures to `problems`)."""
    from bpf.errors import BpfError

    try:
        res = engine.load(policy, "observe", cgroups=[cgroup])
    except (BpfError, OSError) as e:
        return Outcome(file, document, policy.name, False, (f"load failed: {e}",))
    except Exception as e:
        # an engine bug on one policy must not hide what the others do (the loader has rolled it back)
        return Outcome(file, document, policy.name, False, (f"internal error: {type(e).__name__}: {e}",))
    if res.loaded:
        try:
            engine.unload(policy.key)
        except (BpfError, OSError) as e:
            problems.append(f"{file}#{document} {policy.name}: unload failed: {e}")
    reasons = res.reasons or (() if res.loaded else ("refused without a reason",))
    return Outcome(file, document, policy.name, res.loaded, reasons, res.notes)


def _cleanup(engine: Engine | None, pin_root: Path, cgroup: Path, signals: _Signals) -> list[str]:
    """Unload whatever is left under the pin root, remove it and the cgroup; signals are only noted
    meanwhile, so a second Ctrl-C cannot leave programs behind."""
    from bpf.engine import remove_all

    signals.deferring = True
    problems: list[str] = []
    try:
        if engine is not None:
            engine.close()
        _, more = remove_all(pin_root)
        problems += more
        if pin_root.exists():
            problems.append(f"{pin_root} is left")
        try:
            cgroup.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            problems.append(f"cannot remove the cgroup {cgroup}: {e.strerror or e}")
    finally:
        signals.deferring = False
    return problems
