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
# The Debian package: built with cargo-deb (installed on first use),
# installed, its man pages rendered with man -l, its units verified, the
# demo run against the installed /usr/bin/fuseproxy, then removed again.
bash scripts/package-check.sh
# Again with three kernel reader threads (--threads 3 through the harness's
# FUSEPROXY_TEST_THREADS): the ordering, lifecycle and bad-backend guarantees
# must hold with several forwarding threads, and every daemon of the matrix
# must work with requests read from clones of the device. The variable
# reaches every mount that runs a backend, except through a wrapper program
# (setarch) and where a test sets .threads() itself (stress: 1 and 4).
FUSEPROXY_TEST_THREADS=3 cargo test -p fuseproxy \
    --test lifecycle --test bad_backend --test times --test notifications \
    --test deadlines --test flush_retry --test stress --test daemons --test restart
# Every end-to-end test again over FUSE-over-io_uring (--kernel-transport
# uring through the harness's FUSEPROXY_TEST_TRANSPORT) where the kernel has
# it: the module parameter is on for this pass only, and put back even if
# the pass fails. Mounts given several threads stay on read(2).
param=/sys/module/fuse/parameters/enable_uring
if [ -w "$param" ]; then
    old=$(cat "$param")
    trap 'echo "$old" > "$param"' EXIT
    echo Y > "$param"
    FUSEPROXY_TEST_TRANSPORT=uring cargo test -p fuseproxy --test '*'
    echo "$old" > "$param"
    trap - EXIT
else
    echo "skipped the io_uring pass: $param is not writable (FUSE-over-io_uring needs Linux 6.14+ and root)"
fi
