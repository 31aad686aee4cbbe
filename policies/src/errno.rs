//! Errno names for policy files: `"EROFS"` rather than `30`.
//!
//! Linux's numbers (asm-generic/errno-base.h and errno.h) for the errnos a
//! filesystem call may plausibly return. Names keep their C spelling.

/// `(name, number)` of every errno a policy file may name.
pub const ERRNOS: &[(&str, i32)] = &[
    ("EPERM", 1),
    ("ENOENT", 2),
    ("EINTR", 4),
    ("EIO", 5),
    ("ENXIO", 6),
    ("E2BIG", 7),
    ("EBADF", 9),
    ("EAGAIN", 11),
    ("ENOMEM", 12),
    ("EACCES", 13),
    ("EFAULT", 14),
    ("EBUSY", 16),
    ("EEXIST", 17),
    ("EXDEV", 18),
    ("ENODEV", 19),
    ("ENOTDIR", 20),
    ("EISDIR", 21),
    ("EINVAL", 22),
    ("ENFILE", 23),
    ("EMFILE", 24),
    ("ETXTBSY", 26),
    ("EFBIG", 27),
    ("ENOSPC", 28),
    ("ESPIPE", 29),
    ("EROFS", 30),
    ("EMLINK", 31),
    ("ERANGE", 34),
    ("EDEADLK", 35),
    ("ENAMETOOLONG", 36),
    ("ENOLCK", 37),
    ("ENOSYS", 38),
    ("ENOTEMPTY", 39),
    ("ELOOP", 40),
    ("ENODATA", 61),
    ("ETIME", 62),
    ("EREMOTEIO", 121),
    ("EOVERFLOW", 75),
    ("EILSEQ", 84),
    ("EOPNOTSUPP", 95),
    ("ENOTCONN", 107),
    ("ETIMEDOUT", 110),
    ("ESTALE", 116),
    ("EDQUOT", 122),
    ("ECANCELED", 125),
];

/// The number of an errno name.
pub fn by_name(name: &str) -> Option<i32> {
    ERRNOS.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// The name of an errno number (`"errno 200"`-style callers print the number
/// when this is `None`).
pub fn name_of(errno: i32) -> Option<&'static str> {
    ERRNOS.iter().find(|(_, v)| *v == errno).map(|(n, _)| *n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_are_each_unique() {
        for (i, (n, v)) in ERRNOS.iter().enumerate() {
            for (m, w) in &ERRNOS[i + 1..] {
                assert_ne!(n, m);
                assert_ne!(v, w, "{n} and {m}");
            }
        }
        assert_eq!(by_name("EROFS"), Some(30));
        assert_eq!(name_of(5), Some("EIO"));
        assert_eq!(by_name("erofs"), None);
    }
}
