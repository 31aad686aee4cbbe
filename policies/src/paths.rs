//! `[[paths]]`: which rules apply to a node, from the names the proxy has
//! seen it reached by.
//!
//! The kernel names nodes by number; only the replies to LOOKUP, CREATE,
//! MKNOD, MKDIR, SYMLINK, LINK and READDIRPLUS say which (directory, name)
//! a number stands for. [`PathTable`] keeps, per node, the directory and
//! the hash of the name it was last reached by (RENAME moves it, FORGET
//! drops it), and derives from that chain, up to the root (node 1), the
//! scope it is in: that of the longest `[[paths]]` entry it lies under, or
//! 0 (the whole mount's rules). Results are cached per node and recomputed
//! after a reload or a rename (an epoch counter), so a request costs one
//! table look-up.
//!
//! What it cannot know, and what it does then:
//! - A hard link reached by several names is in the scope of the name it
//!   was reached by last.
//! - A node the table does not hold (it was full; capacity is fixed at
//!   start) is in scope 0, as are its descendants.
//! - Names are compared by a 64-bit hash; two names colliding in one
//!   directory would share a scope (odds about 2^-64 per pair).

use crate::names;

/// Path components deeper than this are not followed; a node that deep is
/// in the scope its ancestor at this depth had.
const MAX_DEPTH: usize = 256;
const ROOT: u64 = 1;

/// `[[paths]]` compiled: each entry's components, hashed.
#[derive(Debug, Clone, Default)]
pub struct PathRules {
    /// Per entry, in file order; entry `i` is scope `i + 1`.
    comps: Vec<Vec<u64>>,
}

impl PathRules {
    /// Compiles the `path` of each entry (checked absolute and free of
    /// `.`/`..` by the config).
    pub fn compile<'a>(paths: impl Iterator<Item = &'a str>) -> PathRules {
        PathRules {
            comps: paths
                .map(|p| {
                    p.split('/')
                        .filter(|c| !c.is_empty())
                        .map(|c| name_hash(c.as_bytes()))
                        .collect()
                })
                .collect(),
        }
    }

    /// Whether there are any.
    pub fn is_empty(&self) -> bool {
        self.comps.is_empty()
    }

    fn root(&self) -> State {
        let mut s = State {
            depth: 0,
            scope: 0,
            partial: 0,
        };
        for (i, c) in self.comps.iter().enumerate().take(64) {
            if c.is_empty() {
                s.scope = i as u16 + 1;
            } else {
                s.partial |= 1 << i;
            }
        }
        s
    }

    fn child(&self, parent: State, name: u64) -> State {
        let depth = parent.depth as usize;
        let mut s = State {
            depth: parent.depth.saturating_add(1),
            scope: parent.scope,
            partial: 0,
        };
        let mut bits = parent.partial;
        while bits != 0 {
            let i = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let c = &self.comps[i];
            if c.get(depth) == Some(&name) {
                if c.len() == depth + 1 {
                    s.scope = i as u16 + 1;
                } else {
                    s.partial |= 1 << i;
                }
            }
        }
        s
    }
}

/// A name's hash (FNV-1a, as `names::key` with no directory).
pub fn name_hash(name: &[u8]) -> u64 {
    names::key(0, name)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct State {
    depth: u16,
    scope: u16,
    /// Entries this node is a proper prefix of.
    partial: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    /// 0: empty.
    node: u64,
    parent: u64,
    name: u64,
    /// Its (directory, name) key in `by_name`.
    key: u64,
    epoch: u32,
    state: State,
}

/// Nodes and the names they were reached by; see the module doc.
pub struct PathTable {
    /// Open addressing by node, linear probing, backward-shift deletion.
    /// INVARIANT: length a power of two, at least twice `capacity`.
    slots: Vec<Slot>,
    /// (directory, name) key -> node, for RENAME; same layout.
    by_name: Vec<(u64, u64)>,
    capacity: usize,
    len: usize,
    epoch: u32,
}

impl PathTable {
    /// A table for `capacity` nodes (0: none are tracked, every node is in
    /// scope 0). Allocates here only.
    pub fn with_capacity(capacity: usize) -> PathTable {
        let n = if capacity == 0 {
            1
        } else {
            (capacity * 2).next_power_of_two()
        };
        PathTable {
            slots: vec![Slot::default(); n],
            by_name: vec![(0, 0); n],
            capacity,
            len: 0,
            epoch: 1,
        }
    }

    /// Nodes it can hold (0: it holds none).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Nodes held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Every cached scope is to be derived again (the rules changed).
    pub fn invalidate(&mut self) {
        self.epoch = self.epoch.wrapping_add(1).max(1);
    }

    fn find(&self, node: u64) -> Option<usize> {
        let mask = self.slots.len() - 1;
        let mut i = (hash64(node) as usize) & mask;
        loop {
            match self.slots[i].node {
                0 => return None,
                n if n == node => return Some(i),
                _ => i = (i + 1) & mask,
            }
        }
    }

    /// `child` was reached as `name` in `parent`. Returns false when the
    /// table is full (the node stays in scope 0).
    pub fn learn(&mut self, parent: u64, name: &[u8], child: u64) -> bool {
        self.learn_hashed(parent, name_hash(name), child)
    }

    /// [`learn`](Self::learn) with the name already hashed ([`name_hash`]).
    pub fn learn_hashed(&mut self, parent: u64, h: u64, child: u64) -> bool {
        if child == 0 || child == ROOT || self.capacity == 0 {
            return false;
        }
        let key = pair_key(parent, h);
        if let Some(i) = self.find(child) {
            let s = &mut self.slots[i];
            if (s.parent, s.name) != (parent, h) {
                let old = s.key;
                (s.parent, s.name, s.key) = (parent, h, key);
                self.name_remove(old);
                // The node moved (a new link, or a rename): its
                // descendants' cached scopes may be wrong.
                self.invalidate();
            }
            self.name_insert(key, child);
            return true;
        }
        if self.len >= self.capacity {
            return false;
        }
        let mask = self.slots.len() - 1;
        let mut i = (hash64(child) as usize) & mask;
        while self.slots[i].node != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = Slot {
            node: child,
            parent,
            name: h,
            key,
            epoch: 0,
            state: State::default(),
        };
        self.len += 1;
        self.name_insert(key, child);
        true
    }

    /// The kernel forgot `node`.
    pub fn forget(&mut self, node: u64) {
        let Some(mut i) = self.find(node) else {
            return;
        };
        let mask = self.slots.len() - 1;
        let key = self.slots[i].key;
        if self.name_get(key) == Some(node) {
            self.name_remove(key);
        }
        self.slots[i] = Slot::default();
        self.len -= 1;
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            if self.slots[j].node == 0 {
                break;
            }
            let home = (hash64(self.slots[j].node) as usize) & mask;
            // Move j back to i if its home is not cyclically in (i, j].
            if (j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j)) {
                self.slots[i] = self.slots[j];
                self.slots[j] = Slot::default();
                i = j;
            }
        }
    }

    /// `old` in `olddir` is now `new` in `newdir` (a successful RENAME).
    /// Names are hashed ([`name_hash`]).
    pub fn renamed(&mut self, olddir: u64, old: u64, newdir: u64, new: u64) {
        let Some(node) = self.name_get(pair_key(olddir, old)) else {
            return;
        };
        // Whatever the new name named is no longer reachable by it.
        self.name_remove(pair_key(newdir, new));
        self.learn_hashed(newdir, new, node);
    }

    /// The scope `node` is in under `rules`.
    pub fn scope(&mut self, node: u64, rules: &PathRules) -> usize {
        if rules.is_empty() {
            return 0;
        }
        self.state(node, rules).scope as usize
    }

    fn state(&mut self, node: u64, rules: &PathRules) -> State {
        // Walk up to the first node whose state is fresh (or the root),
        // then derive downwards; no recursion, nothing allocated.
        let mut chain = [0usize; MAX_DEPTH];
        let mut n = 0;
        let mut at = node;
        let mut base = loop {
            if at == ROOT {
                break rules.root();
            }
            let Some(i) = self.find(at) else {
                // Not held: scope 0, nothing below it matches either.
                break State::default();
            };
            if self.slots[i].epoch == self.epoch {
                break self.slots[i].state;
            }
            if n == MAX_DEPTH {
                break State::default();
            }
            chain[n] = i;
            n += 1;
            at = self.slots[i].parent;
        };
        while n > 0 {
            n -= 1;
            let s = &mut self.slots[chain[n]];
            base = rules.child(base, s.name);
            s.state = base;
            s.epoch = self.epoch;
        }
        base
    }

    fn name_insert(&mut self, key: u64, node: u64) {
        let mask = self.by_name.len() - 1;
        let mut i = (hash64(key) as usize) & mask;
        let mut probes = 0;
        while self.by_name[i].0 != 0 && self.by_name[i].0 != key {
            i = (i + 1) & mask;
            probes += 1;
            if probes > mask {
                return;
            }
        }
        self.by_name[i] = (key, node);
    }

    fn name_get(&self, key: u64) -> Option<u64> {
        let mask = self.by_name.len() - 1;
        let mut i = (hash64(key) as usize) & mask;
        loop {
            match self.by_name[i].0 {
                0 => return None,
                k if k == key => return Some(self.by_name[i].1),
                _ => i = (i + 1) & mask,
            }
        }
    }

    fn name_remove(&mut self, key: u64) -> Option<u64> {
        let mask = self.by_name.len() - 1;
        let mut i = (hash64(key) as usize) & mask;
        loop {
            match self.by_name[i].0 {
                0 => return None,
                k if k == key => break,
                _ => i = (i + 1) & mask,
            }
        }
        let node = self.by_name[i].1;
        self.by_name[i] = (0, 0);
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            if self.by_name[j].0 == 0 {
                break;
            }
            let home = (hash64(self.by_name[j].0) as usize) & mask;
            if (j > i && (home <= i || home > j)) || (j < i && (home <= i && home > j)) {
                self.by_name[i] = self.by_name[j];
                self.by_name[j] = (0, 0);
                i = j;
            }
        }
        Some(node)
    }
}

/// The `by_name` key of (directory, hashed name); never 0.
fn pair_key(parent: u64, name: u64) -> u64 {
    hash64(parent ^ name.rotate_left(17)) | 1
}

fn hash64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(paths: &[&str]) -> PathRules {
        PathRules::compile(paths.iter().copied())
    }

    #[test]
    fn a_node_is_in_the_scope_of_the_longest_path_above_it() {
        let r = rules(&["/data", "/data/tmp"]);
        let mut t = PathTable::with_capacity(16);
        t.learn(1, b"data", 2);
        t.learn(2, b"tmp", 3);
        t.learn(3, b"x", 4);
        t.learn(2, b"keep", 5);
        t.learn(1, b"other", 6);
        assert_eq!(t.scope(1, &r), 0);
        assert_eq!(t.scope(2, &r), 1);
        assert_eq!(t.scope(3, &r), 2);
        assert_eq!(t.scope(4, &r), 2);
        assert_eq!(t.scope(5, &r), 1);
        assert_eq!(t.scope(6, &r), 0);
        assert_eq!(t.scope(99, &r), 0, "unknown nodes are in scope 0");
    }

    #[test]
    fn rename_moves_a_subtree_and_forget_drops_it() {
        let r = rules(&["/scratch"]);
        let mut t = PathTable::with_capacity(16);
        t.learn(1, b"scratch", 2);
        t.learn(1, b"home", 3);
        t.learn(3, b"dir", 4);
        t.learn(4, b"f", 5);
        assert_eq!(t.scope(5, &r), 0);
        t.renamed(3, name_hash(b"dir"), 2, name_hash(b"dir"));
        assert_eq!(t.scope(4, &r), 1);
        assert_eq!(t.scope(5, &r), 1);
        t.forget(4);
        assert_eq!(t.scope(4, &r), 0, "a forgotten node is unknown");
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn a_full_table_leaves_new_nodes_in_scope_zero() {
        let r = rules(&["/"]);
        let mut t = PathTable::with_capacity(2);
        assert!(t.learn(1, b"a", 2));
        assert!(t.learn(1, b"b", 3));
        assert!(!t.learn(1, b"c", 4));
        assert_eq!(t.scope(2, &r), 1);
        assert_eq!(t.scope(4, &r), 0);
        assert_eq!(t.scope(1, &r), 1, "the root itself matches /");
    }

    #[test]
    fn forget_keeps_probe_chains_whole() {
        let r = rules(&["/d"]);
        let mut t = PathTable::with_capacity(64);
        for n in 2..60u64 {
            t.learn(1, format!("n{n}").as_bytes(), n);
        }
        t.learn(1, b"d", 100);
        for n in (2..60u64).step_by(2) {
            t.forget(n);
        }
        assert_eq!(t.scope(100, &r), 1);
        for n in (3..60u64).step_by(2) {
            assert!(t.find(n).is_some(), "{n}");
        }
    }
}
