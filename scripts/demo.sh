#!/usr/bin/env bash
# The main job on the default backend: fuseproxy wrapping libfuse3's
# passthrough_ll example over a temporary directory. Does its own set-up
# (packages, the Rust build, the example's build), shows a few operations
# through the mount, the proxy's counters, a clean unmount, and a summary
# of the session's recording (--record). Run as root.
#
# FUSEPROXY=/usr/bin/fuseproxy runs it against that binary (an installed
# package) without building; fuseproxy-capture is then taken from beside
# it, or from FUSEPROXY_CAPTURE.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh >/dev/null
if [ -n "${FUSEPROXY:-}" ]; then
    proxy=$FUSEPROXY
    capture=${FUSEPROXY_CAPTURE:-$(dirname "$proxy")/fuseproxy-capture}
    for bin in "$proxy" "$capture"; do
        if [ ! -x "$bin" ]; then
            echo "demo.sh: $bin (FUSEPROXY, FUSEPROXY_CAPTURE) is not an executable file" >&2
            exit 2
        fi
    done
else
    cargo build --release -p fuseproxy -p fuseproxy-fixtures
    proxy=./target/release/fuseproxy
    capture=./target/release/fuseproxy-capture
fi
echo "== using $proxy ($("$proxy" --version)) and $capture"
work=$(mktemp -d /tmp/fuseproxy-demo.XXXXXX)
proxy_pid=
cleanup() {
    if mountpoint -q "$work/mnt" 2>/dev/null; then umount -l "$work/mnt" || true; fi
    if [ -n "$proxy_pid" ] && kill -0 "$proxy_pid" 2>/dev/null; then
        kill -TERM "$proxy_pid" 2>/dev/null || true
        sleep 1
        kill -KILL "$proxy_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
mkdir -p "$work/data" "$work/mnt" "$work/bin"
ex=/usr/share/doc/libfuse3-dev/examples
gcc -O2 -o "$work/bin/passthrough_ll" "$ex/passthrough_ll.c" $(pkg-config fuse3 --cflags --libs)

echo "== fuseproxy --record $work/session.fcap $work/mnt -- passthrough_ll -f -o source=$work/data $work/mnt"
"$proxy" --record "$work/session.fcap" "$work/mnt" -- \
    "$work/bin/passthrough_ll" -f -o "source=$work/data" "$work/mnt" 2> "$work/proxy.log" &
proxy_pid=$!
for _ in $(seq 100); do
    # This mount's line: another passthrough_ll mount on the machine says
    # nothing of it, and stat answers on the bare directory too.
    grep -q " $work/mnt fuse.passthrough_ll " /proc/mounts && stat "$work/mnt" >/dev/null 2>&1 && break
    sleep 0.1
done
grep " $work/mnt " /proc/mounts

m="$work/mnt"
run() { printf '$'; printf ' %q' "$@"; echo; "$@"; }
run sh -c "echo 'hello through the proxy' > $m/hello.txt"
run cat "$m/hello.txt"
run mkdir "$m/dir"
run mv "$m/hello.txt" "$m/dir/greeting.txt"
run touch -d '2001-02-03 04:05:06' "$m/dir/greeting.txt"
run dd if=/dev/urandom of="$m/dir/blob" bs=1M count=4 status=none
run ls -l --time-style=long-iso "$m/dir"
run stat -c '%n %s bytes, mode %a, mtime %y' "$m/dir/greeting.txt"
echo "-- the same files in the backing directory:"
run ls -l --time-style=long-iso "$work/data/dir"
cmp "$m/dir/blob" "$work/data/dir/blob" && echo "blob: identical through the mount and on disk"

kill -USR1 "$proxy_pid"; sleep 0.3
echo "== SIGTERM: unmount and stop"
kill -TERM "$proxy_pid"
status=0; wait "$proxy_pid" || status=$?
proxy_pid=
echo "proxy exited with status $status"
grep -q " $m " /proc/mounts && echo "mount still present!" || echo "mount removed"
echo "== proxy log"
cat "$work/proxy.log"
echo "== the recording: fuseproxy-capture stats $work/session.fcap"
"$capture" stats "$work/session.fcap"
echo "-- and its first lines (fuseproxy-capture decode):"
"$capture" decode "$work/session.fcap" | sed -n '3,10p' | cut -c1-160
exit "$status"
