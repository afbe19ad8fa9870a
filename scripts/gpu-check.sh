#!/usr/bin/env bash
# GPU checks, from binaries built on another machine.
#
#   scripts/gpu-check.sh --pack DIR [--cuda 13|12]   # build machine: build the test binary (its gpu:: tests run there) into DIR, and DIR.tar.gz
#   scripts/gpu-check.sh --models-out | --models-in  # build machine: move the demo models out of the tree the device tool sends, and back
#   scripts/gpu-check.sh --models-parts              # build machine: the two demo models the pipeline test needs, cut into parts to carry (docs/GPU.md)
#   scripts/gpu-check.sh DIR.tar.gz                  # GPU machine (no Rust needed): run them (DIR works too)
#
# Carry DIR.tar.gz: about 24 MB, where DIR is about 65 MB (OpenBLAS alone is
# 35 MB). The device tool sends the working tree and the carried files, at
# most 64 MiB together; the tracked tree is 94 MB, 75 MB of it the three
# demo models, which these checks do not use: --models-out moves them into
# .deps/ (ignored, so not sent) for the device call, --models-in puts them
# back. --pack prints what would be sent.
#
# On the GPU machine a test that reports "skipped: no CUDA device" is a
# failure: the point of running here is that the device exists.
set -euo pipefail

# What the device tool would send: files git tracks or does not ignore, as
# they are in the working tree, plus what is carried.
sent_bytes() {
  { git ls-files -z --cached --others --exclude-standard | xargs -0 -r stat -c %s -- 2>/dev/null || true; } \
    | awk '{s += $1} END {print s + 0}'
}

if [[ "${1:-}" == "--models-out" || "${1:-}" == "--models-in" ]]; then
  cd "$(dirname "$0")/.."
  aside=.deps/demo-models-aside
  mkdir -p "$aside"
  for m in det_nms.onnx det_prenms.onnx rec.onnx; do
    if [[ "$1" == "--models-out" && -f "engines/demo/$m" ]]; then mv "engines/demo/$m" "$aside/"; fi
    if [[ "$1" == "--models-in" && -f "$aside/$m" ]]; then mv "$aside/$m" engines/demo/; fi
  done
  echo "gpu-check: the working tree the device tool sends is now $(( $(sent_bytes) / 1048576 )) MiB" >&2
  exit 0
fi

if [[ "${1:-}" == "--models-parts" ]]; then
  cd "$(dirname "$0")/.."
  src=engines/demo
  [[ -f "$src/rec.onnx" ]] || src=.deps/demo-models-aside
  bash scripts/gpu/parts.sh cut models .deps/device-parts "$src/det_prenms.onnx" "$src/rec.onnx"
  echo "carry these, one line a device call, before the call that runs gpu-check.sh:" >&2
  bash scripts/gpu/parts.sh plan models .deps/device-parts
  exit 0
fi

if [[ "${1:-}" == "--pack" ]]; then
  out=${2:?usage: gpu-check.sh --pack DIR [--cuda 12|13]}
  cuda=13 # the GPU test machine's CUDA
  [[ "${3:-}" == "--cuda" ]] && cuda=${4:?--cuda 12 or 13}
  cd "$(dirname "$0")/.."
  mkdir -p "$out"
  features=(--no-default-features --features "cuda-$cuda")
  echo "building GPU test binaries (CUDA $cuda) into $out" >&2
  cargo test --release --locked "${features[@]}" --test it --no-run --message-format=json \
    | python3 -c '
import json, shutil, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "it":
        shutil.copy(m["executable"], sys.argv[1] + "/gpu")
' "$out"
  test -x "$out/gpu"
  strip --strip-debug "$out/gpu"
  # The preprocessing kernels are checked against OpenCV's levels, computed
  # here: the GPU machine has no OpenCV.
  SHITU_GPU_REFERENCE="$out/preprocess-reference.bin" \
    cargo test --release --locked "${features[@]}" --test it -- --ignored --exact preprocess_kernels::write_gpu_reference
  # The GPU machine (a bare Ubuntu) lacks BLAS/LAPACK (faiss links them) and
  # OpenCV's core (the library links it): carry every shared library the
  # binary needs except glibc's and the C++ runtime, which it has, newer.
  mkdir -p "$out/lib"
  ldd "$out/gpu" | awk '/=> \//{print $3}' \
    | grep -vE '/(libc|libm|libdl|librt|libpthread|libgcc_s|libstdc\+\+|ld-linux[^/]*)\.so' \
    | xargs -r -I{} cp -L {} "$out/lib/"
  # The device compares the kernels with its own cv2.resize (scripts/gpu/compare_cv2.py).
  cp scripts/gpu/compare_cv2.py scripts/gpu/baseline_torch.py "$out/"
  tar -C "$(dirname "$out")" -czf "$out.tar.gz" "$(basename "$out")"
  du -sh "$out" "$out.tar.gz" >&2
  tree=$(sent_bytes)
  pack=$(stat -c %s "$out.tar.gz")
  echo "gpu-check: the device tool would send the tree ($((tree / 1048576)) MiB) and the pack ($((pack / 1048576)) MiB): $(((tree + pack) / 1048576)) of 64 MiB" >&2
  if (( tree + pack > 64 * 1048576 )); then
    echo "gpu-check: over the device tool's 64 MiB: run scripts/gpu-check.sh --models-out before the device call (--models-in after)" >&2
  fi
  echo "carry $out.tar.gz, then run: scripts/gpu-check.sh $out.tar.gz" >&2
  exit 0
fi

dir=${1:?usage: gpu-check.sh DIR.tar.gz or DIR (made by gpu-check.sh --pack DIR)}
if [[ "$dir" == *.tar.gz ]]; then
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar -C "$unpacked" -xzf "$dir"
  dir=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d | head -1)
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
else
  echo "gpu-check: nvidia-smi not found; this does not look like a GPU machine" >&2
fi
# shellcheck source=scripts/gpu/device-env.sh
source "$(dirname "$0")/gpu/device-env.sh"
status=0
export SHITU_GPU_REFERENCE="$dir/preprocess-reference.bin"
for t in "$dir"/gpu; do
  name=$(basename "$t")
  echo "== $name"
  log=$(mktemp)
  if ! "$t" gpu:: --nocapture --test-threads 1 2>&1 | tee "$log"; then
    echo "gpu-check: $name FAILED" >&2
    status=1
  elif grep -q "skipped: no CUDA device" "$log"; then
    echo "gpu-check: $name skipped its GPU tests on a GPU machine: that is a failure here" >&2
    status=1
  fi
  rm -f "$log"
done
if [[ $status == 0 ]]; then
  echo "== the kernels on the GPU against this machine's cv2.resize"
  kout=$(mktemp -d)
  if SHITU_KERNEL_OUT="$kout" "$dir/gpu" --ignored --exact gpu::write_kernel_outputs --nocapture --test-threads 1; then
    python3 "$dir/compare_cv2.py" "$kout" || status=1
  else
    status=1
  fi
  rm -rf "$kout"
fi
if [[ $status == 0 ]]; then
  echo "== GPU preprocessing benchmark (vs device copy bandwidth and OpenCV on this machine's CPU)"
  "$dir/gpu" --ignored --exact gpu::gpu_preprocess_benchmark --nocapture --test-threads 1 || status=1
  echo "== the same resize and normalisation in torch on this device (the same-run baseline)"
  python3 "$dir/baseline_torch.py" || status=1
  echo "== GPU search benchmark (CUDA flat vs faiss Flat on this machine's CPU)"
  "$dir/gpu" --ignored --exact gpu::gpu_search_benchmark --nocapture --test-threads 1 || status=1
  echo "== the whole frame: GPU path against host preprocessing and search (CPU provider)"
  "$dir/gpu" --ignored --exact gpu::gpu_pipeline_benchmark --nocapture --test-threads 1 || status=1
fi
if [[ $status == 0 ]]; then echo "gpu-check: all GPU checks passed"; fi
exit $status
