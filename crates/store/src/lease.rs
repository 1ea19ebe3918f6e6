//! Leases: TTLs, the keys attached to each, and expiry order. Grant and revoke are applied
//! through the write path; renewals and expiry timers are in-memory, as in etcd.
//!
//! Leases are store-wide, not per keyspace: one lease may hold keys of several keyspaces
//! (each attached key is kept with its keyspace), and revoking it deletes every one of them,
//! each in its own keyspace.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use crate::keyspace::Keyspace;

/// How long an expired lease waits before it is reported expired again (its revoke may be in flight).
const EXPIRED_RETRY: Duration = Duration::from_secs(3);

/// Limits that apply to lease TTLs.
#[derive(Debug, Clone, Copy)]
pub struct LeaseLimits {
    /// Granted TTLs below this are raised to it (seconds).
    pub min_ttl: i64,
    /// Granted TTLs above this are rejected (seconds).
    pub max_ttl: i64,
}

impl Default for LeaseLimits {
    fn default() -> Self {
        // etcd's defaults: 1.5 × election timeout rounded up, and 9e9 seconds.
        Self {
            min_ttl: 2,
            max_ttl: 9_000_000_000,
        }
    }
}

#[derive(Debug)]
struct Lease {
    ttl: i64,
    expiry: Instant,
    /// Attached keys by keyspace (most leases hold keys of one keyspace, so a map, not one
    /// set per keyspace).
    keys: BTreeMap<Keyspace, BTreeSet<Vec<u8>>>,
}

/// All leases of the store.
#[derive(Debug, Default)]
pub struct Lessor {
    leases: HashMap<i64, Lease>,
    by_expiry: BTreeSet<(Instant, i64)>,
    limits: LeaseLimits,
}

/// What `time_to_live` reports for one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// Seconds left before expiry.
    pub remaining: i64,
    /// TTL the lease was granted with.
    pub granted: i64,
    /// Keys attached to the lease with their keyspaces, in keyspace then key order.
    pub keys: Vec<(Keyspace, Vec<u8>)>,
}

impl LeaseInfo {
    /// The attached keys of `ks` (what a face that sees only `ks` may show).
    pub fn keys_in(&self, ks: Keyspace) -> Vec<Vec<u8>> {
        self.keys
            .iter()
            .filter(|(k, _)| *k == ks)
            .map(|(_, key)| key.clone())
            .collect()
    }
}

/// Every key of `keys`, with its keyspace, in keyspace then key order.
fn flatten<'a>(
    keys: impl IntoIterator<Item = (&'a Keyspace, &'a BTreeSet<Vec<u8>>)>,
) -> Vec<(Keyspace, Vec<u8>)> {
    keys.into_iter()
        .flat_map(|(ks, set)| set.iter().map(|k| (*ks, k.clone())))
        .collect()
}

impl Lessor {
    /// A lessor with the given TTL limits.
    pub fn new(limits: LeaseLimits) -> Self {
        Self {
            limits,
            ..Self::default()
        }
    }

    /// TTL limits in force.
    pub fn limits(&self) -> LeaseLimits {
        self.limits
    }

    /// The TTL a grant of `requested` seconds receives.
    pub fn effective_ttl(&self, requested: i64) -> i64 {
        requested.max(self.limits.min_ttl)
    }

    /// True when the lease exists.
    pub fn contains(&self, id: i64) -> bool {
        self.leases.contains_key(&id)
    }

    /// Number of leases.
    pub fn len(&self) -> usize {
        self.leases.len()
    }

    /// True when there are no leases.
    pub fn is_empty(&self) -> bool {
        self.leases.is_empty()
    }

    /// Adds a lease that expires `ttl` seconds from `now`.
    pub fn insert(&mut self, id: i64, ttl: i64, now: Instant) {
        let expiry = now + secs(ttl);
        if let Some(old) = self.leases.insert(
            id,
            Lease {
                ttl,
                expiry,
                keys: BTreeMap::new(),
            },
        ) {
            self.by_expiry.remove(&(old.expiry, id));
        }
        self.by_expiry.insert((expiry, id));
    }

    /// Removes a lease; returns the keys that were attached to it, with their keyspaces.
    pub fn remove(&mut self, id: i64) -> Option<Vec<(Keyspace, Vec<u8>)>> {
        let lease = self.leases.remove(&id)?;
        self.by_expiry.remove(&(lease.expiry, id));
        Some(
            lease
                .keys
                .into_iter()
                .flat_map(|(ks, set)| set.into_iter().map(move |k| (ks, k)))
                .collect(),
        )
    }

    /// Keys attached to a lease, with their keyspaces (empty if unknown).
    pub fn keys(&self, id: i64) -> Vec<(Keyspace, Vec<u8>)> {
        self.leases
            .get(&id)
            .map(|l| flatten(&l.keys))
            .unwrap_or_default()
    }

    /// Attaches `key` of `ks` to lease `id` (no-op for id 0 or an unknown lease).
    pub fn attach(&mut self, id: i64, ks: Keyspace, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            l.keys.entry(ks).or_default().insert(key.to_vec());
        }
    }

    /// Detaches `key` of `ks` from lease `id`.
    pub fn detach(&mut self, id: i64, ks: Keyspace, key: &[u8]) {
        if let Some(l) = self.leases.get_mut(&id) {
            if let Some(set) = l.keys.get_mut(&ks) {
                set.remove(key);
                if set.is_empty() {
                    l.keys.remove(&ks);
                }
            }
        }
    }

    /// Restarts a lease's TTL from `now`; returns the TTL, or `None` if it does not exist.
    pub fn renew(&mut self, id: i64, now: Instant) -> Option<i64> {
        let l = self.leases.get_mut(&id)?;
        self.by_expiry.remove(&(l.expiry, id));
        l.expiry = now + secs(l.ttl);
        self.by_expiry.insert((l.expiry, id));
        Some(l.ttl)
    }

    /// Restarts every lease's TTL (after a restart or a leader change, as etcd does).
    pub fn renew_all(&mut self, now: Instant) {
        let ids: Vec<i64> = self.leases.keys().copied().collect();
        for id in ids {
            self.renew(id, now);
        }
    }

    /// Remaining time and keys of a lease.
    pub fn info(&self, id: i64, now: Instant) -> Option<LeaseInfo> {
        let l = self.leases.get(&id)?;
        Some(LeaseInfo {
            remaining: l.expiry.saturating_duration_since(now).as_secs() as i64,
            granted: l.ttl,
            keys: flatten(&l.keys),
        })
    }

    /// All lease IDs.
    pub fn ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self.leases.keys().copied().collect();
        ids.sort_unstable();
        ids
    }

    /// When the next lease runs out, if any lease exists.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.by_expiry.first().map(|(at, _)| *at)
    }

    /// Leases whose TTL ran out by `now`. Each is pushed back by a retry interval so the
    /// caller is not told twice while its revocation is on the way.
    pub fn take_expired(&mut self, now: Instant, max: usize) -> Vec<i64> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(&(at, id)) = self.by_expiry.first() else {
                break;
            };
            if at > now {
                break;
            }
            self.by_expiry.pop_first();
            if let Some(l) = self.leases.get_mut(&id) {
                l.expiry = now + EXPIRED_RETRY;
                self.by_expiry.insert((l.expiry, id));
            }
            out.push(id);
        }
        out
    }
}

fn secs(ttl: i64) -> Duration {
    Duration::from_secs(ttl.max(0) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_and_renewal() {
        let t0 = Instant::now();
        let mut l = Lessor::new(LeaseLimits::default());
        l.insert(1, 5, t0);
        l.insert(2, 10, t0);
        l.attach(1, Keyspace::User, b"k");
        l.attach(1, Keyspace::Registry, b"k");
        assert!(l.take_expired(t0 + secs(4), 10).is_empty());
        assert_eq!(l.renew(1, t0 + secs(4)), Some(5));
        assert!(l.take_expired(t0 + secs(8), 10).is_empty(), "renewed");
        assert_eq!(l.take_expired(t0 + secs(10), 10), vec![1, 2]);
        assert!(
            l.take_expired(t0 + secs(11), 10).is_empty(),
            "not reported again before the retry interval"
        );
        assert_eq!(
            l.remove(1),
            Some(vec![
                (Keyspace::User, b"k".to_vec()),
                (Keyspace::Registry, b"k".to_vec())
            ]),
            "the same key in two keyspaces is two keys"
        );
        assert_eq!(l.renew(1, t0), None);
        assert_eq!(l.info(2, t0).map(|i| i.granted), Some(10));
    }

    #[test]
    fn min_ttl_applies() {
        let l = Lessor::new(LeaseLimits::default());
        assert_eq!(l.effective_ttl(1), 2);
        assert_eq!(l.effective_ttl(60), 60);
    }
}
