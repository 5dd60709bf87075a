#!/usr/bin/env bash
# Install and prepare what the eBPF engine needs on a Debian machine of this kind.
# Safe to run any number of times: every step checks before it acts.
#   - python3-bpfcc and bpftool from Debian, and the newest linux-headers-*-amd64;
#   - clang and libbpf-dev for the CO-RE engine (bpf/core: build time only; loading needs libbpf1);
#   - the headers linked as /lib/modules/$(uname -r)/build when that is missing
#     (bcc only needs uapi headers and helpers; see DESIGN.md §6);
#   - tracefs, bpffs and cgroup2 mounted when absent;
#   - Debian's bcc made importable from the project virtualenv ($1, optional)
#     by linking just the `bcc` package into its site-packages.
set -euo pipefail

venv="${1:-}"
log() { echo "kernel-tools: $*" >&2; }

if [ "$(id -u)" != 0 ]; then
  log "must run as root (installs packages, mounts filesystems)"; exit 2
fi

need_pkgs=()
dpkg -s python3-bpfcc >/dev/null 2>&1 || need_pkgs+=(python3-bpfcc)
dpkg -s bpftool >/dev/null 2>&1 || need_pkgs+=(bpftool)
dpkg -s libbpf1 >/dev/null 2>&1 || need_pkgs+=(libbpf1)
dpkg -s libbpf-dev >/dev/null 2>&1 || need_pkgs+=(libbpf-dev)
dpkg -s clang >/dev/null 2>&1 || need_pkgs+=(clang)
dpkg -s jq >/dev/null 2>&1 || need_pkgs+=(jq)
# a static binary for the engine tests (and the kernel matrix's initramfs)
dpkg -s busybox-static >/dev/null 2>&1 || need_pkgs+=(busybox-static)
# <sys/sdt.h>, for the engine tests' programs with USDT probes
dpkg -s systemtap-sdt-dev >/dev/null 2>&1 || need_pkgs+=(systemtap-sdt-dev)
# a static web server for the bundle-source tests (bundles served from a published directory)
dpkg -s nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
# a container runtime for the container-discovery tests: podman (its Docker-compatible API) with runc
# (crun refuses this hybrid cgroup layout); podman pulls in conmon, netavark and the rest it needs
dpkg -s podman >/dev/null 2>&1 || need_pkgs+=(podman)
dpkg -s runc >/dev/null 2>&1 || need_pkgs+=(runc)
# a CRI runtime for the CRI container-source tests: containerd 1.6 with its CRI plugin (runc from above;
# Debian has no crictl: the tests make CRI calls with the agent's own client)
dpkg -s containerd >/dev/null 2>&1 || need_pkgs+=(containerd)
# a browser and its WebDriver for the console tests (tests/support/browser.py drives them; nothing downloaded)
dpkg -s chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
dpkg -s chromium-driver >/dev/null 2>&1 || need_pkgs+=(chromium-driver)
headers_pkg=$(dpkg-query -W -f='${Package}\n' 'linux-headers-*-amd64' 2>/dev/null \
  | grep -E '^linux-headers-[0-9].*-amd64$' | grep -v -- '-rt-' | sort -V | tail -n1 || true)
if [ -z "$headers_pkg" ]; then
  [ -f /var/lib/apt/lists/lock ] || true
  if ! apt-cache show linux-headers-amd64 >/dev/null 2>&1; then
    log "apt-get update"; apt-get update -qq >/dev/null
  fi
  headers_pkg=$(apt-cache search --names-only '^linux-headers-[0-9].*-amd64$' | awk '{print $1}' \
    | grep -v -- '-rt-' | grep -v -- '-cloud-' | sort -V | tail -n1)
  need_pkgs+=("$headers_pkg")
fi
if [ ${#need_pkgs[@]} -gt 0 ]; then
  log "installing ${need_pkgs[*]}"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null 2>&1; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  fi
fi

build="/lib/modules/$(uname -r)/build"
if [ ! -e "$build" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | grep -v -- '-rt-' | sort -V | tail -n1)
  [ -n "$hdr" ] || { log "no linux headers under /usr/src"; exit 1; }
  mkdir -p "$(dirname "$build")"
  ln -sfn "$hdr" "$build"
  log "linked $build -> $hdr"
fi

# Debian splits the headers: the arch package (build) and the common tree it includes.
# bcc reads the include tree from `source`; without it clang cannot find linux/kconfig.h.
src="/lib/modules/$(uname -r)/source"
if [ ! -e "$src" ]; then
  common="$(readlink -f "$build")"
  common="${common%-amd64}-common"
  if [ -d "$common" ]; then
    ln -sfn "$common" "$src"
    log "linked $src -> $common"
  fi
fi

mountpoint -q /sys/kernel/tracing || mount -t tracefs tracefs /sys/kernel/tracing
if [ ! -e /sys/kernel/debug/tracing/events ] && [ -d /sys/kernel/debug ]; then
  mountpoint -q /sys/kernel/debug || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null || true
fi
mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf
if ! mount | grep -q '^cgroup2 on '; then
  mkdir -p /sys/fs/cgroup/unified
  mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
fi

if [ -n "$venv" ]; then
  site=$("$venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  src=/usr/lib/python3/dist-packages/bcc
  [ -d "$src" ] || { log "Debian's bcc is not at $src"; exit 1; }
  if [ "$(readlink "$site/bcc" 2>/dev/null)" != "$src" ]; then
    ln -sfn "$src" "$site/bcc"
    log "linked bcc into $site"
  fi
fi
