#!/usr/bin/env bash
# The main job on a fresh machine, offline: install, build, build a gallery
# from the demo product photos, recognise the demo conveyor scenes, print the
# answers and write annotated images to out/demo/.
#
#   bash scripts/demo.sh --serve   then also runs the daemon as a box would:
#     a local mosquitto, a camera playing the demo scenes in a loop (a gst:
#     source, one scene a second), continuous mode and a trigger every 3 s;
#     prints the operator page's address and serves until Ctrl-C.
set -euo pipefail
serve=0
[ "${1:-}" = "--serve" ] && serve=1
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source scripts/env.sh
echo "building shitud (release; the first build compiles OpenCV bindings and faiss, ~5 min)" >&2
cargo build --release --locked
shitud=target/release/shitud

rm -rf engines/demo/gallery  # rebuilt from the photos on every run
$shitud gallery build \
  --rec-model engines/demo/rec.onnx \
  --list tests/data/images/gallery.txt --image-root tests/data/images \
  --out engines/demo/gallery

mkdir -p out/demo
set +e
$shitud recognize \
  --det-model engines/demo/det_prenms.onnx --rec-model engines/demo/rec.onnx \
  --index engines/demo/gallery --draw out/demo/annotated \
  tests/data/images/scenes | tee out/demo/results.jsonl
status=${PIPESTATUS[0]}
set -e
echo "answers: out/demo/results.jsonl   annotated images: out/demo/annotated/" >&2
[ "$serve" = 1 ] || exit "$status"

# ---- the daemon, its broker, a camera and a line controller (--serve) ----
run=out/demo/serve
rm -rf "$run" && mkdir -p "$run"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
broker_port=$(free_port)
http_port=${SHITU_DEMO_HTTP_PORT:-8080}
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$broker_port" > "$run/mosquitto.conf"
mosquitto -c "$run/mosquitto.conf" > "$run/mosquitto.log" 2>&1 &
pids=($!)
stop() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM
sleep 0.5
# What the box says on MQTT (answers, detections, unknown items, status).
mosquitto_sub -p "$broker_port" -v -t 'shitu/demo/#' > "$run/mqtt.log" 2>&1 &
pids+=($!)
scenes="$PWD/tests/data/images/scenes/scene_%05d.jpg"
cat > "$run/shitud.toml" <<EOF_CONF
[detector]
model = "engines/demo/det_prenms.onnx"
[embedder]
model = "engines/demo/rec.onnx"
[search]
index = "engines/demo/gallery"
[mqtt]
port = $broker_port
device_id = "demo"
[http]
listen = "127.0.0.1:$http_port"
[daemon]
spool_dir = "$run/spool"
[capture]
unknown_dir = "$run/unknown"
[[sources]]
name = "conveyor"
uri = 'gst:multifilesrc location=$scenes loop=true caps=image/jpeg,framerate=1/1 ! jpegdec ! videoconvert ! videoscale ! video/x-raw,width=960,height=600,pixel-aspect-ratio=1/1 ! appsink name=sink'
fps = 1
EOF_CONF
$shitud run --config "$run/shitud.toml" > "$run/shitud.log" 2>&1 &
pids+=($!)
for _ in $(seq 120); do
  grep -q "shitud serving" "$run/shitud.log" 2>/dev/null && break
  kill -0 "${pids[2]}" 2>/dev/null || { cat "$run/shitud.log" >&2; exit 1; }
  sleep 0.5
done
( n=0; while sleep 3; do n=$((n+1))
    mosquitto_pub -p "$broker_port" -t shitu/demo/trigger -m "{\"request_id\":\"demo-$n\",\"source\":\"conveyor\"}" 2>/dev/null || true
  done ) &
pids+=($!)
echo "the operator's page: http://127.0.0.1:$http_port/   (daemon log: $run/shitud.log; MQTT: $run/mqtt.log; Ctrl-C stops)" >&2
wait "${pids[2]}"
