# The guest's PID 1, stage 2 (run by the host's /bin/busybox after switch_root): run the
# command and report its exit code on ttyS1, which the host reads; then power off.
# The command holds ttyS0 alone (PID 1's stdio is /dev/null), so its last close waits
# until the UART has sent every byte of its output before the exit code is written.
status() { echo "$*" > /dev/ttyS1; }
status start
/usr/bin/env -i /bin/sh /run/palisade-vm/cmd.sh < /dev/null > /dev/ttyS0 2>&1
rc=$?
sync
status "exit $rc"
/bin/busybox reboot -f
