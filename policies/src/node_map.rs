//! [`NodeMap`]: the kernel's node ids and file handles, kept valid across a
//! restart of the daemon (issue 12).
//!
//! The kernel names nodes and open files by numbers the daemon chose; a new
//! daemon process knows none of them. The map learns, from the messages it
//! is shown, what it takes to find each file again:
//! - per node the kernel holds: the directory and name it was reached by
//!   (replies to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE and the entries
//!   of READDIRPLUS; RENAME/RENAME2 move it; UNLINK, RMDIR and
//!   NOTIFY_DELETE leave it unnamed) and the kernel's lookup count, until
//!   FORGET/BATCH_FORGET bring it to 0. The root (node 1) is always there.
//! - per open handle: the node, the open flags and whether it is a
//!   directory, until RELEASE/RELEASEDIR.
//!
//! Until [`NodeMap::begin_recovery`] the translation is the identity and no
//! message is rewritten: a request costs a parse and at most two table
//! look-ups. After it the caller looks every node up again, parents first
//! ([`NodeMap::poll_lookup`]), then reopens every handle
//! ([`NodeMap::poll_reopen`]); from then on requests are rewritten in place
//! from kernel ids to the new daemon's, and replies the other way.
//!
//! No I/O, no clock, no threads, and nothing allocated after
//! [`NodeMap::new`]: every table has the size given there, and what does not
//! fit is counted in [`NodeMapStats`], never grown.
//!
//! # Contract
//! - Every request sent to the daemon goes through
//!   [`handle_request`](NodeMap::handle_request) (the engine's own requests
//!   too, so that their ids are translated), and every reply and
//!   notification through [`handle_reply`](NodeMap::handle_reply) before it
//!   reaches the kernel. A request answered without the daemon is reported
//!   with [`request_dropped`](NodeMap::request_dropped); one that is not has
//!   its record reused once the pending table is full.
//! - Ids the caller passes in are the kernel's unless named `daemon`.
//! - While [`is_recovered`](NodeMap::is_recovered) is false, every request
//!   but FORGET and BATCH_FORGET is [`Untranslatable::Recovering`]: the
//!   caller holds them, so that nothing moves the tree while it is being
//!   walked. Its own recovery LOOKUPs and OPENs carry daemon ids already
//!   and do not pass through the map.
//!
//! # What it does not cover
//! - A hard link is known by the name it was reached by last; an UNLINK of
//!   that name leaves it unnamed (lost at a restart) even if another remains.
//! - Names longer than 255 bytes (FUSE allows 1024) are not kept, nor is the
//!   name of a node whose directory the kernel forgot first (possible after
//!   an entry invalidation): such nodes are unnamed.
//! - A node is found again by its path: a file replaced under that name by
//!   someone else is taken for the old one (the caller may compare modes).
//! - Handles are keyed by (node, fh). Opens of one node that got the same fh
//!   from the daemon are one handle, reopened once; every RELEASE is still
//!   forwarded.
//! - Locks, mmap/DAX mappings (SETUPMAPPING's fh is translated, the mapping
//!   is not redone), POLL wake-ups, passthrough backing ids and requests in
//!   flight at the crash are not restored here.
//! - A node or handle that did not fit before the restart is lost after it,
//!   as are O_TMPFILE files (never named).

use core::mem::{offset_of, size_of};
use std::collections::VecDeque;

use fuseproxy_protocol::abi::{
    fuse_rec_align, CopyFileRangeIn, CreateIn, Dirent, Direntplus, EntryOut, GetattrIn, LinkIn,
    NotifyDeleteOut, NotifyInvalEntryOut, NotifyInvalInodeOut, NotifyPruneOut, NotifyRetrieveOut,
    NotifyStoreOut, Rename2In, RenameIn, SetattrIn, StatxIn, FUSE_NAME_OFFSET_DIRENTPLUS,
};
use fuseproxy_protocol::flags::FUSE_GETATTR_FH;
use fuseproxy_protocol::ids::FUSE_UNIQUE_RESEND;
use fuseproxy_protocol::{
    Fh, NodeId, NotifyCode, Opcode, Operation, Request, FUSE_INT_REQ_BIT, FUSE_ROOT_ID,
};
use zerocopy::FromBytes;

use crate::names;

const NONE: u32 = u32::MAX;
const ROOT: u32 = 0;
/// Longest name kept (`NAME_MAX`).
const NAME_MAX: usize = 255;
/// A name's record in the pool: owner slot (`u32`), length (`u8`), bytes.
const NAME_HEADER: usize = 5;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
const NODEID_AT: usize = 16;
/// Where kernel ids the map makes up start (when the daemon's id is taken).
const SYNTHETIC: u64 = 1 << 63;
/// renameat2(2)'s RENAME_EXCHANGE.
const RENAME_EXCHANGE: u32 = 2;
/// open(2) flags a reopen must not repeat: O_CREAT, O_EXCL, O_NOCTTY,
/// O_TRUNC.
///
/// NOTE: the generic Linux values (x86, arm, riscv); alpha, mips, parisc
/// and sparc differ.
const NOT_ON_REOPEN: u32 = 0o100 | 0o200 | 0o400 | 0o1000;

/// Why a message cannot be passed on as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Untranslatable {
    /// (Requests) it names a node or handle lost in a restart: answer ESTALE.
    /// For FORGET/BATCH_FORGET (never answered, never held): nothing needs
    /// to reach the daemon; drop it.
    Lost,
    /// (Requests) the map is recovering: hold the request until
    /// [`NodeMap::is_recovered`], then pass it again (nothing was learned
    /// from it).
    Recovering,
    /// (Replies) a new node or handle the map has no room to give a kernel
    /// id: answer the request with an error (and FORGET/RELEASE what the
    /// daemon gave). (Notifications) a daemon id the kernel does not know:
    /// drop it.
    Unmapped,
}

/// An open handle's slot in the map, for [`NodeMap::poll_reopen`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct HandleId(pub u32);

/// A LOOKUP the caller is to send to the new daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lookup<'a> {
    /// The kernel's node being looked for.
    pub node: NodeId,
    /// The daemon's id of its directory.
    pub daemon_parent: NodeId,
    /// Its name (no NUL).
    pub name: &'a [u8],
}

/// An OPEN (or OPENDIR) the caller is to send to the new daemon.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reopen {
    /// Whose answer it is, for [`NodeMap::handle_reopened`].
    pub handle: HandleId,
    /// The daemon's id of the node.
    pub daemon_node: NodeId,
    /// The first open's flags, without O_CREAT, O_EXCL, O_NOCTTY, O_TRUNC.
    pub flags: u32,
    /// OPENDIR rather than OPEN.
    pub is_dir: bool,
}

/// What the map holds and what did not fit, for the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct NodeMapStats {
    /// Nodes held (the root not counted).
    pub nodes: usize,
    /// Name bytes in use (record headers included).
    pub name_bytes: usize,
    /// Handles held.
    pub handles: usize,
    /// Nodes lost in restarts, in all.
    pub lost_nodes: u64,
    /// Handles lost in restarts, in all.
    pub lost_handles: u64,
    /// Nodes not held because the node table was full.
    pub nodes_full: u64,
    /// Handles not held because the handle table was full.
    pub handles_full: u64,
    /// Names not kept (pool full, or too long).
    pub names_full: u64,
    /// Pending records reused before their reply came.
    pub pending_evicted: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// The daemon's id is known.
    Known,
    /// To be looked up (reopened) once its parent is known.
    Waiting,
    /// Handed out by `poll_lookup`/`poll_reopen`, answer awaited.
    Asked,
    /// Not found again.
    Lost,
}

#[derive(Debug, Clone, Copy)]
struct Node {
    /// The kernel's id; 0 marks a free slot.
    kernel: u64,
    /// The daemon's id, when `state` is Known.
    daemon: u64,
    /// The generation the kernel was told.
    generation: u64,
    /// Lookups the kernel holds, and those the daemon counts.
    nlookup: u64,
    dlookup: u64,
    /// Tree links (slots). INVARIANT: `parent` is NONE exactly when `name`
    /// is, and no node is its own ancestor.
    parent: u32,
    first_child: u32,
    next: u32,
    prev: u32,
    /// Offset of its name record in the pool.
    name: u32,
    state: State,
}

const FREE_NODE: Node = Node {
    kernel: 0,
    daemon: 0,
    generation: 0,
    nlookup: 0,
    dlookup: 0,
    parent: NONE,
    first_child: NONE,
    next: NONE,
    prev: NONE,
    name: NONE,
    state: State::Known,
};

#[derive(Debug, Clone, Copy)]
struct Handle {
    /// The kernel's node and fh; `node` 0 marks a free slot.
    node: u64,
    fh: u64,
    daemon_fh: u64,
    flags: u32,
    is_dir: bool,
    opens: u32,
    state: State,
}

/// What a reply will need of its request.
#[derive(Debug, Clone, Copy)]
struct Pending {
    unique: u64,
    seq: u64,
    /// The request's node: the directory, or the node opened.
    parent: u64,
    /// RENAME's source, UNLINK/RMDIR's victim (0: unknown).
    node: u64,
    newdir: u64,
    /// open(2) flags, or RENAME2's flags.
    flags: u32,
    /// Bytes of `name`; `u16::MAX`: no name.
    name_len: u16,
    name: [u8; NAME_MAX],
}

impl Pending {
    fn name(&self) -> Option<&[u8]> {
        self.name.get(..usize::from(self.name_len))
    }
}

/// Open addressing over (key, slot) cells: linear probing, backward-shift
/// deletion. INVARIANT: the length is a power of two and at least twice the
/// entries it holds, so every probe ends at an empty cell.
struct Index {
    cells: Vec<(u64, u32)>,
}

impl Index {
    fn new(entries: usize) -> Index {
        let n = entries.saturating_mul(2).max(2).next_power_of_two();
        Index {
            cells: vec![(0, NONE); n],
        }
    }

    fn home(&self, key: u64) -> usize {
        mix(key) as usize & (self.cells.len() - 1)
    }

    /// The cell holding `key` for a slot `eq` accepts.
    fn find(&self, key: u64, eq: impl Fn(u32) -> bool) -> Option<usize> {
        let mask = self.cells.len() - 1;
        let mut i = self.home(key);
        loop {
            match self.cells[i] {
                (_, NONE) => return None,
                (k, s) if k == key && eq(s) => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn get(&self, key: u64, eq: impl Fn(u32) -> bool) -> Option<u32> {
        self.find(key, eq).map(|i| self.cells[i].1)
    }

    fn insert(&mut self, key: u64, slot: u32) {
        let mask = self.cells.len() - 1;
        let mut i = self.home(key);
        while self.cells[i].1 != NONE {
            i = (i + 1) & mask;
        }
        self.cells[i] = (key, slot);
    }

    fn remove(&mut self, key: u64, slot: u32) {
        let Some(mut i) = self.find(key, |s| s == slot) else {
            return;
        };
        let mask = self.cells.len() - 1;
        self.cells[i] = (0, NONE);
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            if self.cells[j].1 == NONE {
                return;
            }
            // Move j back to i unless its home lies cyclically in (i, j].
            let home = self.home(self.cells[j].0);
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(i) & mask {
                self.cells[i] = self.cells[j];
                self.cells[j] = (0, NONE);
                i = j;
            }
        }
    }

    fn clear(&mut self) {
        self.cells.fill((0, NONE));
    }
}

/// Up to four ids a request carries: the header's node, a handle, and
/// COPY_FILE_RANGE's destination node and handle.
#[derive(Default)]
struct Writes {
    at: [usize; 4],
    value: [u64; 4],
    n: usize,
}

impl Writes {
    fn push(&mut self, at: usize, value: u64) {
        if self.n < 4 {
            (self.at[self.n], self.value[self.n]) = (at, value);
            self.n += 1;
        }
    }
}

/// The map; see the module doc.
pub struct NodeMap {
    /// Slot 0 is the root. INVARIANT: a slot is in use iff its `kernel` is
    /// not 0, and then it is in `by_kernel`; if it is Known after a restart,
    /// in `by_daemon` too (unless another slot holds that daemon id).
    nodes: Vec<Node>,
    free_nodes: Vec<u32>,
    by_kernel: Index,
    by_daemon: Index,
    /// names::key(parent's kernel id, name) -> slot, for named nodes.
    by_name: Index,
    /// INVARIANT: `pool_end <= pool.len()`; `garbage` bytes of records
    /// before `pool_end` are free (owner NONE).
    pool: Vec<u8>,
    pool_end: usize,
    garbage: usize,
    handles: Vec<Handle>,
    free_handles: Vec<u32>,
    by_handle: Index,
    pending: Vec<Pending>,
    free_pending: Vec<u32>,
    by_unique: Index,
    seq: u64,
    /// Whether a restart happened (the translation is no longer identity).
    remapped: bool,
    /// Nodes whose parent is Known, to be looked up.
    ready: VecDeque<u32>,
    /// Nodes and handles Waiting or Asked.
    unresolved_nodes: usize,
    unresolved_handles: usize,
    reopen_cursor: usize,
    next_synthetic: u64,
    stats: NodeMapStats,
}

impl NodeMap {
    /// A map for `nodes` nodes besides the root, `handles` open handles,
    /// `name_bytes` bytes of names (5 per name more than its length; 64
    /// per node is ample) and `pending` requests awaiting their reply (the
    /// engine's `max_inflight`). Allocates here only.
    pub fn new(nodes: usize, handles: usize, name_bytes: usize, pending: usize) -> NodeMap {
        let slots = nodes.saturating_add(1).min(NONE as usize - 1);
        let handles = handles.min(NONE as usize - 1);
        let pending = pending.clamp(1, NONE as usize - 1);
        let mut map = NodeMap {
            nodes: vec![FREE_NODE; slots],
            free_nodes: (1..slots as u32).rev().collect(),
            by_kernel: Index::new(slots),
            by_daemon: Index::new(slots),
            by_name: Index::new(slots),
            pool: vec![0; name_bytes.min(NONE as usize)],
            pool_end: 0,
            garbage: 0,
            handles: vec![FREE_HANDLE; handles],
            free_handles: (0..handles as u32).rev().collect(),
            by_handle: Index::new(handles),
            pending: vec![FREE_PENDING; pending],
            free_pending: (0..pending as u32).rev().collect(),
            by_unique: Index::new(pending),
            seq: 0,
            remapped: false,
            ready: VecDeque::with_capacity(slots),
            unresolved_nodes: 0,
            unresolved_handles: 0,
            reopen_cursor: 0,
            next_synthetic: SYNTHETIC,
            stats: NodeMapStats::default(),
        };
        map.nodes[0].kernel = FUSE_ROOT_ID;
        map.nodes[0].daemon = FUSE_ROOT_ID;
        map
    }

    /// Whether a restart happened: messages are rewritten from now on.
    pub fn is_remapped(&self) -> bool {
        self.remapped
    }

    /// Whether every node and handle is either recovered or lost.
    pub fn is_recovered(&self) -> bool {
        self.unresolved_nodes == 0 && self.unresolved_handles == 0
    }

    /// The counters.
    pub fn stats(&self) -> NodeMapStats {
        NodeMapStats {
            nodes: self.nodes.len() - 1 - self.free_nodes.len(),
            name_bytes: self.pool_end - self.garbage,
            handles: self.handles.len() - self.free_handles.len(),
            ..self.stats
        }
    }

    /// A request from the kernel (or the engine) about to go to the daemon:
    /// learns from it and, after a restart, rewrites its node ids and
    /// handles in place. A request that fails [`Request::parse`] is left as
    /// it is.
    ///
    /// # Errors
    /// [`Untranslatable::Lost`] or [`Untranslatable::Recovering`], after a
    /// restart only; the message is then unchanged.
    pub fn handle_request(&mut self, msg: &mut [u8]) -> Result<(), Untranslatable> {
        let Ok(req) = Request::parse(msg) else {
            return Ok(());
        };
        let node = req.nodeid().0;
        match req.opcode() {
            Opcode::Forget => return self.forget_request(msg),
            Opcode::BatchForget => return self.batch_forget(msg),
            _ if !self.is_recovered() => return Err(Untranslatable::Recovering),
            _ => {}
        }
        let mut writes = Writes::default();
        let planned = if self.remapped {
            self.plan(&req, &mut writes)
        } else {
            Ok(())
        };
        let release = match req.operation() {
            Operation::Release(a) | Operation::Releasedir(a) => Some(a.fh),
            _ => None,
        };
        if planned.is_ok() {
            self.expect(&req);
        }
        if let Some(fh) = release {
            self.release(node, fh);
        }
        planned?;
        for i in 0..writes.n {
            put_u64(msg, writes.at[i], writes.value[i]);
        }
        Ok(())
    }

    /// A request passed to [`handle_request`](Self::handle_request) will
    /// get no reply from the daemon (the engine answered it).
    pub fn request_dropped(&mut self, unique: u64) {
        self.take_pending(unique);
    }

    /// A reply to a request with `opcode` on the kernel's `node`, or a
    /// notification (unique 0), from the daemon: learns from it and, after a
    /// restart, rewrites its node ids and handles in place.
    ///
    /// # Errors
    /// [`Untranslatable::Unmapped`], after a restart only.
    pub fn handle_reply(
        &mut self,
        opcode: Opcode,
        node: NodeId,
        msg: &mut [u8],
    ) -> Result<(), Untranslatable> {
        let (Some(unique), Some(error)) = (get_u64(msg, 8), get_u32(msg, 4)) else {
            return Ok(());
        };
        let Some(body) = msg.get_mut(OUT_HEADER..) else {
            return Ok(());
        };
        if unique == 0 {
            return self.notification(NotifyCode::from(error as i32), body);
        }
        if unique & FUSE_INT_REQ_BIT != 0 || !tracks(opcode) {
            return Ok(());
        }
        let pending = self.take_pending(unique);
        if error != 0 {
            return Ok(());
        }
        let name = pending.as_ref().and_then(Pending::name);
        let flags = pending.map_or(0, |p| p.flags);
        match opcode {
            Opcode::Lookup | Opcode::Mknod | Opcode::Mkdir | Opcode::Symlink | Opcode::Link => {
                if let (Some(s), Some(name)) = (self.entry(body, 0, true)?, name) {
                    self.name_node(s, node.0, name);
                }
            }
            Opcode::Create | Opcode::TmpFile => {
                let Some(s) = self.entry(body, 0, true)? else {
                    return Ok(());
                };
                if let (Opcode::Create, Some(name)) = (opcode, name) {
                    self.name_node(s, node.0, name);
                }
                let kernel = self.nodes[s as usize].kernel;
                self.opened(body, size_of::<EntryOut>(), kernel, flags, false)?;
            }
            Opcode::Open | Opcode::Opendir => {
                self.opened(body, 0, node.0, flags, opcode == Opcode::Opendir)?;
            }
            Opcode::Readdirplus => self.listing(node.0, body),
            Opcode::Rename | Opcode::Rename2 => {
                if let Some(p) = pending {
                    self.renamed(&p);
                }
            }
            _ => {
                // UNLINK, RMDIR: the victim, if still in that directory.
                let victim = pending.and_then(|p| self.slot_of(p.node));
                if let (Some(v), Some(dir)) = (victim, self.slot_of(node.0)) {
                    if self.nodes[v as usize].parent == dir {
                        self.unname(v);
                    }
                }
            }
        }
        Ok(())
    }

    /// The daemon restarted: every daemon id and handle is unknown until
    /// looked up again ([`poll_lookup`](Self::poll_lookup),
    /// [`poll_reopen`](Self::poll_reopen)). The root is recovered at once;
    /// unnamed nodes and what lies under them are lost. Pending requests
    /// are forgotten (their replies will not come). Nodes and handles lost
    /// in an earlier restart stay lost.
    pub fn begin_recovery(&mut self) {
        self.remapped = true;
        self.by_daemon.clear();
        self.by_unique.clear();
        self.free_pending.clear();
        self.free_pending
            .extend((0..self.pending.len() as u32).rev());
        self.ready.clear();
        for s in 1..self.nodes.len() {
            if self.nodes[s].kernel != 0 && self.nodes[s].state != State::Lost {
                self.nodes[s].dlookup = 0;
                self.set_state(s as u32, State::Waiting);
            }
        }
        // Unnamed nodes cannot be found, nor anything under them.
        for s in 1..self.nodes.len() as u32 {
            let n = self.nodes[s as usize];
            let orphan = n.parent == NONE || self.nodes[n.parent as usize].state == State::Lost;
            if n.kernel != 0 && n.state == State::Waiting && orphan {
                self.lose_subtree(s);
            }
        }
        self.push_children(ROOT);
        for i in 0..self.handles.len() {
            if self.handles[i].node != 0 && self.handles[i].state != State::Lost {
                self.set_handle_state(i, State::Waiting);
            }
        }
        self.reopen_cursor = 0;
    }

    /// The next node to look up again: its parent is recovered. `None`
    /// when none is ready now (more may be once answers come).
    pub fn poll_lookup(&mut self) -> Option<Lookup<'_>> {
        while let Some(s) = self.ready.pop_front() {
            let n = self.nodes[s as usize];
            if n.kernel == 0 || n.state != State::Waiting || n.parent == NONE {
                continue;
            }
            let parent = self.nodes[n.parent as usize];
            if parent.state != State::Known {
                continue;
            }
            self.set_state(s, State::Asked);
            return Some(Lookup {
                node: NodeId(n.kernel),
                daemon_parent: NodeId(parent.daemon),
                name: self.name_of(s),
            });
        }
        None
    }

    /// The new daemon found `node` (its LOOKUP counted one lookup of
    /// `daemon`). Returns false when the map no longer wants it (forgotten
    /// meanwhile): the caller then FORGETs `daemon` once.
    pub fn handle_found(&mut self, node: NodeId, daemon: NodeId) -> bool {
        let Some(s) = self.slot_of(node.0) else {
            return false;
        };
        if !matches!(self.nodes[s as usize].state, State::Waiting | State::Asked) {
            return false;
        }
        self.set_state(s, State::Known);
        let n = &mut self.nodes[s as usize];
        (n.daemon, n.dlookup) = (daemon.0, 1);
        if daemon.0 != FUSE_ROOT_ID && self.by_daemon.get(daemon.0, |_| true).is_none() {
            self.by_daemon.insert(daemon.0, s);
        }
        self.push_children(s);
        true
    }

    /// The new daemon did not find `node`: it and every node under it are
    /// lost.
    pub fn handle_not_found(&mut self, node: NodeId) {
        if let Some(s) = self.slot_of(node.0) {
            if matches!(self.nodes[s as usize].state, State::Waiting | State::Asked) {
                self.lose_subtree(s);
            }
        }
    }

    /// The next handle to reopen, once every node is recovered or lost.
    /// Handles of lost nodes are lost on the way.
    pub fn poll_reopen(&mut self) -> Option<Reopen> {
        if self.unresolved_nodes > 0 {
            return None;
        }
        while self.reopen_cursor < self.handles.len() {
            let i = self.reopen_cursor;
            self.reopen_cursor += 1;
            let h = self.handles[i];
            if h.node == 0 || h.state != State::Waiting {
                continue;
            }
            match self.daemon_node(h.node) {
                Ok(d) => {
                    self.set_handle_state(i, State::Asked);
                    return Some(Reopen {
                        handle: HandleId(i as u32),
                        daemon_node: NodeId(d),
                        flags: h.flags & !NOT_ON_REOPEN,
                        is_dir: h.is_dir,
                    });
                }
                Err(_) => self.set_handle_state(i, State::Lost),
            }
        }
        None
    }

    /// The new daemon opened `handle` as `daemon_fh`.
    pub fn handle_reopened(&mut self, handle: HandleId, daemon_fh: Fh) {
        let i = handle.0 as usize;
        if self.handles.get(i).is_some_and(|h| h.state == State::Asked) {
            self.handles[i].daemon_fh = daemon_fh.0;
            self.set_handle_state(i, State::Known);
        }
    }

    /// The new daemon could not open `handle`: it is lost.
    pub fn handle_reopen_failed(&mut self, handle: HandleId) {
        let i = handle.0 as usize;
        if self.handles.get(i).is_some_and(|h| h.state == State::Asked) {
            self.set_handle_state(i, State::Lost);
        }
    }

    // --- Requests -------------------------------------------------------

    /// Collects the daemon's ids for every id `req` carries.
    fn plan(&self, req: &Request<'_>, w: &mut Writes) -> Result<(), Untranslatable> {
        use Operation as O;
        let node = req.nodeid().0;
        if node != 0 {
            w.push(NODEID_AT, self.daemon_node(node)?);
        }
        let mut node_field = |at: usize, id: u64| -> Result<(), Untranslatable> {
            w.push(IN_HEADER + at, self.daemon_node(id)?);
            Ok(())
        };
        let fh = match req.operation() {
            O::Getattr(a) => (a.getattr_flags & FUSE_GETATTR_FH != 0)
                .then_some((offset_of!(GetattrIn, fh), a.fh)),
            O::Statx(a) => {
                (a.getattr_flags & FUSE_GETATTR_FH != 0).then_some((offset_of!(StatxIn, fh), a.fh))
            }
            O::Setattr(s) => s.fh().map(|fh| (offset_of!(SetattrIn, fh), fh.0)),
            O::Read(a) | O::Readdir(a) | O::Readdirplus(a) => Some((0, a.fh)),
            O::Write { arg, .. } => Some((0, arg.fh)),
            O::Release(a) | O::Releasedir(a) => Some((0, a.fh)),
            O::Flush(a) => Some((0, a.fh)),
            O::Fsync(a) | O::Fsyncdir(a) => Some((0, a.fh)),
            O::Getlk(a) | O::Setlk(a) | O::Setlkw(a) => Some((0, a.fh)),
            O::Ioctl { arg, .. } => Some((0, arg.fh)),
            O::Poll(a) => Some((0, a.fh)),
            O::Fallocate(a) => Some((0, a.fh)),
            O::Lseek(a) => Some((0, a.fh)),
            O::Other {
                opcode: Opcode::SetupMapping,
                body,
            } => get_u64(body, 0).map(|fh| (0, fh)),
            O::CopyFileRange(a) | O::CopyFileRange64(a) => {
                node_field(offset_of!(CopyFileRangeIn, nodeid_out), a.nodeid_out)?;
                let fh_out = self.daemon_fh(a.nodeid_out, a.fh_out)?;
                w.push(IN_HEADER + offset_of!(CopyFileRangeIn, fh_out), fh_out);
                Some((offset_of!(CopyFileRangeIn, fh_in), a.fh_in))
            }
            O::Link { arg, .. } => {
                node_field(offset_of!(LinkIn, oldnodeid), arg.oldnodeid)?;
                None
            }
            O::Rename { arg, .. } => {
                node_field(offset_of!(RenameIn, newdir), arg.newdir)?;
                None
            }
            O::Rename2 { arg, .. } => {
                node_field(offset_of!(Rename2In, newdir), arg.newdir)?;
                None
            }
            _ => None,
        };
        if let Some((at, fh)) = fh {
            w.push(IN_HEADER + at, self.daemon_fh(node, fh)?);
        }
        Ok(())
    }

    /// Records what the reply to `req` will need.
    fn expect(&mut self, req: &Request<'_>) {
        use Operation as O;
        let dir = req.nodeid().0;
        let by_name =
            |map: &Self, name: &[u8]| map.slot_by_name(dir, name).map_or(0, |s| map.kernel(s));
        let (node, newdir, flags, name) = match req.operation() {
            O::Lookup { name }
            | O::Mknod { name, .. }
            | O::Mkdir { name, .. }
            | O::Symlink { name, .. }
            | O::Link { name, .. } => (0, 0, 0, Some(name)),
            O::Create { arg, name } => (0, 0, arg.flags, Some(name)),
            O::Other {
                opcode: Opcode::TmpFile,
                body,
            } => (
                0,
                0,
                CreateIn::read_from_prefix(body).map_or(0, |(a, _)| a.flags),
                None,
            ),
            O::Open(a) | O::Opendir(a) => (0, 0, a.flags, None),
            O::Readdirplus(_) => (0, 0, 0, None),
            O::Rename { arg, old, new } => (by_name(self, old), arg.newdir, 0, Some(new)),
            O::Rename2 { arg, old, new } => (by_name(self, old), arg.newdir, arg.flags, Some(new)),
            O::Unlink { name } | O::Rmdir { name } => (by_name(self, name), 0, 0, None),
            _ => return,
        };
        let unique = req.unique().0 & !FUSE_UNIQUE_RESEND;
        let i = match self.by_unique.get(unique, |_| true) {
            Some(i) => i,
            None => {
                let i = match self.free_pending.pop() {
                    Some(i) => i,
                    None => {
                        // Full: reuse the oldest (its reply is long overdue).
                        self.stats.pending_evicted += 1;
                        let (i, p) = (self.pending.iter().enumerate())
                            .min_by_key(|(_, p)| p.seq)
                            .map(|(i, p)| (i as u32, p.unique))
                            .unwrap_or((0, 0));
                        self.by_unique.remove(p, i);
                        i
                    }
                };
                self.by_unique.insert(unique, i);
                i
            }
        };
        self.seq += 1;
        let p = &mut self.pending[i as usize];
        (p.unique, p.seq, p.parent, p.node) = (unique, self.seq, dir, node);
        (p.newdir, p.flags, p.name_len) = (newdir, flags, u16::MAX);
        if let Some(name) = name {
            if name.len() <= NAME_MAX {
                p.name[..name.len()].copy_from_slice(name);
                p.name_len = name.len() as u16;
            } else {
                self.stats.names_full += 1;
            }
        }
    }

    fn take_pending(&mut self, unique: u64) -> Option<Pending> {
        let unique = unique & !FUSE_UNIQUE_RESEND;
        let i = self.by_unique.get(unique, |_| true)?;
        self.by_unique.remove(unique, i);
        self.free_pending.push(i);
        Some(self.pending[i as usize])
    }

    fn forget_request(&mut self, msg: &mut [u8]) -> Result<(), Untranslatable> {
        let (Some(k), Some(n)) = (get_u64(msg, NODEID_AT), get_u64(msg, IN_HEADER)) else {
            return Ok(());
        };
        let (d, n) = self.forget(k, n)?;
        put_u64(msg, NODEID_AT, d);
        put_u64(msg, IN_HEADER, n);
        Ok(())
    }

    /// Each `fuse_forget_one` is translated; one with nothing to tell the
    /// daemon becomes (root, 0), a no-op. All of them: Lost (drop it).
    fn batch_forget(&mut self, msg: &mut [u8]) -> Result<(), Untranslatable> {
        let count = get_u32(msg, IN_HEADER).unwrap_or(0) as usize;
        let mut sent = false;
        for i in 0..count {
            let at = IN_HEADER + 8 + 16 * i;
            let (Some(k), Some(n)) = (get_u64(msg, at), get_u64(msg, at + 8)) else {
                break;
            };
            let (d, n) = self.forget(k, n).unwrap_or((FUSE_ROOT_ID, 0));
            sent |= n != 0 || d != FUSE_ROOT_ID;
            put_u64(msg, at, d);
            put_u64(msg, at + 8, n);
        }
        if sent || count == 0 {
            Ok(())
        } else {
            Err(Untranslatable::Lost)
        }
    }

    /// The kernel drops `n` lookups of `k`: what the daemon is to drop.
    fn forget(&mut self, k: u64, n: u64) -> Result<(u64, u64), Untranslatable> {
        let Some(s) = self.slot_of(k).filter(|&s| s != ROOT) else {
            // The root (never forgotten by the kernel) is 1 on both sides.
            return match self.remapped && k != FUSE_ROOT_ID {
                false => Ok((k, n)),
                true => Err(Untranslatable::Lost),
            };
        };
        let node = &mut self.nodes[s as usize];
        let kept = node.nlookup.saturating_sub(n);
        node.nlookup = kept;
        let out = if !self.remapped {
            node.dlookup = kept;
            Ok((k, n))
        } else if node.state == State::Known {
            // The daemon keeps at most as many as the kernel, and one while
            // the kernel keeps any.
            let d_kept = node.dlookup.min(kept);
            let drop = node.dlookup - d_kept;
            node.dlookup = d_kept;
            Ok((node.daemon, drop))
        } else {
            Err(Untranslatable::Lost)
        };
        if kept == 0 {
            self.drop_node(s);
        }
        out
    }

    fn release(&mut self, node: u64, fh: u64) {
        if let Some(i) = self.handle_slot(node, fh) {
            let h = &mut self.handles[i as usize];
            h.opens = h.opens.saturating_sub(1);
            if h.opens == 0 {
                self.by_handle.remove(handle_key(node, fh), i);
                self.set_handle_state(i as usize, State::Known);
                self.handles[i as usize] = FREE_HANDLE;
                self.free_handles.push(i);
            }
        }
    }

    // --- Replies --------------------------------------------------------

    /// The `fuse_entry_out` at `at`: the daemon's id becomes the kernel's
    /// (a new one if need be, unless `!counted`, when an unknown id becomes
    /// 0) and, if `counted`, the kernel holds one more lookup. Returns the
    /// node's slot, if held.
    fn entry(
        &mut self,
        body: &mut [u8],
        at: usize,
        counted: bool,
    ) -> Result<Option<u32>, Untranslatable> {
        let id_at = at + offset_of!(EntryOut, nodeid);
        let gen_at = at + offset_of!(EntryOut, generation);
        let (Some(d), Some(generation)) = (get_u64(body, id_at), get_u64(body, gen_at)) else {
            return Ok(None);
        };
        if d == 0 || d == FUSE_ROOT_ID {
            return Ok(None);
        }
        let s = if !self.remapped {
            match self.slot_of(d) {
                Some(s) => Some(s),
                None if counted => self.new_node(d, d, generation),
                None => None,
            }
        } else {
            let s = match self.by_daemon.get(d, |_| true) {
                Some(s) => s,
                None if counted => {
                    let k = self.fresh_node_id(d);
                    self.new_node(k, d, generation)
                        .ok_or(Untranslatable::Unmapped)?
                }
                None => {
                    put_u64(body, id_at, 0);
                    return Ok(None);
                }
            };
            let n = &self.nodes[s as usize];
            put_u64(body, id_at, n.kernel);
            put_u64(body, gen_at, n.generation);
            Some(s)
        };
        if let (Some(s), true) = (s, counted) {
            let n = &mut self.nodes[s as usize];
            n.nlookup += 1;
            n.dlookup += 1;
            if !self.remapped {
                n.generation = generation;
            }
        }
        Ok(s)
    }

    /// The `fuse_open_out` at `at` opened `node`: a handle, its fh made the
    /// kernel's.
    fn opened(
        &mut self,
        body: &mut [u8],
        at: usize,
        node: u64,
        flags: u32,
        is_dir: bool,
    ) -> Result<(), Untranslatable> {
        let Some(d) = get_u64(body, at) else {
            return Ok(());
        };
        let held = self.handle_slot(node, d);
        if let (Some(i), false) = (held, self.remapped) {
            self.handles[i as usize].opens += 1;
            return Ok(());
        }
        let mut fh = d;
        while self.remapped && self.handle_slot(node, fh).is_some() {
            fh = self.next_synthetic;
            self.next_synthetic += 1;
        }
        let Some(i) = self.free_handles.pop() else {
            self.stats.handles_full += 1;
            return match self.remapped {
                true => Err(Untranslatable::Unmapped),
                false => Ok(()),
            };
        };
        self.handles[i as usize] = Handle {
            node,
            fh,
            daemon_fh: d,
            flags,
            is_dir,
            opens: 1,
            state: State::Known,
        };
        self.by_handle.insert(handle_key(node, fh), i);
        put_u64(body, at, fh);
        Ok(())
    }

    /// READDIRPLUS in `dir`: each entry translated, counted and named
    /// (except `.` and `..`, which the kernel neither counts nor links).
    fn listing(&mut self, dir: u64, body: &mut [u8]) {
        let namelen_at = offset_of!(Direntplus, dirent) + offset_of!(Dirent, namelen);
        let mut at = 0;
        while at + FUSE_NAME_OFFSET_DIRENTPLUS <= body.len() {
            let namelen = get_u32(body, at + namelen_at).unwrap_or(0) as usize;
            let start = at + FUSE_NAME_OFFSET_DIRENTPLUS;
            let Some(end) = start.checked_add(namelen).filter(|&e| e <= body.len()) else {
                break;
            };
            let dot = matches!(&body[start..end], b"." | b"..");
            match self.entry(body, at, !dot) {
                Ok(Some(s)) if !dot => self.name_node(s, dir, &body[start..end]),
                Ok(_) => {}
                // No room for it: the kernel is told nothing of it.
                Err(_) => put_u64(body, at + offset_of!(EntryOut, nodeid), 0),
            }
            at += fuse_rec_align(FUSE_NAME_OFFSET_DIRENTPLUS + namelen);
        }
    }

    fn renamed(&mut self, p: &Pending) {
        let src = self.slot_of(p.node).filter(|&s| p.node != 0 && s != ROOT);
        let Some(new) = p.name() else {
            // The new name was too long to keep.
            src.into_iter().for_each(|s| self.unname(s));
            return;
        };
        let dst = self.slot_by_name(p.newdir, new);
        if p.flags & RENAME_EXCHANGE == 0 {
            match src {
                Some(s) => self.name_node(s, p.newdir, new),
                None => dst.into_iter().for_each(|d| self.unname(d)),
            }
            return;
        }
        let mut old = [0u8; NAME_MAX];
        let old = src.map(|s| {
            let name = self.name_of(s);
            old[..name.len()].copy_from_slice(name);
            &old[..name.len()]
        });
        if let Some(d) = dst {
            match old {
                Some(old) => self.name_node(d, p.parent, old),
                None => self.unname(d),
            }
        }
        if let Some(s) = src {
            self.name_node(s, p.newdir, new);
        }
    }

    fn notification(&mut self, code: NotifyCode, body: &mut [u8]) -> Result<(), Untranslatable> {
        match code {
            NotifyCode::InvalInode => self.notified(body, offset_of!(NotifyInvalInodeOut, ino)),
            NotifyCode::InvalEntry => self.notified(body, offset_of!(NotifyInvalEntryOut, parent)),
            NotifyCode::Store => self.notified(body, offset_of!(NotifyStoreOut, nodeid)),
            NotifyCode::Retrieve => self.notified(body, offset_of!(NotifyRetrieveOut, nodeid)),
            NotifyCode::Delete => {
                self.notified(body, offset_of!(NotifyDeleteOut, parent))?;
                self.notified(body, offset_of!(NotifyDeleteOut, child))?;
                let (Some(parent), Some(child)) = (
                    get_u64(body, offset_of!(NotifyDeleteOut, parent)),
                    get_u64(body, offset_of!(NotifyDeleteOut, child)),
                ) else {
                    return Ok(());
                };
                let len = get_u32(body, offset_of!(NotifyDeleteOut, namelen)).unwrap_or(0);
                let start = size_of::<NotifyDeleteOut>();
                let name = body.get(start..start + len as usize).unwrap_or_default();
                if let Some(s) = self.slot_by_name(parent, name) {
                    if self.kernel(s) == child {
                        self.unname(s);
                    }
                }
                Ok(())
            }
            NotifyCode::Prune if self.remapped => {
                let count = get_u32(body, 0).unwrap_or(0) as usize;
                for i in 0..count {
                    let at = size_of::<NotifyPruneOut>() + 8 * i;
                    let Some(d) = get_u64(body, at) else {
                        break;
                    };
                    // An id the kernel does not know prunes nothing.
                    put_u64(body, at, self.kernel_of(d).unwrap_or(0));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The daemon's node id at `at` becomes the kernel's.
    fn notified(&self, body: &mut [u8], at: usize) -> Result<(), Untranslatable> {
        if !self.remapped {
            return Ok(());
        }
        let d = get_u64(body, at).ok_or(Untranslatable::Unmapped)?;
        let k = self.kernel_of(d).ok_or(Untranslatable::Unmapped)?;
        put_u64(body, at, k);
        Ok(())
    }

    // --- Translation ------------------------------------------------------

    fn daemon_node(&self, k: u64) -> Result<u64, Untranslatable> {
        let s = self.slot_of(k).ok_or(Untranslatable::Lost)?;
        let n = &self.nodes[s as usize];
        match n.state {
            State::Known => Ok(n.daemon),
            State::Lost => Err(Untranslatable::Lost),
            State::Waiting | State::Asked => Err(Untranslatable::Recovering),
        }
    }

    fn daemon_fh(&self, node: u64, fh: u64) -> Result<u64, Untranslatable> {
        let i = self.handle_slot(node, fh).ok_or(Untranslatable::Lost)?;
        let h = &self.handles[i as usize];
        match h.state {
            State::Known => Ok(h.daemon_fh),
            State::Lost => Err(Untranslatable::Lost),
            State::Waiting | State::Asked => Err(Untranslatable::Recovering),
        }
    }

    fn kernel_of(&self, d: u64) -> Option<u64> {
        if d == FUSE_ROOT_ID {
            return Some(FUSE_ROOT_ID);
        }
        self.by_daemon.get(d, |_| true).map(|s| self.kernel(s))
    }

    /// A kernel id for the daemon's new `d`: `d` itself if free.
    fn fresh_node_id(&mut self, d: u64) -> u64 {
        let mut k = d;
        while self.slot_of(k).is_some() {
            k = self.next_synthetic;
            self.next_synthetic += 1;
        }
        k
    }

    // --- Tables ------------------------------------------------------------

    fn kernel(&self, s: u32) -> u64 {
        self.nodes[s as usize].kernel
    }

    fn slot_of(&self, k: u64) -> Option<u32> {
        match k {
            0 => None,
            FUSE_ROOT_ID => Some(ROOT),
            _ => self.by_kernel.get(k, |_| true),
        }
    }

    fn slot_by_name(&self, parent: u64, name: &[u8]) -> Option<u32> {
        let p = self.slot_of(parent)?;
        let eq = |s: u32| self.nodes[s as usize].parent == p && self.name_of(s) == name;
        self.by_name.get(names::key(parent, name), eq)
    }

    fn handle_slot(&self, node: u64, fh: u64) -> Option<u32> {
        let eq =
            |i: u32| (self.handles[i as usize].node, self.handles[i as usize].fh) == (node, fh);
        self.by_handle.get(handle_key(node, fh), eq)
    }

    fn new_node(&mut self, kernel: u64, daemon: u64, generation: u64) -> Option<u32> {
        let Some(s) = self.free_nodes.pop() else {
            self.stats.nodes_full += 1;
            return None;
        };
        self.nodes[s as usize] = Node {
            kernel,
            daemon,
            generation,
            ..FREE_NODE
        };
        self.by_kernel.insert(kernel, s);
        if self.remapped {
            self.by_daemon.insert(daemon, s);
        }
        Some(s)
    }

    fn drop_node(&mut self, s: u32) {
        self.unname(s);
        // Its children can no longer be found by path.
        loop {
            let c = self.nodes[s as usize].first_child;
            if c == NONE {
                break;
            }
            self.unname(c);
            if self.nodes[c as usize].state == State::Waiting {
                self.lose_subtree(c);
            }
        }
        let n = self.nodes[s as usize];
        self.by_kernel.remove(n.kernel, s);
        if self.remapped && n.state == State::Known {
            self.by_daemon.remove(n.daemon, s);
        }
        self.set_state(s, State::Known);
        self.nodes[s as usize] = FREE_NODE;
        self.free_nodes.push(s);
    }

    fn set_state(&mut self, s: u32, state: State) {
        let n = &mut self.nodes[s as usize];
        let unresolved = |st| matches!(st, State::Waiting | State::Asked);
        self.unresolved_nodes -= usize::from(unresolved(n.state));
        self.unresolved_nodes += usize::from(unresolved(state));
        self.stats.lost_nodes += u64::from(state == State::Lost && n.state != State::Lost);
        n.state = state;
    }

    fn set_handle_state(&mut self, i: usize, state: State) {
        let h = &mut self.handles[i];
        let unresolved = |st| matches!(st, State::Waiting | State::Asked);
        self.unresolved_handles -= usize::from(unresolved(h.state));
        self.unresolved_handles += usize::from(unresolved(state));
        self.stats.lost_handles += u64::from(state == State::Lost && h.state != State::Lost);
        h.state = state;
    }

    fn push_children(&mut self, s: u32) {
        let mut c = self.nodes[s as usize].first_child;
        while c != NONE {
            if self.nodes[c as usize].state == State::Waiting && self.ready.len() < self.nodes.len()
            {
                self.ready.push_back(c);
            }
            c = self.nodes[c as usize].next;
        }
    }

    /// Marks `top` and everything under it Lost (no recursion, nothing
    /// allocated: the tree links are the stack).
    fn lose_subtree(&mut self, top: u32) {
        let mut at = top;
        loop {
            self.set_state(at, State::Lost);
            let child = self.nodes[at as usize].first_child;
            if child != NONE {
                at = child;
                continue;
            }
            loop {
                if at == top {
                    return;
                }
                let n = self.nodes[at as usize];
                if n.next != NONE {
                    at = n.next;
                    break;
                }
                at = n.parent;
            }
        }
    }

    // --- Names -------------------------------------------------------------

    fn name_of(&self, s: u32) -> &[u8] {
        let at = self.nodes[s as usize].name;
        if at == NONE {
            return &[];
        }
        let at = at as usize;
        let len = usize::from(self.pool[at + 4]);
        &self.pool[at + NAME_HEADER..at + NAME_HEADER + len]
    }

    /// `s` was reached as `name` in `parent`. What held that name before
    /// loses it; if the name cannot be kept, `s` is unnamed.
    fn name_node(&mut self, s: u32, parent: u64, name: &[u8]) {
        let Some(p) = self.slot_of(parent).filter(|_| s != ROOT) else {
            return;
        };
        if self.nodes[s as usize].parent == p && self.name_of(s) == name {
            return;
        }
        if let Some(other) = self.slot_by_name(parent, name) {
            self.unname(other);
        }
        self.unname(s);
        // No node becomes its own ancestor.
        let mut up = p;
        while up != NONE && (up == s || self.nodes[s as usize].first_child != NONE) {
            if up == s {
                return;
            }
            up = self.nodes[up as usize].parent;
        }
        if !self.store_name(s, name) {
            self.stats.names_full += 1;
            return;
        }
        let first = self.nodes[p as usize].first_child;
        if first != NONE {
            self.nodes[first as usize].prev = s;
        }
        let n = &mut self.nodes[s as usize];
        (n.parent, n.next, n.prev) = (p, first, NONE);
        self.nodes[p as usize].first_child = s;
        self.by_name.insert(names::key(parent, name), s);
    }

    /// `s` is no longer reachable by name.
    fn unname(&mut self, s: u32) {
        let n = self.nodes[s as usize];
        if n.parent == NONE {
            return;
        }
        let key = names::key(self.kernel(n.parent), self.name_of(s));
        self.by_name.remove(key, s);
        // Free the record: owner NONE; compaction skips it.
        let at = n.name as usize;
        self.pool[at..at + 4].copy_from_slice(&NONE.to_ne_bytes());
        self.garbage += NAME_HEADER + usize::from(self.pool[at + 4]);
        if n.prev != NONE {
            self.nodes[n.prev as usize].next = n.next;
        } else {
            self.nodes[n.parent as usize].first_child = n.next;
        }
        if n.next != NONE {
            self.nodes[n.next as usize].prev = n.prev;
        }
        let n = &mut self.nodes[s as usize];
        (n.parent, n.next, n.prev, n.name) = (NONE, NONE, NONE, NONE);
    }

    /// Stores `name` as `s`'s. Compacts the pool when the free records
    /// are worth it (at least 1/16 of the pool, so that the copying costs
    /// at most 16 bytes per byte freed); false when there is no room.
    fn store_name(&mut self, s: u32, name: &[u8]) -> bool {
        let need = NAME_HEADER + name.len();
        if name.len() > NAME_MAX {
            return false;
        }
        if self.pool.len() - self.pool_end < need {
            if self.garbage < need.max(self.pool.len() / 16) {
                return false;
            }
            self.compact();
        }
        let at = self.pool_end;
        self.pool[at..at + 4].copy_from_slice(&s.to_ne_bytes());
        self.pool[at + 4] = name.len() as u8;
        self.pool[at + NAME_HEADER..at + need].copy_from_slice(name);
        self.pool_end += need;
        self.nodes[s as usize].name = at as u32;
        true
    }

    fn compact(&mut self) {
        let (mut read, mut write) = (0, 0);
        while read < self.pool_end {
            let len = NAME_HEADER + usize::from(self.pool[read + 4]);
            let owner = get_u32(&self.pool, read).unwrap_or(NONE);
            if owner != NONE {
                self.pool.copy_within(read..read + len, write);
                self.nodes[owner as usize].name = write as u32;
                write += len;
            }
            read += len;
        }
        (self.pool_end, self.garbage) = (write, 0);
    }
}

const FREE_HANDLE: Handle = Handle {
    node: 0,
    fh: 0,
    daemon_fh: 0,
    flags: 0,
    is_dir: false,
    opens: 0,
    state: State::Known,
};

const FREE_PENDING: Pending = Pending {
    unique: 0,
    seq: 0,
    parent: 0,
    node: 0,
    newdir: 0,
    flags: 0,
    name_len: u16::MAX,
    name: [0; NAME_MAX],
};

/// Whether replies to `opcode` carry ids or teach the map anything.
fn tracks(opcode: Opcode) -> bool {
    opcode.replies_with_entry()
        || matches!(
            opcode,
            Opcode::Open
                | Opcode::Opendir
                | Opcode::Readdirplus
                | Opcode::Rename
                | Opcode::Rename2
                | Opcode::Unlink
                | Opcode::Rmdir
        )
}

fn handle_key(node: u64, fh: u64) -> u64 {
    node ^ mix(fh)
}

/// Spreads a key's bits (splitmix64's finalizer).
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn get_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(
        b.get(at..at.checked_add(8)?)?.try_into().ok()?,
    ))
}

fn get_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(
        b.get(at..at.checked_add(4)?)?.try_into().ok()?,
    ))
}

fn put_u64(b: &mut [u8], at: usize, v: u64) {
    if let Some(d) = b.get_mut(at..at.saturating_add(8)) {
        d.copy_from_slice(&v.to_ne_bytes());
    }
}

#[cfg(test)]
mod tests {
    use fuseproxy_protocol::abi::{
        BatchForgetIn, FallocateIn, FlushIn, ForgetOne, FsyncIn, InHeader, IoctlIn, LinkIn, LkIn,
        LseekIn, OpenIn, OpenOut, PollIn, ReadIn, ReleaseIn, WriteIn,
    };
    use fuseproxy_protocol::flags::FATTR_FH;
    use fuseproxy_protocol::{encode, Unique};
    use zerocopy::IntoBytes;

    use super::*;

    #[repr(align(8))]
    struct Msg([u8; 1024], usize);

    impl Msg {
        fn bytes(&mut self) -> &mut [u8] {
            &mut self.0[..self.1]
        }
        fn u64(&self, at: usize) -> u64 {
            get_u64(&self.0, at).unwrap()
        }
    }

    fn request(op: Opcode, unique: u64, node: u64, parts: &[&[u8]]) -> Msg {
        let h = InHeader {
            opcode: op.into(),
            unique,
            nodeid: node,
            ..InHeader::default()
        };
        let mut m = Msg([0; 1024], 0);
        m.1 = encode::encode_request(&mut m.0, &h, parts).unwrap();
        m
    }

    fn reply(unique: u64, parts: &[&[u8]]) -> Msg {
        let mut m = Msg([0; 1024], 0);
        m.1 = encode::encode_reply(&mut m.0, Unique(unique), parts).unwrap();
        m
    }

    fn notify(code: NotifyCode, parts: &[&[u8]]) -> Msg {
        let mut m = Msg([0; 1024], 0);
        m.1 = encode::encode_notify(&mut m.0, code, parts).unwrap();
        m
    }

    fn entry(nodeid: u64, generation: u64) -> EntryOut {
        EntryOut {
            nodeid,
            generation,
            ..EntryOut::default()
        }
    }

    /// `op` (LOOKUP, MKDIR ...) of `name` in `dir`, answered with the
    /// daemon's `child`; returns the node id the kernel got.
    fn create(m: &mut NodeMap, op: Opcode, u: u64, dir: u64, name: &[u8], child: u64) -> u64 {
        let fixed: &[u8] = match op {
            Opcode::Mkdir => &[0; 8],
            Opcode::Create => &[0; 16],
            _ => &[],
        };
        m.handle_request(request(op, u, dir, &[fixed, name, b"\0"]).bytes())
            .unwrap();
        let open = OpenOut {
            fh: 100 + child,
            ..OpenOut::default()
        };
        let e = entry(child, 7);
        let parts: &[&[u8]] = match op {
            Opcode::Create => &[e.as_bytes(), open.as_bytes()],
            _ => &[e.as_bytes()],
        };
        let mut r = reply(u, parts);
        m.handle_reply(op, NodeId(dir), r.bytes()).unwrap();
        r.u64(16)
    }

    fn lookup(m: &mut NodeMap, u: u64, dir: u64, name: &[u8], child: u64) -> u64 {
        create(m, Opcode::Lookup, u, dir, name, child)
    }

    /// OPEN of `node`, answered with the daemon's `fh`; the kernel's fh.
    fn open(m: &mut NodeMap, u: u64, node: u64, fh: u64) -> u64 {
        let arg = OpenIn {
            flags: 0o1002, // O_RDWR | O_TRUNC
            ..OpenIn::default()
        };
        m.handle_request(request(Opcode::Open, u, node, &[arg.as_bytes()]).bytes())
            .unwrap();
        let out = OpenOut {
            fh,
            ..OpenOut::default()
        };
        let mut r = reply(u, &[out.as_bytes()]);
        m.handle_reply(Opcode::Open, NodeId(node), r.bytes())
            .unwrap();
        r.u64(16)
    }

    fn path(m: &NodeMap, k: u64) -> String {
        let mut s = m.slot_of(k).expect("held");
        let mut path = String::new();
        while s != ROOT {
            if m.nodes[s as usize].parent == NONE {
                return format!("?{path}");
            }
            path.insert_str(0, &format!("/{}", String::from_utf8_lossy(m.name_of(s))));
            s = m.nodes[s as usize].parent;
        }
        path
    }

    fn readdirplus(entries: &[(&[u8], u64)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (name, node) in entries {
            let d = Direntplus {
                entry_out: entry(*node, 3),
                dirent: Dirent {
                    ino: *node,
                    off: 1,
                    namelen: name.len() as u32,
                    r#type: 8,
                },
            };
            body.extend_from_slice(d.as_bytes());
            body.extend_from_slice(name);
            body.resize(body.len().next_multiple_of(8), 0);
        }
        body
    }

    /// /a (dir 10), /a/b (11), /a/b/c (12), /d (13); c opened as fh 5.
    fn tree() -> NodeMap {
        let mut m = NodeMap::new(16, 4, 256, 4);
        create(&mut m, Opcode::Mkdir, 2, 1, b"a", 10);
        lookup(&mut m, 4, 10, b"b", 11);
        lookup(&mut m, 6, 11, b"c", 12);
        lookup(&mut m, 8, 1, b"d", 13);
        open(&mut m, 10, 12, 5);
        m
    }

    /// Answers every lookup from `found` (name -> new daemon id), every
    /// reopen with `fh + 1000`; returns the names in the order asked.
    fn recover(m: &mut NodeMap, found: &[(&[u8], u64)]) -> Vec<Vec<u8>> {
        let mut asked = Vec::new();
        while let Some(l) = m.poll_lookup() {
            let (node, name) = (l.node, l.name.to_vec());
            match found.iter().find(|(n, _)| *n == name) {
                Some(&(_, d)) => assert!(m.handle_found(node, NodeId(d))),
                None => m.handle_not_found(node),
            }
            asked.push(name);
        }
        while let Some(r) = m.poll_reopen() {
            assert_eq!(r.flags, 2, "O_TRUNC is not repeated");
            m.handle_reopened(r.handle, Fh(r.daemon_node.0 + 1000));
        }
        asked
    }

    #[test]
    fn identity_before_recovery() {
        let mut m = tree();
        let w = WriteIn {
            fh: 5,
            size: 3,
            ..WriteIn::default()
        };
        let mut msgs = [
            request(Opcode::Write, 20, 12, &[w.as_bytes(), b"abc"]),
            request(Opcode::Link, 22, 10, &[12u64.as_bytes(), b"l\0"]),
            request(Opcode::Rename, 24, 10, &[13u64.as_bytes(), b"b\0x\0"]),
            request(Opcode::Getattr, 26, 11, &[&[0; 16]]),
        ];
        for msg in &mut msgs {
            let before = msg.bytes().to_vec();
            m.handle_request(msg.bytes()).unwrap();
            assert_eq!(msg.bytes(), &before[..]);
        }
        let mut r = reply(22, &[entry(12, 7).as_bytes()]);
        let before = r.bytes().to_vec();
        m.handle_reply(Opcode::Link, NodeId(10), r.bytes()).unwrap();
        assert_eq!(r.bytes(), &before[..]);
        assert!(!m.is_remapped() && m.is_recovered());
    }

    #[test]
    fn names_are_learned_from_entry_replies_and_listings() {
        let mut m = tree();
        assert_eq!(path(&m, 12), "/a/b/c");
        assert_eq!(path(&m, 13), "/d");
        create(&mut m, Opcode::Create, 30, 10, b"new", 20);
        assert_eq!(path(&m, 20), "/a/new");
        assert!(m.handle_slot(20, 120).is_some(), "CREATE opened it");
        let rq = ReadIn::default();
        m.handle_request(request(Opcode::Readdirplus, 32, 13, &[rq.as_bytes()]).bytes())
            .unwrap();
        let body = readdirplus(&[(b".", 13), (b"x", 21), (b"y", 0), (b"z", 22)]);
        m.handle_reply(Opcode::Readdirplus, NodeId(13), reply(32, &[&body]).bytes())
            .unwrap();
        assert_eq!((path(&m, 21), path(&m, 22)), ("/d/x".into(), "/d/z".into()));
        assert_eq!(m.nodes[m.slot_of(13).unwrap() as usize].nlookup, 1, "not .");
        assert_eq!(m.stats().nodes, 7);
    }

    #[test]
    fn rename_moves_and_unlink_unnames() {
        let mut m = tree();
        lookup(&mut m, 20, 1, b"e", 14);
        let arg = RenameIn { newdir: 1 };
        m.handle_request(request(Opcode::Rename, 22, 10, &[arg.as_bytes(), b"b\0e\0"]).bytes())
            .unwrap();
        m.handle_reply(Opcode::Rename, NodeId(10), reply(22, &[]).bytes())
            .unwrap();
        assert_eq!(path(&m, 11), "/e");
        assert_eq!(path(&m, 12), "/e/c", "the subtree moves along");
        assert_eq!(path(&m, 14), "?", "the node renamed over loses its name");
        // RENAME2 with RENAME_EXCHANGE swaps.
        let arg = Rename2In {
            newdir: 11,
            flags: RENAME_EXCHANGE,
            padding: 0,
        };
        m.handle_request(request(Opcode::Rename2, 24, 1, &[arg.as_bytes(), b"d\0c\0"]).bytes())
            .unwrap();
        m.handle_reply(Opcode::Rename2, NodeId(1), reply(24, &[]).bytes())
            .unwrap();
        assert_eq!((path(&m, 13), path(&m, 12)), ("/e/c".into(), "/d".into()));
        // A failed UNLINK changes nothing; a successful one unnames.
        m.handle_request(request(Opcode::Unlink, 26, 1, &[b"d\0"]).bytes())
            .unwrap();
        let mut err = Msg([0; 1024], 0);
        err.1 = encode::encode_error_reply(&mut err.0, Unique(26), 13).unwrap();
        m.handle_reply(Opcode::Unlink, NodeId(1), err.bytes())
            .unwrap();
        assert_eq!(path(&m, 12), "/d");
        m.handle_request(request(Opcode::Unlink, 28, 1, &[b"d\0"]).bytes())
            .unwrap();
        m.handle_reply(Opcode::Unlink, NodeId(1), reply(28, &[]).bytes())
            .unwrap();
        assert_eq!(path(&m, 12), "?");
        // A directory moved under itself (the kernel never asks) is
        // unnamed, not made its own ancestor; recovery still ends.
        let arg = RenameIn { newdir: 13 };
        m.handle_request(request(Opcode::Rename, 30, 1, &[arg.as_bytes(), b"e\0x\0"]).bytes())
            .unwrap();
        m.handle_reply(Opcode::Rename, NodeId(1), reply(30, &[]).bytes())
            .unwrap();
        assert_eq!((path(&m, 11), path(&m, 13)), ("?".into(), "?/c".into()));
        m.begin_recovery();
        assert_eq!(recover(&mut m, &[]), [b"a".to_vec()]);
        assert!(m.is_recovered());
    }

    #[test]
    fn forget_to_zero_drops_the_node() {
        let mut m = tree();
        lookup(&mut m, 20, 1, b"d", 13);
        let forget = |n: u64| request(Opcode::Forget, 0, 13, &[n.as_bytes()]);
        m.handle_request(forget(1).bytes()).unwrap();
        assert_eq!(path(&m, 13), "/d");
        m.handle_request(forget(1).bytes()).unwrap();
        assert_eq!(m.slot_of(13), None);
        assert_eq!(m.slot_by_name(1, b"d"), None);
        // BATCH_FORGET, and a directory forgotten before its child.
        let items = [
            ForgetOne {
                nodeid: 10,
                nlookup: 1,
            },
            ForgetOne {
                nodeid: 99,
                nlookup: 1,
            },
        ];
        let arg = BatchForgetIn { count: 2, dummy: 0 };
        m.handle_request(
            request(
                Opcode::BatchForget,
                0,
                0,
                &[arg.as_bytes(), items.as_bytes()],
            )
            .bytes(),
        )
        .unwrap();
        assert_eq!(m.slot_of(10), None);
        assert_eq!(path(&m, 11), "?", "its child can no longer be found");
        assert_eq!(m.stats().nodes, 2);
    }

    #[test]
    fn recovery_goes_parents_first() {
        let mut m = tree();
        let mut c = request(Opcode::Getattr, 20, 12, &[&[0; 16]]);
        m.begin_recovery();
        assert!(m.is_remapped() && !m.is_recovered());
        assert_eq!(m.handle_request(c.bytes()), Err(Untranslatable::Recovering));
        let first: Vec<_> =
            std::iter::from_fn(|| m.poll_lookup().map(|l| (l.node, l.name.to_vec()))).collect();
        assert_eq!(
            first,
            [(NodeId(13), b"d".to_vec()), (NodeId(10), b"a".to_vec())]
        );
        assert!(m.poll_lookup().is_none(), "b waits for a");
        assert!(m.handle_found(NodeId(10), NodeId(50)));
        let l = m.poll_lookup().unwrap();
        assert_eq!(
            (l.node, l.daemon_parent, l.name),
            (NodeId(11), NodeId(50), &b"b"[..])
        );
        assert!(m.poll_reopen().is_none(), "handles wait for the nodes");
        assert!(m.handle_found(NodeId(11), NodeId(51)));
        assert!(m.handle_found(NodeId(13), NodeId(53)));
        let l = m.poll_lookup().unwrap();
        assert_eq!((l.node, l.daemon_parent), (NodeId(12), NodeId(51)));
        assert!(m.handle_found(NodeId(12), NodeId(52)));
        let r = m.poll_reopen().unwrap();
        assert_eq!((r.daemon_node, r.flags, r.is_dir), (NodeId(52), 2, false));
        m.handle_reopened(r.handle, Fh(900));
        assert!(m.poll_reopen().is_none() && m.is_recovered());
        m.handle_request(c.bytes()).unwrap();
        assert_eq!(c.u64(16), 52);
    }

    #[test]
    fn translation_both_ways_after_recovery() {
        let mut m = tree();
        lookup(&mut m, 20, 1, b"d", 13); // the kernel holds 2 lookups of d
        m.begin_recovery();
        recover(&mut m, &[(b"a", 50), (b"b", 51), (b"c", 52), (b"d", 12)]);
        assert!(m.is_recovered());
        // Requests: header, WRITE's fh, LINK's oldnodeid, RENAME's newdir.
        let w = WriteIn {
            fh: 5,
            ..WriteIn::default()
        };
        let mut r = request(Opcode::Write, 30, 12, &[w.as_bytes()]);
        m.handle_request(r.bytes()).unwrap();
        assert_eq!((r.u64(16), r.u64(40)), (52, 1052));
        let link = LinkIn { oldnodeid: 12 };
        let mut r = request(Opcode::Link, 32, 10, &[link.as_bytes(), b"l\0"]);
        m.handle_request(r.bytes()).unwrap();
        assert_eq!((r.u64(16), r.u64(40)), (50, 52));
        let mut r = request(Opcode::Rename, 34, 13, &[11u64.as_bytes(), b"x\0y\0"]);
        m.handle_request(r.bytes()).unwrap();
        assert_eq!((r.u64(16), r.u64(40)), (12, 51));
        // Replies: a known node gets its kernel id and generation back; a
        // new one keeps the daemon's id unless the kernel uses it.
        let mut a = reply(32, &[entry(52, 99).as_bytes()]);
        m.handle_reply(Opcode::Link, NodeId(10), a.bytes()).unwrap();
        assert_eq!((a.u64(16), a.u64(24)), (12, 7));
        assert_eq!(path(&m, 12), "/a/l");
        assert_eq!(lookup(&mut m, 36, 10, b"n", 60), 60);
        let fresh = lookup(&mut m, 38, 10, b"o", 11);
        assert!(fresh >= SYNTHETIC, "11 is the kernel's b");
        assert_eq!(lookup(&mut m, 40, 10, b"o", 11), fresh);
        let mut r = request(Opcode::Getattr, 42, fresh, &[&[0; 16]]);
        m.handle_request(r.bytes()).unwrap();
        assert_eq!(r.u64(16), 11);
        // READDIRPLUS entries, on a handle opened after the restart.
        let rq = ReadIn {
            fh: open(&mut m, 46, 10, 7),
            ..ReadIn::default()
        };
        let mut r = request(Opcode::Readdirplus, 44, 10, &[rq.as_bytes()]);
        m.handle_request(r.bytes()).unwrap();
        assert_eq!((r.u64(16), r.u64(40)), (50, 7));
        let body = readdirplus(&[(b"b", 51), (b"..", 99), (b"p", 61)]);
        let mut a = reply(44, &[&body]);
        m.handle_reply(Opcode::Readdirplus, NodeId(10), a.bytes())
            .unwrap();
        let rec = |i: usize| a.u64(16 + i * 160);
        assert_eq!((rec(0), rec(1), rec(2)), (11, 0, 61));
        // Notifications.
        let inval = NotifyInvalInodeOut {
            ino: 50,
            off: 0,
            len: 0,
        };
        let mut n = notify(NotifyCode::InvalInode, &[inval.as_bytes()]);
        m.handle_reply(Opcode::Unknown(0), NodeId(0), n.bytes())
            .unwrap();
        assert_eq!(n.u64(16), 10);
        let del = NotifyDeleteOut {
            parent: 50,
            child: 51,
            namelen: 1,
            padding: 0,
        };
        let mut n = notify(NotifyCode::Delete, &[del.as_bytes(), b"b\0"]);
        m.handle_reply(Opcode::Unknown(0), NodeId(0), n.bytes())
            .unwrap();
        assert_eq!((n.u64(16), n.u64(24)), (10, 11));
        assert_eq!(path(&m, 11), "?");
        let mut n = notify(
            NotifyCode::InvalInode,
            &[NotifyInvalInodeOut {
                ino: 77,
                off: 0,
                len: 0,
            }
            .as_bytes()],
        );
        let unknown = m.handle_reply(Opcode::Unknown(0), NodeId(0), n.bytes());
        assert_eq!(unknown, Err(Untranslatable::Unmapped));
        // FORGET: the daemon counted one lookup of d, the kernel two.
        let mut f = request(Opcode::Forget, 0, 13, &[1u64.as_bytes()]);
        m.handle_request(f.bytes()).unwrap();
        assert_eq!((f.u64(16), f.u64(40)), (12, 0));
        let mut f = request(Opcode::Forget, 0, 13, &[1u64.as_bytes()]);
        m.handle_request(f.bytes()).unwrap();
        assert_eq!((f.u64(16), f.u64(40)), (12, 1));
    }

    #[test]
    fn a_lost_parent_loses_its_children() {
        let mut m = tree();
        m.begin_recovery();
        let asked = recover(&mut m, &[(b"d", 53)]);
        assert_eq!(asked, [b"d".to_vec(), b"a".to_vec()], "b and c never asked");
        assert!(m.is_recovered());
        let s = m.stats();
        assert_eq!((s.lost_nodes, s.lost_handles), (3, 1));
        let w = WriteIn {
            fh: 5,
            ..WriteIn::default()
        };
        let mut r = request(Opcode::Write, 30, 12, &[w.as_bytes()]);
        let before = r.bytes().to_vec();
        assert_eq!(m.handle_request(r.bytes()), Err(Untranslatable::Lost));
        assert_eq!(r.bytes(), &before[..]);
        let mut r = request(Opcode::Lookup, 32, 11, &[b"x\0"]);
        assert_eq!(m.handle_request(r.bytes()), Err(Untranslatable::Lost));
        let mut r = request(Opcode::Getattr, 34, 13, &[&[0; 16]]);
        m.handle_request(r.bytes()).unwrap();
        assert_eq!(r.u64(16), 53);
        // A FORGET of a lost node has nothing to tell the daemon.
        let mut f = request(Opcode::Forget, 0, 12, &[1u64.as_bytes()]);
        assert_eq!(m.handle_request(f.bytes()), Err(Untranslatable::Lost));
        assert_eq!(m.slot_of(12), None);
    }

    #[test]
    fn full_tables_are_reported_not_grown() {
        let mut m = NodeMap::new(2, 1, 16, 1);
        let caps = |m: &NodeMap| {
            [
                m.nodes.capacity(),
                m.free_nodes.capacity(),
                m.by_kernel.cells.capacity(),
                m.by_name.cells.capacity(),
                m.pool.capacity(),
                m.handles.capacity(),
                m.free_handles.capacity(),
                m.pending.capacity(),
                m.free_pending.capacity(),
                m.ready.capacity(),
            ]
        };
        let before = caps(&m);
        lookup(&mut m, 2, 1, b"abcdef", 10); // 11 bytes of pool
        lookup(&mut m, 4, 1, b"ghijkl", 11); // no room for its name
        lookup(&mut m, 6, 1, b"x", 12); // no room for the node
        assert_eq!((path(&m, 10), path(&m, 11)), ("/abcdef".into(), "?".into()));
        assert_eq!(m.slot_of(12), None);
        open(&mut m, 8, 10, 1);
        open(&mut m, 10, 11, 2);
        // Two requests in flight with one pending record: the older goes.
        m.handle_request(request(Opcode::Lookup, 12, 1, &[b"p\0"]).bytes())
            .unwrap();
        m.handle_request(request(Opcode::Lookup, 14, 1, &[b"q\0"]).bytes())
            .unwrap();
        let s = m.stats();
        assert_eq!((s.nodes, s.handles, s.name_bytes), (2, 1, 11), "{s:?}");
        assert_eq!(
            (
                s.nodes_full,
                s.names_full,
                s.handles_full,
                s.pending_evicted
            ),
            (1, 1, 1, 1)
        );
        // Freed names make room again, by compaction.
        m.handle_request(request(Opcode::Unlink, 16, 1, &[b"abcdef\0"]).bytes())
            .unwrap();
        m.handle_reply(Opcode::Unlink, NodeId(1), reply(16, &[]).bytes())
            .unwrap();
        lookup(&mut m, 18, 1, b"ghijkl", 11);
        assert_eq!(path(&m, 11), "/ghijkl");
        // After a restart, a new node with no room is reported.
        m.begin_recovery();
        recover(&mut m, &[(b"ghijkl", 40)]);
        let mut r = request(Opcode::Lookup, 20, 1, &[b"z\0"]);
        m.handle_request(r.bytes()).unwrap();
        let mut a = reply(20, &[entry(41, 0).as_bytes()]);
        let full = m.handle_reply(Opcode::Lookup, NodeId(1), a.bytes());
        assert_eq!(full, Err(Untranslatable::Unmapped));
        assert_eq!(caps(&m), before);
    }

    #[test]
    fn every_handle_field_is_translated() {
        let mut m = tree();
        m.begin_recovery();
        recover(&mut m, &[(b"a", 50), (b"b", 51), (b"c", 52)]);
        // (opcode, body size, where the fh is, flag word at 0).
        let cases = [
            (Opcode::Read, size_of::<ReadIn>(), 0, 0),
            (Opcode::Readdir, size_of::<ReadIn>(), 0, 0),
            (Opcode::Flush, size_of::<FlushIn>(), 0, 0),
            (Opcode::Fsync, size_of::<FsyncIn>(), 0, 0),
            (Opcode::Fsyncdir, size_of::<FsyncIn>(), 0, 0),
            (Opcode::Getlk, size_of::<LkIn>(), 0, 0),
            (Opcode::Setlk, size_of::<LkIn>(), 0, 0),
            (Opcode::Setlkw, size_of::<LkIn>(), 0, 0),
            (Opcode::Ioctl, size_of::<IoctlIn>(), 0, 0),
            (Opcode::Poll, size_of::<PollIn>(), 0, 0),
            (Opcode::Fallocate, size_of::<FallocateIn>(), 0, 0),
            (Opcode::Lseek, size_of::<LseekIn>(), 0, 0),
            (Opcode::Setattr, size_of::<SetattrIn>(), 8, FATTR_FH),
            (Opcode::Getattr, size_of::<GetattrIn>(), 8, FUSE_GETATTR_FH),
            (Opcode::Setattr, size_of::<SetattrIn>(), 8, 0),
            (Opcode::Release, size_of::<ReleaseIn>(), 0, 0),
        ];
        for (i, (op, size, at, flag)) in cases.into_iter().enumerate() {
            let mut body = vec![0u8; size];
            body[..4].copy_from_slice(&flag.to_ne_bytes());
            body[at..at + 8].copy_from_slice(&5u64.to_ne_bytes());
            let mut r = request(op, 100 + 2 * i as u64, 12, &[&body]);
            m.handle_request(r.bytes()).unwrap();
            let want = if at == 8 && flag == 0 { 5 } else { 1052 };
            assert_eq!((r.u64(16), r.u64(40 + at)), (52, want), "{op}");
        }
        // RELEASE dropped the handle.
        let mut r = request(Opcode::Read, 200, 12, &[&[0; 40]]);
        r.0[40] = 5;
        assert_eq!(m.handle_request(r.bytes()), Err(Untranslatable::Lost));
        assert_eq!(m.stats().handles, 0);
        // COPY_FILE_RANGE: both handles and the destination node.
        // After a restart a new handle gets the daemon's fh unless that is
        // the kernel's already (here: the daemon gives 8 twice).
        assert_eq!(open(&mut m, 202, 11, 8), 8);
        let fh_in = open(&mut m, 204, 11, 8);
        assert!(fh_in >= SYNTHETIC);
        let arg = CopyFileRangeIn {
            fh_in,
            nodeid_out: 12,
            fh_out: open(&mut m, 206, 12, 9),
            ..CopyFileRangeIn::default()
        };
        let mut r = request(Opcode::CopyFileRange, 208, 11, &[arg.as_bytes()]);
        m.handle_request(r.bytes()).unwrap();
        let out = |f| 40 + f;
        assert_eq!(
            [
                r.u64(16),
                r.u64(out(offset_of!(CopyFileRangeIn, fh_in))),
                r.u64(out(offset_of!(CopyFileRangeIn, nodeid_out))),
                r.u64(out(offset_of!(CopyFileRangeIn, fh_out)))
            ],
            [51, 8, 52, 9]
        );
    }
}
