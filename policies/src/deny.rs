//! `[deny]`: requests answered locally with an errno, never reaching the
//! backend.
//!
//! `read_only = true` answers every request that would change the
//! filesystem with EROFS: SETATTR (time-only ones included), MKNOD, MKDIR,
//! UNLINK, RMDIR, RENAME, RENAME2, LINK, SYMLINK, WRITE, CREATE, SETXATTR,
//! REMOVEXATTR, FALLOCATE, COPY_FILE_RANGE(_64), and OPEN with O_WRONLY,
//! O_RDWR or O_TRUNC (an open for writing fails where a read-only mount
//! fails it, not at the first write). Opcodes named in the section get
//! their own errno and take precedence over `read_only`.

use fuseproxy_protocol::{Opcode, Operation, Request};

use crate::config::DenySection;
use crate::rules::{op_index, OPS};

const EROFS: i32 = 30;
const O_ACCMODE: u32 = 0o3;
const O_TRUNC: u32 = 0o1000;

/// Opcodes that change the filesystem whatever their arguments.
const MUTATING: &[Opcode] = &[
    Opcode::Setattr,
    Opcode::Mknod,
    Opcode::Mkdir,
    Opcode::Unlink,
    Opcode::Rmdir,
    Opcode::Rename,
    Opcode::Rename2,
    Opcode::Link,
    Opcode::Symlink,
    Opcode::Write,
    Opcode::Create,
    Opcode::Setxattr,
    Opcode::Removexattr,
    Opcode::Fallocate,
    Opcode::CopyFileRange,
    Opcode::CopyFileRange64,
];

/// `[deny]` compiled: per opcode, the errno (0: not denied).
#[derive(Debug, Clone, Copy)]
pub struct DenyRule {
    errno: [i32; OPS],
    /// Per opcode: its errno comes from `read_only`, not from the section.
    by_read_only: [bool; OPS],
    read_only: bool,
}

impl DenyRule {
    /// Nothing denied.
    pub const OFF: DenyRule = DenyRule {
        errno: [0; OPS],
        by_read_only: [false; OPS],
        read_only: false,
    };

    /// Compiles the section.
    pub fn compile(s: &DenySection) -> DenyRule {
        let mut r = DenyRule::OFF;
        r.read_only = s.read_only;
        if s.read_only {
            for op in MUTATING {
                if let Some(i) = op_index(*op) {
                    r.errno[i] = EROFS;
                    r.by_read_only[i] = true;
                }
            }
        }
        for (op, e) in &s.ops {
            if let Some(i) = op_index(op.0) {
                r.errno[i] = e.0;
                r.by_read_only[i] = false;
            }
        }
        r
    }

    /// The errno `req` is answered with, if it is denied.
    pub fn decide(&self, req: &Request<'_>) -> Option<i32> {
        self.decide_why(req).map(|(errno, _)| errno)
    }

    /// [`decide`](Self::decide), and whether `read_only` is the reason
    /// (rather than the opcode named in the section).
    pub fn decide_why(&self, req: &Request<'_>) -> Option<(i32, bool)> {
        let i = op_index(req.opcode())?;
        if self.errno[i] != 0 {
            return Some((self.errno[i], self.by_read_only[i]));
        }
        if self.read_only {
            if let Operation::Open(arg) = req.operation() {
                if arg.flags & O_ACCMODE != 0 || arg.flags & O_TRUNC != 0 {
                    return Some((EROFS, true));
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Policy;
    use fuseproxy_protocol::abi::{InHeader, OpenIn};
    use fuseproxy_protocol::encode;
    use zerocopy::IntoBytes;

    #[repr(align(8))]
    struct Buf([u8; 256]);

    fn decide(rule: &DenyRule, op: Opcode, body: &[u8]) -> Option<i32> {
        let mut b = Buf([0; 256]);
        let h = InHeader {
            opcode: op.into(),
            unique: 2,
            nodeid: 1,
            ..InHeader::default()
        };
        let n = encode::encode_request(&mut b.0, &h, &[body]).unwrap();
        rule.decide(&Request::parse(&b.0[..n]).unwrap())
    }

    fn rule(text: &str) -> DenyRule {
        DenyRule::compile(Policy::parse("t", text).unwrap().deny.as_ref().unwrap())
    }

    #[test]
    fn read_only_denies_changes_and_writable_opens_only() {
        let r = rule("[deny]\nread_only = true\n");
        assert_eq!(decide(&r, Opcode::Unlink, b"a\0"), Some(EROFS));
        assert_eq!(
            decide(&r, Opcode::Mkdir, b"\0\0\0\0\0\0\0\0d\0"),
            Some(EROFS)
        );
        assert_eq!(decide(&r, Opcode::Getattr, &[0; 16]), None);
        let open = |flags: u32| OpenIn {
            flags,
            ..OpenIn::default()
        };
        assert_eq!(decide(&r, Opcode::Open, open(0).as_bytes()), None);
        assert_eq!(decide(&r, Opcode::Open, open(1).as_bytes()), Some(EROFS));
        assert_eq!(decide(&r, Opcode::Open, open(2).as_bytes()), Some(EROFS));
        assert_eq!(
            decide(&r, Opcode::Open, open(O_TRUNC).as_bytes()),
            Some(EROFS)
        );
    }

    #[test]
    fn a_named_opcode_gets_its_errno() {
        let r = rule("[deny]\nUNLINK = \"EPERM\"\n");
        assert_eq!(decide(&r, Opcode::Unlink, b"a\0"), Some(1));
        assert_eq!(decide(&r, Opcode::Rmdir, b"a\0"), None);
        let r = rule("[deny]\nread_only = true\nUNLINK = \"EPERM\"\n");
        assert_eq!(decide(&r, Opcode::Unlink, b"a\0"), Some(1));
        assert_eq!(decide(&r, Opcode::Rmdir, b"a\0"), Some(EROFS));
    }
}
