"""The policy model and the compiler, without a kernel: what is refused, why, and what a plan holds."""
from __future__ import annotations

from typing import Any

import pytest

from bpf import templates
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
                         "selectors": [{"matchNamespaceChanges": [{"operator": "In", "values": ["Mnt"]}]}] * 6}],
        "usdts": [{"path": "/bin/bash", "provider": "p", "name": "n"}],
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
                                                              "values": ["${PODCIDR}"]}]}]}]})
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
    ({"selectors": [{"matchPIDs": [{"operator": "In", "followForks": True, "values": [1]}]}]},
     "matchPIDs with followForks is outside the engine's subset"),
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
