#!/usr/bin/env bash
# shitu-edge against PaddleClas's own PP-ShiTu pipeline, same weights, same
# scenes, same machine, one after the other in one run. Writes
# bench/out/{shitu_b1,shitu_b4,paddleclas}.json and prints the comparison table that
# docs/BENCHMARKS.md quotes.
#   ROUNDS=3 bench/compare.sh
# The Paddle weights come from the shared test data (SHARED, default ../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SHARED="${SHARED:-../shared}"
SCENES=tests/data/images/scenes
OUT=bench/out
mkdir -p "$OUT"

bash scripts/setup.sh
if [ ! -x bench/.venv/bin/python ]; then
  echo "compare: creating bench/.venv with PaddlePaddle 3.3.1 + paddleclas 2.6.0 (a few minutes)" >&2
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install -q -r bench/requirements.txt
  bench/.venv/bin/pip install -q --no-deps paddleclas==2.6.0
fi
cargo build --release --locked
shitud=target/release/shitud

rm -rf "$OUT/gallery"
$shitud -q gallery build --list tests/data/images/gallery.txt --image-root tests/data/images --out "$OUT/gallery"
# One process per batch size, so each peak RSS belongs to one configuration.
for b in 1 4; do
  echo "compare: shitu-edge, batch $b ($ROUNDS rounds)" >&2
  $shitud -q bench --index "$OUT/gallery" --batch "$b" --det-batch "$b" --rounds "$ROUNDS" --json "$OUT/shitu_b$b.json" "$SCENES"
done
echo "compare: PaddleClas ($ROUNDS rounds)" >&2
bench/.venv/bin/python bench/paddleclas_bench.py \
  --det-model "$SHARED/models/paddle/det_nms" --rec-model "$SHARED/models/paddle/rec" \
  --index tests/data/reference/paddleclas_index --rounds "$ROUNDS" \
  --json "$OUT/paddleclas.json" "$SCENES"/*.jpg 2>/dev/null >/dev/null
python3 bench/report.py "$OUT/paddleclas.json" "$OUT/shitu_b1.json" "$OUT/shitu_b4.json" | tee "$OUT/report.md"
