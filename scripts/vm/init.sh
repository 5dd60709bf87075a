#!/bin/busybox sh
# The guest's PID 1, stage 1 (in the initramfs): load the 9p modules, mount the host's root
# read-only over 9p, put tmpfs over the places that must be writable, mount the kernel's
# filesystems under it and switch_root into it; stage2.sh then runs the command.
# Anything that fails here reports "fail <why>" on the second serial port (ttyS1), which
# the host reads, and powers off.
/bin/busybox --install -s /bin
export PATH=/bin

status() { echo "$*" > /dev/ttyS1; }
die() { echo "palisade-vm: $*" > /dev/ttyS0; status "fail $*"; sync; reboot -f; exit 1; }

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# Let go of the console the kernel opened for PID 1, so the command holds ttyS0 alone (stage2.sh).
exec < /dev/null > /dev/null 2>&1
. /palisade/config

while read -r m; do
  insmod "/modules/$m.ko" || die "insmod $m failed"
done < /modules/order

# cache=loose: the root is read-only for the guest's lifetime, so cached lookups stay right
# and spare a 9p round trip per path component (most of the cost under TCG).
mount -t 9p -o "trans=virtio,version=9p2000.L,ro,cache=loose,msize=512000" hostroot /newroot \
  || die "cannot mount the host root over 9p"

R=/newroot
# copies first: a tmpfs mounted over a directory hides what the 9p root has there
i=0
for w in $WRITABLE; do
  [ -d "$R$w" ] || die "--writable $w: no such directory on the host"
  mkdir -p "/copy/$i" && cp -a "$R$w/." "/copy/$i/" || die "cannot copy $w"
  i=$((i + 1))
done
# the guest kernel's own modules at the usual place, for modprobe inside (bound before the
# tmpfs mounts below, which would hide a cache kept under /tmp or /var/tmp)
if [ -n "$KMODS" ] && [ -d "$R$KMODS" ]; then
  mount -t tmpfs tmpfs "$R/lib/modules" && mkdir -p "$R/lib/modules/$(uname -r)" \
    && mount --bind "$R$KMODS" "$R/lib/modules/$(uname -r)"
fi
# the command's directory (read-only, from the host root) when a tmpfs below would hide it
if [ -n "$KEEP" ]; then
  [ -d "$R$KEEP" ] || die "--cwd $KEEP: no such directory on the host"
  mkdir -p /keep && mount --bind "$R$KEEP" /keep || die "cannot keep $KEEP"
fi
# not /root: the project's venv may link into it (pyenv); HOME is a directory in /tmp instead
for d in tmp var/tmp run; do
  [ -d "$R/$d" ] && mount -t tmpfs -o mode=1777 tmpfs "$R/$d"
done
mkdir -m 700 "$R/tmp/home"
mount -t proc proc "$R/proc" || die "mount proc"
mount -t sysfs sysfs "$R/sys" || die "mount sysfs"
mount -t devtmpfs devtmpfs "$R/dev" || die "mount devtmpfs"
mkdir -p "$R/dev/pts" "$R/dev/shm"
mount -t devpts devpts "$R/dev/pts"
mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
mount -t bpf bpf "$R/sys/fs/bpf" || die "mount bpffs"
mount -t tracefs tracefs "$R/sys/kernel/tracing" || die "mount tracefs"
mount -t debugfs debugfs "$R/sys/kernel/debug" || die "mount debugfs"
mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup" || die "mount cgroup2"
i=0
for w in $WRITABLE; do
  mkdir -p "$R$w" 2>/dev/null  # under /tmp or /var/tmp it is gone below the tmpfs
  mount -t tmpfs tmpfs "$R$w" && cp -a "/copy/$i/." "$R$w/" || die "cannot make $w writable"
  i=$((i + 1))
done
if [ -n "$KEEP" ]; then
  mkdir -p "$R$KEEP" && mount --move /keep "$R$KEEP" || die "cannot put $KEEP back"
fi
ip link set lo up 2>/dev/null
mkdir -p "$R/run/palisade-vm"
cp /palisade/cmd.sh /stage2.sh "$R/run/palisade-vm/" || die "cannot copy the command into the guest"
[ -x "$R/bin/busybox" ] || die "the host has no /bin/busybox (busybox-static)"
# switch_root, not chroot: the host root becomes the root of the mount tree, so paths that the
# kernel (and a BPF program walking dentries) reports are the host's, not /newroot/...
exec switch_root "$R" /bin/busybox sh /run/palisade-vm/stage2.sh
die "switch_root failed"
