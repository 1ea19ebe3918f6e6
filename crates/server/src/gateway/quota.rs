//! `limit-count`'s cluster-wide policy (`"policy": "cluster"`, berth's own in place of
//! APISIX's Redis ones): one count per key for the whole cluster, kept by the meta group's
//! Raft leader alone ([`Ledger`]). The leader counts its own requests one by one; every other
//! member takes shares of the window's quota over the peer port (`berth.gateway.QuotaLeader`)
//! and spends them locally ([`Quotas`]), so a request costs a round trip only when its
//! member's share runs out.
//!
//! A share is a slice of what the leader has left (1 ÷ (2 × members) of it, at least one
//! request), valid until the leader's window ends as measured from when it was asked for, so
//! no share outlives its window. The bound, stated and tested: while one member leads, the
//! cluster admits at most `count` requests in each of the leader's windows of a key. The
//! leader keeps its count in memory only: a new leader starts the key's window afresh while
//! shares of the old one may still be spent, so each leader change may admit up to `count`
//! more in the window it happens in (a new leader that knew, as a follower, how much of a
//! window was gone carries that over; one that never asked for the key does not). Shares a
//! member holds but does not use are lost to their window (the cluster then admits fewer,
//! never more).
//!
//! When the leader cannot be asked, a request is refused with a 500 unless the plugin says
//! `allow_degradation`, as APISIX does when its Redis is down.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_proto::berth::gateway::quota_leader_client::QuotaLeaderClient;
use berth_proto::berth::gateway::quota_leader_server::{QuotaLeader, QuotaLeaderServer};
use berth_proto::berth::gateway::{TakeAnswer, TakeRequest};
use tonic::{Request, Response, Status};

use super::limit::Verdict;
use crate::consensus::Consensus;

const SHARDS: usize = 16;
/// A shard past this many keys drops the ones whose window ended.
const PRUNE_AT: usize = 4096;
/// How long a request waits for the leader's answer.
const PATIENCE: Duration = Duration::from_secs(1);
/// The longest window berth counts (a year; APISIX sets no bound, but a window must fit an
/// `Instant`).
const MAX_WINDOW: Duration = Duration::from_secs(366 * 24 * 3600);

/// Why a cluster-wide count could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum QuotaError {
    /// No leader is known, or it did not answer in time.
    #[error("the cluster's leader could not be asked for a rate-limit share: {0}")]
    NoLeader(String),
}

fn shard_of(key: &str) -> usize {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut h);
    (h.finish() as usize) % SHARDS
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A window's count at the leader.
struct Window {
    started: Instant,
    length: Duration,
    limit: u64,
    granted: u64,
}

/// What the leader handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    /// Requests granted (0: the window's quota is gone).
    pub granted: u64,
    /// Until the window ends.
    pub reset: Duration,
    /// What the leader has left to give in this window.
    pub remaining: u64,
}

/// The leader's counts: one window per key, started by the key's first share.
pub struct Ledger {
    shards: [Mutex<(HashMap<String, Window>, usize)>; SHARDS],
}

impl Default for Ledger {
    fn default() -> Ledger {
        Ledger {
            shards: std::array::from_fn(|_| Mutex::new((HashMap::new(), PRUNE_AT))),
        }
    }
}

impl Ledger {
    /// Hands out up to `want` of `key`'s window (`limit` per `length`), and at most a
    /// `1 / (2 × members)` slice of what is left (at least one request).
    pub fn take(
        &self,
        key: &str,
        limit: u64,
        length: Duration,
        want: u64,
        members: usize,
    ) -> Share {
        let mut shard = lock(&self.shards[shard_of(key)]);
        let (windows, prune_at) = &mut *shard;
        let now = Instant::now();
        if windows.len() >= *prune_at && !windows.contains_key(key) {
            windows.retain(|_, w| now.duration_since(w.started) < w.length);
            *prune_at = (windows.len() * 2).max(PRUNE_AT);
        }
        let w = windows.entry(key.to_string()).or_insert(Window {
            started: now,
            length,
            limit,
            granted: 0,
        });
        if now.duration_since(w.started) >= w.length || w.length != length || w.limit != limit {
            *w = Window {
                started: now,
                length,
                limit,
                granted: 0,
            };
        }
        let left = limit.saturating_sub(w.granted);
        let slice = left.div_ceil(2 * members.max(1) as u64).max(1);
        let granted = want.min(slice).min(left);
        w.granted += granted;
        Share {
            granted,
            reset: w.length.saturating_sub(now.duration_since(w.started)),
            remaining: left - granted,
        }
    }
}

impl Ledger {
    /// Takes in a window this member learnt of as a follower: `granted` of `limit` handed
    /// out, ending in `ends_in`; unless the ledger has a window of the key already.
    pub fn adopt(&self, key: &str, limit: u64, length: Duration, ends_in: Duration, granted: u64) {
        let mut shard = lock(&self.shards[shard_of(key)]);
        let now = Instant::now();
        let current = shard.0.get(key).is_some_and(|w| {
            now.duration_since(w.started) < w.length && w.length == length && w.limit == limit
        });
        if !current {
            let started = now
                .checked_sub(length.saturating_sub(ends_in))
                .unwrap_or(now);
            shard.0.insert(
                key.to_string(),
                Window {
                    started,
                    length,
                    limit,
                    granted,
                },
            );
        }
    }
}

/// A member's share of one key's window.
struct Held {
    tokens: u64,
    /// When the share's window ends, at the earliest (measured from when it was asked for).
    until: Instant,
    /// What the leader had left when it answered.
    remaining: u64,
    limit: u64,
    length: Duration,
    /// Asking the leader failed: requests of the key fail at once until then, rather than
    /// each waiting its turn to ask again.
    failed_until: Option<Instant>,
}

/// How long a failed ask holds before the next request asks again.
const FAILED_FOR: Duration = Duration::from_millis(500);

/// One shard of held shares: by key, each behind its own lock (a member asks the leader for
/// a key once at a time; the key's other requests wait for that answer).
type HeldShard = (HashMap<String, Arc<tokio::sync::Mutex<Held>>>, usize);

/// Cluster-wide counts as this member sees them. See the module docs.
pub struct Quotas {
    consensus: Consensus,
    /// The counts this member keeps while it leads.
    pub ledger: Arc<Ledger>,
    held: [Mutex<HeldShard>; SHARDS],
    metrics: Arc<crate::metrics::Metrics>,
}

impl Quotas {
    /// Counts through `consensus`'s leader.
    pub fn new(consensus: Consensus, metrics: Arc<crate::metrics::Metrics>) -> Quotas {
        Quotas {
            consensus,
            ledger: Arc::default(),
            held: std::array::from_fn(|_| Mutex::new((HashMap::new(), PRUNE_AT))),
            metrics,
        }
    }

    /// Counts a request under `key`, allowed `limit` per `length` across the cluster.
    pub async fn hit(
        &self,
        key: &str,
        limit: u64,
        length: Duration,
    ) -> Result<Verdict, QuotaError> {
        let outcome = self.hit_inner(key, limit, length).await;
        let label = match &outcome {
            Ok(Verdict::Allowed { .. }) => "allowed",
            Ok(Verdict::Refused { .. }) => "refused",
            Err(_) => "failed",
        };
        self.metrics.gateway_quota(label);
        outcome
    }

    async fn hit_inner(
        &self,
        key: &str,
        limit: u64,
        length: Duration,
    ) -> Result<Verdict, QuotaError> {
        let me = self.consensus.id();
        let leader = self
            .consensus
            .leader()
            .await
            .map_err(|e| QuotaError::NoLeader(e.to_string()))?;
        if leader == me {
            if self.consensus.status().leader != Some(me) {
                return Err(QuotaError::NoLeader(
                    "this member leads but has lost its quorum".into(),
                ));
            }
            if let Some(v) = self.adopt(key, limit, length).await {
                return Ok(v);
            }
            // The leader counts its own requests one by one: nothing is held back.
            let s = self.ledger.take(key, limit, length, 1, 1);
            return Ok(if s.granted == 1 {
                Verdict::Allowed {
                    remaining: s.remaining,
                    reset: s.reset,
                }
            } else {
                Verdict::Refused { reset: s.reset }
            });
        }
        let held = self.held_for(key, limit, length);
        let mut held = held.lock().await;
        let now = Instant::now();
        let current = held.until > now && held.limit == limit && held.length == length;
        if current && (held.tokens > 0 || held.remaining == 0) {
            return Ok(spend(&mut held, now));
        }
        if held.failed_until.is_some_and(|t| t > now) {
            return Err(QuotaError::NoLeader(
                "asking the leader failed just now".into(),
            ));
        }
        let asked = Instant::now();
        let answer = match self.ask(leader, key, limit, length).await {
            Ok(a) => a,
            Err(e) => {
                held.failed_until = Some(Instant::now() + FAILED_FOR);
                return Err(e);
            }
        };
        // Bounded: a peer's answer must not overflow the clock or the counts.
        let reset = Duration::from_millis(answer.reset_ms).min(length);
        *held = Held {
            tokens: answer.granted.min(limit),
            until: asked.checked_add(reset).unwrap_or(asked),
            remaining: answer.remaining.min(limit),
            limit,
            length,
            failed_until: None,
        };
        Ok(spend(&mut held, Instant::now()))
    }

    /// On a member that now leads: what it learnt of `key`'s window as a follower goes into
    /// its ledger (so a new leader does not hand out afresh a window it knows is spent), its
    /// share is spent first, and the slot goes. `None` when the ledger decides.
    async fn adopt(&self, key: &str, limit: u64, length: Duration) -> Option<Verdict> {
        let slot = lock(&self.held[shard_of(key)]).0.get(key).cloned()?;
        let mut held = slot.lock().await;
        let now = Instant::now();
        if held.until > now && held.limit == limit && held.length == length {
            if held.tokens > 0 {
                return Some(spend(&mut held, now));
            }
            self.ledger.adopt(
                key,
                limit,
                length,
                held.until - now,
                limit.saturating_sub(held.remaining),
            );
        }
        drop(held);
        lock(&self.held[shard_of(key)]).0.remove(key);
        None
    }

    /// The share slot of `key`, made when missing; slots whose window ended go when a shard
    /// grows.
    fn held_for(&self, key: &str, limit: u64, length: Duration) -> Arc<tokio::sync::Mutex<Held>> {
        let mut shard = lock(&self.held[shard_of(key)]);
        let (slots, prune_at) = &mut *shard;
        if let Some(h) = slots.get(key) {
            return h.clone();
        }
        if slots.len() >= *prune_at {
            let now = Instant::now();
            slots.retain(|_, h| h.try_lock().map_or(true, |h| h.until > now));
            *prune_at = (slots.len() * 2).max(PRUNE_AT);
        }
        let h = Arc::new(tokio::sync::Mutex::new(Held {
            tokens: 0,
            until: Instant::now(),
            remaining: 0,
            limit,
            length,
            failed_until: None,
        }));
        slots.insert(key.to_string(), h.clone());
        h
    }

    async fn ask(
        &self,
        leader: u64,
        key: &str,
        limit: u64,
        length: Duration,
    ) -> Result<TakeAnswer, QuotaError> {
        let channel = self
            .consensus
            .peer_channel(leader)
            .map_err(|e| QuotaError::NoLeader(e.to_string()))?;
        let mut req = Request::new(TakeRequest {
            key: key.to_string(),
            limit,
            window_ms: u64::try_from(length.as_millis()).unwrap_or(u64::MAX),
        });
        req.set_timeout(PATIENCE);
        let answer = tokio::time::timeout(PATIENCE, QuotaLeaderClient::new(channel).take(req))
            .await
            .map_err(|_| QuotaError::NoLeader(format!("member {leader} did not answer in time")))?
            .map_err(|s| QuotaError::NoLeader(format!("member {leader}: {}", s.message())))?;
        Ok(answer.into_inner())
    }
}

/// Spends one request of a current share.
fn spend(held: &mut Held, now: Instant) -> Verdict {
    let reset = held.until.saturating_duration_since(now);
    if held.tokens == 0 {
        return Verdict::Refused { reset };
    }
    held.tokens -= 1;
    Verdict::Allowed {
        remaining: held.tokens.saturating_add(held.remaining),
        reset,
    }
}

/// The leader's share service for the peer port.
pub fn service(quotas: Arc<Quotas>) -> QuotaLeaderServer<LeaderService> {
    QuotaLeaderServer::new(LeaderService { quotas })
}

/// Hands out shares while this member leads.
pub struct LeaderService {
    quotas: Arc<Quotas>,
}

#[tonic::async_trait]
impl QuotaLeader for LeaderService {
    async fn take(&self, req: Request<TakeRequest>) -> Result<Response<TakeAnswer>, Status> {
        let consensus = &self.quotas.consensus;
        consensus.admit_peer(req.metadata())?;
        let r = req.into_inner();
        let length = Duration::from_millis(r.window_ms);
        if r.limit == 0 || length.is_zero() || length > MAX_WINDOW {
            return Err(Status::invalid_argument(
                "berth: a share needs a limit above 0 and a window of up to a year",
            ));
        }
        // A leader cut off from its quorum no longer vouches for itself: the others may
        // have elected another, and two ledgers would double the quota.
        if consensus.status().leader != Some(consensus.id()) {
            return Err(Status::unavailable("berth: not the leader"));
        }
        let members = consensus.members().len();
        let share = self
            .quotas
            .ledger
            .take(&r.key, r.limit, length, u64::MAX, members);
        tracing::trace!(key = %r.key, granted = share.granted, "rate-limit share");
        Ok(Response::new(TakeAnswer {
            granted: share.granted,
            reset_ms: u64::try_from(share.reset.as_millis()).unwrap_or(u64::MAX),
            remaining: share.remaining,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_shrink_and_never_pass_the_limit() {
        let l = Ledger::default();
        let w = Duration::from_secs(60);
        let mut given = Vec::new();
        loop {
            let s = l.take("k", 50, w, u64::MAX, 3);
            if s.granted == 0 {
                assert_eq!(s.remaining, 0);
                break;
            }
            given.push(s.granted);
        }
        assert_eq!(given.iter().sum::<u64>(), 50, "{given:?}");
        assert_eq!(given[0], 9, "a sixth of 50, rounded up");
        assert!(given.windows(2).all(|p| p[1] <= p[0]), "{given:?}");
        assert_eq!(l.take("k", 50, w, 1, 3).granted, 0, "the window is spent");
        assert_eq!(l.take("other", 50, w, 1, 3).granted, 1, "keys are apart");
        // A changed limit starts the window afresh.
        assert_eq!(l.take("k", 60, w, u64::MAX, 1).granted, 30);
    }

    #[test]
    fn a_window_ends_and_shares_say_when() {
        let l = Ledger::default();
        let w = Duration::from_millis(30);
        let s = l.take("k", 1, w, u64::MAX, 3);
        assert_eq!((s.granted, s.remaining), (1, 0));
        assert!(s.reset <= w);
        assert_eq!(l.take("k", 1, w, u64::MAX, 3).granted, 0);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(l.take("k", 1, w, u64::MAX, 3).granted, 1, "a new window");
    }

    #[test]
    fn an_adopted_window_counts_what_was_handed_out() {
        let l = Ledger::default();
        let w = Duration::from_secs(60);
        l.adopt("spent", 10, w, Duration::from_secs(30), 10);
        let s = l.take("spent", 10, w, u64::MAX, 1);
        assert_eq!(s.granted, 0);
        assert!(s.reset <= Duration::from_secs(30), "{:?}", s.reset);
        l.adopt("half", 10, w, Duration::from_secs(30), 5);
        let got: u64 = (0..10).map(|_| l.take("half", 10, w, 1, 1).granted).sum();
        assert_eq!(got, 5, "half the window was gone");
        // A window the ledger has already is kept.
        l.adopt("half", 10, w, Duration::from_secs(30), 0);
        assert_eq!(l.take("half", 10, w, u64::MAX, 1).granted, 0);
    }

    #[test]
    fn a_held_share_is_spent_then_refuses_until_its_window_ends() {
        let until = Instant::now() + Duration::from_secs(5);
        let mut h = Held {
            tokens: 2,
            until,
            remaining: 0,
            limit: 10,
            length: Duration::from_secs(5),
            failed_until: None,
        };
        let now = Instant::now();
        assert!(matches!(
            spend(&mut h, now),
            Verdict::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(
            spend(&mut h, now),
            Verdict::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(spend(&mut h, now), Verdict::Refused { .. }));
    }
}
