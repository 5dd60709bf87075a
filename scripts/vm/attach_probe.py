#!/usr/bin/env python3
"""Which BPF attach kinds a kernel takes: fentry, fexit, fmod_ret and BPF LSM on security_file_open.

    .venv/bin/python scripts/vm/attach_probe.py --kernel 6.1

On the host it builds one tiny CO-RE object per attach kind for the guest kernel's BTF
(into the cache that --core-objects gives the guest), boots the guest, and runs itself
there with --guest, which loads and attaches each object through bpf.core.libbpf and
prints one line per kind; then `palisade-agent probe` prints the engine's own feature
probe. The exit code is run.py's (0 when the guest ran; a missing kind is not a failure).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]

HEADER = b"""#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
char LICENSE[] SEC("license") = "GPL";
"""
#: kind -> its program `probe`; each kind is its own object, so one refusal spoils no other
KINDS = {
    "fentry": b'SEC("fentry/security_file_open") int BPF_PROG(probe, struct file *f) { return 0; }\n',
    "fexit": b'SEC("fexit/security_file_open") int BPF_PROG(probe, struct file *f, int ret) { return 0; }\n',
    "fmod_ret": b'SEC("fmod_ret/security_file_open") int BPF_PROG(probe, struct file *f) { return 0; }\n',
    "lsm": b'SEC("lsm/file_open") int BPF_PROG(probe, struct file *f) { return 0; }\n',
}


def _sources() -> dict[str, bytes]:
    return {kind: HEADER + body for kind, body in KINDS.items()}


def guest() -> int:
    from bpf.core import build
    from bpf.core.errors import CoreError
    from bpf.core.libbpf import BpfObject

    print(f"kernel {os.uname().release}: attach kinds on security_file_open")
    for kind, src in _sources().items():
        try:
            obj_file = build.compile_object(src, name=f"{kind}.bpf.c")  # a cache hit: built on the host
            with BpfObject.open_file(obj_file.path, kind) as obj:
                obj.load()
                with obj.program("probe").attach():
                    pass
            where = "from the host" if obj_file.cached else "built here"
            print(f"  {kind:<9} yes  loaded and attached (object {where})")
        except CoreError as e:
            print(f"  {kind:<9} no   {str(e).splitlines()[0]}")
    sys.stdout.flush()
    return subprocess.run([str(ROOT / ".venv" / "bin" / "palisade-agent"), "probe"], check=False).returncode


def host(series: str) -> int:
    sys.path.insert(0, str(HERE))
    import kernel as kernels
    from prebuild import core_cache_dir
    from vmerrors import VmError

    from bpf.core import build

    try:
        cache = kernels.cache_root()
        kern = kernels.resolve(series, cache, log=lambda m: print(m, file=sys.stderr))
        for kind, src in _sources().items():
            build.compile_object(src, core_cache_dir(kern, cache), name=f"{kind}.bpf.c", btf=kern.btf)
    except VmError as e:
        print(f"palisade-vm: {type(e).__name__}: {e.message}", file=sys.stderr)
        return e.exit_code
    return subprocess.run([sys.executable, str(HERE / "run.py"), "--kernel", series, "--core-objects", "--cwd",
                           str(ROOT), "--", sys.executable, str(Path(__file__).resolve()), "--guest"],
                          check=False).returncode


if __name__ == "__main__":
    if sys.argv[1:] == ["--guest"]:
        sys.exit(guest())
    args = sys.argv[1:]
    sys.exit(host(args[args.index("--kernel") + 1] if "--kernel" in args else "6.1"))
