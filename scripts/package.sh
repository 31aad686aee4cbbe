#!/usr/bin/env bash
# Builds the Debian package of fuseproxy with cargo-deb and prints its path
# (last line). Installs cargo-deb first if it is missing (a pinned version,
# built from crates.io: about 2 minutes on 2 CPUs). The package holds both
# programs, their man pages (written by the programs' own `--man DIR`, from
# the text --help shows), the example policies, the example systemd units
# and the README (see README, "Installing").
set -euo pipefail
cd "$(dirname "$0")/.."

# 3.8.0 builds with the toolchain here (rust-version 1.85).
cargo_deb_version=3.8.0
if [ "$(cargo deb --version 2>/dev/null)" != "cargo-deb $cargo_deb_version" ]; then
    echo "== cargo install cargo-deb --locked --version $cargo_deb_version" >&2
    cargo install cargo-deb --locked --version "$cargo_deb_version" >&2
fi
# dpkg-shlibdeps (dpkg-dev) works out the libraries the package depends on
# ($auto in proxy/Cargo.toml); setup.sh installs it.
command -v dpkg-shlibdeps >/dev/null || { echo "package.sh: dpkg-shlibdeps missing: run scripts/setup.sh (package dpkg-dev)" >&2; exit 1; }

echo "== cargo build --release -p fuseproxy -p fuseproxy-fixtures" >&2
cargo build --release -p fuseproxy -p fuseproxy-fixtures >&2

target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
man="$target/release/man"
rm -rf "$man"
mkdir -p "$man"
echo "== man pages into $man" >&2
"$target/release/fuseproxy" --man "$man" >&2
"$target/release/fuseproxy-capture" --man "$man" >&2
# -n: no name or time in the header, so the same page gives the same bytes.
gzip -9n "$man"/*.[15]

# --strip: the release profile keeps line tables (debug = 1) for the
# benchmark's profiles; the package's programs do without (40 MB less).
echo "== cargo deb -p fuseproxy --no-build --strip" >&2
deb=$(cargo deb -p fuseproxy --no-build --strip | tail -n 1)
if [ ! -f "$deb" ]; then
    echo "package.sh: cargo deb did not name a package file (got '$deb')" >&2
    exit 1
fi
echo "$deb"
