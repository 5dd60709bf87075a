"""USDT probes without a kernel: the argument-spec parser, the SDT notes of a program built here with
<sys/sdt.h> (checked against binutils' readelf), where each probe's uprobe and semaphore go, and what the
compiler makes of `spec.usdts` (the program's source is the same for every build of the binary; Set,
Override, missing probes and out-of-range arguments refused with the reason)."""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from usdt_prog import build

from bpf import usdt
from bpf.compile import Features, compile_policy
from bpf.errors import Unsupported
from bpf.policy import PolicyError, UsdtTarget, parse
from bpf.usdt import CONST, DEREF, REG, BadArgSpec, UsdtUnresolvable, parse_arg

CORPUS = Path("/work/shared/tetragon-corpus/examples/tracingpolicy")
M64 = (1 << 64) - 1


@pytest.fixture(scope="module")
def prog(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    d = tmp_path_factory.mktemp("usdt-unit")
    yield build(d)
    shutil.rmtree(d)


def _doc(spec: dict[str, Any]) -> Any:
    return parse({"apiVersion": "cilium.io/v1alpha1", "kind": "TracingPolicy", "metadata": {"name": "u"},
                  "spec": spec})


def _usdts(path: Path | str, name: str = "args", **extra: Any) -> Any:
    return _doc({"usdts": [{"path": str(path), "provider": "pl", "name": name, **extra}]})


# --------------------------------------------------------------------------- argument specs

@pytest.mark.parametrize("spec, kind, size, signed, value, reg_off, index_off, shift", [
    ("-4@%edi", REG, 4, True, 0, 112, -1, 0),
    ("8@%rax", REG, 8, False, 0, 80, -1, 0),
    ("-1@%r13b", REG, 1, True, 0, 16, -1, 0),
    ("2@%r8w", REG, 2, False, 0, 72, -1, 0),
    ("1@%dil", REG, 1, False, 0, 112, -1, 0),
    ("-4@%r9d", REG, 4, True, 0, 64, -1, 0),
    ("8@-8(%rbp)", DEREF, 8, False, -8, 32, -1, 0),
    ("-4@12(%rsp)", DEREF, 4, True, 12, 152, -1, 0),
    ("8@(%rbx)", DEREF, 8, False, 0, 40, -1, 0),
    ("8@16(%rax,%rdx,8)", DEREF, 8, False, 16, 80, 96, 3),
    ("4@0x10(%rsi,%rcx)", DEREF, 4, False, 16, 104, 88, 0),
    ("4@$5", CONST, 4, False, 5, 0, -1, 0),
    ("-4@$-5", CONST, 4, True, -5 & M64, 0, -1, 0),
    ("-8@$-1234567890123", CONST, 8, True, -1234567890123 & M64, 0, -1, 0),
    ("1@$300", CONST, 1, False, 300 & 0xFF, 0, -1, 0),  # a constant wider than its size keeps its low bytes
    ("%rdi", REG, 8, False, 0, 112, -1, 0),  # the oldest notes give no size: 8 bytes
])
def test_an_argument_spec_says_where_the_value_is_and_how_wide(spec: str, kind: int, size: int, signed: bool,
                                                               value: int, reg_off: int, index_off: int,
                                                               shift: int) -> None:
    a = parse_arg(spec)
    assert (a.kind, a.size, a.signed, a.value, a.reg_off, a.index_off, a.shift) == (
        kind, size, signed, value, reg_off, index_off, shift)
    assert a.spec == spec


@pytest.mark.parametrize("spec, why", [
    ("8@%ah", "register %ah"),
    ("8@%xmm0", "register %xmm0"),
    ("8@counter(%rip)", "%rip-relative"),
    ("8@8(%rip)", "%rip-relative"),
    ("3@%eax", "size 3"),
    ("4@$sym", "not an integer"),
    ("8@%fs:16", "register %fs:16"),
    ("8@16(%rax,%rdx,3)", "scale 3"),
])
def test_an_argument_spec_the_engine_cannot_read_is_refused_saying_why(spec: str, why: str) -> None:
    with pytest.raises(BadArgSpec, match=re.escape(why)):
        parse_arg(spec)


# --------------------------------------------------------------------------- notes

def _readelf_notes(path: Path) -> list[tuple[str, str, int, int, str]]:
    """(provider, name, location, semaphore, arguments) of each SDT note, as binutils prints them."""
    text = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True, check=True).stdout
    out = []
    for m in re.finditer(r"Provider: (\S+)\s+Name: (\S+)\s+Location: (0x[0-9a-f]+), Base: 0x[0-9a-f]+, "
                         r"Semaphore: (0x[0-9a-f]+)\s+Arguments: ([^\n]*)", text):
        out.append((m[1], m[2], int(m[3], 16), int(m[4], 16), m[5].strip()))
    return out


def test_the_notes_of_a_program_built_with_sdt_h_are_those_readelf_prints(prog: Path) -> None:
    if shutil.which("readelf") is None:
        pytest.fail("this test compares with binutils' readelf: install binutils")
    ours = [(n.provider, n.name, n.pc, n.semaphore, n.spec) for n in usdt.notes(prog)]
    assert ours == _readelf_notes(prog)
    args = next(n for n in usdt.notes(prog) if n.name == "args")
    # four arguments: an int, a long, a pointer, an int the compiler left in memory
    assert [a.size for a in args.args] == [4, 8, 8, 4] and [a.signed for a in args.args] == [True, True, False, True]
    assert args.args[3].kind == DEREF and not args.bad


def test_a_binary_moved_after_linking_has_its_probe_addresses_adjusted_by_stapsdt_base(prog: Path,
                                                                                      tmp_path: Path) -> None:
    """prelink moves `.stapsdt.base` with the code; the notes keep their link-time addresses, so the reader
    adds how far the section moved. Here the notes are rewritten as if linked 0x100 higher than the
    section now is: the probe addresses come out as before."""
    before = usdt.notes(prog)
    data = bytearray(prog.read_bytes())
    at, size = _section(prog, ".note.stapsdt", size=True)[1:]
    end, rewritten = at + size, 0
    while at < end:
        namesz, descsz, _type = struct.unpack_from("<III", data, at)
        desc = at + 12 + (namesz + 3) // 4 * 4
        pc, base, sema = struct.unpack_from("<QQQ", data, desc)
        struct.pack_into("<QQQ", data, desc, pc + 0x100, base + 0x100, sema + 0x100 if sema else 0)
        rewritten += 1
        at = desc + (descsz + 3) // 4 * 4
    assert rewritten == len(before)
    moved = tmp_path / "moved"
    moved.write_bytes(bytes(data))
    after = usdt.notes(moved)
    assert [(n.name, n.pc, n.semaphore) for n in after] == [(n.name, n.pc, n.semaphore) for n in before]


def _section(path: Path, name: str, size: bool = False) -> tuple[int, ...]:
    """(address, file offset[, size]) of a section, as readelf -S prints it."""
    text = subprocess.run(["readelf", "-SW", str(path)], capture_output=True, text=True, check=True).stdout
    m = re.search(rf"\s{re.escape(name)}\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", text)
    assert m, text
    return (int(m[1], 16), int(m[2], 16), int(m[3], 16)) if size else (int(m[1], 16), int(m[2], 16))


def test_a_probe_resolves_to_its_nop_and_its_semaphore_to_its_place_in_the_file(prog: Path) -> None:
    probes = usdt.resolve(UsdtTarget(str(prog), "pl", "sema"))
    assert len(probes) == 1
    p = probes[0]
    note = next(n for n in usdt.notes(prog) if n.name == "sema")
    text_addr, text_off = _section(prog, ".text")
    assert p.offset == note.pc - text_addr + text_off
    assert prog.read_bytes()[p.offset] == 0x90  # sdt.h's probe site is a nop
    probes_addr, probes_off = _section(prog, ".probes")
    assert p.ref_ctr_offset == note.semaphore - probes_addr + probes_off
    assert p.file == str(prog) and p.args == note.args


def test_a_probe_that_is_not_there_is_refused_naming_what_is(prog: Path, tmp_path: Path) -> None:
    with pytest.raises(UsdtUnresolvable, match=r"no such file on this node"):
        usdt.resolve(UsdtTarget(str(tmp_path / "missing"), "pl", "args"))
    with pytest.raises(UsdtUnresolvable,
                       match=r"no USDT probe nope:args in .* \(it has pl:args, pl:sema, pl:set, pl:twice\)"):
        usdt.resolve(UsdtTarget(str(prog), "nope", "args"))
    with pytest.raises(UsdtUnresolvable, match=r"no USDT probe pl:nope"):
        usdt.resolve(UsdtTarget(str(prog), "pl", "nope"))
    with pytest.raises(UsdtUnresolvable, match=r"must be absolute"):
        usdt.resolve(UsdtTarget("prog", "pl", "args"))
    with pytest.raises(UsdtUnresolvable, match=r"not a regular file"):
        usdt.resolve(UsdtTarget(str(tmp_path), "pl", "args"))
    (tmp_path / "text").write_text("not an ELF file\n")
    with pytest.raises(UsdtUnresolvable, match=r"not a 64-bit little-endian ELF file"):
        usdt.resolve(UsdtTarget(str(tmp_path / "text"), "pl", "args"))
    plain = tmp_path / "plain"
    subprocess.run(["cc", "-o", str(plain), "-x", "c", "-"], input=b"int main(void) { return 0; }\n", check=True)
    with pytest.raises(UsdtUnresolvable, match=r"it has no \.note\.stapsdt notes"):
        usdt.resolve(UsdtTarget(str(plain), "pl", "args"))


# --------------------------------------------------------------------------- policy and compiler

def test_a_usdt_entry_parses_to_its_probe_and_needs_path_provider_and_name(prog: Path) -> None:
    h = _usdts(prog, args=[{"index": 0, "type": "int32"}], message="m", tags=["t"]).hooks[0]
    assert h.usdt == UsdtTarget(str(prog), "pl", "args") and h.target == str(prog)
    assert h.message == "m" and h.tags == ("t",) and h.unsupported == ()
    assert _usdts(prog, btfPath="/x.btf").hooks[0].unsupported == ("btfPath",)
    for key in ("path", "provider", "name"):
        entry = {"path": str(prog), "provider": "pl", "name": "args", key: ""}
        with pytest.raises(PolicyError, match=rf"spec\.usdts\[0\]\.{key}: expected a non-empty string"):
            _doc({"usdts": [entry]})


def test_the_program_of_a_usdt_is_the_same_for_every_build_of_the_binary(prog: Path, tmp_path: Path) -> None:
    """The argument specs differ between builds (registers, stack slots); they are attach data (pl_usdt),
    so the generated source, which names an object, does not change."""
    other = tmp_path / "o0"
    other.mkdir()
    o0 = build(other)
    subprocess.run(["cc", "-O0", "-o", str(o0), str(other / "prog.c")], check=True)
    args = [{"index": 0, "type": "int32"}, {"index": 1, "type": "int64"}, {"index": 2, "type": "string"}]
    plans = [compile_policy(_usdts(p, args=args), Features(), resolve_usdt=usdt.resolve) for p in (prog, o0)]
    specs = [plan.hooks[0].sites[0].usdt_probes[0].args for plan in plans]
    assert [a.spec for a in specs[0]] != [a.spec for a in specs[1]]
    unplaced = compile_policy(_usdts(prog.with_name("elsewhere"), args=args), Features())
    assert plans[0].source == unplaced.source.replace(str(prog.with_name("elsewhere")), str(prog))
    assert plans[0].source.replace(str(prog), str(o0)) == plans[1].source
    site = plans[0].hooks[0].sites[0]
    assert site.kind == "uprobe" and site.file == str(prog) and site.usdt_base == 0
    assert plans[0].hooks[0].event_kind == "process_usdt" and "pl_usdt_arg(ctx, 2)" in plans[0].source


def test_override_and_arguments_the_probe_lacks_are_refused(prog: Path) -> None:
    def reasons(**extra: Any) -> str:
        with pytest.raises(Unsupported) as e:
            compile_policy(_usdts(prog, **extra), Features(), resolve_usdt=usdt.resolve)
        return " | ".join(e.value.reasons)

    act = lambda a: {"selectors": [{"matchActions": [a]}]}  # noqa: E731
    assert "Override on usdt" in reasons(**act({"action": "Override", "argError": -1}))
    assert "GetUrl on a usdt" in reasons(**act({"action": "GetUrl", "argUrl": "http://example.com"}))
    assert re.search(r"argument index 4 of usdt .* the probe has 4 argument\(s\)",
                     reasons(args=[{"index": 4, "type": "int"}]))
    with pytest.raises(Unsupported, match="a USDT probe has at most 12 arguments"):
        compile_policy(_usdts(prog, args=[{"index": 12, "type": "int"}]), Features())
    assert "outside the engine's subset (integers and string)" in reasons(args=[{"index": 2, "type": "sock"}])


def test_set_writes_an_int_argument_in_memory_and_is_refused_elsewhere(prog: Path, tmp_path: Path) -> None:
    """Set (Tetragon's, on usdts only) writes argValue where the probe's argument is: it must be 4 bytes of
    memory; the program that may write user memory is generated only for a policy with a Set."""
    args = [{"index": 0, "type": "int32"}, {"index": 1, "type": "int32"}]

    def doc(path: Path, *actions: dict[str, Any]) -> Any:
        return _usdts(path, "set", args=args, selectors=[{"matchActions": list(actions)}])

    set32 = {"action": "Set", "argIndex": 0, "argValue": 32}
    plan = compile_policy(doc(prog, set32), Features(), resolve_usdt=usdt.resolve)
    assert "pl_usdt_set(ctx, 0, 32)" in plan.source and "bpf_probe_write_user" in plan.source
    assert plan.hooks[0].selector_actions == ((5, 0),)  # KPROBE_ACTION_SET
    assert "bpf_probe_write_user" not in compile_policy(_usdts(prog, args=args), Features()).source

    def reasons(path: Path, *actions: dict[str, Any]) -> str:
        with pytest.raises(Unsupported) as e:
            compile_policy(doc(path, *actions), Features(), resolve_usdt=usdt.resolve)
        return " | ".join(e.value.reasons)

    # unoptimized, the compiler passes the int in a register: nothing to write
    o0 = tmp_path / "o0"
    subprocess.run(["cc", "-O0", "-o", str(o0), "-x", "c", "-"], input=build(tmp_path).with_suffix(".c").read_bytes(),
                   check=True)
    assert re.search(r"argument 0 of the probe is '-4@%eax', not 4 bytes of memory", reasons(o0, set32))
    assert re.search(r"argument 1 of the probe is '-4@%r\d+d', not 4 bytes of memory",
                     reasons(prog, {**set32, "argIndex": 1}))
    assert "Set needs argIndex and argValue" in reasons(prog, {"action": "Set", "argIndex": 0})
    assert "Set argIndex 2 names no argument" in reasons(prog, {**set32, "argIndex": 2})
    assert "is not an int32" in reasons(prog, {**set32, "argValue": 1 << 31})
    assert "one enforcing action per selector" in reasons(prog, set32, {"action": "Sigkill"})
    locked = Features(probe_write_user=False, reasons=(("probe_write_user", "lockdown"),))
    with pytest.raises(Unsupported, match=r"bpf_probe_write_user, which this kernel refuses \(lockdown\)"):
        compile_policy(doc(prog, set32), locked, resolve_usdt=usdt.resolve)
    with pytest.raises(Unsupported, match="action Set is outside the engine's subset"):
        compile_policy(_doc({"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_getpid",
                                              "selectors": [{"matchActions": [set32]}]}]}), Features())


@pytest.mark.parametrize("example, probe", [("usdt.yaml", "test:usdt3"), ("usdt-set.yaml", "tetragon:test_4B")])
def test_the_corpus_usdt_examples_are_refused_naming_their_missing_binary(example: str, probe: str) -> None:
    doc = parse(yaml.safe_load((CORPUS / example).read_text()))
    with pytest.raises(Unsupported) as e:
        compile_policy(doc, Features(), resolve_usdt=usdt.resolve)
    missing = [r for r in e.value.reasons if "no such file on this node" in r]
    assert missing and "/home/jolsa/tetragon/contrib/tester-progs/" in missing[0] and probe in missing[0]
