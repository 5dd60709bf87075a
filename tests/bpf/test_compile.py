"""The policy model and the compiler, without a kernel: what is refused, why, and what a plan holds."""
from __future__ import annotations

import os
import struct
from typing import Any

import pytest

from bpf import events, templates
from bpf.compile import Features, check, compile_policy
from bpf.errors import PolicyError, Unsupported
from bpf.policy import UprobeTarget, effective_mode, parse
from bpf.tpformat import builtin_formats, parse_format
from bpf.uprobes import Resolved, Unresolvable


def doc(spec: dict[str, Any], kind: str = "TracingPolicy", name: str = "p") -> dict[str, Any]:
    return {"apiVersion": "cilium.io/v1alpha1", "kind": kind, "metadata": {"name": name}, "spec": spec}


def reasons(spec: dict[str, Any], features: Features | None = None) -> list[str]:
    return check(parse(doc(spec)), features, builtin_formats)


@pytest.mark.parametrize("name", sorted(templates.TEMPLATES))
def test_every_template_compiles_without_a_kernel(name: str) -> None:
    plan = compile_policy(parse(templates.render(name, name)), Features(), builtin_formats)
    assert plan.sites
    assert "int pl_h0_" in plan.source


def test_kprobe_on_a_kernel_function_is_refused_with_the_missing_feature() -> None:
    spec = {"kprobes": [{"call": "fd_install", "syscall": False, "args": [{"index": 0, "type": "int"}]}]}
    assert reasons(spec) == ["unsupported: kprobe on fd_install needs kprobes, which this kernel lacks"]
    assert reasons(spec, Features(kprobes=True)) == []


def test_kprobe_on_a_kernel_function_reads_registers_and_typed_objects() -> None:
    plan = compile_policy(parse(doc({"kprobes": [{
        "call": "security_file_permission", "syscall": False, "return": True,
        "args": [{"index": 0, "type": "file"}, {"index": 1, "type": "int"}],
        "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["/etc/"]}],
                       "matchReturnArgs": [{"index": 0, "operator": "NotEqual", "values": ["0"]}]}]}]})),
        Features(kprobes=True), builtin_formats)
    [hook] = plan.hooks
    assert [(s.kind, s.attach) for s in hook.sites] == [("kprobe", "security_file_permission"),
                                                         ("kretprobe", "security_file_permission")]
    assert hook.return_type == "int"
    assert "pl_file_path(fl0, sc->str[0].s)" in plan.source  # the file through BTF, not a user string
    assert "(struct file *)*(u64 *)((char *)ctx + 112);" in plan.source  # di
    assert "s32 a1 = (s32)*(s64 *)((char *)ctx + 104);" in plan.source  # si
    assert "if (st->sel == 0 && !((r != 0LL))) goto done;" in plan.source


def test_match_return_args_without_a_kretprobe_is_refused() -> None:
    spec = {"kprobes": [{"call": "fd_install", "syscall": False,
                         "selectors": [{"matchReturnArgs": [{"index": 0, "operator": "Equal", "values": ["0"]}]}]}]}
    [why] = reasons(spec, Features(kprobes=True))
    assert "matchReturnArgs needs the function's return" in why
    assert "selectors[0]" in why


def test_syscall_kprobe_runs_on_its_tracepoint_with_shifted_arguments() -> None:
    plan = compile_policy(parse(doc({"kprobes": [{
        "call": "__x64_sys_ptrace", "syscall": True, "args": [{"index": 0, "type": "int64"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["16"]}],
                       "matchActions": [{"action": "Sigkill"}]}],
    }]})), Features(), builtin_formats)
    [site] = [s for h in plan.hooks for s in h.sites]
    assert (site.kind, site.subsystem, site.event) == ("tracepoint", "syscalls", "sys_enter_ptrace")
    assert "s64 a0 = (s64)*(u64 *)((char *)ctx + 16);" in plan.source  # arg 0 of the call = field 5
    assert plan.hooks[0].event_kind == "process_kprobe"


def test_lsm_override_and_unknown_actions_are_refused_precisely() -> None:
    lsm = reasons({"lsmhooks": [{"hook": "file_open"}]},
                  Features(reasons=(("lsm", "listed active, but LSM programs fail to load"),)))
    assert lsm == ["unsupported: lsmhook on file_open needs BPF LSM, which this kernel lacks "
                   "(listed active, but LSM programs fail to load)"]
    override = reasons({"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_unshare",
                                         "selectors": [{"matchActions": [{"action": "Override", "argError": -1}]}]}]})
    assert len(override) == 1 and "Override on syscalls:sys_enter_unshare needs bpf_override_return" in override[0]
    assert override[0].startswith("unsupported: spec.tracepoints[0].selectors[0].matchActions[0]: ")
    follow_fd = reasons({"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_unshare",
                                          "selectors": [{"matchActions": [{"action": "FollowFD"}]}]}]})
    assert "action FollowFD is outside the engine's subset" in follow_fd[0]


def test_every_reason_is_reported_not_just_the_first() -> None:
    got = reasons({
        "kprobes": [{"call": "fd_install", "syscall": False}],
        "tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_unshare",
                         "selectors": [{"matchNamespaceChanges": [{"operator": "In", "values": ["Moon"]}]}] * 6}],
        "usdts": [{"path": "/bin/bash", "provider": "p", "name": "n",
                   "selectors": [{"matchActions": [{"action": "Set", "argIndex": 0, "argValue": 1}]}]}],
    })
    assert any("fd_install" in r for r in got)
    assert any("6 selectors; Tetragon allows at most 5" in r for r in got)
    assert any("matchNamespaceChanges" in r for r in got)
    assert any("usdts" in r for r in got)


def test_socket_hooks_choose_cgroup_programs_for_override_and_tracepoints_for_signals() -> None:
    deny = compile_policy(parse(templates.render("block-raw-sockets", "raw")), Features(), builtin_formats)
    assert [(s.kind, s.attach or s.event) for h in deny.hooks for s in h.sites] == [
        ("cgroup", "sock_create"), ("tracepoint", "sys_enter_socket")]  # inet raw: EPERM; packet: killed
    tcp = {"call": "tcp_connect", "syscall": False, "args": [{"index": 0, "type": "sock"}],
           "selectors": [{"matchArgs": [{"index": 0, "operator": "DPort", "values": ["22"]}],
                          "matchActions": [{"action": "Sigkill"}]}]}
    kill = compile_policy(parse(doc({"kprobes": [tcp]})), Features(), builtin_formats)
    # connect() and TCP Fast Open both pass the cgroup connect hooks, which also know the protocol
    assert [(s.kind, s.attach) for h in kill.hooks for s in h.sites] == [("cgroup", "connect4"), ("cgroup", "connect6")]
    assert "if (ctx->protocol != 6 && ctx->protocol != 262) return 1;" in kill.source
    any_family = compile_policy(parse(doc({"kprobes": [{
        "call": "security_socket_connect", "syscall": False, "args": [{"index": 1, "type": "sockaddr"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "SPort", "values": ["22"]}],
                       "matchActions": [{"action": "Sigkill"}]}]}]})), Features(), builtin_formats)
    assert [s.attach or s.event for h in any_family.hooks for s in h.sites] == [
        "connect4", "connect6", "sendmsg4", "sendmsg6", "sys_enter_connect"]
    legacy = compile_policy(parse(doc({"kprobes": [tcp]})), Features(cgroup_connect6=False), builtin_formats)
    assert [(s.kind, s.event) for h in legacy.hooks for s in h.sites] == [("tracepoint", "sys_enter_connect")]
    assert any("misses TCP Fast Open" in n for n in legacy.notes)
    assert any(s.function == "pl_ia32" for s in compile_policy(
        parse(templates.render("block-unshare", "u")), Features(), builtin_formats).sites)
    assert not any(s.function == "pl_ia32" for s in compile_policy(  # ia32 emulation off: nothing to add
        parse(templates.render("block-unshare", "u")), Features(ia32_syscalls=False), builtin_formats).sites)
    no_signal = compile_policy(parse(doc({"kprobes": [tcp]})), Features(cgroup_send_signal=False), builtin_formats)
    assert [s.event for h in no_signal.hooks for s in h.sites] == ["sys_enter_connect"]
    no_hook = reasons({"kprobes": [{"call": "security_socket_create", "syscall": False,
                                    "args": [{"index": 1, "type": "int"}],
                                    "selectors": [{"matchActions": [{"action": "Override", "argError": -1}]}]}]},
                      Features(cgroup_sock_create=False))
    assert no_hook == ["unsupported: kprobe on security_socket_create with Override needs the cgroup "
                       "sock_create hook, which this kernel lacks"]


def test_match_args_index_follows_tetragon_for_kprobes_and_tracepoints() -> None:
    # tracepoint: index is the position in args (killer.yaml style), here the syscall id
    tp = compile_policy(parse(doc({"tracepoints": [{
        "subsystem": "raw_syscalls", "event": "sys_enter", "args": [{"index": 4, "type": "int64"}],
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["272"]}]}]}]})),
        Features(), builtin_formats)
    assert "(a0 == 272LL)" in tp.source
    # kprobe: index names the argument's own index (security-socket-connect.yaml style)
    kp = compile_policy(parse(doc({"kprobes": [{
        "call": "security_socket_connect", "syscall": False,
        "args": [{"index": 1, "type": "sockaddr"}, {"index": 2, "type": "int"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Family", "values": ["AF_INET"]}]}]}]})),
        Features(), builtin_formats)
    assert "s0_fam == 2" in kp.source


def test_prefix_tables_fold_shorter_prefixes_into_longer_ones() -> None:
    plan = compile_policy(parse(doc({"tracepoints": [{
        "subsystem": "sched", "event": "sched_process_exec",
        "selectors": [
            {"matchBinaries": [{"operator": "Prefix", "values": ["/usr/"]}], "matchActions": [{"action": "NoPost"}]},
            {"matchBinaries": [{"operator": "Prefix", "values": ["/usr/bin/"]}]},
            {"matchBinaries": [{"operator": "Postfix", "values": ["sh"]}]},
        ]}]})), Features(), builtin_formats)
    pre = {e.value: e.bits for e in plan.strings if e.table == "pre"}
    assert pre == {b"/usr/": 0b01, b"/usr/bin/": 0b11}  # an LPM lookup returns only the longest match
    assert [(e.table, e.value) for e in plan.strings if e.table == "post"] == [("post", b"hs")]


def test_malformed_documents_name_the_offending_node() -> None:
    with pytest.raises(PolicyError) as e:
        parse(doc({"kprobes": [{"call": "x", "selectors": {"matchArgs": []}}]}))
    assert e.value.path == ("spec", "kprobes", 0, "selectors")
    assert str(e.value) == "spec.kprobes[0].selectors: expected a list, got dict"
    with pytest.raises(PolicyError) as e:
        parse(doc({"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_bpf",
                                    "selectors": [{"matchArgs": [{"index": "five", "operator": "Equal"}]}]}]}))
    assert e.value.path == ("spec", "tracepoints", 0, "selectors", 0, "matchArgs", 0, "index")
    with pytest.raises(PolicyError, match="apiVersion"):
        parse({"apiVersion": "v1", "kind": "TracingPolicy"})


def test_namespaced_policies_have_a_namespaced_key() -> None:
    p = parse(doc({"tracepoints": [{"subsystem": "syscalls", "event": "sys_enter_bpf"}]},
                  kind="TracingPolicyNamespaced") | {"metadata": {"name": "x", "namespace": "team-a"}})
    assert (p.namespace, p.key) == ("team-a", "team-a:x")


def test_values_that_are_not_numbers_or_networks_are_refused_not_crashed() -> None:
    got = reasons({"kprobes": [{"call": "tcp_connect", "syscall": False, "args": [{"index": 0, "type": "sock"}],
                                "selectors": [{"matchArgs": [{"index": 0, "operator": "DAddr",
                                                              "values": ["10.0.0.0/33"]}]}]}]})
    assert len(got) == 1 and "does not appear to be an IPv4 or IPv6 network" in got[0]


def test_tracepoint_format_parsing() -> None:
    fields = parse_format("""name: sys_enter_execve
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:const char * filename;\toffset:16;\tsize:8;\tsigned:0;
\tfield:__data_loc char[] comm;\toffset:24;\tsize:4;\tsigned:0;
""")
    assert [(f.name, f.offset, f.pointer, f.data_loc) for f in fields] == [
        ("common_type", 0, False, False), ("__syscall_nr", 8, False, False),
        ("filename", 16, True, False), ("comm", 24, False, True)]


def test_unsupported_carries_all_reasons() -> None:
    with pytest.raises(Unsupported) as e:
        compile_policy(parse(doc({"lsmhooks": [{"hook": "a"}, {"hook": "b"}]})), Features(), builtin_formats)
    assert len(e.value.reasons) == 2


def test_every_hook_program_skips_the_engine_and_a_dead_engine_is_forgotten() -> None:
    plan = compile_policy(parse(templates.render("block-bpf-load", "b")), Features(), builtin_formats)
    hook = plan.source[plan.source.index("int pl_h0_tp("):]
    assert hook.index("if (bpf_map_lookup_elem(&pl_self, &tgid)) return 0;") < hook.index("bpf_send_signal")
    assert "PL_MAP(pl_self, BPF_MAP_TYPE_HASH, u32, u64, 64);" in plan.source  # the engine hands it the pinned map
    [exit_site] = [s for s in plan.sites if s.function == "pl_self_exit"]
    assert (exit_site.subsystem, exit_site.event) == ("sched", "sched_process_exit")
    assert "if (pl_group_dead()) bpf_map_delete_elem(&pl_self, &tgid);" in plan.source  # the last thread


def test_a_kprobe_without_syscall_is_a_syscall_as_the_crd_defaults_it() -> None:
    written = parse(doc({"kprobes": [{"call": "sys_execve"}]}))
    assert written.hooks[0].syscall is True
    plan = compile_policy(written, Features(), builtin_formats)
    assert ("syscalls", "sys_enter_execve") in [(site.subsystem, site.event) for site in plan.sites]
    assert parse(doc({"kprobes": [{"call": "fd_install", "syscall": False}]})).hooks[0].syscall is False


def test_return_without_return_arg_is_malformed() -> None:
    with pytest.raises(PolicyError) as e:
        parse(doc({"kprobes": [{"call": "fd_install", "syscall": False, "return": True}]}))
    assert e.value.path == ("spec", "kprobes", 0, "return") and "returnArg" in e.value.message


@pytest.mark.parametrize(("value", "mode", "effective"), [
    ("monitor", "monitor", {"observe": "observe", "enforce_ready": "enforce_ready", "enforced": "enforce_ready"}),
    ("enforce", "enforce", {"observe": "observe", "enforce_ready": "enforce_ready", "enforced": "enforced"}),
])
def test_policy_mode_caps_the_ladder(value: str, mode: str, effective: dict[str, str]) -> None:
    p = parse(doc({"options": [{"name": "policy-mode", "value": value}],
                   "kprobes": [{"call": "sys_execve", "selectors": [{"matchActions": [{"action": "Sigkill"}]}]}]}))
    assert p.policy_mode == mode
    assert {ladder: effective_mode(p, ladder) for ladder in effective} == effective


def test_an_unknown_policy_mode_is_malformed() -> None:
    with pytest.raises(PolicyError) as e:
        parse(doc({"options": [{"name": "policy-mode", "value": "audit"}]}))
    assert e.value.path == ("spec", "options", 0, "value") and "enforce, monitor" in e.value.message


def test_a_sockaddr_takes_the_operators_tetragons_loader_takes() -> None:
    # one address, read as the source side: SAddr/SPort load, DAddr/DPort are refused (as Tetragon refuses them)
    def on_sockaddr(op: str, value: str) -> list[str]:
        return reasons({"kprobes": [{"call": "security_socket_connect", "syscall": False,
                                     "args": [{"index": 1, "type": "sockaddr"}],
                                     "selectors": [{"matchArgs": [{"index": 1, "operator": op, "values": [value]}],
                                                    "matchActions": [{"action": "Sigkill"}]}]}]})
    assert on_sockaddr("SAddr", "10.0.0.0/8") == [] and on_sockaddr("SPort", "443") == []
    (refused,) = on_sockaddr("DPort", "443")
    assert "operator 'DPort' on a sockaddr argument" in refused and "SPort" in refused


def test_a_uprobe_entry_is_one_hook_per_symbol_offset_or_address() -> None:
    p = parse(doc({"uprobes": [{"path": "/bin/bash", "symbols": ["readline", "main"], "message": "m", "tags": ["t"],
                                "args": [{"index": 0, "type": "string"}]},
                               {"path": "/usr/bin/x", "offsets": [4096]},
                               {"path": "/usr/bin/y", "addrs": ["0x401000"]}]}))
    assert [(h.target, h.uprobe.describe() if h.uprobe else None) for h in p.hooks] == [
        ("/bin/bash", "/bin/bash readline"), ("/bin/bash", "/bin/bash main"),
        ("/usr/bin/x", "/usr/bin/x offset 0x1000"), ("/usr/bin/y", "/usr/bin/y address 0x401000")]
    assert all(h.section == "uprobes" and not h.unsupported for h in p.hooks)
    assert p.hooks[1].message == "m" and p.hooks[1].tags == ("t",) and p.hooks[1].args[0].type == "string"
    assert p.hooks[0].path == p.hooks[1].path == ("spec", "uprobes", 0)


@pytest.mark.parametrize("entry", [{"path": "/bin/bash"}, {"path": "/bin/bash", "symbols": ["a"], "offsets": [1]}])
def test_a_uprobe_needs_exactly_one_way_to_place_it(entry: dict[str, Any]) -> None:
    with pytest.raises(PolicyError) as e:
        parse(doc({"uprobes": [entry]}))
    assert e.value.path == ("spec", "uprobes", 0) and "exactly one of symbols, offsets or addrs" in e.value.message


def test_a_uprobe_plan_is_a_kprobe_program_attached_by_the_engine() -> None:
    spec = {"uprobes": [{"path": "/bin/bash", "symbols": ["readline"], "args": [{"index": 0, "type": "string"},
                                                                                {"index": 5, "type": "uint64"}],
                         "selectors": [{"matchArgs": [{"index": 0, "operator": "Prefix", "values": ["rm "]}],
                                        "matchActions": [{"action": "Sigkill"}]}]}]}
    plan = compile_policy(parse(doc(spec)), Features(), builtin_formats)
    (hook,) = plan.hooks
    (site,) = hook.sites
    assert (site.kind, site.function, site.attach, site.file, site.offset) == (
        "uprobe", "pl_h0_up", "/bin/bash readline", None, None)  # planned without the node's files
    assert hook.event_kind == "process_uprobe" and hook.uprobe is not None and hook.uprobe.symbol == "readline"
    assert 'SEC("uprobe") int pl_h0_up(void *ctx)' in plan.source
    assert "bpf_probe_read_user_str(sc->str[0].s" in plan.source  # the string is in user memory
    assert "*(u64 *)((char *)ctx + 64)" in plan.source  # the sixth argument is in r9
    # placed on this node: the offset is an attach parameter, so the source is the same
    placed = compile_policy(parse(doc(spec)), Features(), builtin_formats,
                            resolve_uprobe=lambda u: Resolved("/usr/bin/bash", 1234))
    assert (placed.hooks[0].sites[0].file, placed.hooks[0].sites[0].offset) == ("/usr/bin/bash", 1234)
    assert placed.source == plan.source


def test_uprobes_are_refused_where_the_kernel_lacks_them_or_the_file_is_missing() -> None:
    spec = {"uprobes": [{"path": "/bin/bash", "symbols": ["readline"]}]}
    assert reasons(spec, Features(uprobes=False)) == [
        "unsupported: spec.uprobes[0]: uprobe on /bin/bash readline needs uprobes, which this kernel lacks"]
    assert not Features.of({"uprobes": {"available": False, "reason": "no uprobe PMU"}}).uprobes

    def missing(target: UprobeTarget) -> Resolved:
        raise Unresolvable(target, "no such file on this node")

    with pytest.raises(Unsupported) as e:
        compile_policy(parse(doc(spec)), Features(), builtin_formats, resolve_uprobe=missing)
    assert e.value.reasons == (
        "unsupported: spec.uprobes[0]: uprobe on /bin/bash readline: no such file on this node",)


@pytest.mark.parametrize(("entry", "expected"), [
    ({"selectors": [{"matchActions": [{"action": "Override", "argError": -1}]}]},
     "Override on uprobe /bin/bash readline (changing what the function returns) is outside the engine's subset"),
    ({"args": [{"index": 0, "type": "file"}]}, "argument 0 of type file on uprobe /bin/bash is outside"),
    ({"args": [{"index": 6, "type": "int"}]}, "uprobes read the first 6 arguments"),
    ({"return": True, "returnArg": {"index": 0, "type": "int"}}, "return on /bin/bash is outside the engine's subset"),
    ({"refCtrOffsets": [8]}, "refCtrOffsets on /bin/bash is outside the engine's subset"),
])
def test_what_a_uprobe_cannot_do_here_is_refused_with_the_field(entry: dict[str, Any], expected: str) -> None:
    got = reasons({"uprobes": [{"path": "/bin/bash", "symbols": ["readline"], **entry}]})
    assert got and all(r.startswith("unsupported: spec.uprobes[0]") for r in got), got
    assert any(expected in r for r in got), got


def test_uprobe_paths_resolve_on_this_node(tmp_path: Any) -> None:
    import os

    from bpf import uprobes

    bash = os.path.realpath("/bin/bash")
    link = tmp_path / "sh-link"
    link.symlink_to(bash)
    placed = uprobes.resolve(UprobeTarget(str(link), symbol="main"))
    assert placed.file == bash and placed.offset > 0
    assert uprobes.resolve(UprobeTarget(str(link), symbol="main+0x4")).offset == placed.offset + 4
    assert uprobes.host_path("/procRoot/1/root/usr/bin/bash") == "/proc/1/root/usr/bin/bash"
    for target, why in ((UprobeTarget("bin/bash", symbol="main"), "the path must be absolute"),
                        (UprobeTarget(str(tmp_path / "none"), symbol="main"), "no such file on this node"),
                        (UprobeTarget(str(link), symbol="pl_nothing"), f"{bash}: no function pl_nothing"),
                        (UprobeTarget(str(link), offset=1 << 40), "is past the end of")):
        with pytest.raises(uprobes.Unresolvable) as e:
            uprobes.resolve(target)
        assert why in e.value.detail, e.value.detail


# ---------------------------------------------------------------- LSM hooks and Override as a real denial

_TRAMPOLINES = Features(kprobes=True, lsm=True, fmod_ret=True, fmod_ret_syscalls=True, fexit=True)
#: Debian's 6.1: BPF LSM and fmod_ret on security_*, but no error injection (no fmod_ret on syscalls).
_DEBIAN_6_1 = Features(kprobes=True, lsm=True, fmod_ret=True, fexit=True,
                       reasons=(("fmod_ret_syscalls", "__x64_sys_getpgid() is not modifiable"),))


def test_an_lsmhook_is_an_lsm_program_that_denies_by_returning_the_errno() -> None:
    # lsm_bprm_check.yaml of Tetragon's examples (its imaHash enriches events only: a note)
    plan = compile_policy(parse(doc({"lsmhooks": [{
        "hook": "bprm_check_security", "args": [{"index": 0, "type": "linux_binprm"}],
        "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/bash"]}],
                       "matchArgs": [{"index": 0, "operator": "Postfix", "values": ["tester-progs/nop"]}],
                       "matchActions": [{"action": "Override", "argError": -1},
                                        {"action": "Post", "imaHash": True}]}]}]})), _TRAMPOLINES, builtin_formats)
    [hook] = plan.hooks
    assert hook.event_kind == "process_lsm" and hook.target == "bprm_check_security"
    assert [(s.kind, s.attach, s.label) for s in hook.sites] == [
        ("lsm", "bprm_check_security", "lsm/bprm_check_security")]
    assert 'SEC("lsm/bprm_check_security") int pl_h0_lsm(void *ctx) {' in plan.source
    # the argument is context slot 0, read through BTF as a kprobe's linux_binprm is
    assert "BPF_CORE_READ((struct linux_binprm *)*(u64 *)((char *)ctx + 0), file);" in plan.source
    assert "act = 3; sig = 0; post = 1; deny = 1;" in plan.source  # Override, EPERM
    assert "return (deny && acted) ? -deny : 0;" in plan.source
    assert any("imaHash" in n for n in plan.notes)
    assert plan.tracking  # matchBinaries: the caller's binary, from the process map


def test_an_lsmhook_reads_typed_arguments_from_its_context_slots() -> None:
    plan = compile_policy(parse(doc({"lsmhooks": [{
        "hook": "file_permission", "args": [{"index": 0, "type": "file"}, {"index": 1, "type": "int"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["4"]}],
                       "matchActions": [{"action": "Override", "argError": -13}]}]}]})), _TRAMPOLINES,
        builtin_formats)
    assert "struct file *fl0 = (struct file *)*(u64 *)((char *)ctx + 0);" in plan.source
    assert "s32 a1 = (s32)*(u64 *)((char *)ctx + 8);" in plan.source  # a u64 per argument, never a narrow load
    assert "deny = 13;" in plan.source  # argError -13: EACCES
    assert "e->ints[0] = a0;  /* i_mode */" in plan.source


def test_an_lsmhook_is_refused_where_bpf_lsm_is_missing_and_for_what_it_cannot_do() -> None:
    no_lsm = Features(kprobes=True, fmod_ret=True, reasons=(("lsm", "bpf is not an active LSM"),))
    assert reasons({"lsmhooks": [{"hook": "file_open"}]}, no_lsm) == [
        "unsupported: lsmhook on file_open needs BPF LSM, which this kernel lacks (bpf is not an active LSM)"]
    [why] = reasons({"lsmhooks": [{"hook": "file_open; evil"}]}, _TRAMPOLINES)
    assert "'file_open; evil' is not the name of a kernel function or LSM hook" in why  # it becomes a section
    [why] = reasons({"lsmhooks": [{"hook": "file_open", "args": [{"index": 12, "type": "file"}]}]}, _TRAMPOLINES)
    assert "BPF trampoline programs read the first 12 arguments" in why
    resolved = reasons({"lsmhooks": [{"hook": "bprm_check_security", "args": [
        {"index": 0, "type": "string", "resolve": "mm.owner.real_parent.comm"}]}]}, _TRAMPOLINES)
    assert len(resolved) == 1 and "resolve 'mm.owner.real_parent.comm'" in resolved[0], resolved


def test_override_on_a_security_function_is_fmod_ret_where_the_kernel_has_it() -> None:
    # override-security.yaml: bash's mkdirs are reported, everyone else's denied
    spec = {"kprobes": [{"call": "security_inode_mkdir", "syscall": False,
                         "selectors": [{"matchBinaries": [{"operator": "In", "values": ["/usr/bin/bash"]}]},
                                       {"matchActions": [{"action": "Override", "argError": -1}]}]}]}
    plan = compile_policy(parse(doc(spec)), _TRAMPOLINES, builtin_formats)
    [hook] = plan.hooks
    assert hook.event_kind == "process_kprobe"
    assert [(s.kind, s.attach) for s in hook.sites] == [("fmod_ret", "security_inode_mkdir")]
    assert 'SEC("fmod_ret/security_inode_mkdir") int pl_h0_fmr(void *ctx) {' in plan.source
    assert hook.selector_actions == ((0, 0), (3, 0))
    # where fmod_ret is missing, the refusals stand: no kprobes here; bpf_override_return on a stock kernel
    assert reasons(spec) == ["unsupported: kprobe on security_inode_mkdir needs kprobes, which this kernel lacks"]
    [why] = reasons(spec, Features(kprobes=True))
    assert "needs bpf_override_return" in why and "fmod_ret" not in why
    # a function outside security_* and the syscalls: fmod_ret cannot override it
    [why] = reasons({"kprobes": [{**spec["kprobes"][0], "call": "vfs_mkdir"}]}, _TRAMPOLINES)
    assert "needs bpf_override_return" in why and "fmod_ret, which it has, overrides only security_*" in why
    # a hook without Override stays a kprobe
    plain = compile_policy(parse(doc({"kprobes": [{"call": "security_inode_mkdir", "syscall": False}]})),
                           _TRAMPOLINES, builtin_formats)
    assert [s.kind for s in plain.hooks[0].sites] == ["kprobe"]


def test_override_on_a_syscall_is_fmod_ret_on_its_entry_reading_the_callers_registers() -> None:
    # hardlink-override.yaml
    spec = {"kprobes": [{"call": "sys_linkat", "syscall": True,
                         "args": [{"index": 0, "type": "int"}, {"index": 1, "type": "string"},
                                  {"index": 2, "type": "int"}, {"index": 3, "type": "string"},
                                  {"index": 4, "type": "int"}],
                         "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["/etc/passwd"]}],
                                        "matchActions": [{"action": "Override", "argError": -1}]}]}]}
    plan = compile_policy(parse(doc(spec)), _TRAMPOLINES, builtin_formats)
    [hook] = plan.hooks
    assert [(s.kind, s.attach) for s in hook.sites] == [("fmod_ret", "__x64_sys_linkat")]
    assert hook.target == "sys_linkat"  # events name the entry, __x64_sys_linkat (bpf/events.py)
    # the struct pt_regs in slot 0: di, si, dx, then r10 (not cx) for the fourth, r8
    for k, off in enumerate((112, 104, 96, 56, 72)):
        assert f"bpf_probe_read_kernel(&r{k}, 8, (char *)*(u64 *)ctx + {off});" in plan.source
    assert "bpf_probe_read_user_str(sc->str[1].s, 256, (const char *)r3)" in plan.source  # user memory
    assert "s32 a0 = (s32)r0;" in plan.source
    assert any("__ia32_sys_linkat overrides those" in n for n in plan.notes)
    assert not plan.ia32  # not also on the syscall tracepoint
    # the ia32 entry, when the policy names it: bx, cx, dx, si, di, 32 bits each
    ia32 = compile_policy(parse(doc({"kprobes": [{**spec["kprobes"][0], "call": "__ia32_sys_linkat"}]})),
                          _TRAMPOLINES, builtin_formats)
    assert [(s.kind, s.attach) for s in ia32.hooks[0].sites] == [("fmod_ret", "__ia32_sys_linkat")]
    assert "bpf_probe_read_kernel(&r3, 8, (char *)*(u64 *)ctx + 104);" in ia32.source
    assert "r3 &= 0xffffffff;" in ia32.source
    # Sigkill alone stays on the syscall tracepoint (cheaper; no denial needed)
    kill = compile_policy(parse(doc({"kprobes": [{**spec["kprobes"][0], "selectors": [
        {"matchActions": [{"action": "Sigkill"}]}]}]})), _TRAMPOLINES, builtin_formats)
    assert [s.kind for s in kill.hooks[0].sites] == ["tracepoint"]
    # without fmod_ret on syscalls (no error injection, as on Debian's 6.1): refused, with the probe's words
    [why] = reasons(spec, _DEBIAN_6_1)
    assert why == ("unsupported: spec.kprobes[0]: Override on sys_linkat needs fmod_ret on the syscall's entry "
                   "(error injection) or bpf_override_return, which this kernel lacks (__x64_sys_getpgid() is not "
                   "modifiable); use Sigkill, or Override on the security_* function or LSM hook the call reaches")
    assert reasons(spec) == [why.replace(" (__x64_sys_getpgid() is not modifiable)", "")]
    [why] = reasons({"kprobes": [{**spec["kprobes"][0], "call": "__x64_sys_linkat", "syscall": False}]},
                    _DEBIAN_6_1)
    assert "needs bpf_override_return" in why and "overrides only security_* functions)" in why


def test_what_an_fmod_ret_syscall_override_cannot_do_is_refused() -> None:
    base = {"call": "sys_linkat", "syscall": True,
            "selectors": [{"matchActions": [{"action": "Override", "argError": -1}]}]}
    got = reasons({"kprobes": [{**base, "args": [{"index": 1, "type": "file"}, {"index": 6, "type": "int"}]}]},
                  _TRAMPOLINES)
    assert any("argument 1 of type file on sys_linkat with Override" in r for r in got), got
    assert any("a syscall has at most 6 arguments" in r for r in got), got
    [why] = check(parse(doc({"kprobes": [{**base, "call": "sys_palisade_nothing"}]})), _TRAMPOLINES,
                  lambda sub, ev: None)
    assert "no syscall palisade_nothing on this kernel" in why
    [why] = reasons({"kprobes": [{**base, "call": "security_inode_mkdir", "syscall": False, "return": True,
                                  "returnArg": {"index": 0, "type": "int"}}]}, Features(kprobes=True, fmod_ret=True))
    assert "return: true with Override on security_inode_mkdir needs fexit programs" in why
    [why] = reasons({"kprobes": [{**base, "selectors": [
        {"matchActions": [{"action": "Override", "argError": 0}]}]}]}, _TRAMPOLINES)
    assert why.endswith("Override argError must be a negative errno or, on a kernel function, a value it returns")


def test_features_take_fmod_ret_and_bpf_lsm_from_the_probe() -> None:
    f = Features.of({"fmod_ret": {"available": True, "reason": "attached"},
                     "fmod_ret_syscall": {"available": False, "reason": "__x64_sys_getpgid() is not modifiable"},
                     "bpf_lsm": {"available": False, "reason": "bpf is not an active LSM"}})
    assert f.fmod_ret and not f.lsm and not f.fmod_ret_syscalls
    assert f.why("fmod_ret_syscalls") == "__x64_sys_getpgid() is not modifiable"
    assert f.why("lsm") == "bpf is not an active LSM"
    assert not Features().fmod_ret  # the development kernels load no trampoline programs


_KPROBES = Features(kprobes=True)


def _kprobe_plan(*kprobes: dict[str, Any]) -> Any:
    return compile_policy(parse(doc({"kprobes": list(kprobes)})), _KPROBES, builtin_formats)


def test_every_kernel_object_type_has_its_operand_kind_and_reader() -> None:
    plan = _kprobe_plan(
        {"call": "ip_output", "syscall": False, "args": [{"index": 2, "type": "skb"}]},
        {"call": "bpf_check", "syscall": False, "args": [{"index": 1, "type": "bpf_attr"}]},
        {"call": "security_perf_event_alloc", "syscall": False, "args": [{"index": 0, "type": "perf_event"}]},
        {"call": "security_bpf_map_alloc", "syscall": False, "args": [{"index": 0, "type": "bpf_map"}]},
        {"call": "do_init_module", "syscall": False, "args": [{"index": 0, "type": "module"}]},
        {"call": "find_module_sections", "syscall": False,
         "args": [{"index": 0, "type": "nop"}, {"index": 1, "type": "load_info"}]},
        {"call": "cap_capable", "syscall": False,
         "args": [{"index": 1, "type": "user_namespace"}, {"index": 2, "type": "capability"}]},
        {"call": "security_inode_follow_link", "syscall": False, "args": [{"index": 0, "type": "dentry"}]},
        {"call": "dev_hard_start_xmit", "syscall": False, "args": [{"index": 1, "type": "net_device"}]},
        {"call": "tty_write", "syscall": False,
         "args": [{"index": 0, "type": "kiocb"}, {"index": 1, "type": "iov_iter"}]},
        {"call": "security_socket_connect", "syscall": False,
         "args": [{"index": 0, "type": "socket"}, {"index": 1, "type": "sockaddr"}]})
    kinds = [[(o.kind, o.type_name, o.slot) for o in h.operands] for h in plan.hooks]
    assert kinds == [[("skb", "skb", 0)], [("obj", "bpf_attr", 0)], [("obj", "perf_event", 0)],
                     [("obj", "bpf_map", 0)], [("obj", "module", 0)], [("obj", "load_info", 0)],  # nop: not read
                     [("obj", "user_namespace", 0), ("int", "capability", -1)], [("str", "dentry", 0)],
                     [("str", "net_device", 0)], [("str", "kiocb", 0), ("buf", "iov_iter", 1)],
                     [("sock", "socket", 0), ("sockaddr", "sockaddr", 1)]]
    src = plan.source
    assert "pl_skb((struct sk_buff *)*(u64 *)((char *)ctx + 96), s0_sb);" in src  # dx: ip_output's third
    assert "pl_bpf_attr((void *)*(u64 *)((char *)ctx + 104)" in src
    assert "pl_load_info((void *)*(u64 *)((char *)ctx + 104)" in src
    assert "s64 a1 = (s32)*(u64 *)((char *)ctx + 96);" in src  # a capability is an int, not the whole register
    assert "pl_dentry_path(de0, sc->str[0].s)" in src
    assert "BPF_CORE_READ((struct kiocb *)*(u64 *)((char *)ctx + 112), ki_filp)" in src
    assert "bpf_core_field_offset(struct net_device, name)" in src
    assert "BPF_CORE_READ((struct socket *)*(u64 *)((char *)ctx + 112), sk)" in src
    assert "bpf_probe_read_kernel(&s1_sa, sizeof(s1_sa), (void *)*(u64 *)((char *)ctx + 104));" in src


def test_an_skb_takes_the_socket_operators_on_its_headers() -> None:
    plan = _kprobe_plan({"call": "ip_output", "syscall": False, "args": [{"index": 2, "type": "skb"}],
                         "selectors": [{"matchArgs": [
                             {"index": 2, "operator": "Protocol", "values": ["IPPROTO_UDP"]},
                             {"index": 2, "operator": "DPort", "values": ["53"]},
                             {"index": 2, "operator": "SAddr", "values": ["10.0.0.0/8"]},
                             {"index": 2, "operator": "NotDAddr", "values": ["127.0.0.53"]}]}]})
    src = plan.source
    assert "s0_proto == 17" in src
    assert "(s0_port >= 53 && s0_port <= 53)" in src
    assert "(s0_sip4 & 4278190080U) == 167772160U" in src  # the packet's source, from its IP header
    assert "!((s0_fam == 2 && (s0_ip4 & 4294967295U) == 2130706485U)" in src
    [why] = reasons({"kprobes": [{"call": "ip_output", "syscall": False, "args": [{"index": 2, "type": "skb"}],
                                  "selectors": [{"matchArgs": [{"index": 2, "operator": "State",
                                                                "values": ["TCP_SYN_SENT"]}]}]}]}, _KPROBES)
    assert "operator 'State' on a skb argument" in why


def test_a_char_buf_is_read_to_the_size_its_size_argument_gives() -> None:
    plan = _kprobe_plan({"call": "tty_write", "syscall": False, "args": [
        {"index": 0, "type": "file"}, {"index": 1, "type": "char_buf", "sizeArgIndex": 3},
        {"index": 2, "type": "size_t"}],
        "selectors": [{"matchArgs": [{"index": 1, "operator": "Prefix", "values": ["sudo "]}]}]})
    [hook] = plan.hooks
    assert [(o.kind, o.size_arg) for o in hook.operands] == [("str", -1), ("buf", 2), ("int", -1)]
    src = plan.source
    assert "u64 z1 = *(u64 *)((char *)ctx + 96);" in src  # the size: the third argument (dx)
    assert "u32 l1 = pl_buf(sc->str[1].s, (const void *)*(u64 *)((char *)ctx + 104), z1);" in src
    assert "e->ints[1] = a1;" in src  # bytes read << 48 | size
    assert "pl_str_bits(sc, sc->str[1].s, l1, &s1_eq, &s1_pre, &s1_post);" in src  # matched as a string
    assert any(s.table == "pre" and s.value == b"sudo " for s in plan.strings)


def test_a_return_copy_buffer_is_read_when_the_function_returns() -> None:
    plan = _kprobe_plan({"call": "vfs_read", "syscall": False, "return": True,
                         "args": [{"index": 1, "type": "char_buf", "returnCopy": True}],
                         "returnArg": {"index": 0, "type": "size_t"}})
    src = plan.source
    assert "s64 a0 = (s64)*(u64 *)((char *)ctx + 104);" in src  # its address, kept in the waiting event
    assert "e->ints[0] = pl_ret_copy(e->strs[0], st->ints[0], (s64)r);" in src
    [why] = reasons({"kprobes": [{"call": "vfs_read", "syscall": False, "return": True,
                                  "args": [{"index": 1, "type": "char_buf", "returnCopy": True}],
                                  "returnArg": {"index": 0, "type": "size_t"},
                                  "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["x"]}]}]}]},
                    _KPROBES)
    assert "matchArgs on a returnCopy buffer" in why


@pytest.mark.parametrize(("arg", "expected"), [
    ({"index": 1, "type": "char_buf"}, "argument 1 (char_buf) of tty_write needs sizeArgIndex"),
    ({"index": 1, "type": "char_buf", "sizeArgIndex": 7}, "(from 1 to 5, not itself) that gives its size; got 7"),
    ({"index": 1, "type": "char_iovec", "sizeArgIndex": 2}, "(from 1 to 5, not itself) that gives its size; got 2"),
    ({"index": 1, "type": "char_buf", "returnCopy": True}, "the engine copies a char_buf when a kretprobe"),
])
def test_a_buffer_without_a_size_is_refused_with_the_field(arg: dict[str, Any], expected: str) -> None:
    [why] = reasons({"kprobes": [{"call": "tty_write", "syscall": False, "args": [arg]}]}, _KPROBES)
    assert why.startswith("unsupported: spec.kprobes[0]: ") and expected in why, why


def test_objects_without_operators_refuse_match_args_and_nop_is_neither_read_nor_reported() -> None:
    [why] = reasons({"kprobes": [{"call": "bpf_check", "syscall": False, "args": [{"index": 1, "type": "bpf_attr"}],
                                  "selectors": [{"matchArgs": [{"index": 1, "operator": "Equal", "values": ["1"]}]}]}]},
                    _KPROBES)
    assert "matchArgs on a bpf_attr argument is outside the engine's subset" in why
    plan = _kprobe_plan({"call": "security_mmap_file", "syscall": False,
                         "args": [{"index": 0, "type": "file"}, {"index": 2, "type": "nop"}]})
    assert [o.type_name for o in plan.hooks[0].operands] == ["file"]


def test_ignore_call_not_found_makes_the_kprobe_sites_optional() -> None:
    plan = _kprobe_plan({"call": "security_bpf_map_create", "syscall": False, "ignore": {"callNotFound": True},
                         "args": [{"index": 0, "type": "bpf_map"}]},
                        {"call": "security_bpf_map_alloc", "syscall": False, "args": [{"index": 0, "type": "bpf_map"}]})
    assert [[s.optional for s in h.sites] for h in plan.hooks] == [[True], [False]]
    with pytest.raises(PolicyError, match="callNotFound"):
        parse(doc({"kprobes": [{"call": "f", "syscall": False, "ignore": {"callNotFound": "yes"}}]}))


def test_an_override_with_return_denies_at_entry_and_reports_the_return_from_fexit() -> None:
    # cve-2023-2640-overlayfs-ubuntu.yaml: argError 1 is what security_inode_copy_up_xattr returns to skip
    plan = compile_policy(parse(doc({"kprobes": [{
        "call": "security_inode_copy_up_xattr", "syscall": False, "return": True,
        "args": [{"index": 0, "type": "string"}], "returnArg": {"index": 0, "type": "int"},
        "selectors": [{"matchArgs": [{"index": 0, "operator": "Equal", "values": ["security.capability\0"]}],
                       "matchActions": [{"action": "Override", "argError": 1}]}]}]})), _TRAMPOLINES, builtin_formats)
    [hook] = plan.hooks
    assert [(s.kind, s.attach) for s in hook.sites] == [("fmod_ret", "security_inode_copy_up_xattr"),
                                                         ("fexit", "security_inode_copy_up_xattr")]
    assert hook.return_type == "int"
    assert "deny = -1;" in plan.source  # returns 1: a value the function returns, not an errno
    assert "    return (deny && acted) ? -deny : 0;\n}" in plan.source  # the entry denies...
    assert "e->pad |= post | (deny ? 2 : 0);" in plan.source  # ...and stashes its event for fexit
    assert 'SEC("fexit/security_inode_copy_up_xattr") int pl_h0_fx(void *ctx) {' in plan.source
    assert "u64 rv = 0; bpf_get_func_ret(ctx, &rv); s32 r = (s32)rv;" in plan.source
    assert "acted = st->acted;" in plan.source
    # a positive argError is refused where it would be an LSM hook's "errno"
    [why] = reasons({"lsmhooks": [{"hook": "file_open", "selectors": [
        {"matchActions": [{"action": "Override", "argError": 1}]}]}]}, _TRAMPOLINES)
    assert why.endswith("Override argError must be a negative errno")



def test_module_and_buffer_arguments_render_in_tetragons_shapes() -> None:
    plan = _kprobe_plan({"call": "do_init_module", "syscall": False, "args": [{"index": 0, "type": "module"}]},
                        {"call": "find_module_sections", "syscall": False,
                         "args": [{"index": 0, "type": "nop"}, {"index": 1, "type": "load_info"}]},
                        {"call": "do_writev", "syscall": False,
                         "args": [{"index": 1, "type": "char_iovec", "sizeArgIndex": 3}]})

    def args(hook: int, blob: bytes, ints: tuple[int, ...] = (0,) * 8) -> Any:
        raw = events.RawEvent(0, 0, os.getpid(), os.getpid(), 0, hook, 0, 0, 0, False, 0, ints,
                              (blob.ljust(256, b"\0"), b"\0" * 256), "/usr/bin/true")
        return events.render(raw, plan, "node", 0)["process_kprobe"]["args"]

    # struct pl_md: taints, sig_ok, pad, name; TAINT_OUT_OF_TREE_MODULE | TAINT_UNSIGNED_MODULE
    hello = struct.pack("<QII56s", 4096 | 8192, 0, 0, b"kernel_module_hello")
    assert args(0, hello) == [{"module_arg": {"name": "kernel_module_hello",
                                              "tainted": ["TAINT_OUT_OF_TREE_MODULE", "TAINT_UNSIGNED_MODULE"]}}]
    # the loader's view has signature_ok, also when false; nop is not an argument of the event
    assert args(1, struct.pack("<QII56s", 0, 1, 0, b"xfs")) == [{"module_arg": {"name": "xfs", "signature_ok": True}}]
    assert args(1, struct.pack("<QII56s", 0, 0, 0, b"xfs")) == [{"module_arg": {"name": "xfs",
                                                                                "signature_ok": False}}]
    # a buffer: bytes read << 48 | its size
    assert args(2, b"GET / HTTP/1.1", (14 << 48 | 14, 0, 0, 0, 0, 0, 0, 0)) == [{"bytes_arg": "R0VUIC8gSFRUUC8xLjE="}]
    assert args(2, b"GET / HTTP/1.1", (5 << 48 | 900, 0, 0, 0, 0, 0, 0, 0)) == [
        {"truncated_bytes_arg": {"bytes_arg": "R0VUIC8=", "orig_size": "900"}}]
