//! Times as `stat` gives them, and bounds on what the kernel or a backend
//! can stamp a file with from now on (tests of time updates).
#![allow(unsafe_code)]

/// A time as `stat` gives it: (seconds, nanoseconds).
pub type Ts = (i64, i64);

pub fn show(t: Ts) -> String {
    format!("{}.{:09}", t.0, t.1)
}

pub fn clock(id: libc::clockid_t) -> Ts {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `t` is a valid, writable timespec for the duration of the
    // call; clock_gettime writes only into it.
    let r = unsafe { libc::clock_gettime(id, &mut t) };
    assert_eq!(r, 0, "clock_gettime({id})");
    (t.tv_sec, t.tv_nsec)
}

/// A lower bound for any timestamp the kernel or a backend takes from now
/// on: the coarse clock the kernel stamps files with lags the precise one by
/// up to a tick.
pub fn time_floor() -> Ts {
    clock(libc::CLOCK_REALTIME_COARSE)
}

/// An upper bound for any timestamp taken so far.
pub fn time_ceiling() -> Ts {
    clock(libc::CLOCK_REALTIME)
}

pub fn atime_of(st: &libc::stat) -> Ts {
    (st.st_atime, st.st_atime_nsec)
}

pub fn mtime_of(st: &libc::stat) -> Ts {
    (st.st_mtime, st.st_mtime_nsec)
}
