#!/usr/bin/env bash
# Boots a real systemd (PID 1 of its own PID namespace) on a throw-away
# overlay of this machine's root, with an installed shitu-edge layout on top,
# so that the unit runs exactly as on a box: sysusers and tmpfiles at boot,
# then shitu-edge.service with its whole sandbox. Used by
# tests/it/systemd_boot.rs; handy by hand to try a unit change:
#
#   DESTDIR=/tmp/s/dest bash scripts/install.sh
#   bash tests/systemd/boot.sh /tmp/s &          # root only
#   nsenter -t "$(cat /tmp/s/pid)" -a systemctl status shitu-edge
#
# STAGE (the one argument) holds `dest/` (files laid over /) and gets
# `console.log` (systemd's own log) and `pid` (PID 1's pid outside).
#
# Nothing here writes to the host: the overlay's upper layer, /run, /tmp and
# /dev are fresh tmpfs mounts of a private mount namespace; /proc/sys and
# /sys are read-only. (systemd-tmpfiles at boot empties /tmp: on a shared
# /tmp it would wipe the host's.) The network namespace is the host's, so
# the service reaches a broker on the host's loopback.
set -euo pipefail
stage=$(realpath "$1")

if [ "${2:-}" != --inner ]; then
  # Exit 77: this machine cannot run it (the test then says it skipped, and why).
  [ "$(id -u)" = 0 ] || { echo "boot.sh: needs root (mount and PID namespaces)" >&2; exit 77; }
  unshare --pid --fork --mount --cgroup true 2>/dev/null ||
    { echo "boot.sh: this machine does not allow new PID, mount and cgroup namespaces" >&2; exit 77; }
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null ||
    { echo "boot.sh: no overlay filesystem in this kernel" >&2; exit 77; }
  [ -x /usr/lib/systemd/systemd ] || { echo "boot.sh: systemd is not installed" >&2; exit 77; }
  # A cgroup of our own on the v2 hierarchy: systemd manages its cgroup
  # namespace root, which then is this one and not the host's.
  for v2 in /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ -f "$v2/cgroup.procs" ] && grep -q " $v2 cgroup2 " /proc/mounts; then
      cg="$v2/shitu-boot-$$"
      mkdir -p "$cg" && echo $$ > "$cg/cgroup.procs"
      echo "$cg" > "$stage/cgroup"
      break
    fi
  done
  [ -s "$stage/cgroup" ] || { echo "boot.sh: no writable cgroup v2 hierarchy" >&2; exit 77; }
  # --kill-child: whatever ends unshare (the trap below, say) ends the whole container.
  unshare --pid --fork --kill-child --mount --uts --ipc --cgroup --propagation private "$0" "$stage" --inner &
  u=$!
  trap 'kill -9 $u 2>/dev/null' TERM INT
  for _ in $(seq 100); do
    child=$(cat "/proc/$u/task/$u/children" 2>/dev/null || true)
    [ -n "$child" ] && { echo "$child" > "$stage/pid"; break; }
    sleep 0.05
  done
  wait $u
  exit
fi

exec >"$stage/console.log" 2>&1
layers="$stage/layers"
mkdir -p "$layers"
mount -t tmpfs -o mode=0755 layers "$layers"
mkdir "$layers/upper" "$layers/work" "$layers/root"
r="$layers/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$layers/upper,workdir=$layers/work" "$r"
cp -a "$stage/dest/." "$r/"
# A first boot: no fstab mounts, and /etc "needs update", so that
# systemd-sysusers.service (ConditionNeedsUpdate=/etc) creates the user.
: >"$r/etc/fstab"
rm -f "$r/etc/.updated" "$r/var/.updated"

mount -t proc proc "$r/proc"
mount --bind "$r/proc/sys" "$r/proc/sys"
mount -o remount,bind,ro "$r/proc/sys"
mount -t sysfs -o ro sysfs "$r/sys"
mount -t cgroup2 cgroup2 "$r/sys/fs/cgroup"
mount -t tmpfs -o mode=0755 dev "$r/dev"
for n in null zero full random urandom tty; do
  touch "$r/dev/$n"
  mount --bind "/dev/$n" "$r/dev/$n"
done
# systemd's own messages before journald runs (and if it never does).
touch "$r/dev/console"
mount --bind "$stage/console.log" "$r/dev/console"
mkdir "$r/dev/pts" "$r/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$r/dev/pts"
ln -s pts/ptmx "$r/dev/ptmx"
mount -t tmpfs -o mode=1777 tmp "$r/tmp"
mount -t tmpfs -o mode=0755 run "$r/run"

# Boot into a target that wants only shitu-edge; units that would touch the
# hardware or the kernel's global settings are masked.
mkdir -p "$r/run/systemd/system"
cat >"$r/run/systemd/system/shitu-check.target" <<'UNIT'
[Unit]
Description=shitu-edge boot check
Wants=shitu-edge.service
UNIT
for u in systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
  systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service \
  systemd-modules-load.service systemd-sysctl.service systemd-binfmt.service \
  proc-sys-fs-binfmt_misc.automount systemd-remount-fs.service systemd-random-seed.service \
  systemd-networkd.service systemd-resolved.service systemd-timesyncd.service \
  getty.target console-getty.service cron.service ssh.service mosquitto.service; do
  ln -sf /dev/null "$r/run/systemd/system/$u"
done

cd "$r"
mkdir -p .oldroot
pivot_root . .oldroot
cd /
umount -l /.oldroot
rmdir /.oldroot 2>/dev/null || true
export container=shitu-check
exec /usr/lib/systemd/systemd --unit=shitu-check.target --show-status=no
