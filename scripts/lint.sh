#!/usr/bin/env bash
# The habits CI holds, each a failure when broken: formatting (rustfmt.toml),
# clippy with warnings as errors on every target, and the API docs with
# warnings as errors; clippy and docs for the default build (CUDA 12) and
# for each other CUDA feature, since the cfg'd code differs between them.
# Profile `ci`, so the build scripts' outputs (OpenCV bindings, static faiss)
# are shared with scripts/test.sh's build instead of made again.
set -euo pipefail
cd "$(dirname "$0")/.."
say() { printf '\033[1mlint:\033[0m %s\n' "$*" >&2; }

say "cargo fmt --check"
cargo fmt --all --check
# fuzz/ is a workspace of its own (nightly, cargo-fuzz): formatted all the same.
(cd fuzz && cargo fmt --check)

for features in "" "--no-default-features --features cuda-11" "--no-default-features --features cuda-13"; do
  say "clippy -D warnings ${features:-(default features: cuda-12)}"
  # shellcheck disable=SC2086 # the feature flags are meant to split
  cargo clippy --profile ci --locked --all-targets $features -- -D warnings
  say "cargo doc -D warnings ${features:-(default features: cuda-12)}"
  # shellcheck disable=SC2086
  RUSTDOCFLAGS="-D warnings" cargo doc --profile ci --locked --no-deps $features
done
say "ok"
