//! Lease pass-throughs of the [`Store`]: renewals, expiry and inspection, all in memory (as in
//! etcd). Grant and revoke change replicated state, so they go through the write path.

use std::time::Instant;

use super::Store;
use crate::error::{Result, StoreError};
use crate::lease::{LeaseInfo, LeaseLimits};
use crate::sync::LockExt;

impl Store {
    /// Restarts a lease's TTL; returns the TTL or `LeaseNotFound`.
    pub fn lease_renew(&self, id: i64) -> Result<i64> {
        self.lessor
            .locked()
            .renew(id, Instant::now())
            .ok_or(StoreError::LeaseNotFound)
    }

    /// Remaining TTL and keys of a lease.
    pub fn lease_info(&self, id: i64) -> Option<LeaseInfo> {
        self.lessor.locked().info(id, Instant::now())
    }

    /// True when the lease exists.
    pub fn lease_exists(&self, id: i64) -> bool {
        self.lessor.locked().contains(id)
    }

    /// All lease IDs.
    pub fn lease_ids(&self) -> Vec<i64> {
        self.lessor.locked().ids()
    }

    /// Leases whose TTL has run out (each reported once per retry interval).
    pub fn expired_leases(&self, max: usize) -> Vec<i64> {
        self.lessor.locked().take_expired(Instant::now(), max)
    }

    /// When the next lease runs out, if any lease exists.
    pub fn next_lease_expiry(&self) -> Option<Instant> {
        self.lessor.locked().next_expiry()
    }

    /// Restarts every lease's TTL (used when this member starts leading).
    pub fn renew_all_leases(&self) {
        self.lessor.locked().renew_all(Instant::now());
    }

    /// Lease TTL limits in force.
    pub fn lease_limits(&self) -> LeaseLimits {
        self.lessor.locked().limits()
    }
}
