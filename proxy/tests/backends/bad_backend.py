#!/usr/bin/env python3
"""A deliberately bad FUSE server for fuseproxy's tests (stdlib only).

Usage: bad_backend.py MODE /dev/fd/N

It speaks the FUSE protocol on fd N (the proxy's socket: one datagram per
message, exactly like /dev/fuse) and serves a root directory holding:

  good   a regular file (node 2), always answered properly;
  bad    a regular file (node 3) whose LOOKUP gets the garbage named by MODE.

Entries and attributes are valid for 0 s, so every stat() reaches us.

MODEs (what a LOOKUP of "bad" gets):
  correct             a proper reply (no garbage)
  short-header        8 bytes, then the proper reply
  unknown-unique      a reply naming a request nobody sent, then the proper one
  length-mismatch     a reply whose len is 100 bytes more than was sent
  error-positive      error +5 (the kernel only takes -511..0)
  error-too-negative  error -600
  error-with-body     error -ENOENT followed by an entry body
  oversized           a 2 MiB + 16 byte datagram (beyond any legal reply)
  forget-reply        a proper reply, but with a new node id each time (so
                      the kernel sends FORGETs), and every FORGET or
                      BATCH_FORGET gets a reply, which it must never get

In the modes whose garbage names the request (length-mismatch, error-*,
oversized) nothing more is sent for it: the proxy must answer it (EIO).
Everything it does not know it answers with ENOSYS. It exits on EOF.
"""

import errno
import os
import stat
import struct
import sys

# All integers are in host byte order ("="), without padding.

# struct fuse_in_header (40 bytes): len u32, opcode u32, unique u64,
# nodeid u64, uid u32, gid u32, pid u32, total_extlen u16, padding u16
IN_HEADER = struct.Struct("=IIQQIIIHH")
# struct fuse_out_header (16 bytes): len u32, error i32, unique u64
OUT_HEADER = struct.Struct("=IiQ")
# struct fuse_init_in (64 bytes), first fields: major u32, minor u32,
# max_readahead u32, flags u32 (then flags2 u32, unused u32[11])
INIT_IN = struct.Struct("=IIII")
# struct fuse_init_out (64 bytes): major u32, minor u32, max_readahead u32,
# flags u32, max_background u16, congestion_threshold u16, max_write u32,
# time_gran u32, max_pages u16, map_alignment u16, flags2 u32,
# max_stack_depth u32, then request_timeout u16 + unused u16[11] (24 bytes)
INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")
# struct fuse_attr (88 bytes): ino, size, blocks, atime, mtime, ctime u64;
# atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize,
# flags u32
ATTR = struct.Struct("=QQQQQQIIIIIIIIII")
# struct fuse_entry_out (128 bytes): nodeid, generation, entry_valid,
# attr_valid u64; entry_valid_nsec, attr_valid_nsec u32; struct fuse_attr
ENTRY_OUT_HEAD = struct.Struct("=QQQQII")
# struct fuse_attr_out (104 bytes): attr_valid u64, attr_valid_nsec u32,
# dummy u32; struct fuse_attr
ATTR_OUT_HEAD = struct.Struct("=QII")

assert (IN_HEADER.size, OUT_HEADER.size, INIT_OUT.size) == (40, 16, 64)
assert (ATTR.size, ENTRY_OUT_HEAD.size + ATTR.size) == (88, 128)

LOOKUP, FORGET, GETATTR, INIT, INTERRUPT, DESTROY, BATCH_FORGET = 1, 2, 3, 26, 36, 38, 42

ROOT, GOOD, BAD = 1, 2, 3
GOOD_SIZE = 4
# Node ids handed out for "bad" in forget-reply mode.
next_node = 1000


def log(msg):
    print(f"bad_backend: {msg}", file=sys.stderr, flush=True)


def attr(node):
    if node == ROOT:
        mode, nlink, size = stat.S_IFDIR | 0o755, 2, 0
    elif node == GOOD:
        mode, nlink, size = stat.S_IFREG | 0o644, 1, GOOD_SIZE
    else:
        mode, nlink, size = stat.S_IFREG | 0o644, 1, 0
    # ino, size, blocks, atime, mtime, ctime, 3 x nsec, mode, nlink,
    # uid, gid, rdev, blksize, flags
    return ATTR.pack(node, size, 0, 0, 0, 0, 0, 0, 0, mode, nlink, 0, 0, 0, 4096, 0)


def entry(node):
    # entry_valid and attr_valid 0: the kernel asks again every time.
    return ENTRY_OUT_HEAD.pack(node, 0, 0, 0, 0, 0) + attr(node)


def send(fd, unique, error=0, body=b"", length=None):
    """One datagram: a header (len defaults to the true length) and body."""
    n = OUT_HEADER.size + len(body)
    os.write(fd, OUT_HEADER.pack(n if length is None else length, error, unique) + body)


def lookup_bad(fd, mode, unique):
    global next_node
    if mode == "short-header":
        os.write(fd, OUT_HEADER.pack(16, 0, unique)[:8])
    elif mode == "unknown-unique":
        send(fd, 0x7777_0000_0000_0000, -errno.ENOENT)
    elif mode == "length-mismatch":
        body = entry(BAD)
        send(fd, unique, 0, body, length=OUT_HEADER.size + len(body) + 100)
        return
    elif mode == "error-positive":
        send(fd, unique, 5)
        return
    elif mode == "error-too-negative":
        send(fd, unique, -600)
        return
    elif mode == "error-with-body":
        send(fd, unique, -errno.ENOENT, entry(BAD))
        return
    elif mode == "oversized":
        send(fd, unique, 0, bytes(2 * 1024 * 1024))
        return
    elif mode == "forget-reply":
        next_node += 1
        send(fd, unique, 0, entry(next_node))
        return
    send(fd, unique, 0, entry(BAD))


def handle(fd, mode, msg):
    length, opcode, unique, node = IN_HEADER.unpack_from(msg)[:4]
    body = msg[IN_HEADER.size:length]
    if opcode == INIT:
        major, minor, max_readahead, _flags = INIT_IN.unpack_from(body)
        log(f"INIT from the kernel: {major}.{minor}; mode {mode}")
        send(fd, unique, 0, INIT_OUT.pack(
            7, 31, max_readahead, 0,  # major, minor, max_readahead, flags
            16, 12,                   # max_background, congestion_threshold
            128 * 1024, 1,            # max_write, time_gran
            0, 0, 0, 0))              # max_pages, map_alignment, flags2, max_stack_depth
    elif opcode == LOOKUP:
        name = body.split(b"\0", 1)[0]
        if node == ROOT and name == b"good":
            send(fd, unique, 0, entry(GOOD))
        elif node == ROOT and name == b"bad":
            log(f"LOOKUP bad (unique {unique:#x}): sending {mode}")
            lookup_bad(fd, mode, unique)
        else:
            send(fd, unique, -errno.ENOENT)
    elif opcode == GETATTR:
        if node in (ROOT, GOOD, BAD) or node > 1000:
            send(fd, unique, 0, ATTR_OUT_HEAD.pack(0, 0, 0) + attr(node))
        else:
            send(fd, unique, -errno.ENOENT)
    elif opcode in (FORGET, BATCH_FORGET):
        if mode == "forget-reply":
            log(f"replying to {'FORGET' if opcode == FORGET else 'BATCH_FORGET'} {unique:#x}")
            send(fd, unique, 0)
    elif opcode == INTERRUPT:
        pass
    elif opcode == DESTROY:
        log("DESTROY")
        send(fd, unique, 0)
    else:
        send(fd, unique, -errno.ENOSYS)


def main():
    mode, dev = sys.argv[1], sys.argv[-1]
    if not dev.startswith("/dev/fd/"):
        sys.exit(f"bad_backend: the last argument must be /dev/fd/N, not {dev!r}")
    fd = int(dev[len("/dev/fd/"):])
    while True:
        try:
            msg = os.read(fd, 256 * 1024)
        except (ConnectionResetError, BrokenPipeError):
            break
        if not msg:
            break
        try:
            handle(fd, mode, msg)
        except (ConnectionResetError, BrokenPipeError):
            break
    log("channel closed; exiting")


if __name__ == "__main__":
    main()
