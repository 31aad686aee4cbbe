#!/usr/bin/env bash
# The whole test suite, with its own set-up: what CI runs (.ci/run).
# Needs root and /dev/fuse: the tests mount for real.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
