#!/usr/bin/env bash
# The whole test suite, with its own set-up: what CI runs (.ci/run).
# Needs root and /dev/fuse: the tests mount for real.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo build --workspace
# The benchmark's smoke mode: seconds, only to prove it still runs end to end
# (it measures the debug proxy built above).
cargo run -p fuseproxy-bench -- --smoke --no-save
cargo test --workspace
