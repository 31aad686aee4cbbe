//! 1 MiB FUSE messages cross the proxy intact: one 1 MiB write() and one
//! 1 MiB read()/pread() through passthrough_ll, compared byte for byte with
//! the backing file (a pseudo-random pattern), with the backend's debug log
//! (`-d`, which the proxy's stderr carries) proving that each went as ONE
//! request or reply of 1 MiB of data; and the proxy's start-up log names
//! the negotiated `max_write=1048576`.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;

use common::sys::{self, PageBuf};
use common::tree::{pattern, Digest};
use common::{Mode, Mount, MountBuilder};

const MIB: usize = 1 << 20;
/// A WRITE request carrying 1 MiB: in_header (40) + write_in (40) + data.
const WRITE_1M_INSIZE: usize = 40 + 40 + MIB;
/// A reply carrying 1 MiB: out_header (16) + data.
const READ_1M_OUTSIZE: usize = 16 + MIB;

/// passthrough_ll with debug output; `cache` is its `-o cache=` value
/// (`never` gives direct I/O, so a 1 MiB read() is one 1 MiB READ).
fn mount(cache: &str) -> Mount {
    let opts = format!("cache={cache}");
    MountBuilder::passthrough(Mode::Proxy, &["-d", "-o", &opts]).mount()
}

fn same(what: &str, got: &[u8], want: &[u8]) {
    assert!(
        got == want,
        "{what}: got {:?}, want {:?} (first difference at byte {:?})",
        Digest::of(got),
        Digest::of(want),
        got.iter().zip(want).position(|(a, b)| a != b)
    );
}

/// Number of log lines naming exactly `needle` as a whole field
/// (`insize: 1048656,` or `outsize: 1048592`).
fn count_field(log: &str, field: &str, value: usize) -> usize {
    let with_comma = format!("{field}: {value},");
    let at_end = format!("{field}: {value}");
    log.lines()
        .filter(|l| l.contains(&with_comma) || l.trim_end().ends_with(&at_end))
        .count()
}

#[test]
fn one_mib_write_and_read_direct_io() {
    let m = mount("never");
    let data = pattern(0x1_0000, MIB);
    let second = pattern(0x2_0000, MIB);

    let fd = sys::open(&m.path("big"), libc::O_CREAT | libc::O_RDWR, 0o644).expect("create");
    // Page-aligned buffers: direct I/O maps the caller's pages, and an
    // unaligned 1 MiB buffer would span 257 pages, i.e. two requests.
    assert_eq!(
        sys::write(&fd, &PageBuf::from_slice(&data)),
        Ok(MIB),
        "one 1 MiB write()"
    );
    // A second 1 MiB write at an unaligned file offset.
    assert_eq!(
        sys::pwrite(&fd, &PageBuf::from_slice(&second), (MIB + 7) as i64),
        Ok(MIB),
        "1 MiB pwrite()"
    );
    assert_eq!(sys::fsync(&fd), Ok(()));

    let backing = fs::read(m.backing_path("big")).expect("read backing file");
    assert_eq!(backing.len(), 2 * MIB + 7, "backing file size");
    same("backing [0, 1 MiB)", &backing[..MIB], &data);
    same("backing gap", &backing[MIB..MIB + 7], &[0; 7]);
    same("backing [1 MiB + 7, ..)", &backing[MIB + 7..], &second);

    assert_eq!(sys::lseek(&fd, 0, libc::SEEK_SET), Ok(0));
    let got = sys::read_aligned(&fd, MIB).expect("read");
    assert_eq!(got.len(), MIB, "one 1 MiB read() returns 1 MiB");
    same("read() [0, 1 MiB)", &got, &data);
    let got = sys::pread_aligned(&fd, MIB, (MIB + 7) as i64).expect("pread");
    same("pread() 1 MiB at 1 MiB + 7", &got, &second);
    let got = sys::pread_aligned(&fd, MIB, 4099).expect("pread");
    same("pread() 1 MiB at 4099", &got, &backing[4099..4099 + MIB]);
    drop(fd);

    // Through the mount and the backing file agree after close, too.
    let via_mount = fs::read(m.path("big")).expect("read through mount");
    same("whole file through the mount", &via_mount, &backing);

    // The backend saw single 1 MiB messages, not a series of smaller ones.
    let log = m.proxy_log();
    assert!(
        log.contains("opcode: INIT"),
        "the backend's debug output (-d) is not in the proxy's stderr:\n{log}"
    );
    assert!(
        count_field(&log, "insize", WRITE_1M_INSIZE) >= 2,
        "no two WRITE requests of {WRITE_1M_INSIZE} bytes reached the backend:\n{}",
        tail(&log)
    );
    assert!(
        count_field(&log, "outsize", READ_1M_OUTSIZE) >= 3,
        "no three READ replies of {READ_1M_OUTSIZE} bytes left the backend:\n{}",
        tail(&log)
    );
    assert!(m.is_mounted(), "the mount went away");
}

#[test]
fn one_mib_write_through_page_cache() {
    let m = mount("auto");
    let data = pattern(0x3_0000, MIB);
    let fd = sys::open(
        &m.path("cached"),
        libc::O_CREAT | libc::O_TRUNC | libc::O_RDWR,
        0o644,
    )
    .expect("create");
    assert_eq!(sys::write(&fd, &data), Ok(MIB), "one 1 MiB write()");
    let backing = fs::read(m.backing_path("cached")).expect("read backing file");
    same("backing file after write()", &backing, &data);
    // Read it back through a new open file (page cache or backend).
    drop(fd);
    let fd = sys::open(&m.path("cached"), libc::O_RDONLY, 0).expect("reopen");
    let mut got = vec![0u8; MIB];
    let file = fs::File::from(fd);
    file.read_exact_at(&mut got, 0).expect("read 1 MiB");
    same("read back through the page cache", &got, &data);
    let log = m.proxy_log();
    assert!(
        count_field(&log, "insize", WRITE_1M_INSIZE) >= 1,
        "no WRITE request of {WRITE_1M_INSIZE} bytes reached the backend:\n{}",
        tail(&log)
    );
}

#[test]
fn negotiated_max_write_is_logged() {
    let m = MountBuilder::passthrough(Mode::Proxy, &[]).mount();
    if m.mode() == Mode::Direct {
        eprintln!("FUSEPROXY_TEST_MODE=direct: no proxy log to check");
        return;
    }
    // INIT has been answered once stat() of the mountpoint succeeded, but
    // the log line may trail it.
    assert!(
        m.wait_log("max_write=1048576", common::MOUNT_TIMEOUT),
        "the proxy's log does not name max_write=1048576:\n{}",
        m.proxy_log()
    );
}

/// The last lines of a long log.
fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}
