#!/usr/bin/env bash
# How much of a line's traffic one mosquitto carries, with the shipped
# config/mosquitto.conf (persistence, 1 s autosave), on this machine:
#   1. connections: CLIENTS idle persistent clients with a subscription each
#      (boxes, controllers, dashboards): the broker's resident memory;
#   2. throughput: MESSAGES QoS 1 requests of SIZE bytes (a JPEG frame in
#      base64) published on a line topic and taken by BOXES subscribers of a
#      shared subscription, as boxes of a line take them; wall time, and the
#      broker's own CPU seconds (from /proc), so the result does not depend
#      on the clients' cost.
# Prints the lines docs/FLEET.md quotes.
#   MESSAGES=4000 SIZE=150000 BOXES=8 CLIENTS=500 bench/broker.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MESSAGES="${MESSAGES:-4000}"
SIZE="${SIZE:-150000}"
BOXES="${BOXES:-8}"
CLIENTS="${CLIENTS:-500}"
OUT=bench/out/broker
rm -rf "$OUT" && mkdir -p "$OUT"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user=""; [ "$(id -u)" -eq 0 ] && user="user root"
{ cat config/mosquitto.conf; printf '%s\nlistener %s 127.0.0.1\nallow_anonymous true\npersistence_location %s/\nmax_connections -1\n' "$user" "$port" "$PWD/$OUT"; } > "$OUT/mosquitto.conf"
/usr/sbin/mosquitto -c "$OUT/mosquitto.conf" 2>"$OUT/mosquitto.err" &
broker=$!
pids=()
trap 'kill $broker "${pids[@]}" 2>/dev/null || true' EXIT
sleep 0.5
cpu() { awk '{print ($14 + $15) / 100}' "/proc/$broker/stat"; } # utime+stime, USER_HZ=100
rss() { awk '/VmRSS/ {print $2}' "/proc/$broker/status"; }

# Connections first: after the throughput phase the broker's heap holds room
# freed by the messages, and new clients would not show in its RSS.
rss0=$(rss)
for c in $(seq 1 "$CLIENTS"); do
  mosquitto_sub -p "$port" -i "idle$c" -c -q 1 -t "shitu/box$c/recognize" > /dev/null &
  pids+=($!)
done
connected=0
for _ in $(seq 1 60); do
  connected=$(ss -Htn state established "( sport = :$port )" | wc -l)
  [ "$connected" -ge "$CLIENTS" ] && break
  sleep 0.5
done
sleep 1
rss1=$(rss)
echo "connections: $connected idle persistent clients with a subscription each: broker RSS ${rss0} kB -> ${rss1} kB ($(( (rss1 - rss0) / connected )) kB per client)"
kill "${pids[@]}" 2>/dev/null || true
pids=()
python3 - "$MESSAGES" "$SIZE" > "$OUT/requests.txt" <<'PY'
import base64, os, sys
n, size = int(sys.argv[1]), int(sys.argv[2])
body = base64.b64encode(os.urandom(size * 3 // 4)).decode()
for i in range(n):
    print('{"request_id":"r%d","image":"%s"}' % (i, body))
PY
per=$(( MESSAGES / BOXES ))
for b in $(seq 1 "$BOXES"); do
  mosquitto_sub -p "$port" -i "box$b" -c -q 1 -t '$share/l1/shitu/line/l1/recognize' -C "$per" > /dev/null &
  pids+=($!)
done
sleep 1
cpu0=$(cpu); t0=$(date +%s.%N)
mosquitto_pub -p "$port" -i ctl -q 1 -t shitu/line/l1/recognize -l < "$OUT/requests.txt"
wait "${pids[@]}"
t1=$(date +%s.%N); cpu1=$(cpu)
pids=()
python3 - "$MESSAGES" "$SIZE" "$BOXES" "$t0" "$t1" "$cpu0" "$cpu1" <<'PY'
import sys
n, size, boxes, t0, t1, c0, c1 = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), *map(float, sys.argv[4:])
wall, cpu = t1 - t0, c1 - c0
print(f"throughput: {n} requests of {size} B to {boxes} boxes (shared subscription, QoS 1) in {wall:.1f} s: "
      f"{n / wall:.0f} requests/s, {n * size / wall / 1e6:.0f} MB/s; broker CPU {cpu:.1f} s = "
      f"{n / max(cpu, 1e-9):.0f} requests per broker CPU second")
PY

echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(/usr/sbin/mosquitto -h | head -1)"
