#!/usr/bin/env bash
# The daemon end to end through a real mosquitto on loopback: requests/s and
# p50/p99 latency as a line controller sees them, at concurrency 1, 4 and 16,
# with batching off (daemon.max_batch = 1) and on (max_batch = 4), one after
# the other in one run. Prints the table docs/BENCHMARKS.md quotes, with the
# on/off ratios.
#   REQUESTS=200 bench/mqtt.sh
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS="${REQUESTS:-200}"
CONCURRENCY="${CONCURRENCY:-1,4,16}"
OUT=bench/out/mqtt
mkdir -p "$OUT"

bash scripts/setup.sh
cargo build --release --locked
shitud=target/release/shitud

rm -rf "$OUT/gallery" "$OUT/spool"
$shitud -q gallery build --list tests/data/images/gallery.txt --image-root tests/data/images --out "$OUT/gallery"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
user=""; [ "$(id -u)" -eq 0 ] && user="user root"
printf '%s\nlistener %s 127.0.0.1\nallow_anonymous true\nmax_inflight_messages 1000\n' "$user" "$port" > "$OUT/mosquitto.conf"
/usr/sbin/mosquitto -c "$OUT/mosquitto.conf" 2>/dev/null &
broker=$!
daemon=""
trap 'kill $broker ${daemon:-} 2>/dev/null || true' EXIT
sleep 0.5

for batch in 1 4; do
  echo "bench-mqtt: daemon with max_batch = $batch" >&2
  SHITU__MQTT__PORT=$port SHITU__MQTT__DEVICE_ID=bench SHITU__SEARCH__INDEX="$OUT/gallery" \
    SHITU__DAEMON__SPOOL_DIR="$OUT/spool" SHITU__DAEMON__MAX_BATCH=$batch SHITU__DAEMON__QUEUE_CAPACITY=64 \
    $shitud -q run &
  daemon=$!
  $shitud -q bench-mqtt --port "$port" --device-id bench --concurrency "$CONCURRENCY" --requests "$REQUESTS" \
    --label "max_batch $batch" --json "$OUT/batch$batch.json" tests/data/images/scenes > /dev/null
  kill -TERM $daemon; wait $daemon || true
  daemon=""
done

python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
off = {r["concurrency"]: r for r in json.load(open(f"{out}/batch1.json"))}
on = {r["concurrency"]: r for r in json.load(open(f"{out}/batch4.json"))}
print("| concurrency | batching | requests/s | p50 ms | p99 ms | mean batch | errors |")
print("|---|---|---|---|---|---|---|")
for c in sorted(off):
    for name, r in (("off", off[c]), ("on", on[c])):
        l = r["latency_ms"]
        print(f"| {c} | {name} | {r['requests_per_s']:.2f} | {l['p50']:.0f} | {l['p99']:.0f} | {r['mean_batch']:.2f} | {r['errors']} |")
print()
print("| concurrency | throughput on/off | p50 on/off | p99 on/off |")
print("|---|---|---|---|")
for c in sorted(off):
    a, b = on[c], off[c]
    print(f"| {c} | {a['requests_per_s']/b['requests_per_s']:.2f}x | {a['latency_ms']['p50']/b['latency_ms']['p50']:.2f}x | {a['latency_ms']['p99']/b['latency_ms']['p99']:.2f}x |")
PY
