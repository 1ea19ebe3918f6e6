//! A stream group's Raft membership brought in line with its assignment, by the group's
//! leader, one step at a time (`converge`, from its timed work): peers the assignment adds
//! join as learners, become voters once they hold nearly all of the log, and only then are
//! the peers it lets go (`leaving`) removed; when the group matches, the assignment forgets
//! them and their replicas stop. Every step is decided again from the state as it is, so a
//! change survives a crash, a new leader, or a request that gave up waiting.

use std::collections::BTreeSet;

use berth_consensus::Change;

use super::requests::{assignment_at, write_assignment};
use super::*;

/// How far behind the leader's last log index a learner may be when it is made a voter.
const CAUGHT_UP: u64 = 64;

/// One step towards the assignment's peers, when this member leads the group.
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
    let step = if let Some(id) = desired
        .iter()
        .find(|id| !voters.contains(id) && !learners.contains(id))
    {
        // A new peer: a learner first, sent the log (or a snapshot) while the group goes on.
        let Some(member) = group_member(hub, *id) else {
            return;
        };
        Some((
            "learner added",
            local
                .replica
                .change_membership(Change::AddNodes([(*id, member)].into()), true)
                .await,
        ))
    } else if let Some(ready) = caught_up(local, &desired, &learners) {
        Some((
            "learners made voters",
            local
                .replica
                .change_membership(Change::AddVoterIds(ready), true)
                .await,
        ))
    } else if desired.is_subset(&voters) {
        // Every peer votes: the ones let go leave (voters first, then as nodes).
        match voters.union(&learners).find(|id| !desired.contains(id)) {
            Some(id) => Some(("peer removed", local.replica.remove_member(*id).await)),
            None => {
                forget_leaving(hub, &name).await;
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

/// The learners among `desired` that hold nearly all of the leader's log.
fn caught_up(
    local: &Local,
    desired: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
) -> Option<BTreeSet<u64>> {
    let last = local.replica.status().last_log_index;
    let matched = local.replica.matched();
    let ready: BTreeSet<u64> = learners
        .iter()
        .filter(|id| desired.contains(id))
        .filter(|id| matched.get(id).is_some_and(|m| m + CAUGHT_UP >= last))
        .copied()
        .collect();
    (!ready.is_empty()).then_some(ready)
}

/// The group matches the assignment: the peers it let go are out of it, so the assignment
/// forgets them (their replicas then stop). Only if the assignment is still the one read.
async fn forget_leaving(hub: &Arc<Hub>, name: &str) {
    let Ok(Some((mut a, rev))) = assignment_at(hub, name).await else {
        return;
    };
    if a.leaving.is_empty() {
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
