//! A stream group's Raft membership brought in line with its assignment, by the group's
//! leader, one step at a time (`converge`, from its timed work): peers the assignment adds
//! join as learners, become voters once they hold nearly all of the log, and only then are
//! the peers it lets go (`leaving`) removed; when the group matches, the assignment forgets
//! them and their replicas stop. Every step is decided again from the state as it is, so a
//! change survives a crash, a new leader, or a request that gave up waiting.
//!
//! A peer that has left the cluster (removed as a member) is replaced the same way, once the
//! group is settled: the leader places another member in its stead and lets it go
//! (`replace_departed`), so a stream keeps its replica count when a member is retired.

use std::collections::BTreeSet;

use berth_consensus::Change;

use super::requests::{assignment_at, current_assignments, write_assignment};
use super::*;

/// How far behind the leader's last log index a learner may be when it is made a voter.
const CAUGHT_UP: u64 = 64;

/// One step towards the assignment's peers, when this member leads the group. Decided on
/// this member's copy of the assignment (kept current by `reconcile`); the one write it
/// makes checks that the stored assignment still says the same.
pub(super) async fn converge(hub: &Arc<Hub>, local: &Arc<Local>) {
    let a = local.assignment();
    let desired: BTreeSet<u64> = a.peers.iter().copied().collect();
    let members = local.replica.members();
    let voters: BTreeSet<u64> = members
        .iter()
        .filter(|m| !m.is_learner)
        .map(|m| m.id)
        .collect();
    let learners: BTreeSet<u64> = members
        .iter()
        .filter(|m| m.is_learner)
        .map(|m| m.id)
        .collect();
    let name = a.config.name.clone();
    let replica = &local.replica;
    // A learner not wanted leaves at once (learners do not vote). New peers (known to the
    // cluster) join as learners. Learners become voters all together, once every one has
    // nearly all of the log (so the voters never go even half-way). Voters not wanted leave
    // only when every wanted peer votes.
    let stray = learners.iter().find(|id| !desired.contains(id)).copied();
    let joining = desired
        .iter()
        .filter(|id| !voters.contains(id) && !learners.contains(id))
        .find_map(|id| group_member(hub, *id).map(|m| (*id, m)));
    let wanted_learners: BTreeSet<u64> = learners.intersection(&desired).copied().collect();
    let step = if let Some(id) = stray {
        Some(("learner removed", replica.remove_member(id).await))
    } else if let Some((id, member)) = joining {
        Some((
            "learner added",
            replica
                .change_membership(Change::AddNodes([(id, member)].into()), true)
                .await,
        ))
    } else if !wanted_learners.is_empty() {
        if !all_caught_up(local, &wanted_learners) {
            return;
        }
        Some((
            "learners made voters",
            replica
                .change_membership(Change::AddVoterIds(wanted_learners), true)
                .await,
        ))
    } else if desired.is_subset(&voters) {
        match voters.iter().find(|id| !desired.contains(id)) {
            Some(id) => Some(("peer removed", replica.remove_member(*id).await)),
            None if !a.leaving.is_empty() => {
                forget_leaving(hub, &name, &a).await;
                None
            }
            None => {
                replace_departed(hub, &name, &a).await;
                None
            }
        }
    } else {
        None
    };
    match step {
        Some((what, Ok(()))) => {
            tracing::info!(stream = %name, what, "JetStream: group membership changed");
        }
        Some((what, Err(e))) => {
            tracing::debug!(stream = %name, what, error = %e, "JetStream: group membership not changed yet");
        }
        None => {}
    }
}

/// Whether every one of `learners` holds nearly all of the leader's log.
fn all_caught_up(local: &Local, learners: &BTreeSet<u64>) -> bool {
    let last = local.replica.status().last_log_index;
    let matched = local.replica.matched();
    learners
        .iter()
        .all(|id| matched.get(id).is_some_and(|m| m + CAUGHT_UP >= last))
}

/// The group matches `seen` (this member's copy of the assignment): the peers it let go
/// are out of it, so the assignment forgets them (their replicas then stop); only if the
/// stored assignment still names the same peers and leaving ones.
async fn forget_leaving(hub: &Arc<Hub>, name: &str, seen: &Assignment) {
    let Ok(Some((mut a, rev))) = assignment_at(hub, name).await else {
        return;
    };
    if a.leaving.is_empty() || a.peers != seen.peers || a.leaving != seen.leaving {
        return;
    }
    a.leaving.clear();
    match write_assignment(hub, name, &a, rev).await {
        Ok(true) => tracing::info!(stream = %name, "JetStream: replica change done"),
        Ok(false) => {}
        Err(e) => {
            tracing::debug!(stream = %name, error = %e, "JetStream: replica change not recorded yet")
        }
    }
}

/// The group is settled on `seen` (this member's copy of the assignment): peers that are no
/// longer members of the cluster are replaced by members placed as a new stream's are, and
/// let go (`leaving`); the steps above then carry the change out. Nothing changes when the
/// cluster has no member to spare (the group goes on with the peers it has), when no peer
/// is left to copy from, or when the stored assignment no longer says what `seen` does.
async fn replace_departed(hub: &Arc<Hub>, name: &str, seen: &Assignment) {
    let members = hub.core.consensus.members();
    let cluster: BTreeSet<u64> = members.iter().map(|m| m.id).collect();
    let (kept, gone): (Vec<u64>, Vec<u64>) = seen
        .peers
        .iter()
        .copied()
        .partition(|p| cluster.contains(p));
    if gone.is_empty() || kept.is_empty() {
        return;
    }
    // No member to spare: nothing to read (a degraded group asks again every few ticks).
    let spare = members
        .iter()
        .filter(|m| !m.is_learner && !kept.contains(&m.id))
        .count();
    if spare < gone.len() {
        return;
    }
    let Ok(Some((mut a, rev))) = assignment_at(hub, name).await else {
        return;
    };
    if a.peers != seen.peers || !a.leaving.is_empty() {
        return;
    }
    let Ok(existing) = current_assignments(hub).await else {
        return;
    };
    let new = match place(hub, &existing, gone.len(), &kept) {
        Ok(new) => new,
        Err(e) => {
            tracing::debug!(stream = %name, gone = ?gone, error = %e, "JetStream: no member to replace a departed peer with");
            return;
        }
    };
    a.peers = kept.into_iter().chain(new.iter().copied()).collect();
    a.leaving = gone.clone();
    a.joined = a.peers.iter().chain(&a.leaving).copied().collect();
    match write_assignment(hub, name, &a, rev).await {
        Ok(true) => {
            tracing::info!(stream = %name, departed = ?gone, replacements = ?new, "JetStream: peers that left the cluster replaced");
        }
        Ok(false) => {}
        Err(e) => {
            tracing::debug!(stream = %name, error = %e, "JetStream: departed peers not replaced yet")
        }
    }
}
