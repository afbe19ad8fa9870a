#!/usr/bin/env bash
# Installs what shitu-edge needs to build and run on Debian/Ubuntu, and
# nothing that is already there. Safe to run again.
#   - Debian packages: OpenCV, clang (opencv bindings), cmake + BLAS/LAPACK (static faiss),
#     mosquitto (integration tests), systemd (unit checks), GStreamer (cameras:
#     RTSP, V4L2, files; gst-rtsp-server through PyGObject for the camera tests)
#   - oelint-adv (PyPI) in .deps/oelint/, for the Yocto layer check
#   - ONNX Runtime from the PyPI wheel, copied to .deps/onnxruntime/lib/ (scripts/fetch-ort.sh)
#   - CMake from PyPI into .deps/cmake where the system's is older than 3.24
#   - NVRTC of CUDA 12 and 13 from NVIDIA's PyPI wheels into .deps/nvrtc/<major>
#     (scripts/fetch-nvrtc.sh): CI compiles every kernel with both, no GPU needed
#   - opencv-python-headless (PyPI) in .deps/cv2/: the OpenCV build PaddleClas
#     runs on, which the preprocessing kernels are checked against
#   - with --tests (scripts/test.sh): Chromium and its WebDriver (the operator
#     page's browser test), curl and openssl (the HTTPS test)
set -euo pipefail
cd "$(dirname "$0")/.."

ORT_VERSION="${ORT_VERSION:-1.31.1}"
# libopenblas0-serial takes over libblas.so.3 (Debian alternatives) from the
# reference BLAS that static faiss links: IVF training ~8x faster (10k
# vectors, 400 lists: 15.8 s -> 2.0 s; docs/BENCHMARKS.md). The serial build,
# not the pthread one: pthread OpenBLAS busy-waits after each call and starved
# faiss's OpenMP threads (HNSW search 0.14 ms -> 8 ms).
PACKAGES=(build-essential pkg-config clang libclang-dev libopencv-dev cmake libblas-dev liblapack-dev libopenblas0-serial python3-pip mosquitto mosquitto-clients systemd python3-venv
  libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base gstreamer1.0-plugins-good
  gstreamer1.0-plugins-bad gstreamer1.0-libav gstreamer1.0-tools
  python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp)
if [ "${1:-}" = "--tests" ]; then
  PACKAGES+=(chromium chromium-driver fonts-dejavu-core curl openssl)
fi

say() { printf '\033[1msetup:\033[0m %s\n' "$*" >&2; }

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  say "installing Debian packages: ${missing[*]}"
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  say "cargo not found: install Rust 1.92 or newer (https://rustup.rs) and run this again"
  exit 1
fi

lib=.deps/onnxruntime/lib/libonnxruntime.so
bash scripts/fetch-ort.sh "$ORT_VERSION" "$(uname -m)" .deps/onnxruntime

# Static faiss needs CMake 3.24 or newer: Debian 12 and Ubuntu 24.04 have it,
# Ubuntu 22.04 (JetPack 6) has 3.22 and Ubuntu 20.04 (JetPack 5) 3.16. Then
# CMake comes from PyPI into .deps/cmake, and scripts/env.sh points cargo at it.
cmake_ok() { printf '%s\n3.24\n' "$("$1" --version 2>/dev/null | sed -n 's/^cmake version \([0-9.]*\).*/\1/p')" | sort -V -C -r 2>/dev/null; }
if ! cmake_ok cmake && ! cmake_ok .deps/cmake/bin/cmake; then
  say "cmake $(cmake --version | sed -n 's/^cmake version //p') is older than 3.24 (static faiss): installing cmake 3.31 (PyPI) into .deps/cmake"
  rm -rf .deps/cmake
  python3 -m venv .deps/cmake
  .deps/cmake/bin/pip install -q --disable-pip-version-check "cmake>=3.24,<4"
fi
for major in 12 13; do
  bash scripts/fetch-nvrtc.sh "$major" ".deps/nvrtc/$major"
done
CV2_VERSION="${CV2_VERSION:-5.0.0.93}"
if [ "$(.deps/cv2/bin/python -c 'import cv2; print(cv2.__version__)' 2>/dev/null)" != "${CV2_VERSION%.*}" ]; then
  say "installing opencv-python-headless $CV2_VERSION (PyPI) into .deps/cv2"
  rm -rf .deps/cv2
  python3 -m venv .deps/cv2
  .deps/cv2/bin/pip install -q --disable-pip-version-check "opencv-python-headless==$CV2_VERSION" "numpy<3"
fi
OELINT_VERSION="${OELINT_VERSION:-9.11.2}"
if [ "$(.deps/oelint/bin/oelint-adv --version 2>/dev/null)" != "oelint-adv $OELINT_VERSION" ]; then
  say "installing oelint-adv $OELINT_VERSION (PyPI) into .deps/oelint"
  rm -rf .deps/oelint
  python3 -m venv .deps/oelint
  .deps/oelint/bin/pip install -q --disable-pip-version-check "oelint-adv==$OELINT_VERSION"
fi
say "ready (ONNX Runtime: $lib)"
