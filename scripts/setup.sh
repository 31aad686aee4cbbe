#!/usr/bin/env bash
# Installs everything fuseproxy's build, demo and tests need on a fresh
# Debian 12 machine, as root. Safe to run again.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -q
# fuse3: the fuse filesystem's user tools; libfuse3-dev + gcc + pkg-config:
# libfuse's passthrough_ll example, built by the tests from the package's
# examples; squashfuse + squashfs-tools: the read-only backend and its image
# tool; attr: getfattr/setfattr; util-linux: setpriv (tests as an
# unprivileged user); python3: the deliberately bad backend of the tests;
# bindfs, fio, tar: the benchmark harness (stacked configuration, I/O jobs).
apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
    fuse3 libfuse3-dev gcc libc6-dev pkg-config \
    squashfuse squashfs-tools attr util-linux python3 ca-certificates \
    bindfs fio tar

if ! command -v cargo >/dev/null 2>&1; then
    # A Rust toolchain is expected (rustup's); Debian's is the fallback.
    apt-get install -y -q --no-install-recommends cargo rustc
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy rustfmt 2>/dev/null || apt-get install -y -q rust-clippy
fi
cargo --version
