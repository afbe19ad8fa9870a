#!/usr/bin/env bash
# Lays out an installed shitu-edge under $DESTDIR (default: /), the same
# files the Yocto recipe installs, for a Debian/Ubuntu box (or a Jetson)
# without Yocto:
#
#   /usr/bin/shitud                                  the daemon and CLI
#   /usr/lib/shitu-edge/libonnxruntime.so            ONNX Runtime (unless ORT_LIB="" : use the system's)
#   /usr/share/shitu-edge/engines/{det_prenms,rec}.onnx   models
#   /usr/share/shitu-edge/gallery/                   first-boot gallery (if engines/demo/gallery was built)
#   /usr/lib/systemd/system/shitu-edge.service       the unit
#   /usr/lib/sysusers.d/shitu-edge.conf              the shitu-edge user
#   /usr/lib/tmpfiles.d/shitu-edge.conf              state, cache and spool directories
#   /etc/shitu-edge/config.toml                      service settings (kept if present)
#   /usr/share/doc/shitu-edge/                       MQTT.md, the full settings reference
#   /etc/mosquitto/conf.d/shitu-edge.conf            the broker settings the delivery guarantees need (kept if present)
#
# Usage: [DESTDIR=/tmp/root] [SHITUD=target/release/shitud] bash scripts/install.sh
# Then, on the box itself (DESTDIR unset):
#   systemd-sysusers && systemd-tmpfiles --create shitu-edge.conf && systemctl enable --now shitu-edge
set -euo pipefail
cd "$(dirname "$0")/.."

DESTDIR="${DESTDIR:-}"
SHITUD="${SHITUD:-target/release/shitud}"
ORT_LIB="${ORT_LIB-.deps/onnxruntime/lib/libonnxruntime.so}"
say() { printf '\033[1minstall:\033[0m %s\n' "$*" >&2; }

if [ ! -x "$SHITUD" ]; then
  say "building $SHITUD (cargo build --release)"
  cargo build --release --locked --bin shitud
fi
d="${DESTDIR%/}"
install -D -m 0755 "$SHITUD" "$d/usr/bin/shitud"
if [ -n "$ORT_LIB" ]; then
  [ -f "$ORT_LIB" ] || { say "$ORT_LIB missing: run scripts/setup.sh, or set ORT_LIB=\"\" to use a system libonnxruntime"; exit 1; }
  install -D -m 0644 "$ORT_LIB" "$d/usr/lib/shitu-edge/libonnxruntime.so"
fi
install -D -m 0644 engines/demo/det_prenms.onnx "$d/usr/share/shitu-edge/engines/det_prenms.onnx"
install -D -m 0644 engines/demo/rec.onnx "$d/usr/share/shitu-edge/engines/rec.onnx"
if [ -d engines/demo/gallery ]; then
  rm -rf "$d/usr/share/shitu-edge/gallery"
  mkdir -p "$d/usr/share/shitu-edge"
  cp -r engines/demo/gallery "$d/usr/share/shitu-edge/gallery"
else
  say "no engines/demo/gallery (bash scripts/demo.sh builds it): the box needs a gallery in /var/lib/shitu-edge/gallery before it starts"
fi
install -D -m 0644 systemd/shitu-edge.service "$d/usr/lib/systemd/system/shitu-edge.service"
install -D -m 0644 systemd/shitu-edge.sysusers "$d/usr/lib/sysusers.d/shitu-edge.conf"
install -D -m 0644 systemd/shitu-edge.tmpfiles "$d/usr/lib/tmpfiles.d/shitu-edge.conf"
if [ -e "$d/etc/shitu-edge/config.toml" ]; then
  say "keeping $d/etc/shitu-edge/config.toml; the shipped one is config.toml.dist beside it"
  install -D -m 0644 systemd/config.toml "$d/etc/shitu-edge/config.toml.dist"
else
  install -D -m 0644 systemd/config.toml "$d/etc/shitu-edge/config.toml"
fi
install -D -m 0644 docs/MQTT.md "$d/usr/share/doc/shitu-edge/MQTT.md"
if [ -e "$d/etc/mosquitto/conf.d/shitu-edge.conf" ]; then
  say "keeping $d/etc/mosquitto/conf.d/shitu-edge.conf"
else
  # Read by Debian's mosquitto (include_dir /etc/mosquitto/conf.d) on a box
  # that runs the line's broker; harmless where mosquitto is not installed.
  install -D -m 0644 config/mosquitto.conf "$d/etc/mosquitto/conf.d/shitu-edge.conf"
fi
install -D -m 0644 config/shitu-edge.toml "$d/usr/share/doc/shitu-edge/shitu-edge.toml"
say "installed under ${DESTDIR:-/}"
