//! A user's effective permissions: every grant of every role it has, merged per keyspace into
//! disjoint key intervals for reading and for writing, so a check is one binary search. A
//! request is allowed when one merged interval covers all of it (as etcd's interval tree
//! `Contains`): grants on `[a, c)` and `[c, e)` together allow a range over `[b, d)`.

use std::cmp::Ordering;
use std::collections::HashMap;

use crate::model::{Access, Role};

/// The end of a key interval.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// Exclusive end key.
    Key(Vec<u8>),
    /// Past every key.
    Inf,
}

impl PartialOrd for End {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for End {
    fn cmp(&self, other: &Self) -> Ordering {
        match (self, other) {
            (End::Inf, End::Inf) => Ordering::Equal,
            (End::Inf, _) => Ordering::Greater,
            (_, End::Inf) => Ordering::Less,
            (End::Key(a), End::Key(b)) => a.cmp(b),
        }
    }
}

/// `[key, range_end)` in etcd's conventions: an empty end is the one key, `"\0"` is "every
/// key from `key` on". `None` for an empty interval.
fn interval(key: &[u8], range_end: &[u8]) -> Option<(Vec<u8>, End)> {
    match range_end {
        [] => Some(point(key)),
        [0] => Some((key.to_vec(), End::Inf)),
        end if end > key => Some((key.to_vec(), End::Key(end.to_vec()))),
        _ => None,
    }
}

/// The one key `key`: `[key, key + "\0")`.
fn point(key: &[u8]) -> (Vec<u8>, End) {
    let mut next = key.to_vec();
    next.push(0);
    (key.to_vec(), End::Key(next))
}

/// Disjoint, non-adjacent intervals in key order.
#[derive(Debug, Clone, Default)]
struct Ranges(Vec<(Vec<u8>, End)>);

impl Ranges {
    fn build(mut all: Vec<(Vec<u8>, End)>) -> Ranges {
        all.sort_by(|a, b| a.0.cmp(&b.0));
        let mut merged: Vec<(Vec<u8>, End)> = Vec::with_capacity(all.len());
        for (start, end) in all {
            if let Some(last) = merged.last_mut() {
                if End::Key(start.clone()) <= last.1 {
                    if end > last.1 {
                        last.1 = end;
                    }
                    continue;
                }
            }
            merged.push((start, end));
        }
        Ranges(merged)
    }

    fn covers(&self, start: &[u8], end: &End) -> bool {
        let at = self.0.partition_point(|(s, _)| s.as_slice() <= start);
        at > 0 && self.0[at - 1].1 >= *end
    }
}

/// Read and write intervals of one keyspace.
#[derive(Debug, Clone, Default)]
struct Grants {
    read: Ranges,
    write: Ranges,
}

/// A user's merged permissions over all its roles.
#[derive(Debug, Clone, Default)]
pub struct Permissions {
    by_keyspace: HashMap<u8, Grants>,
}

impl Permissions {
    /// Merges the grants of `roles`.
    pub fn merge<'r>(roles: impl IntoIterator<Item = &'r Role>) -> Permissions {
        let mut raw: HashMap<u8, (Vec<_>, Vec<_>)> = HashMap::new();
        for role in roles {
            for p in &role.permissions {
                let Some(ivl) = interval(&p.key, &p.range_end) else {
                    continue;
                };
                let (read, write) = raw.entry(p.keyspace).or_default();
                if p.access.allows(Access::Read) {
                    read.push(ivl.clone());
                }
                if p.access.allows(Access::Write) {
                    write.push(ivl);
                }
            }
        }
        Permissions {
            by_keyspace: raw
                .into_iter()
                .map(|(ks, (r, w))| {
                    (
                        ks,
                        Grants {
                            read: Ranges::build(r),
                            write: Ranges::build(w),
                        },
                    )
                })
                .collect(),
        }
    }

    /// True when `access` (Read or Write; ReadWrite needs both) to `key`/`range_end` (etcd's
    /// conventions) in keyspace `ks` is granted.
    pub fn allows(&self, ks: u8, access: Access, key: &[u8], range_end: &[u8]) -> bool {
        let Some(grants) = self.by_keyspace.get(&ks) else {
            return false;
        };
        // An empty request range (end before start) reads nothing but names `key`: judge it
        // as the one key, never as "allowed because empty".
        let (start, end) = interval(key, range_end).unwrap_or_else(|| point(key));
        let check = |r: &Ranges| r.covers(&start, &end);
        match access {
            Access::Read => check(&grants.read),
            Access::Write => check(&grants.write),
            Access::ReadWrite => check(&grants.read) && check(&grants.write),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Permission;

    fn role(grants: &[(&str, &str, Access)]) -> Role {
        let mut r = Role::default();
        for (k, e, a) in grants {
            r.grant(Permission {
                keyspace: 0,
                access: *a,
                key: k.as_bytes().to_vec(),
                range_end: e.as_bytes().to_vec(),
            });
        }
        r
    }

    #[test]
    fn single_keys_ranges_and_prefixes() {
        let p = Permissions::merge([&role(&[
            ("foo", "", Access::Read),
            ("dir/", "dir0", Access::ReadWrite),
            ("z", "\0", Access::Write),
        ])]);
        assert!(p.allows(0, Access::Read, b"foo", b""));
        assert!(!p.allows(0, Access::Write, b"foo", b""));
        assert!(
            !p.allows(0, Access::Read, b"foo", b"fop"),
            "range beyond the key"
        );
        assert!(
            p.allows(0, Access::Read, b"foo", b"foo\0"),
            "the key as a range"
        );
        assert!(p.allows(0, Access::Write, b"dir/a", b""));
        assert!(p.allows(0, Access::Read, b"dir/", b"dir0"));
        assert!(!p.allows(0, Access::Read, b"dir/", b"dir1"));
        assert!(!p.allows(0, Access::Read, b"di", b""));
        assert!(p.allows(0, Access::Write, b"zzz", b"\0"));
        assert!(p.allows(0, Access::Write, b"z", b"zz"));
        assert!(!p.allows(0, Access::Write, b"y", b"\0"));
        assert!(!p.allows(0, Access::Read, b"z", b""));
        assert!(!p.allows(1, Access::Read, b"foo", b""), "another keyspace");
        assert!(!p.allows(0, Access::ReadWrite, b"foo", b""));
        assert!(p.allows(0, Access::ReadWrite, b"dir/x", b""));
    }

    #[test]
    fn adjacent_and_overlapping_grants_merge_across_roles() {
        let a = role(&[("a", "c", Access::Read)]);
        let b = role(&[("c", "e", Access::Read), ("d", "f", Access::Read)]);
        let p = Permissions::merge([&a, &b]);
        assert!(p.allows(0, Access::Read, b"b", b"f"));
        assert!(!p.allows(0, Access::Read, b"b", b"g"));
        assert!(!p.allows(0, Access::Read, b"", b"\0"));
        let gap =
            Permissions::merge([&role(&[("a", "b", Access::Read), ("c", "d", Access::Read)])]);
        assert!(!gap.allows(0, Access::Read, b"a", b"d"));
    }

    #[test]
    fn everything_and_empty_ranges() {
        let all = Permissions::merge([&role(&[("", "\0", Access::ReadWrite)])]);
        assert!(all.allows(0, Access::Read, b"", b"\0"));
        assert!(all.allows(0, Access::Write, b"\xff\xff", b""));
        let one = Permissions::merge([&role(&[("k", "", Access::Read)])]);
        // An inverted range names its start key only.
        assert!(one.allows(0, Access::Read, b"k", b"a"));
        assert!(!one.allows(0, Access::Read, b"l", b"a"));
        let none = Permissions::merge([&role(&[("b", "a", Access::Read)])]);
        assert!(!none.allows(0, Access::Read, b"b", b""));
    }
}
