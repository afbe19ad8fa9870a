#!/usr/bin/env bash
# The whole pipeline on ONNX Runtime's CUDA provider, on the GPU test
# machine, against the CPU's answers (tests/it/gpu.rs,
# gpu_pipeline_answers_like_the_cpu with SHITU_TEST_PROVIDER=cuda): the
# preprocessing kernels write the engines' inputs on the device, ONNX
# Runtime reads them there on the same stream, the recogniser's output is
# normalised and searched there.
#
#   scripts/gpu-ort-check.sh --prepare [VERSION]   # here: cut the onnxruntime-gpu wheel's libraries into parts; print the device calls
#   scripts/gpu-ort-check.sh DIR.tar.gz            # there, in the last call: join the parts, run the check
#
# That machine has no network and a CPU-only onnxruntime; the
# onnxruntime-gpu wheel (CUDA 13 from 1.31; about 255 MB) is over what one
# device call may carry (64 MiB with the working tree), so its three
# libraries travel xz-compressed in parts of at most 45 MiB over
# consecutive calls while the machine stays warm (docs/GPU.md gives the
# sequence). TensorRT cannot be installed there: the TensorRT provider is
# not checked. CUDA's own libraries (cuBLAS, cuDNN, the runtime) are the
# machine's, from NVIDIA's wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
parts=.deps/device-parts

if [[ "${1:-}" == "--prepare" ]]; then
  version=${2:-$(cat .deps/onnxruntime/VERSION 2>/dev/null || echo 1.31.1)}
  wheels=.deps/ort-gpu-wheel
  mkdir -p "$wheels"
  if ! ls "$wheels"/onnxruntime_gpu-"$version"-*.whl >/dev/null 2>&1; then
    echo "gpu-ort-check: downloading onnxruntime-gpu $version" >&2
    python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
      --python-version 3.12 -d "$wheels" "onnxruntime-gpu==$version"
  fi
  libs=$(mktemp -d)
  trap 'rm -rf "$libs"' EXIT
  python3 - "$wheels"/onnxruntime_gpu-"$version"-*.whl "$libs" <<'PY'
import pathlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    for n in z.namelist():
        base = n.rsplit("/", 1)[-1]
        if "/capi/" in n and base.startswith(("libonnxruntime.so", "libonnxruntime_providers_shared", "libonnxruntime_providers_cuda")):
            # libonnxruntime.so.VERSION is what the library's own soname says.
            pathlib.Path(sys.argv[2], base).write_bytes(z.read(n))
PY
  ls -l "$libs" >&2
  bash scripts/gpu/parts.sh cut ort-gpu "$parts" "$libs"/*
  echo "$version" > "$parts/ort-gpu.version"
  echo "gpu-ort-check: carry these, one line a device call (the first call also .deps/device-parts/ort-gpu.version):" >&2
  bash scripts/gpu/parts.sh plan ort-gpu "$parts"
  echo "gpu-ort-check: and the demo models (scripts/gpu-check.sh --models-parts), then the pack with: scripts/gpu-ort-check.sh gpu-pack.tar.gz" >&2
  exit 0
fi

dir=${1:?usage: gpu-ort-check.sh --prepare [VERSION] | DIR.tar.gz (made by gpu-check.sh --pack)}
if [[ "$dir" == *.tar.gz ]]; then
  unpacked=$(mktemp -d)
  trap 'rm -rf "$unpacked"' EXIT
  tar -C "$unpacked" -xzf "$dir"
  dir=$(find "$unpacked" -mindepth 1 -maxdepth 1 -type d | head -1)
fi
ort=$(mktemp -d)
bash scripts/gpu/parts.sh join ort-gpu "$parts" "$ort"
version=$(cat "$parts/ort-gpu.version" 2>/dev/null || true)
lib=$(find "$ort" -name "libonnxruntime.so*" | head -1)
[[ -n "$lib" ]] || { echo "gpu-ort-check: no libonnxruntime.so in the parts" >&2; exit 1; }
export ORT_DYLIB_PATH="$lib"
# shellcheck source=scripts/gpu/device-env.sh
source scripts/gpu/device-env.sh
export LD_LIBRARY_PATH="$ort:$LD_LIBRARY_PATH"
echo "gpu-ort-check: ONNX Runtime ${version:-?} with the CUDA provider from $ort" >&2
missing=$(ldd "$ort/libonnxruntime_providers_cuda.so" | awk '/not found/{print $1}')
if [[ -n "$missing" ]]; then
  echo "gpu-ort-check: the CUDA provider needs libraries this machine lacks: $missing" >&2
  exit 1
fi
log=$(mktemp)
status=0
SHITU_TEST_PROVIDER=cuda "$dir/gpu" --exact gpu::gpu_pipeline_answers_like_the_cpu --nocapture --test-threads 1 2>&1 | tee "$log" || status=1
if grep -q "skipped:" "$log"; then
  echo "gpu-ort-check: the check skipped on a GPU machine: that is a failure here" >&2
  status=1
fi
if [[ $status == 0 ]]; then
  echo "gpu-ort-check: the pipeline on the CUDA provider answers as on the CPU"
  echo "== the whole frame on the CUDA provider: GPU path against host preprocessing and search"
  SHITU_TEST_PROVIDER=cuda "$dir/gpu" --ignored --exact gpu::gpu_pipeline_benchmark --nocapture --test-threads 1 || status=1
fi
exit $status
