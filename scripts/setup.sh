#!/usr/bin/env bash
# Installs everything fuseproxy's build, demo and tests need on a fresh
# Debian 12 machine, as root. Safe to run again.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive
apt-get -o DPkg::Lock::Timeout=300 update -q
# fuse3: the fuse filesystem's user tools; libfuse3-dev + gcc + pkg-config:
# libfuse's passthrough_ll example, built by the tests from the package's
# examples; squashfuse + squashfs-tools: the read-only backend and its image
# tool; attr: getfattr/setfattr; util-linux: setpriv, prlimit, unshare
# (tests as an unprivileged user; fuse3's setuid fusermount3 mounts for
# the proxy run as nobody); python3: the deliberately bad backend of the tests;
# bindfs, fio, tar: the benchmark harness (stacked configuration, I/O jobs).
# The fixtures (fixtures/captures/*.sh) need squashfuse_ll and mksquashfs
# (above: the squashfs image is rebuilt at test time), tar, coreutils'
# timeout, and to re-record, bindfs and procps (pgrep: the daemon to stop).
# man-db: the man page tests render each page with `man -l`; dpkg-dev:
# dpkg-shlibdeps, for the package's library dependencies
# (scripts/package.sh).
apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
    fuse3 libfuse3-dev gcc libc6-dev pkg-config \
    squashfuse squashfs-tools attr util-linux python3 ca-certificates \
    bindfs fio tar coreutils procps man-db dpkg-dev

# The daemon matrix (proxy/tests/daemons.rs, docs/compat.md): unmodified
# daemons from Debian's packages, each run directly and through the proxy.
# A package's postinst must not start a system service (openssh-server would
# start the machine's own sshd): unless the machine already has a
# policy-rc.d, one that refuses every start stands in place for the install.
#   libfuse2 daemons: bindfs (above), unionfs-fuse, fuse-zip (zip archives;
#     `zip` makes its input), archivemount (tar archives; bsdtar from
#     libarchive-tools makes its input, or tar), encfs (encrypted directory);
#   ntfs-3g: its own integrated FUSE; its mkntfs makes a small image file;
#   libfuse3 daemons: fuse-overlayfs, squashfuse (above; squashfs-tools makes
#     its image), sshfs (+ openssh-server: the sshd on 127.0.0.1 that the
#     test starts itself with its own config, keys and port; openssh-client:
#     ssh and ssh-keygen);
#   Go daemons: gocryptfs (go-fuse), rclone (`mount`: bazil.org/fuse, which
#     execs fusermount; `mount2`: go-fuse);
#   mergerfs (its own libfuse 2 fork and mergerfs-fusermount); s3fs (libfuse
#     2; run against no server: only its start-up and self-unmount);
#   setarch (util-linux, above): the fusermount channel's old-kernel test.
policy_rc=/usr/sbin/policy-rc.d
own_policy=
if [ ! -e "$policy_rc" ]; then
    printf '#!/bin/sh\n# fuseproxy setup.sh: no service starts during the install\nexit 101\n' >"$policy_rc"
    chmod 0755 "$policy_rc"
    own_policy=1
fi
remove_policy() { if [ -n "$own_policy" ]; then rm -f "$policy_rc"; fi; }
trap remove_policy EXIT
apt-get -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
    unionfs-fuse fuse-zip zip archivemount libarchive-tools encfs \
    ntfs-3g fuse-overlayfs sshfs openssh-server openssh-client \
    gocryptfs rclone mergerfs s3fs
remove_policy
trap - EXIT

if ! command -v cargo >/dev/null 2>&1; then
    # A Rust toolchain is expected (rustup's); Debian's is the fallback.
    apt-get install -y -q --no-install-recommends cargo rustc
fi
if ! cargo clippy --version >/dev/null 2>&1; then
    rustup component add clippy rustfmt 2>/dev/null || apt-get install -y -q rust-clippy
fi
cargo --version
