#!/usr/bin/env bash
# The package check CI runs: builds the Debian package (scripts/package.sh),
# installs it with dpkg, and checks what was installed: the programs answer,
# the example policies pass --check, every man page is found by name and
# renders with `man -l` without a warning, the example systemd units pass
# `systemd-analyze verify` (where systemd-analyze is installed), and the
# demo workload (scripts/demo.sh) runs against /usr/bin/fuseproxy. The
# package is removed at the end, whatever happened. Run as root, after
# scripts/setup.sh; any problem ends it with a non-zero status.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "package-check: $*" >&2; exit 1; }

if dpkg-query -W -f '${Status}' fuseproxy 2>/dev/null | grep -q 'installed'; then
    fail "a fuseproxy package is installed already; remove it first (dpkg -r fuseproxy)"
fi
deb=$(bash scripts/package.sh | tail -n 1)
[ -f "$deb" ] || fail "scripts/package.sh named no package file ('$deb')"
remove() { dpkg -r fuseproxy >/dev/null 2>&1 || true; }
trap remove EXIT

echo "== dpkg -i $deb"
dpkg -i "$deb"
for f in /usr/bin/fuseproxy /usr/bin/fuseproxy-capture; do
    [ -x "$f" ] || fail "$f not installed"
done
/usr/bin/fuseproxy --version
/usr/bin/fuseproxy-capture --version

echo "== the example policies pass --check"
examples=/usr/share/doc/fuseproxy/examples
n=0
for p in "$examples"/policies/*.toml; do
    /usr/bin/fuseproxy --check --policy "$p" >/dev/null || fail "--check refused $p"
    n=$((n + 1))
done
[ "$n" -gt 0 ] || fail "no example policies in $examples/policies"
echo "$n example policies valid"

echo "== man pages"
pages=$(dpkg -L fuseproxy | grep '^/usr/share/man/man[0-9]/.*\.gz$' || true)
for want in man1/fuseproxy.1.gz man1/fuseproxy-capture.1.gz man5/fuseproxy-policy.5.gz; do
    grep -qx "/usr/share/man/$want" <<<"$pages" || fail "$want is not in the package"
done
for page in $pages; do
    # man -l renders the file; groff's and man's warnings go to stderr.
    warnings=$(LC_ALL=C MANWIDTH=80 man --warnings -l "$page" 2>&1 >/dev/null) \
        || fail "man -l $page failed: $warnings"
    [ -z "$warnings" ] || fail "man -l $page warns: $warnings"
    text=$(LC_ALL=C MANWIDTH=80 man -l "$page")
    for section in NAME SYNOPSIS DESCRIPTION; do
        grep -qx "$section" <<<"$text" || fail "$page has no $section section"
    done
    # and man finds it by name, as a user would ask for it
    name=$(basename "$page" .gz)
    found=$(man -w "${name##*.}" "${name%.*}") || fail "man ${name##*.} ${name%.*} finds nothing"
    [ "$found" = "$page" ] || fail "man -w ${name%.*} finds $found, not $page"
    echo "ok  $page ($(wc -l <<<"$text") lines)"
done
LC_ALL=C MANWIDTH=80 man fuseproxy | grep -q -- '--policy' || fail "man fuseproxy does not show --policy"

echo "== example systemd units"
if command -v systemd-analyze >/dev/null; then
    # Verified as copies named as they would be in /etc/systemd/system.
    units=$(mktemp -d /tmp/fuseproxy-units.XXXXXX)
    cp "$examples"/systemd/fuseproxy-example.service "$examples"/systemd/mnt-data.mount "$units"/
    if ! out=$(cd "$units" && systemd-analyze verify ./fuseproxy-example.service ./mnt-data.mount 2>&1); then
        rm -rf "$units"
        fail "systemd-analyze verify: $out"
    fi
    rm -rf "$units"
    [ -z "$out" ] || fail "systemd-analyze verify warns: $out"
    echo "systemd-analyze verify: both units clean"
else
    echo "skipped: systemd-analyze is not installed (package systemd)"
fi

echo "== the demo workload with the installed binary"
FUSEPROXY=/usr/bin/fuseproxy bash scripts/demo.sh

echo "== dpkg -r fuseproxy"
trap - EXIT
dpkg -r fuseproxy
[ ! -e /usr/bin/fuseproxy ] || fail "/usr/bin/fuseproxy is still there after dpkg -r"
echo "package check: passed"
