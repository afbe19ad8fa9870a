#!/usr/bin/env bash
# shitud built for aarch64 (the Jetson's architecture) on this x86_64 box and
# run there under qemu-user, with no ARM hardware:
#   1. an arm64 sysroot of Debian's own packages (OpenCV 4.6, BLAS/LAPACK and
#      what they need), unpacked into .deps/arm64/sysroot: not installed with
#      dpkg, since libopencv-imgcodecs406:arm64 cannot be co-installed with the
#      amd64 one (libgdal32 is not multi-arch);
#   2. `cargo build --target aarch64-unknown-linux-gnu` of shitud (static faiss
#      cross-compiled through scripts/arm64/toolchain.cmake);
#   3. the library's unit tests under qemu (the cargo test runner);
#   4. `shitud gallery build` (10 photos) and `shitud recognize` under qemu, with the
#      aarch64 libonnxruntime.so of the PyPI wheel, against the x86_64 binary's
#      answers on the same files: same labels, boxes within 1 px, scores
#      within 1e-3 (scripts/arm64/compare.py);
#   5. the glibc version the aarch64 binary needs (its newest GLIBC_ symbol).
#
# Needs the x86_64 binary built first (scripts/test.sh does that); the first
# run downloads ~130 MB of packages and takes ~11 min on 2 cores, a rerun
# reuses .deps/arm64 and target/.
#
# Usage: scripts/arm64-check.sh [--scenes N]   (default 2 scenes; each takes
# 70-130 s under qemu, where the detector alone runs ~300x slower than natively)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/env.sh

SCENES=2
while (($#)); do
  case "$1" in
    --scenes) SCENES="$2"; shift 2 ;;
    -h | --help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "arm64-check: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

TARGET=aarch64-unknown-linux-gnu
ORT_VERSION="${ORT_VERSION:-$(cat .deps/onnxruntime/VERSION 2>/dev/null || echo 1.31.1)}"
ROOT="$PWD/.deps/arm64"
SYSROOT="$ROOT/sysroot"
LIBDIR="$SYSROOT/usr/lib/aarch64-linux-gnu"
X86="$PWD/target/ci/shitud"
ARM="$PWD/target/$TARGET/ci/shitud"
OUT="$PWD/target/arm64-check"

say() { printf '\033[1marm64-check:\033[0m %s\n' "$*" >&2; }
t0=$SECONDS
step() { say "[$((SECONDS - t0)) s] $*"; }

[ -x "$X86" ] || { say "$X86 missing: run scripts/test.sh (or cargo build --profile ci) first"; exit 1; }

# --- 1. host tools -----------------------------------------------------------
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
  step "adding the arm64 architecture to apt (package lists only; nothing arm64 is installed)"
  $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
fi
missing=()
for p in gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user binutils-aarch64-linux-gnu; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  step "installing ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! rustup target list --installed 2>/dev/null | grep -qx "$TARGET"; then
  step "rustup target add $TARGET"
  rustup target add "$TARGET"
fi

# --- 2. the arm64 sysroot ----------------------------------------------------
# What the binary links and loads: the three OpenCV modules it uses, the BLAS
# and LAPACK that static faiss calls, and everything those depend on, resolved
# by apt as if installing on an empty arm64 system.
WANT=(libopencv-core-dev libopencv-imgproc-dev libopencv-imgcodecs-dev libblas-dev liblapack-dev libgomp1 libstdc++6
      libgstreamer1.0-dev libgstreamer-plugins-base1.0-dev gstreamer1.0-plugins-base)
# The stamp changes with the list and with how it is resolved (this script).
stamp="$({ printf '%s\n' "${WANT[@]}"; sed -n '/^# --- 2/,/^# --- 3/p' "$0"; } | sha256sum | cut -c1-16)"
if [ "$(cat "$SYSROOT/.stamp" 2>/dev/null)" != "$stamp" ]; then
  step "resolving and unpacking the arm64 sysroot (${WANT[*]})"
  rm -rf "$ROOT/debs" "$SYSROOT"
  mkdir -p "$ROOT/debs" "$SYSROOT"
  : > "$ROOT/empty-status"
  apt-get -o APT::Architecture=arm64 -o APT::Architectures::=arm64 \
    -o Dir::State::status="$ROOT/empty-status" install -s --no-install-recommends "${WANT[@]}" \
    | awk '/^Inst/ { v = $3; gsub(/[()]/, "", v);
                     # "Inst NAME (VERSION RELEASE [ARCH]) [BREAKS]": the first [..] is the architecture
                     match($0, /\[(arm64|all)\]/); a = substr($0, RSTART + 1, RLENGTH - 2);
                     print (a == "all" ? $2 "=" v : $2 ":" a "=" v) }' > "$ROOT/packages.txt"
  if grep -qv -e ':arm64=' -e '^[^:]*=' "$ROOT/packages.txt"; then
    say "could not read the architecture of: $(grep -v -e ':arm64=' -e '^[^:]*=' "$ROOT/packages.txt" | tr '\n' ' ')"; exit 1
  fi
  (cd "$ROOT/debs" && apt-get download $(cat "$ROOT/packages.txt") 2> >(grep -v '^W: Download is performed unsandboxed' >&2) >/dev/null)
  for deb in "$ROOT"/debs/*.deb; do dpkg-deb -x "$deb" "$SYSROOT"; done
  # dpkg would make these with update-alternatives in the packages' scripts,
  # which unpacking does not run.
  for lib in blas lapack; do
    ln -sfn "$lib/lib$lib.so.3" "$LIBDIR/lib$lib.so.3"
    ln -sfn "$lib/lib$lib.so" "$LIBDIR/lib$lib.so"
  done
  rm -rf "$ROOT/debs"
  echo "$stamp" > "$SYSROOT/.stamp"
  say "sysroot: $(wc -l < "$ROOT/packages.txt") packages, $(du -sh "$SYSROOT" | cut -f1)"
fi

ORT_ARM="$ROOT/onnxruntime/lib/libonnxruntime.so"
bash scripts/fetch-ort.sh "$ORT_VERSION" aarch64 "$ROOT/onnxruntime"

# --- 3. cross build ----------------------------------------------------------
export SHITU_ARM64_SYSROOT="$SYSROOT"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# --sysroot: glibc's linker scripts in the sysroot (libc.so names
# /lib/aarch64-linux-gnu/libc.so.6) resolve inside it, not on this x86 host.
# -rpath-link: the libraries that OpenCV and BLAS need in turn are found at
# link time.
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C link-arg=--sysroot=$SYSROOT -L native=$LIBDIR -C link-arg=-Wl,-rpath-link,$LIBDIR -C link-arg=-Wl,-rpath-link,$SYSROOT/lib/aarch64-linux-gnu"
# qemu finds the arm64 loader and libraries under the sysroot (-L), the
# faiss/OpenCV libraries through LD_LIBRARY_PATH (read inside the sysroot).
# qemu-user passes the host's x86 /proc/cpuinfo through, and ONNX Runtime's
# cpuinfo library dereferences NULL on a file with no ARM fields (SIGSEGV at
# session creation). qemu -L serves absolute paths from the sysroot first, so
# the guest reads a Jetson Orin's (Cortex-A78AE) instead. On a real board
# the kernel's file is right; this is why the systemd unit must not hide
# /proc/cpuinfo (ProcSubset=pid), see systemd/README.md.
mkdir -p "$SYSROOT/proc"
cp scripts/arm64/cpuinfo-orin "$SYSROOT/proc/cpuinfo"
QEMU=(qemu-aarch64 -L "$SYSROOT" -E LD_LIBRARY_PATH=/usr/lib/aarch64-linux-gnu:/lib/aarch64-linux-gnu)
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="${QEMU[*]}"
export CMAKE_TOOLCHAIN_FILE_aarch64_unknown_linux_gnu="$PWD/scripts/arm64/toolchain.cmake"
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++ CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
# The opencv crate's environment probe: the three modules, headers from the
# sysroot (the arch-independent ones and the arm64 cvconfig.h).
export OPENCV_LINK_LIBS=opencv_core,opencv_imgproc,opencv_imgcodecs
export OPENCV_LINK_PATHS="$LIBDIR"
export OPENCV_INCLUDE_PATHS="$SYSROOT/usr/include/opencv4,$SYSROOT/usr/include/aarch64-linux-gnu/opencv4"
export OPENCV_DISABLE_PROBES=pkg_config,cmake,vcpkg_cmake,vcpkg
# GStreamer (gstreamer-sys and friends find it with pkg-config): the
# sysroot's .pc files, with their paths rebased into the sysroot.
export PKG_CONFIG_ALLOW_CROSS=1 PKG_CONFIG_SYSROOT_DIR="$SYSROOT"
export PKG_CONFIG_LIBDIR="$LIBDIR/pkgconfig:$SYSROOT/usr/share/pkgconfig"

step "cargo build --target $TARGET (shitud)"
cargo build --profile ci --locked --target "$TARGET" --bin shitud
file -b "$ARM" | grep -q "ARM aarch64" || { say "$ARM is not an aarch64 binary: $(file -b "$ARM")"; exit 1; }

step "library unit tests under qemu"
cargo test --profile ci --locked --target "$TARGET" --lib

# --- 4. the same answers on both architectures --------------------------------
QEMU+=(-E "ORT_DYLIB_PATH=$ORT_ARM")
rm -rf "$OUT"; mkdir -p "$OUT/scenes"
ls tests/data/images/scenes/*.jpg | head -n "$SCENES" | xargs -I{} cp {} "$OUT/scenes/"
models=(--det-model engines/demo/det_prenms.onnx --rec-model engines/demo/rec.onnx)
run_both() { # name, then shitud's arguments with @OUT@ for the architecture's folder
  local name=$1 arch bin
  shift
  for arch in x86_64 aarch64; do
    mkdir -p "$OUT/$arch"
    if [ "$arch" = x86_64 ]; then bin=("$X86"); else bin=("${QEMU[@]}" "$ARM"); fi
    local args=("${@//@OUT@/$OUT/$arch}")
    local s=$SECONDS
    "${bin[@]}" "${args[@]}" > "$OUT/$arch/$name.jsonl" 2> "$OUT/$arch/$name.log" \
      || { say "$arch: shitud ${args[*]} failed:"; cat "$OUT/$arch/$name.log" >&2; exit 1; }
    say "  $arch: $name in $((SECONDS - s)) s"
  done
}
step "shitud gallery build and recognize on $SCENES scenes, x86_64 and aarch64 (qemu)"
run_both gallery_build -q gallery build --rec-model engines/demo/rec.onnx \
  --list scripts/arm64/gallery.txt --image-root tests/data/images --out @OUT@/gallery
run_both recognize -q recognize "${models[@]}" --index @OUT@/gallery "$OUT/scenes"
python3 scripts/arm64/compare.py "$OUT/x86_64/recognize.jsonl" "$OUT/aarch64/recognize.jsonl"

# --- 5. glibc floor ----------------------------------------------------------
floor=$(aarch64-linux-gnu-objdump -T "$ARM" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
say "the aarch64 shitud needs glibc ${floor#GLIBC_} or newer ($(aarch64-linux-gnu-objdump -T "$ARM" | grep -o 'GLIBCXX_[0-9.]*' | sort -uV | tail -1) of libstdc++)"
step "done"
