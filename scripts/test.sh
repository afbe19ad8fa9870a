#!/usr/bin/env bash
# Every test, as CI runs it: install, build, lint (fmt, clippy, docs), the
# unit tests and the one integration-test binary (tests/it), the
# preprocessing kernels against PyPI's OpenCV (the reference's build), then
# the aarch64 cross build run under qemu (scripts/arm64-check.sh).
# Profile `ci` (Cargo.toml): release optimisation without LTO, 7 min instead
# of 12.5 min for the first build on a 2-core box.
# SHITU_SKIP_ARM64=1 leaves out the aarch64 check (it adds ~11 min to a first
# run); CI never sets it.
set -euo pipefail
cd "$(dirname "$0")/.."
t0=$SECONDS
lap() { printf '\033[1mtest:\033[0m %s (%d s so far)\n' "$*" "$((SECONDS - t0))" >&2; }
bash scripts/setup.sh --tests
source scripts/env.sh
lap "setup done"
cargo build --profile ci --locked --all-targets
lap "build done"
# After the build: clippy and rustdoc then reuse its dependencies' metadata.
bash scripts/lint.sh
lap "lint done"
cargo test --profile ci --locked
lap "tests done"
# The kernels' host build against cv2.resize from PyPI, the OpenCV build
# PaddleClas runs on: exact with its IPP off, within 1 level with IPP on.
kout=$(mktemp -d)
SHITU_KERNEL_OUT="$kout" SHITU_KERNEL_BACKEND=host \
  cargo test --profile ci --locked --test it -- --ignored --exact gpu::write_kernel_outputs
.deps/cv2/bin/python scripts/gpu/compare_cv2.py "$kout"
rm -rf "$kout"
lap "kernels against PyPI's OpenCV done"
if [ "${SHITU_SKIP_ARM64:-}" = 1 ]; then
  echo "test: aarch64 check skipped (SHITU_SKIP_ARM64=1)" >&2
else
  # One scene under qemu (70-130 s each) keeps CI under 45 minutes; the
  # aarch64 binary's answers are compared on it and on the gallery build.
  bash scripts/arm64-check.sh --scenes 1
  lap "aarch64 check done"
fi
