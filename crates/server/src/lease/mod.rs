//! The lease domain: one owner for everything about leases, whichever face asks. Grant (the
//! ID choice), revoke, renewal and TTL queries at the leader (which alone runs lease timers),
//! and expiry, which follows this member's role: a member that starts leading restarts every
//! lease's TTL (keep-alives went to the previous leader), and expiry runs only while it leads.
//!
//! etcd leases use it today; Consul sessions, TTL checks and Nacos ephemeral instances are
//! leases too, and reach the leader the same way: renewals from a follower travel batched over
//! one stream ([`renewals`]), answered by the leader's [`leader`] service on the peer port.
//!
//! Invariant: only the leader revokes expired leases, through the log, so every member deletes
//! the same keys at the same revision.

pub mod leader;
mod renewals;

use std::sync::Arc;
use std::time::Duration;

use berth_proto::berth::lease::TimeToLiveResponse;
use berth_proto::etcdserverpb::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseRevokeRequest, LeaseRevokeResponse,
};
use berth_store::{Applied, Command, Entry, Guard, Keyspace, Store, StoreError};
use rand::Rng;
use tokio::sync::watch;

use crate::consensus::{Consensus, WriteError};
use crate::metrics::Metrics;

/// The longest the expiry loop sleeps while leading (a lease granted meanwhile may run out
/// before the next lease it knew of).
const EXPIRY_TICK: Duration = Duration::from_millis(100);
/// Leases revoked per round of expiry (revoked together, so they share commits).
const EXPIRY_BATCH: usize = 1000;
/// Attempts at a randomly chosen lease ID before giving up (each collision is 1 in 2^63).
const ID_ATTEMPTS: usize = 8;

/// Leases, for every face.
pub struct Leases {
    store: Arc<Store>,
    consensus: Consensus,
    renewals: renewals::Renewals,
    metrics: Arc<Metrics>,
}

fn unexpected(what: &str) -> WriteError {
    WriteError::Refused(StoreError::Corrupt(format!(
        "the store answered a {what} with another command's result"
    )))
}

impl Leases {
    /// The lease domain over `store`, writing through `consensus`.
    pub fn new(store: Arc<Store>, consensus: Consensus, metrics: Arc<Metrics>) -> Arc<Leases> {
        Arc::new(Leases {
            renewals: renewals::Renewals::new(consensus.clone(), metrics.clone()),
            store,
            consensus,
            metrics,
        })
    }

    /// Grants a lease of `ttl` seconds with ID `id`, or (when `id` is 0) an ID chosen here:
    /// positive, so it prints the same in every client, and chosen again should it be taken.
    pub async fn grant(
        &self,
        ttl: i64,
        id: i64,
        guard: Option<Guard>,
    ) -> Result<LeaseGrantResponse, WriteError> {
        let chosen_here = id == 0;
        let mut req = LeaseGrantRequest { ttl, id };
        for _ in 0..ID_ATTEMPTS {
            if chosen_here {
                req.id = rand::rng().random_range(1..i64::MAX);
            }
            let entry = Entry {
                guard: guard.clone(),
                ..Entry::new(Keyspace::User, Command::LeaseGrant(req))
            };
            match self.consensus.propose_entry(entry).await {
                Ok(Applied::LeaseGrant(resp)) => {
                    tracing::debug!(id = resp.id, ttl = resp.ttl, "lease granted");
                    return Ok(resp);
                }
                Ok(_) => return Err(unexpected("lease grant")),
                Err(WriteError::Refused(StoreError::LeaseExists)) if chosen_here => continue,
                Err(e) => return Err(e),
            }
        }
        Err(WriteError::Refused(StoreError::LeaseExists))
    }

    /// Revokes a lease, deleting its keys. A face's `guard` makes the store refuse it if the
    /// state the face checked it against has moved on.
    pub async fn revoke(
        &self,
        id: i64,
        guard: Option<Guard>,
    ) -> Result<LeaseRevokeResponse, WriteError> {
        tracing::debug!(lease = id, "lease revoke proposed");
        let entry = Entry {
            guard,
            ..Entry::new(
                Keyspace::User,
                Command::LeaseRevoke(LeaseRevokeRequest { id }),
            )
        };
        match self.consensus.propose_entry(entry).await? {
            Applied::LeaseRevoke(resp) => Ok(resp),
            _ => Err(unexpected("lease revoke")),
        }
    }

    /// Renews a lease at the leader; returns its TTL, 0 when no such lease exists.
    pub async fn renew(&self, id: i64) -> Result<i64, WriteError> {
        let leader = self.consensus.leader().await?;
        if leader == self.consensus.id() {
            if !self.consensus.leads_caught_up().await {
                return Err(WriteError::NotLeader);
            }
            return Ok(self.store.lease_renew(id).unwrap_or(0));
        }
        self.renewals.renew(leader, id).await
    }

    /// Renews leases on this member, which must lead (and have caught up): their TTLs, 0 for
    /// a lease that does not exist.
    fn renew_here(&self, ids: &[i64]) -> Vec<i64> {
        ids.iter()
            .map(|id| self.store.lease_renew(*id).unwrap_or(0))
            .collect()
    }

    /// A lease's remaining and granted TTL (and its keys, with `keys`), as the leader knows
    /// it; TTL -1 when no such lease exists.
    pub async fn time_to_live(
        &self,
        id: i64,
        keys: bool,
    ) -> Result<TimeToLiveResponse, WriteError> {
        let leader = self.consensus.leader().await?;
        if leader == self.consensus.id() {
            if !self.consensus.leads_caught_up().await {
                return Err(WriteError::NotLeader);
            }
            return Ok(self.time_to_live_here(id, keys));
        }
        self.renewals.time_to_live(leader, id, keys).await
    }

    fn time_to_live_here(&self, id: i64, keys: bool) -> TimeToLiveResponse {
        match self.store.lease_info(id) {
            Some(info) => TimeToLiveResponse {
                ttl: info.remaining,
                granted_ttl: info.granted,
                // TimeToLive is an etcd answer: it lists only the lease's user keys.
                keys: if keys {
                    info.keys_in(Keyspace::User)
                } else {
                    Vec::new()
                },
            },
            None => TimeToLiveResponse {
                ttl: -1,
                ..Default::default()
            },
        }
    }

    /// Every lease's ID (from this member's state machine).
    pub fn ids(&self) -> Vec<i64> {
        self.store.lease_ids()
    }

    /// Runs expiry until `stop` changes: idle while this member follows, and from each
    /// leadership on (once it has applied everything committed before its term) revokes the
    /// leases that run out, until it stops leading.
    pub async fn run_expiry(self: Arc<Self>, stop: watch::Receiver<bool>) {
        let mut leadership = self.consensus.leadership(stop);
        while let Some(role) = leadership.leading().await {
            // Timers read from a state machine that is behind would expire on stale deadlines.
            // Not caught up (deposed meanwhile, or Raft stopped): wait for a change of role,
            // briefly, so this loop never spins.
            if !self.consensus.leads_caught_up().await {
                tokio::select! {
                    changed = leadership.changed() => if changed.is_none() { return },
                    _ = tokio::time::sleep(EXPIRY_TICK) => {}
                }
                continue;
            }
            // Keep-alives went to the previous leader: every lease gets a full TTL from now,
            // as etcd's new leaders do.
            self.store.renew_all_leases();
            tracing::info!(
                leases = self.store.lease_ids().len(),
                term = role.term,
                "leading; lease TTLs restarted"
            );
            loop {
                let pause = self
                    .store
                    .next_lease_expiry()
                    .map(|at| at.saturating_duration_since(std::time::Instant::now()))
                    .unwrap_or(EXPIRY_TICK)
                    .min(EXPIRY_TICK);
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    ended = leadership.ended(role.term) => {
                        let Some(now) = ended else { return };
                        tracing::info!(term = now.term, "no longer leading; lease expiry paused");
                        break;
                    }
                }
                self.expire().await;
            }
        }
    }

    /// Revokes the leases that ran out (a bounded batch).
    async fn expire(&self) {
        // Deposed since the last check: the new leader restarted every TTL, and a revoke
        // proposed here would be forwarded to it.
        if !self.consensus.status().is_leader {
            return;
        }
        let expired = self.store.expired_leases(EXPIRY_BATCH);
        if expired.is_empty() {
            return;
        }
        tracing::debug!(leases = ?expired, "leases ran out here; revoking");
        let results =
            futures::future::join_all(expired.iter().map(|id| self.revoke(*id, None))).await;
        for (id, r) in expired.iter().zip(results) {
            match r {
                Ok(_) => {
                    self.metrics.leases_expired.inc();
                    tracing::debug!(lease = id, "lease expired");
                }
                Err(WriteError::Refused(StoreError::LeaseNotFound)) => {}
                Err(e) => tracing::warn!(lease = id, error = %e, "revoking expired lease"),
            }
        }
    }
}
