#!/usr/bin/env bash
# Every test, as CI runs it: install, build, unit + integration tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --locked --all-targets
cargo test --release --locked
