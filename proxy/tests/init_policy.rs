//! `[init]` end to end, over libfuse's passthrough_ll: writeback caching
//! forced on a backend that never asked for it keeps data byte-identical on
//! the backing store (O_WRONLY partial overwrites, O_APPEND, mmap, pwrite at
//! offsets, a few MiB of random data), and denying it to a backend that asks
//! for it shows in the log.

mod common;

use common::policy::PolicyFile;

use std::fs;
use std::os::fd::OwnedFd;

use common::stats::{stat_field, stats_lines};
use common::tree::pattern;
use common::{sys, Mode, Mount, MountBuilder};

fn mount_with(policy: &PolicyFile, extra: &[&str]) -> Mount {
    MountBuilder::passthrough(Mode::Proxy, extra)
        .proxy_args(["--policy", policy.path.to_str().unwrap()])
        .mount()
}

/// The proxy's INIT line (`INIT: kernel offered ...`).
fn init_line(m: &Mount) -> String {
    let log = m.proxy_log();
    log.lines()
        .find(|l| l.contains("INIT: kernel offered"))
        .unwrap_or_else(|| panic!("no INIT line in the proxy's log:\n{log}"))
        .to_owned()
}

/// `FUSE_WRITEBACK_CACHE`.
const WRITEBACK_CACHE: u64 = 1 << 16;

/// The flags after `what` (`backend answered 0x...`) in the INIT line.
fn flags_in(line: &str, what: &str) -> u64 {
    let at = line
        .find(what)
        .unwrap_or_else(|| panic!("no {what} in {line}"))
        + what.len();
    let hex: String = line[at..]
        .trim_start()
        .trim_start_matches("0x")
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    u64::from_str_radix(&hex, 16).unwrap_or_else(|_| panic!("bad flags after {what}: {line}"))
}

fn open(path: &std::path::Path, flags: libc::c_int) -> OwnedFd {
    sys::open(path, flags, 0o644).unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Writes all of `data` at the file offset (`O_APPEND` decides where).
fn write_all(fd: &OwnedFd, mut data: &[u8]) {
    while !data.is_empty() {
        let n = sys::write(fd, data).expect("write");
        data = &data[n..];
    }
}

fn pwrite_all(fd: &OwnedFd, data: &[u8], off: usize) {
    let n = sys::pwrite(fd, data, off as i64).expect("pwrite");
    assert_eq!(n, data.len(), "short pwrite at {off}");
}

/// `data` written at `off` into the expected content, growing it as a
/// write past the end does.
fn overlay(expected: &mut Vec<u8>, off: usize, data: &[u8]) {
    if expected.len() < off + data.len() {
        expected.resize(off + data.len(), 0);
    }
    expected[off..off + data.len()].copy_from_slice(data);
}

#[test]
fn forced_writeback_keeps_data_byte_identical_on_the_backing_store() {
    let policy = PolicyFile::new("[init]\nwriteback_cache = \"force\"\n");
    let mut m = mount_with(&policy, &[]);
    if m.mode() != Mode::Proxy {
        return; // FUSEPROXY_TEST_MODE=direct: the rule is the proxy's.
    }
    let line = init_line(&m);
    eprintln!("{line}");
    assert!(
        line.contains("forced: FUSE_WRITEBACK_CACHE"),
        "writeback not forced: {line}"
    );

    assert_eq!(flags_in(&line, "backend answered") & WRITEBACK_CACHE, 0);
    assert_ne!(flags_in(&line, "sent to the kernel") & WRITEBACK_CACHE, 0);

    // Files put in the backing directory are not in the page cache: partial
    // writes make the kernel read their pages through the writer's handle.
    let mut expected: Vec<(&str, Vec<u8>)> = Vec::new();

    // 1. O_WRONLY partial overwrites of an existing file, unaligned.
    let mut content = pattern(1, 200_000);
    fs::write(m.backing_path("partial"), &content).unwrap();
    let fd = open(&m.path("partial"), libc::O_WRONLY);
    for (i, (off, len)) in [
        (0, 1),
        (4095, 3),
        (5000, 100),
        (65_530, 20),
        (131_072, 4096),
        (199_990, 30), // past the end
    ]
    .into_iter()
    .enumerate()
    {
        let data = pattern(100 + i as u64, len);
        pwrite_all(&fd, &data, off);
        overlay(&mut content, off, &data);
    }
    // And through the file offset, after a seek.
    sys::lseek(&fd, 77_777, libc::SEEK_SET).unwrap();
    let data = pattern(120, 1234);
    write_all(&fd, &data);
    overlay(&mut content, 77_777, &data);
    drop(fd);
    expected.push(("partial", content));

    // 2. O_APPEND on an existing file, from two opens, odd sizes.
    let mut content = pattern(2, 10_000);
    fs::write(m.backing_path("append"), &content).unwrap();
    for round in 0..2u64 {
        let fd = open(&m.path("append"), libc::O_WRONLY | libc::O_APPEND);
        for i in 0..5u64 {
            let data = pattern(200 + round * 10 + i, 1 + (i as usize * 3001) % 9000);
            write_all(&fd, &data);
            content.extend_from_slice(&data);
        }
    }
    expected.push(("append", content));

    // 3. CREATE with O_WRONLY | O_APPEND, then appends.
    let fd = open(
        &m.path("created-append"),
        libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND,
    );
    let mut content = Vec::new();
    for i in 0..7u64 {
        let data = pattern(300 + i, 777 * (i as usize + 1));
        write_all(&fd, &data);
        content.extend_from_slice(&data);
    }
    drop(fd);
    expected.push(("created-append", content));

    // 4. mmap: a shared writable mapping, written at several offsets.
    let len = 3 * 4096 + 100;
    let mut content = pattern(4, len);
    fs::write(m.backing_path("mapped"), &content).unwrap();
    let fd = open(&m.path("mapped"), libc::O_RDWR);
    for (i, off) in [10usize, 4090, 8192, len - 50].into_iter().enumerate() {
        let data = pattern(400 + i as u64, 40);
        sys::mmap_write(&fd, len, off, &data).expect("mmap write");
        overlay(&mut content, off, &data);
    }
    drop(fd);
    expected.push(("mapped", content));

    // 5. pwrite at scattered, overlapping offsets into a new O_WRONLY file.
    let fd = open(
        &m.path("scattered"),
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
    );
    let mut content = Vec::new();
    for (i, off) in [300_000usize, 0, 12_345, 299_000, 70_000, 12_000]
        .into_iter()
        .enumerate()
    {
        let data = pattern(500 + i as u64, 5_000 + i * 1_111);
        pwrite_all(&fd, &data, off);
        overlay(&mut content, off, &data);
    }
    drop(fd);
    expected.push(("scattered", content));

    // 6. A few MiB of random data in odd-sized writes, then some of it
    // overwritten through a second, write-only open.
    let mut content = pattern(6, 5 * 1024 * 1024 + 321);
    let fd = open(
        &m.path("big"),
        libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
    );
    for chunk in content.chunks(100_003) {
        write_all(&fd, chunk);
    }
    drop(fd);
    let fd = open(&m.path("big"), libc::O_WRONLY);
    for (i, off) in [1usize, 1 << 20, 3 * (1 << 20) + 17]
        .into_iter()
        .enumerate()
    {
        let data = pattern(600 + i as u64, 70_001);
        pwrite_all(&fd, &data, off);
        overlay(&mut content, off, &data);
    }
    drop(fd);
    expected.push(("big", content));

    // What the mount shows before it goes.
    for (name, content) in &expected {
        let got = fs::read(m.path(name)).unwrap();
        assert!(
            got == *content,
            "{name} through the mount differs (len {} vs {})",
            got.len(),
            content.len()
        );
    }

    let log = m.umount_and_exit();
    for (name, content) in &expected {
        let got = fs::read(m.backing_path(name)).unwrap();
        let first = got.iter().zip(content.iter()).position(|(a, b)| a != b);
        assert!(
            got == *content,
            "{name} on the backing store differs after unmount: len {} vs {} expected, \
             first difference at {first:?}",
            got.len(),
            content.len()
        );
    }
    let last = stats_lines(&log).pop().expect("a stats line at exit");
    assert!(
        stat_field(&last, "writeback_opens") > 0,
        "no OPEN was rewritten: {last}"
    );
    assert!(stat_field(&last, "init_rewrites") >= 1, "{last}");
}

#[test]
fn denied_writeback_is_removed_from_a_backend_that_asks_for_it() {
    let policy = PolicyFile::new("[init]\nwriteback_cache = \"deny\"\n");
    let mut m = mount_with(&policy, &["-o", "writeback"]);
    if m.mode() != Mode::Proxy {
        return;
    }
    let line = init_line(&m);
    eprintln!("{line}");
    assert!(
        line.contains("denied: FUSE_WRITEBACK_CACHE"),
        "writeback not denied: {line}"
    );
    assert!(!line.contains("forced"), "{line}");
    assert_eq!(flags_in(&line, "sent to the kernel") & WRITEBACK_CACHE, 0);
    let data = pattern(7, 100_000);
    fs::write(m.path("f"), &data).unwrap();
    assert_eq!(fs::read(m.path("f")).unwrap(), data);
    m.umount_and_exit();
    assert_eq!(fs::read(m.backing_path("f")).unwrap(), data);
}
