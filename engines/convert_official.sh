#!/usr/bin/env bash
# Converts the official PP-ShiTuV2 Paddle inference models into the three ONNX
# files shitu-edge runs:
#   det_nms.onnx     PicoDet-LCNet_x2_5 mainbody, NMS in the graph (paddle2onnx, opset 11)
#   det_prenms.onnx  the same graph cut before its NMS (engines/cut_nms.py): batches
#   rec.onnx         PPLCNetV2_base ShiTu recogniser
#
#   engines/convert_official.sh [OUT_DIR]        (default engines/official)
#
# Needs network access to PaddleClas's model download host and to PyPI. CI
# machines have neither host, so CI does not run this script; the demo models
# in engines/demo were made the same way from stand-in weights, and
# cut_nms.py's output was checked bit-identical to a direct pre-NMS export.
# Already downloaded? Set DET_TAR / REC_TAR to the .tar files.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-engines/official}"
BASE="https://paddle-imagenet-models-name.bj.bcebos.com/dygraph/rec/models/inference"
DET_TAR="${DET_TAR:-}"
REC_TAR="${REC_TAR:-}"
DET_NAME=picodet_PPLCNet_x2_5_mainbody_lite_v1.0_infer
REC_NAME=general_PPLCNetV2_base_pretrained_v1.0_infer

say() { printf '\033[1mconvert:\033[0m %s\n' "$*" >&2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

say "tools: paddle2onnx, onnx, onnxruntime in $work/venv"
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q paddle2onnx onnx onnxruntime numpy
py="$work/venv/bin/python"

fetch() { # name, preset tar
  local name=$1 tar=$2
  if [ -z "$tar" ]; then
    tar="$work/$name.tar"
    say "downloading $name"
    curl -fL --retry 3 -o "$tar" "$BASE/$name.tar" \
      || { say "download failed: this machine cannot reach the model host (set DET_TAR/REC_TAR to local copies)"; exit 1; }
  fi
  tar -xf "$tar" -C "$work"
  [ -d "$work/$name" ] || { say "$tar does not contain $name/"; exit 1; }
}
fetch "$DET_NAME" "$DET_TAR"
fetch "$REC_NAME" "$REC_TAR"

convert() { # model dir, out file
  local dir=$1 out=$2 model=inference.pdmodel
  [ -f "$dir/$model" ] || model=inference.json  # Paddle 3 (PIR) inference models
  "$work/venv/bin/paddle2onnx" --model_dir "$dir" --model_filename "$model" \
    --params_filename inference.pdiparams --save_file "$out" --opset_version 11 --enable_onnx_checker True
}
mkdir -p "$OUT"
say "converting the detector (NMS in graph)"
convert "$work/$DET_NAME" "$OUT/det_nms.onnx"
say "cutting the detector before its NMS"
"$py" engines/cut_nms.py "$OUT/det_nms.onnx" "$OUT/det_prenms.onnx"
say "converting the recogniser"
convert "$work/$REC_NAME" "$OUT/rec.onnx"
(cd "$OUT" && sha256sum ./*.onnx)
say "done. Build a gallery with: shitud gallery build --rec-model $OUT/rec.onnx --list LIST --image-root DIR --out GALLERY"
say "then: shitud recognize --det-model $OUT/det_prenms.onnx --rec-model $OUT/rec.onnx --index GALLERY IMAGES..."
