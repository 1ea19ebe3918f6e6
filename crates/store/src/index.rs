//! In-memory key index: for every key, the revisions at which it changed, so any revision's
//! view can be read without scanning history. Values stay on disk; this holds metadata only.
//!
//! Each [`Keyspace`] has its own ordered map, so a span (always relative to one keyspace) can
//! never reach another keyspace's keys, and lookups use the caller's key bytes as they are:
//! no tagged copy of a key is built on the put or range path.

use std::collections::BTreeMap;
use std::ops::Bound;

use smallvec::SmallVec;

use crate::keyspace::Keyspace;
use crate::revision::Revision;

/// A key's changes, oldest first. Most keys only ever have one, so one is held inline: no
/// separate allocation (48 bytes per key saved at a million keys).
type History = SmallVec<[KeyVersion; 1]>;

/// One change of a key: a put (version ≥ 1) or a tombstone (version 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyVersion {
    /// Revision of this change.
    pub rev: Revision,
    /// Main revision at which the key's current life began (0 for tombstones).
    pub create: i64,
    /// Number of puts since the key was created (0 for tombstones).
    pub version: i64,
    /// Lease the key is attached to (0 if none).
    pub lease: i64,
}

impl KeyVersion {
    /// True when this change deleted the key.
    pub fn is_tombstone(&self) -> bool {
        self.version == 0
    }
}

/// The keys a request addresses within one keyspace, decoded from etcd's `key` + `range_end`
/// convention. A span has no keyspace of its own: it is used with the keyspace of the call
/// (so `From("")` is every key of that keyspace, never more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpan {
    /// Exactly one key (`range_end` empty).
    Single(Vec<u8>),
    /// Every key `>= start` (`range_end` is `"\0"`).
    From(Vec<u8>),
    /// Keys in `[start, end)`; empty when `end <= start`.
    Range(Vec<u8>, Vec<u8>),
}

impl KeySpan {
    /// Decodes etcd's `key`/`range_end` pair.
    pub fn new(key: &[u8], range_end: &[u8]) -> Self {
        match range_end {
            [] => KeySpan::Single(key.to_vec()),
            [0] => KeySpan::From(key.to_vec()),
            end => KeySpan::Range(key.to_vec(), end.to_vec()),
        }
    }

    /// True when `key` falls inside the span.
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeySpan::Single(k) => k.as_slice() == key,
            KeySpan::From(s) => key >= s.as_slice(),
            KeySpan::Range(s, e) => key >= s.as_slice() && key < e.as_slice(),
        }
    }

    /// True when the two spans share at least one key.
    pub fn overlaps(&self, other: &KeySpan) -> bool {
        match (self, other) {
            (KeySpan::Single(k), o) | (o, KeySpan::Single(k)) => o.contains(k),
            (a, b) => {
                let (a0, a1) = a.open_bounds();
                let (b0, b1) = b.open_bounds();
                let start = a0.max(b0);
                let below = |end: Option<&[u8]>| end.is_none_or(|e| start < e);
                below(a1) && below(b1)
            }
        }
    }

    /// Start (inclusive) and end (exclusive, `None` = unbounded); only used for non-single spans.
    fn open_bounds(&self) -> (&[u8], Option<&[u8]>) {
        match self {
            KeySpan::Single(k) => (k, None),
            KeySpan::From(s) => (s, None),
            KeySpan::Range(s, e) => (s, Some(e)),
        }
    }
}

/// One keyspace's keys. Boxed slices: a key never grows, so no capacity word is needed.
type Keys = BTreeMap<Box<[u8]>, History>;

/// The index of all keys, one map per keyspace.
#[derive(Debug, Default)]
pub struct KeyIndex {
    spaces: [Keys; Keyspace::COUNT],
    compacted: i64,
}

impl KeyIndex {
    /// Revision up to which history has been compacted (0 if never).
    pub fn compacted(&self) -> i64 {
        self.compacted
    }

    /// Number of distinct keys held (live or with history), in every keyspace.
    pub fn key_count(&self) -> usize {
        self.spaces.iter().map(BTreeMap::len).sum()
    }

    /// Restores the compaction mark on startup.
    pub fn set_compacted(&mut self, rev: i64) {
        self.compacted = rev;
    }

    /// The live version of `key` of `ks` as of `rev`, if any.
    pub fn get(&self, ks: Keyspace, key: &[u8], rev: i64) -> Option<KeyVersion> {
        self.spaces[ks.index()]
            .get(key)
            .and_then(|h| live_at(h, rev))
    }

    /// Calls `f` for every key of `ks` in `span` that is live at `rev`, in key order, until it
    /// returns false.
    pub fn for_each_live(
        &self,
        ks: Keyspace,
        span: &KeySpan,
        rev: i64,
        mut f: impl FnMut(&[u8], KeyVersion) -> bool,
    ) {
        let keys = &self.spaces[ks.index()];
        let iter: Box<dyn Iterator<Item = (&Box<[u8]>, &History)>> = match span {
            KeySpan::Single(k) => Box::new(keys.get_key_value(k.as_slice()).into_iter()),
            KeySpan::From(s) => {
                Box::new(keys.range::<[u8], _>((Bound::Included(s.as_slice()), Bound::Unbounded)))
            }
            KeySpan::Range(s, e) => {
                if e <= s {
                    return;
                }
                Box::new(keys.range::<[u8], _>((
                    Bound::Included(s.as_slice()),
                    Bound::Excluded(e.as_slice()),
                )))
            }
        };
        for (k, h) in iter {
            if let Some(v) = live_at(h, rev) {
                if !f(k, v) {
                    return;
                }
            }
        }
    }

    /// The newest revision at which any key of `ks` in `span` changed, deletions included
    /// (0 when none did since the last compaction left a trace): what a Consul blocking query
    /// on a key or prefix reports as its index, so that deleting a key moves it too.
    pub fn last_change(&self, ks: Keyspace, span: &KeySpan) -> i64 {
        let keys = &self.spaces[ks.index()];
        let newest = |h: &History| h.last().map_or(0, |v| v.rev.main);
        match span {
            KeySpan::Single(k) => keys.get(k.as_slice()).map_or(0, newest),
            KeySpan::From(s) => keys
                .range::<[u8], _>((Bound::Included(s.as_slice()), Bound::Unbounded))
                .map(|(_, h)| newest(h))
                .max()
                .unwrap_or(0),
            KeySpan::Range(s, e) if s < e => keys
                .range::<[u8], _>((Bound::Included(s.as_slice()), Bound::Excluded(e.as_slice())))
                .map(|(_, h)| newest(h))
                .max()
                .unwrap_or(0),
            KeySpan::Range(..) => 0,
        }
    }

    /// Records a put of `key` of `ks` at `rev`; returns the new version and the one it replaced.
    pub fn put(
        &mut self,
        ks: Keyspace,
        key: &[u8],
        rev: Revision,
        lease: i64,
    ) -> (KeyVersion, Option<KeyVersion>) {
        let hist = self.history_mut(ks, key);
        let prev = hist.last().copied().filter(|v| !v.is_tombstone());
        let (create, version) = match prev {
            Some(p) => (p.create, p.version + 1),
            None => (rev.main, 1),
        };
        let new = KeyVersion {
            rev,
            create,
            version,
            lease,
        };
        hist.push(new);
        (new, prev)
    }

    /// Records a deletion of `key` of `ks` at `rev`; returns the version it removed, if the
    /// key was live.
    pub fn tombstone(&mut self, ks: Keyspace, key: &[u8], rev: Revision) -> Option<KeyVersion> {
        let hist = self.spaces[ks.index()].get_mut(key)?;
        let prev = hist.last().copied().filter(|v| !v.is_tombstone())?;
        hist.push(KeyVersion {
            rev,
            create: 0,
            version: 0,
            lease: 0,
        });
        Some(prev)
    }

    /// Replays one stored change on startup (entries arrive in revision order).
    pub fn restore(&mut self, ks: Keyspace, key: &[u8], v: KeyVersion) {
        self.history_mut(ks, key).push(v);
    }

    /// The history of `key`, created empty if the key is new (the key is copied only then).
    fn history_mut(&mut self, ks: Keyspace, key: &[u8]) -> &mut History {
        let keys = &mut self.spaces[ks.index()];
        if !keys.contains_key(key) {
            keys.insert(key.into(), History::new());
        }
        keys.get_mut(key).expect("inserted above if missing")
    }

    /// Drops history at or below `rev` in every keyspace, keeping each key's last live
    /// version. Returns the revisions whose stored values are no longer reachable.
    pub fn compact(&mut self, rev: i64) -> Vec<Revision> {
        let mut dropped = Vec::new();
        for keys in &mut self.spaces {
            Self::compact_keys(keys, rev, &mut dropped);
        }
        self.compacted = self.compacted.max(rev);
        dropped
    }

    fn compact_keys(keys: &mut Keys, rev: i64, dropped: &mut Vec<Revision>) {
        keys.retain(|_, hist| {
            // Index of the newest change at or below `rev`.
            let upto = hist.partition_point(|v| v.rev.main <= rev);
            if upto == 0 {
                return true;
            }
            let keep_from = if hist[upto - 1].is_tombstone() {
                upto
            } else {
                upto - 1
            };
            dropped.extend(hist.drain(..keep_from).map(|v| v.rev));
            if hist.len() == 1 || hist.capacity() > 2 * hist.len() {
                // Back inline when one version is left; no-op when already inline.
                hist.shrink_to_fit();
            }
            !hist.is_empty()
        });
    }
}

fn live_at(hist: &[KeyVersion], rev: i64) -> Option<KeyVersion> {
    let n = hist.partition_point(|v| v.rev.main <= rev);
    let v = *hist.get(n.checked_sub(1)?)?;
    (!v.is_tombstone()).then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: Keyspace = Keyspace::User;

    fn r(m: i64) -> Revision {
        Revision::new(m, 0)
    }

    #[test]
    fn one_version_fits_in_the_map_slot() {
        // The memory budget per key relies on this: one version, no separate allocation.
        assert_eq!(std::mem::size_of::<History>(), 48);
        assert_eq!(std::mem::size_of::<Box<[u8]>>(), 16);
        let mut ix = KeyIndex::default();
        ix.put(U, b"a", r(2), 0);
        assert!(!ix.spaces[0][&b"a"[..]].spilled());
        ix.put(U, b"a", r(3), 0);
        ix.compact(3);
        assert!(
            !ix.spaces[0][&b"a"[..]].spilled(),
            "compaction brings it back inline"
        );
    }

    #[test]
    fn versions_and_generations() {
        let mut ix = KeyIndex::default();
        let (v, prev) = ix.put(U, b"a", r(2), 0);
        assert_eq!((v.create, v.version, prev), (2, 1, None));
        let (v, prev) = ix.put(U, b"a", r(3), 7);
        assert_eq!((v.create, v.version, v.lease), (2, 2, 7));
        assert_eq!(prev.map(|p| p.version), Some(1));
        assert!(ix.tombstone(U, b"a", r(4)).is_some());
        assert!(
            ix.tombstone(U, b"a", r(5)).is_none(),
            "deleting a dead key is a no-op"
        );
        let (v, _) = ix.put(U, b"a", r(6), 0);
        assert_eq!((v.create, v.version), (6, 1));
        assert_eq!(ix.get(U, b"a", 3).map(|v| v.version), Some(2));
        assert_eq!(ix.get(U, b"a", 4), None);
        assert_eq!(ix.get(U, b"a", 1), None);
    }

    #[test]
    fn compaction_keeps_latest_live_version() {
        let mut ix = KeyIndex::default();
        ix.put(U, b"a", r(2), 0);
        ix.put(U, b"a", r(3), 0);
        ix.put(U, b"b", r(4), 0);
        ix.tombstone(U, b"b", r(5));
        ix.put(U, b"c", r(6), 0);
        let dropped = ix.compact(5);
        assert_eq!(dropped, vec![r(2), r(4), r(5)]);
        assert_eq!(ix.get(U, b"a", 5).map(|v| v.rev), Some(r(3)));
        assert_eq!(ix.key_count(), 2, "b is gone entirely");
        assert_eq!(ix.compacted(), 5);
    }

    #[test]
    fn spans() {
        let mut ix = KeyIndex::default();
        for (i, k) in [b"a", b"b", b"c", b"d"].iter().enumerate() {
            ix.put(U, *k, r(i as i64 + 2), 0);
        }
        let keys = |span: KeySpan| {
            let mut out = vec![];
            ix.for_each_live(U, &span, 10, |k, _| {
                out.push(k.to_vec());
                true
            });
            out
        };
        assert_eq!(
            keys(KeySpan::new(b"b", b"d")),
            vec![b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(keys(KeySpan::new(b"c", b"\0")).len(), 2);
        assert_eq!(keys(KeySpan::new(b"c", b"")).len(), 1);
        assert!(keys(KeySpan::new(b"d", b"a")).is_empty());
        assert!(KeySpan::new(b"a", b"c").overlaps(&KeySpan::new(b"b", b"")));
        assert!(!KeySpan::new(b"a", b"c").overlaps(&KeySpan::new(b"c", b"")));
        assert!(KeySpan::new(b"c", b"").overlaps(&KeySpan::new(b"c", b"")));
        assert!(KeySpan::new(b"x", b"\0").overlaps(&KeySpan::new(b"z", b"")));
    }
}
