//! Arbitrary bytes never make the parsers, or any accessor of what they
//! return, panic; and the lengths they report add up.

use fuseproxy_protocol::abi::InHeader;
use fuseproxy_protocol::encode::{encode_error_reply, encode_reply, encode_request};
use fuseproxy_protocol::init::{clamp_init_out, rewrite_init_in_flags};
use fuseproxy_protocol::{
    expected_reply_size, unique_of, InitInView, InitOutView, Opcode, Operation, Reply, Request,
    Unique,
};
use proptest::prelude::*;
use zerocopy::IntoBytes;

/// Copies `bytes` into an 8-aligned buffer, then `offset` bytes in.
fn aligned(bytes: &[u8], offset: usize) -> Vec<u64> {
    let mut v = vec![0u64; (bytes.len() + offset).div_ceil(8) + 1];
    v.as_mut_bytes()[offset..offset + bytes.len()].copy_from_slice(bytes);
    v
}

fn view(v: &[u64], offset: usize, len: usize) -> &[u8] {
    &v.as_bytes()[offset..offset + len]
}

fn touch_init_in(v: &InitInView) {
    let _ = (v.major(), v.minor(), v.max_readahead(), v.flags());
    let _ = (v.is_extended(), v.body_len(), v.arg());
}

fn touch_init_out(v: &InitOutView) {
    let _ = (v.major(), v.minor(), v.max_readahead(), v.flags());
    let _ = (v.max_background(), v.congestion_threshold(), v.max_write());
    let _ = (v.time_gran(), v.max_pages(), v.map_alignment());
    let _ = (v.max_stack_depth(), v.request_timeout(), v.body_len());
    let _ = (v.is_compat(), v.arg());
}

/// Calls every accessor reachable from a parsed request.
fn touch_request(req: &Request<'_>) {
    assert_eq!(
        40 + req.body().len() + req.extensions().len(),
        req.len(),
        "lengths add up"
    );
    assert_eq!(req.as_bytes().len(), req.header().len as usize);
    let _ = (req.opcode(), req.unique(), req.nodeid());
    let _ = (req.uid(), req.gid(), req.pid());
    let _ = format!("{:?} {}", req, req.opcode());
    let op = req.operation();
    let _ = format!("{op:?}");
    match op {
        Operation::Setattr(s) => {
            let _ = (s.arg(), s.valid(), s.mode(), s.uid(), s.gid(), s.size());
            let _ = (
                s.atime(),
                s.atime_now(),
                s.mtime(),
                s.mtime_now(),
                s.ctime(),
            );
            let _ = (s.fh(), s.lock_owner(), s.kill_suidgid());
        }
        Operation::Setxattr(x) => {
            assert_eq!(x.value().len(), x.size() as usize);
            let _ = (
                x.arg(),
                x.is_extended(),
                x.flags(),
                x.setxattr_flags(),
                x.name(),
            );
        }
        Operation::Init(i) => touch_init_in(&i),
        Operation::BatchForget { arg, items } => {
            assert_eq!(items.len(), arg.count as usize);
            let _: u64 = items
                .iter()
                .map(|i| i.nodeid ^ i.nlookup)
                .fold(0, |a, b| a ^ b);
        }
        Operation::Symlink { name, target } => {
            assert!(!name.contains(&0) && !target.contains(&0));
        }
        Operation::Rename { old, new, .. } | Operation::Rename2 { old, new, .. } => {
            assert!(!old.contains(&0) && !new.contains(&0));
        }
        Operation::Lookup { name }
        | Operation::Unlink { name }
        | Operation::Rmdir { name }
        | Operation::Removexattr { name }
        | Operation::Mknod { name, .. }
        | Operation::Mkdir { name, .. }
        | Operation::Link { name, .. }
        | Operation::Create { name, .. }
        | Operation::Getxattr { name, .. } => assert!(!name.contains(&0)),
        _ => {}
    }
    let _ = req.opcode().needs_reply();
    let size = expected_reply_size(req.opcode(), 45);
    let _ = (size.admits(req.body().len()), size.check(req.opcode(), 3));
}

fn touch_reply(r: &Reply<'_>) {
    assert_eq!(16 + r.body().len(), r.len());
    let _ = (r.header(), r.kind(), r.unique(), r.error(), r.as_bytes());
    let _ = (r.is_interrupt_reply(), r.is_notification(), r.notify_code());
    let _ = format!("{r:?}");
    if let Ok(v) = InitOutView::parse(r.body()) {
        touch_init_out(&v);
    }
}

fn check_all(bytes: &[u8]) {
    for offset in [0usize, 1, 4] {
        let v = aligned(bytes, offset);
        let buf = view(&v, offset, bytes.len());
        if let Ok(req) = Request::parse(buf) {
            touch_request(&req);
        }
        if let Ok(r) = Reply::parse(buf) {
            touch_reply(&r);
        }
        let _ = unique_of(buf);
        if let Ok(i) = InitInView::parse(buf) {
            touch_init_in(&i);
        }
        if let Ok(o) = InitOutView::parse(buf) {
            touch_init_out(&o);
        }
        let mut m = bytes.to_vec();
        let _ = rewrite_init_in_flags(&mut m, u64::MAX >> 3);
        assert_eq!(m.len(), bytes.len());
        let _ = clamp_init_out(&mut m, 4096, 1);
        assert_eq!(m.len(), bytes.len());
    }
}

fn opcode() -> impl Strategy<Value = u32> {
    prop_oneof![0u32..60, Just(4096u32), any::<u32>()]
}

prop_compose! {
    /// A request with a plausible header: correct len, random opcode.
    fn framed_request()(op in opcode(), extlen in prop_oneof![3 => Just(0u16), 1 => 0u16..8],
                        unique in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..260))
                        -> Vec<u8> {
        let header = InHeader {
            len: 0,
            opcode: op,
            unique,
            nodeid: 1,
            uid: 0,
            gid: 0,
            pid: 0,
            total_extlen: extlen,
            padding: 0,
        };
        let mut buf = vec![0u8; 40 + body.len()];
        let n = encode_request(&mut buf, &header, &[&body]).unwrap();
        buf.truncate(n);
        buf
    }
}

prop_compose! {
    /// A request whose body is a fixed part, then NUL-terminated names and a
    /// tail: reaches the name-carrying views (and SETXATTR's size rule).
    fn named_request()(op in prop_oneof![0u32..54], fixed in proptest::collection::vec(any::<u8>(), 0..100),
                       names in proptest::collection::vec("[a-z.]{0,20}", 0..3),
                       tail in proptest::collection::vec(any::<u8>(), 0..8),
                       size_from_tail in any::<bool>()) -> Vec<u8> {
        let mut body = fixed;
        if op == 21 && size_from_tail && body.len() >= 4 {
            body[..4].copy_from_slice(&(tail.len() as u32).to_ne_bytes());
        }
        for n in &names {
            body.extend_from_slice(n.as_bytes());
            body.push(0);
        }
        body.extend_from_slice(&tail);
        let header = InHeader { opcode: op, unique: 2, ..InHeader::default() };
        let mut buf = vec![0u8; 40 + body.len()];
        let n = encode_request(&mut buf, &header, &[&body]).unwrap();
        buf.truncate(n);
        buf
    }
}

prop_compose! {
    /// A message with a plausible out header: correct len.
    fn framed_reply()(error in prop_oneof![Just(0i32), -600i32..20, any::<i32>()],
                      unique in prop_oneof![Just(0u64), any::<u64>()],
                      body in proptest::collection::vec(any::<u8>(), 0..100)) -> Vec<u8> {
        let mut buf = vec![0u8; 16 + body.len()];
        let n = if error == 0 {
            encode_reply(&mut buf, Unique(unique), &[&body]).unwrap()
        } else {
            encode_error_reply(&mut buf, Unique(unique), -error).unwrap()
        };
        buf.truncate(n);
        if body.is_empty() || error == 0 {
            buf
        } else {
            // An error with a body: patch the header's len to cover it.
            buf.extend_from_slice(&body);
            let len = buf.len() as u32;
            buf[..4].copy_from_slice(&len.to_ne_bytes());
            buf
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        check_all(&bytes);
    }

    #[test]
    fn framed_requests(bytes in framed_request()) {
        check_all(&bytes);
    }

    #[test]
    fn named_requests(bytes in named_request()) {
        check_all(&bytes);
    }

    #[test]
    fn framed_replies(bytes in framed_reply()) {
        check_all(&bytes);
    }

    #[test]
    fn every_opcode_reply_size(op in any::<u32>(), minor in 0u32..50, len in 0usize..400) {
        let op = Opcode::from(op);
        let s = expected_reply_size(op, minor);
        prop_assert_eq!(s.admits(len), s.check(op, len).is_ok());
    }
}
