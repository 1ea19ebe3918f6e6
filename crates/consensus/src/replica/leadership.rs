//! Who leads: the role watch fed from Raft's server metrics, waiting for a leader, and
//! waiting on Raft's metrics instead of sleeping.

use super::*;

impl Replica {
    /// Waits (up to a few seconds) for a leader to be known; returns it.
    pub async fn leader(&self) -> Result<u64, ProposeError> {
        let id = self.id;
        let known = |m: &RaftMetrics<TypeConfig>| {
            // As in `status`: only the Leader state counts as this member leading.
            if m.state == openraft::ServerState::Leader {
                Some(id)
            } else {
                m.current_leader.filter(|l| *l != id)
            }
        };
        watch_metrics(&self.raft, NO_LEADER_PATIENCE, known)
            .await
            .ok_or(ProposeError::NotLeader(None))
    }

    /// True once this member leads, has applied everything committed before its term (state
    /// read straight from the group, such as lease timers, is then not behind what was
    /// acknowledged) and has heard from a quorum within the leader lease (no other leader can
    /// have been elected meanwhile); a new leader waits for that, briefly. False at once on a
    /// follower, and on a leader cut off from its quorum.
    pub async fn leads_caught_up(&self) -> bool {
        leads_caught_up(&self.raft, self.leader_lease).await
    }

    /// The role this member plays, now and at every change (leadership gained or lost, a new
    /// leader or term): leader-only work (lease expiry, TTL checks) follows it instead of
    /// polling.
    pub fn roles(&self) -> tokio::sync::watch::Receiver<Role> {
        self.roles.clone()
    }
}

/// The role this member plays in its group, as [`Replica::roles`] reports it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Role {
    /// This member leads (openraft's Leader state).
    pub leading: bool,
    /// The leader it knows of, if any (itself when leading).
    pub leader: Option<u64>,
    /// The current term.
    pub term: u64,
}

/// Follows this member's role until Raft stops: publishes it to [`Replica::roles`], counts
/// changes of the known leader, and lets
/// the log fsync lone appends on the Raft task except on a leader with peers (which sends new
/// entries to them while its own fsync runs). It watches the server metrics, which change
/// only with the vote, role, leader or membership: the full metrics change with every write,
/// and waking this task for each would cost a thread wake-up per write.
pub(super) async fn watch_role(
    mut metrics: openraft::type_config::alias::WatchReceiverOf<
        TypeConfig,
        openraft::metrics::RaftServerMetrics<TypeConfig>,
    >,
    count: Arc<std::sync::atomic::AtomicU64>,
    log: LogStore,
    roles: tokio::sync::watch::Sender<Role>,
) {
    let mut last = None;
    loop {
        let (leader, replicates, role) = {
            let m = metrics.borrow_watched();
            // Learners count: they are replicated to too. (A leader being removed may not be
            // in the membership itself.)
            let peers = m
                .membership_config
                .membership()
                .nodes()
                .any(|(id, _)| *id != m.id);
            let leading = m.state == openraft::ServerState::Leader;
            let role = Role {
                leading,
                leader: if leading {
                    Some(m.id)
                } else {
                    m.current_leader.filter(|l| *l != m.id)
                },
                term: m.vote.leader_id().term,
            };
            (m.current_leader, leading && peers, role)
        };
        roles.send_if_modified(|r| std::mem::replace(r, role) != role);
        log.flush_inline(!replicates);
        if leader != last && leader.is_some() {
            count.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        last = leader;
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Waits until `decide` has an answer from Raft's metrics, checked now and at every change
/// (borrowing them, not copying them per check as openraft's `wait` does); `None` when
/// `patience` runs out or Raft stops first.
pub(crate) async fn watch_metrics<T>(
    raft: &Raft<TypeConfig, StateMachine>,
    patience: Duration,
    decide: impl Fn(&RaftMetrics<TypeConfig>) -> Option<T>,
) -> Option<T> {
    let mut metrics = raft.metrics();
    let wait = async {
        loop {
            if let Some(answer) = decide(&metrics.borrow_watched()) {
                return Some(answer);
            }
            metrics.changed().await.ok()?;
        }
    };
    tokio::time::timeout(patience, wait).await.ok().flatten()
}

/// True once this member leads and has applied an entry of its own term (at least the blank
/// entry openraft commits first): everything committed before its election is then applied,
/// so state read straight from the store (leases) is not behind what was acknowledged. A new
/// leader waits for that (up to [`NO_LEADER_PATIENCE`]); a member that does not lead answers
/// false at once, and so does a caught-up leader out of [`quorum_contact`] (its answers, such
/// as renewed lease TTLs, would not hold: the majority may have elected another leader).
pub(crate) async fn leads_caught_up(
    raft: &Raft<TypeConfig, StateMachine>,
    lease: Duration,
) -> bool {
    let caught_up = |m: &RaftMetrics<TypeConfig>| {
        if m.state != openraft::ServerState::Leader {
            Some(false)
        } else {
            m.last_applied
                .is_some_and(|l| l.leader_id.term == m.current_term)
                .then(|| quorum_contact(m, lease))
        }
    };
    watch_metrics(raft, NO_LEADER_PATIENCE, caught_up)
        .await
        .unwrap_or(false)
}

/// Whether a leader has heard from a quorum within `lease` (openraft's leader lease, the
/// election timeout): the send time of the last heartbeat or append a quorum acknowledged is
/// that recent, so no follower that acknowledged it has voted for anyone else since. A sole
/// voter is its own quorum. openraft's leader never steps down when it loses its quorum
/// (etcd's does, by CheckQuorum): what berth vouches for as leading, and what it serves from
/// leader-only state, asks this instead of the role alone.
pub(crate) fn quorum_contact(m: &RaftMetrics<TypeConfig>, lease: Duration) -> bool {
    use openraft::Instant;
    if m.membership_config.membership().voter_ids().count() <= 1 {
        return true;
    }
    // A leader elected moments ago has no acknowledged heartbeat yet: its election was its
    // quorum's word (etcd names a new leader at once too). Leader-only answers still wait
    // for its first entry to commit (`leads_caught_up`), which takes that quorum.
    m.last_quorum_acked
        .as_ref()
        .is_none_or(|acked| acked.elapsed() < lease)
}
