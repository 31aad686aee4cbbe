//! The backend's side of the seccomp channel: the BPF program, and its
//! installation between fork and exec.
//!
//! The program sends mount(2), umount2(2) and (where the architecture has
//! it) umount(2) to a user-notification listener, answers the new mount API
//! (`fsopen`, `fsconfig`, `fsmount`, `move_mount`, `open_tree`,
//! `open_tree_attr`, `fspick`, `mount_setattr`) with ENOSYS so that callers
//! fall back to mount(2), and lets every other call through untouched:
//! nothing on a daemon's steady-state path is trapped. It is inherited by
//! everything the daemon runs, a setuid `fusermount3` included (the proxy
//! runs as root with CAP_SYS_ADMIN, so no `PR_SET_NO_NEW_PRIVS` is needed
//! to install it, and none is set for a root backend: it would stop
//! fusermount3's setuid. Under `--backend-user` it is set after the filter,
//! and fusermount3 runs as the user: see [`crate::backend_user`]. A proxy
//! that is not root sets it before the filter, as the kernel requires:
//! [`set_no_new_privs`]).
//!
//! The architecture is checked first (`seccomp_data.arch`): the native one
//! and its 32-bit compat ABI (i386 on x86_64, arm on aarch64) each get their
//! own syscall numbers; x32 calls (x86_64 numbers with bit 30 set) are
//! folded onto the native numbers. Any other architecture value passes.
//!
//! [`install`] runs in the child after fork: it only makes system calls on
//! memory prepared by the parent (the program, a stack buffer for the
//! control message) and never allocates.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::RawFd;

/// `AUDIT_ARCH_X86_64` (linux/audit.h: EM_X86_64 | 64BIT | LE).
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH_X86_64: u32 = 0xC000_003E;
/// `AUDIT_ARCH_I386`.
#[cfg(target_arch = "x86_64")]
pub const AUDIT_ARCH_I386: u32 = 0x4000_0003;
/// `AUDIT_ARCH_AARCH64`.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH_AARCH64: u32 = 0xC000_00B7;
/// `AUDIT_ARCH_ARM`.
#[cfg(target_arch = "aarch64")]
pub const AUDIT_ARCH_ARM: u32 = 0x4000_0028;
/// `__X32_SYSCALL_BIT`: x32 calls are x86_64 calls with this bit set.
pub const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// Syscall numbers of one ABI that the filter looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Abi {
    /// `seccomp_data.arch` of calls made with this ABI.
    pub audit_arch: u32,
    /// mount(2).
    pub mount: u32,
    /// umount2(2).
    pub umount2: u32,
    /// The old one-argument umount(2), where the ABI has it.
    pub umount: Option<u32>,
    /// Whether x32 numbers (bit 30 set) are folded onto these.
    pub x32: bool,
}

/// The new mount API, the same numbers on every architecture since the
/// syscall tables were unified (5.1+): open_tree 428, move_mount 429,
/// fsopen 430, fsconfig 431, fsmount 432, fspick 433, mount_setattr 442,
/// open_tree_attr 467 (6.15).
pub const NEW_MOUNT_API: [u32; 8] = [428, 429, 430, 431, 432, 433, 442, 467];

/// The native ABI of this build.
#[cfg(target_arch = "x86_64")]
pub const NATIVE: Abi = Abi {
    audit_arch: AUDIT_ARCH_X86_64,
    mount: 165,
    umount2: 166,
    umount: None,
    x32: true,
};
/// The 32-bit compat ABI of this build's architecture.
#[cfg(target_arch = "x86_64")]
pub const COMPAT: Abi = Abi {
    audit_arch: AUDIT_ARCH_I386,
    mount: 21,
    umount2: 52,
    umount: Some(22),
    x32: false,
};

/// The native ABI of this build.
#[cfg(target_arch = "aarch64")]
pub const NATIVE: Abi = Abi {
    audit_arch: AUDIT_ARCH_AARCH64,
    mount: 40,
    umount2: 39,
    umount: None,
    x32: false,
};
/// The 32-bit compat ABI of this build's architecture.
#[cfg(target_arch = "aarch64")]
pub const COMPAT: Abi = Abi {
    audit_arch: AUDIT_ARCH_ARM,
    mount: 21,
    umount2: 52,
    umount: Some(22),
    x32: false,
};

/// What a trapped call is, from its notification's arch and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trapped {
    /// mount(source, target, type, flags, data).
    Mount,
    /// umount2(target, flags).
    Umount2,
    /// umount(target).
    Umount,
}

/// Decodes a notification's (arch, nr); `None` for a call the filter does
/// not send (it cannot happen with [`program`]).
pub fn trapped(arch: u32, nr: i32) -> Option<Trapped> {
    for abi in [NATIVE, COMPAT] {
        if abi.audit_arch != arch {
            continue;
        }
        let mut nr = nr as u32;
        if abi.x32 {
            nr &= !X32_SYSCALL_BIT;
        }
        return if nr == abi.mount {
            Some(Trapped::Mount)
        } else if nr == abi.umount2 {
            Some(Trapped::Umount2)
        } else if Some(nr) == abi.umount {
            Some(Trapped::Umount)
        } else {
            None
        };
    }
    None
}

// Classic BPF opcodes (linux/filter.h, linux/bpf_common.h).
/// BPF_LD (0) | BPF_W (0) | BPF_ABS (0x20).
const BPF_LD_W_ABS: u16 = 0x20;
const BPF_JMP_JEQ_K: u16 = 0x05 | 0x10; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_ALU_AND_K: u16 = 0x04 | 0x50; // BPF_ALU | BPF_AND | BPF_K
const BPF_RET_K: u16 = 0x06;
/// Offsets in `struct seccomp_data`.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;

/// Where a jump goes: the three returns at the end of the program.
#[derive(Clone, Copy)]
enum Ret {
    Allow,
    Notify,
    Enosys,
}

enum Ins {
    Plain(libc::sock_filter),
    /// `if A == k goto ret`, else next.
    JeqRet(u32, Ret),
    /// `goto ret`.
    Goto(Ret),
}

fn stmt(code: u16, k: u32) -> Ins {
    Ins::Plain(libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    })
}

/// The checks for one ABI, with A holding the syscall number on entry.
fn abi_block(abi: &Abi) -> Vec<Ins> {
    let mut b = vec![stmt(BPF_LD_W_ABS, OFF_NR)];
    if abi.x32 {
        b.push(stmt(BPF_ALU_AND_K, !X32_SYSCALL_BIT));
    }
    b.push(Ins::JeqRet(abi.mount, Ret::Notify));
    b.push(Ins::JeqRet(abi.umount2, Ret::Notify));
    if let Some(u) = abi.umount {
        b.push(Ins::JeqRet(u, Ret::Notify));
    }
    for nr in NEW_MOUNT_API {
        b.push(Ins::JeqRet(nr, Ret::Enosys));
    }
    b.push(Ins::Goto(Ret::Allow));
    b
}

/// The filter program (built in the parent, before fork).
pub fn program() -> Vec<libc::sock_filter> {
    let mut ins = vec![stmt(BPF_LD_W_ABS, OFF_ARCH)];
    for abi in [NATIVE, COMPAT] {
        let block = abi_block(&abi);
        // if A == arch: fall into the block, else skip it. A still holds
        // the arch when the block is skipped.
        ins.push(Ins::Plain(libc::sock_filter {
            code: BPF_JMP_JEQ_K,
            jt: 0,
            jf: u8::try_from(block.len()).expect("a block is short"),
            k: abi.audit_arch,
        }));
        ins.extend(block);
    }
    ins.push(Ins::Goto(Ret::Allow));
    let n = ins.len();
    let (allow, notify, enosys) = (n, n + 1, n + 2);
    let target = |r: Ret| match r {
        Ret::Allow => allow,
        Ret::Notify => notify,
        Ret::Enosys => enosys,
    };
    let mut out: Vec<libc::sock_filter> = ins
        .into_iter()
        .enumerate()
        .map(|(i, x)| match x {
            Ins::Plain(f) => f,
            Ins::JeqRet(k, r) => libc::sock_filter {
                code: BPF_JMP_JEQ_K,
                jt: u8::try_from(target(r) - i - 1).expect("jumps are short"),
                jf: 0,
                k,
            },
            Ins::Goto(r) => libc::sock_filter {
                code: BPF_JMP_JA,
                jt: 0,
                jf: 0,
                k: (target(r) - i - 1) as u32,
            },
        })
        .collect();
    for k in [
        libc::SECCOMP_RET_ALLOW,
        libc::SECCOMP_RET_USER_NOTIF,
        libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
    ] {
        out.push(libc::sock_filter {
            code: BPF_RET_K,
            jt: 0,
            jf: 0,
            k,
        });
    }
    out
}

/// Installs `prog` on the calling process with a new listener and sends the
/// listener over `handoff` (one end of a socketpair) with SCM_RIGHTS, then
/// closes it here, so that the daemon never holds it.
///
/// Async-signal-safe: meant for `Command::pre_exec`. Only raw system calls
/// on memory the caller owns; no allocation (an `io::Error` from an errno
/// does not allocate).
pub fn install(prog: &[libc::sock_filter], handoff: RawFd) -> io::Result<()> {
    unblock_all_signals()?;
    let fprog = libc::sock_fprog {
        len: prog.len() as libc::c_ushort,
        filter: prog.as_ptr() as *mut libc::sock_filter,
    };
    // WAIT_KILLABLE_RECV (5.19): once the proxy has received the mount, only
    // a fatal signal interrupts the caller, so a mount the proxy makes is
    // never restarted by a signal handler. Older kernels refuse the flag
    // (EINVAL): then without it.
    let mut listener = -1;
    for flags in [
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | libc::SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
    ] {
        // SAFETY: seccomp(SECCOMP_SET_MODE_FILTER, flags, &fprog) reads
        // `fprog` and the `prog.len()` instructions it points to, both alive
        // for the whole call (borrowed from the caller); the kernel copies
        // the program and keeps no pointer. The length fits c_ushort: the
        // program is a few dozen instructions.
        listener = unsafe {
            libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                flags,
                &fprog as *const libc::sock_fprog,
            )
        } as i32;
        if listener >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINVAL) {
            break;
        }
    }
    if listener < 0 {
        return Err(io::Error::last_os_error());
    }
    let sent = send_fd(handoff, listener);
    // SAFETY: `listener` was just returned by seccomp(2), is owned by this
    // function, and is not used after this close.
    unsafe { libc::close(listener) };
    sent
}

/// Sets `PR_SET_NO_NEW_PRIVS` on the calling process: what the kernel
/// requires before a process without CAP_SYS_ADMIN may install a seccomp
/// filter (else EACCES). Set for a backend started by a proxy that is not
/// root; it also means a setuid fusermount the daemon runs stays the user,
/// which is harmless since its mount(2) is trapped like the daemon's.
/// Async-signal-safe.
pub fn set_no_new_privs() -> io::Result<()> {
    // SAFETY: prctl with integer arguments only; it reads no memory.
    // Setting the flag needs no privilege and cannot be undone.
    let rc = unsafe {
        libc::prctl(
            libc::PR_SET_NO_NEW_PRIVS,
            1 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Clears the signal mask of the calling thread.
///
/// The proxy blocks the signals its signalfd reads, and std's fork path
/// (taken whenever there is a `pre_exec`) keeps the mask across exec,
/// unlike its posix_spawn path: a child started with a `pre_exec` must
/// unblock everything, or the daemon never sees the SIGTERM that ends it
/// cleanly. Async-signal-safe.
pub fn unblock_all_signals() -> io::Result<()> {
    // SAFETY: sigemptyset writes the sigset_t it is given, a local; the
    // second call reads it and changes this thread's mask only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        if libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Space for one SCM_RIGHTS message with one fd: CMSG_SPACE(4) is 24 on
/// 64-bit Linux, 16 on 32-bit; 8-aligned for `cmsghdr`.
#[repr(C, align(8))]
struct CmsgBuf([u8; 32]);

fn send_fd(sock: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut buf = CmsgBuf([0; 32]);
    // SAFETY: CMSG_SPACE is arithmetic on its argument; it touches no memory.
    let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
    debug_assert!(space <= buf.0.len());
    // SAFETY: msghdr is plain data; all-zero is a valid (empty) value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = buf.0.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg.msg_control` points to `buf`, 8-aligned and at least
    // CMSG_SPACE(4) bytes long (checked above), so CMSG_FIRSTHDR returns a
    // non-null pointer to the start of `buf`, valid for a cmsghdr, and
    // CMSG_DATA points inside `buf` with room for one fd. `buf`, `iov`,
    // `byte` and `msg` live until sendmsg returns; the kernel copies them.
    let rc = unsafe {
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL)
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_returns_are_reachable_and_jumps_land_inside() {
        let p = program();
        assert!(p.len() < 64);
        for (i, f) in p.iter().enumerate() {
            if f.code == BPF_JMP_JEQ_K {
                assert!(i + 1 + (f.jt as usize) < p.len());
                assert!(i + 1 + (f.jf as usize) < p.len());
            }
            if f.code == BPF_JMP_JA {
                assert!(i + 1 + (f.k as usize) < p.len());
            }
        }
        let rets: Vec<u32> = p[p.len() - 3..].iter().map(|f| f.k).collect();
        assert_eq!(
            rets,
            [
                libc::SECCOMP_RET_ALLOW,
                libc::SECCOMP_RET_USER_NOTIF,
                libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32
            ]
        );
    }

    /// A tiny interpreter of the subset the program uses.
    fn run(p: &[libc::sock_filter], arch: u32, nr: u32) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let f = &p[pc];
            pc += 1;
            match f.code {
                BPF_LD_W_ABS => a = if f.k == OFF_ARCH { arch } else { nr },
                BPF_ALU_AND_K => a &= f.k,
                BPF_JMP_JEQ_K => pc += if a == f.k { f.jt } else { f.jf } as usize,
                BPF_JMP_JA => pc += f.k as usize,
                BPF_RET_K => return f.k,
                c => panic!("unexpected opcode {c:#x}"),
            }
        }
    }

    #[test]
    fn only_mounts_are_trapped() {
        let p = program();
        let notif = libc::SECCOMP_RET_USER_NOTIF;
        let enosys = libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32;
        let allow = libc::SECCOMP_RET_ALLOW;
        for abi in [NATIVE, COMPAT] {
            assert_eq!(run(&p, abi.audit_arch, abi.mount), notif);
            assert_eq!(run(&p, abi.audit_arch, abi.umount2), notif);
            if let Some(u) = abi.umount {
                assert_eq!(run(&p, abi.audit_arch, u), notif);
            }
            for nr in NEW_MOUNT_API {
                assert_eq!(run(&p, abi.audit_arch, nr), enosys);
            }
            for nr in [0, 1, 3, 17, 100, 200, 427, 434, 500] {
                if nr != abi.mount && nr != abi.umount2 && Some(nr) != abi.umount {
                    assert_eq!(run(&p, abi.audit_arch, nr), allow, "nr {nr}");
                }
            }
            assert_eq!(
                trapped(abi.audit_arch, abi.mount as i32),
                Some(Trapped::Mount)
            );
            assert_eq!(
                trapped(abi.audit_arch, abi.umount2 as i32),
                Some(Trapped::Umount2)
            );
        }
        // Another architecture passes whatever the number.
        assert_eq!(run(&p, 0x1234, NATIVE.mount), allow);
        if NATIVE.x32 {
            let x32 = NATIVE.mount | X32_SYSCALL_BIT;
            assert_eq!(run(&p, NATIVE.audit_arch, x32), notif);
            assert_eq!(trapped(NATIVE.audit_arch, x32 as i32), Some(Trapped::Mount));
        }
    }
}
