//! The FUSE wire protocol (kernel ABI 7.45) as typed, validating views over
//! bytes.
//!
//! This crate is what fuseproxy knows about FUSE messages: the kernel's
//! structs ([`abi`]), opcodes and flags, and views that check a message once
//! and then read it without copying. It does no I/O, keeps no state between
//! messages, and makes no decisions: what to forward, answer or rewrite is the
//! `policies` crate's business. It has no `unsafe` code; zerocopy's derives do
//! the byte casts.
//!
//! # The validation contract
//! Validation happens once, at the edge: [`Request::parse`] for a message
//! read from `/dev/fuse`, [`Reply::parse`] for a message from the daemon.
//! Once either returns `Ok`, **no accessor panics**, on the view or on any
//! view reached from it ([`Request::operation`] and its [`Setattr`],
//! [`Setxattr`], [`InitInView`] ...). For a request that means: `len` equals
//! the bytes received, `total_extlen` fits, the body holds the opcode's fixed
//! part and every name it carries is NUL-terminated inside the body. For a
//! reply it means the header rules the kernel applies in
//! `fuse_dev_do_write` hold (see [`reply`]). Body sizes of replies depend on
//! the request and are checked separately with [`expected_reply_size`].
//!
//! Unknown is not invalid: an unknown opcode or notification code parses
//! (as [`Opcode::Unknown`], [`NotifyCode::Unknown`]) so a relay can forward
//! it unchanged.
//!
//! Views borrow the buffer, which must be 8-byte aligned (the headers hold
//! `u64`s); a misaligned buffer is rejected with [`ParseError::Misaligned`],
//! never a panic. Buffers from the proxy's arena are aligned by construction.
//! Byte order is the host's, as on `/dev/fuse`.
//!
//! # Modules
//! - [`abi`] — every struct of `fuse.h` 7.45, with size assertions.
//! - [`opcode`] — [`Opcode`], [`NotifyCode`].
//! - [`flags`] — `FATTR_*`, `FOPEN_*`, INIT flags (`u64`) and their names.
//! - [`ids`] — [`Unique`], [`NodeId`], [`Fh`].
//! - [`request`], [`reply`] — the views.
//! - [`init`] — INIT by protocol minor; in-place flag and size rewriting.
//! - [`encode`] — writing replies and requests into a caller's buffer.
//! - [`uring`] — FUSE-over-io_uring: ring entry layout, and conversion of an
//!   entry to and from the `/dev/fuse` wire format.
//! - [`error`] — [`ParseError`].

#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod abi;
pub mod encode;
pub mod error;
pub mod flags;
pub mod ids;
pub mod init;
pub mod opcode;
pub mod reply;
pub mod request;
pub mod uring;

pub use encode::{encode_error_reply, encode_notify, encode_reply, encode_request};
pub use error::ParseError;
pub use ids::{Fh, NodeId, Unique, FUSE_INT_REQ_BIT, FUSE_ROOT_ID};
pub use init::{
    clamp_init_out, edit_init_out, rewrite_init_in_flags, InitInView, InitOutEdit, InitOutView,
};
pub use opcode::{NotifyCode, Opcode};
pub use reply::{expected_reply_size, unique_of, Reply, ReplyKind, ReplySize};
pub use request::{Operation, Request, Setattr, Setxattr};
