#!/usr/bin/env bash
# The main job on a fresh machine, offline: install, build, build a gallery
# from the demo product photos, recognise the demo conveyor scenes, print the
# answers and write annotated images to out/demo/.
set -euo pipefail
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
exit "$status"
