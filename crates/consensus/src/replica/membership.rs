//! Membership changes: run at the leader (forwarded there from a follower), one at a time,
//! each waiting for the last to settle.

use super::*;

impl Replica {
    /// Members of the current configuration.
    pub fn members(&self) -> Vec<MemberEntry> {
        let m = self.membership();
        let voters: std::collections::BTreeSet<u64> = m.voter_ids().collect();
        m.nodes()
            .map(|(id, member)| MemberEntry {
                id: *id,
                member: member.clone(),
                is_learner: !voters.contains(id),
            })
            .collect()
    }

    /// At the leader, the last log index each other member is known to hold (none for a
    /// member not heard from); empty on a follower.
    pub fn matched(&self) -> std::collections::BTreeMap<u64, u64> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow_watched();
        m.replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .filter_map(|(id, l)| l.as_ref().map(|l| (*id, l.index)))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Runs a membership change at the leader (forwarded when this member follows).
    pub async fn change_membership(
        &self,
        change: Change,
        retain: bool,
    ) -> Result<(), ProposeError> {
        // Right after an election the member asked may still take itself (or a former leader)
        // for the leader: a change refused as "not the leader" was not proposed, so it is
        // asked again, of whoever leads then, until a leader takes it or patience runs out.
        let deadline = tokio::time::Instant::now() + NO_LEADER_PATIENCE;
        // Backing off: openraft logs every refusal as an error, and a new cluster's members
        // all publish themselves while the first leader settles in.
        let mut pause = Duration::from_millis(20);
        loop {
            let leader = self.leader().await?;
            let refused = if leader == self.id {
                match run_change(&self.raft, change.clone(), retain).await {
                    Err(ProposeError::NotLeader(_)) => ProposeError::NotLeader(None),
                    done => return done,
                }
            } else {
                let blob = crate::wire::to_blob(&(change.clone(), retain))
                    .map_err(|e| ProposeError::Stopped(e.to_string()))?;
                let mut req = tonic::Request::new(blob);
                req.set_timeout(MEMBERSHIP_PATIENCE);
                match self.peer(leader)?.change_membership(req).await {
                    Ok(_) => return Ok(()),
                    Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                        return Err(ProposeError::Membership(s.message().to_string()))
                    }
                    Err(s) if crate::wire::is_not_leader(&s) => ProposeError::NotLeader(None),
                    // Not known whether it was proposed: not repeated.
                    Err(_) => return Err(ProposeError::NotLeader(None)),
                }
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(refused);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(MEMBERSHIP_RETRY_MAX);
        }
    }

    /// Adds a member: first as a learner that receives the log, then (unless `learner`) as a
    /// voter. The member starts later with `--initial-cluster-state existing`.
    pub async fn add_member(
        &self,
        id: u64,
        member: Member,
        learner: bool,
    ) -> Result<(), ProposeError> {
        self.change_membership(Change::AddNodes([(id, member)].into()), true)
            .await?;
        if !learner {
            self.change_membership(Change::AddVoterIds([id].into()), true)
                .await?;
        }
        Ok(())
    }

    /// Makes a learner a voter.
    pub async fn promote_member(&self, id: u64) -> Result<(), ProposeError> {
        self.change_membership(Change::AddVoterIds([id].into()), true)
            .await
    }

    /// Removes a member (voter or learner) from the cluster.
    pub async fn remove_member(&self, id: u64) -> Result<(), ProposeError> {
        let is_voter = self.members().iter().any(|m| m.id == id && !m.is_learner);
        if is_voter {
            self.change_membership(Change::RemoveVoters([id].into()), false)
                .await?;
        }
        if self.members().iter().any(|m| m.id == id) {
            self.change_membership(Change::RemoveNodes([id].into()), false)
                .await?;
        }
        Ok(())
    }

    /// Records (or replaces) member `id`'s name and URLs in the membership.
    pub async fn set_member(&self, id: u64, member: Member) -> Result<(), ProposeError> {
        self.change_membership(ChangeMembers::SetNodes([(id, member)].into()), true)
            .await
    }

    /// Hands leadership to `to` (this member must lead) and waits until `to` leads.
    pub async fn transfer_leader(&self, to: u64) -> Result<(), ProposeError> {
        self.raft
            .trigger()
            .transfer_leader(to)
            .await
            .map_err(|e| ProposeError::Stopped(e.to_string()))?;
        self.raft
            .wait(Some(NO_LEADER_PATIENCE))
            .current_leader(to, "leadership transfer")
            .await
            .map_err(|e| ProposeError::Membership(format!("leadership did not move: {e}")))?;
        Ok(())
    }
}

/// Runs a membership change on this member (which must lead). Changes arriving while another
/// is in progress wait for it (briefly) instead of failing, so concurrent requests queue up.
pub(crate) async fn run_change(
    raft: &Raft<TypeConfig, StateMachine>,
    change: Change,
    retain: bool,
) -> Result<(), crate::ProposeError> {
    let patience = std::time::Duration::from_secs(5);
    let deadline = tokio::time::Instant::now() + patience;
    // The last membership is settled when it is applied (committed) and not a joint config:
    // only then may the next change start.
    let settled = |m: &openraft::RaftMetrics<TypeConfig>| {
        let joint = m.membership_config.membership().get_joint_config().len() > 1;
        let applied = m.membership_config.log_id() <= &m.last_applied;
        (!joint && applied).then_some(())
    };
    loop {
        // Wait out a change in progress instead of colliding with it.
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        crate::replica::watch_metrics(raft, left, settled).await;
        let attempt = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            raft.change_membership(change.clone(), retain),
        );
        let Ok(result) = attempt.await else {
            return Err(crate::ProposeError::Membership(
                "the membership change did not commit in time".into(),
            ));
        };
        match result {
            Ok(_) => return Ok(()),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) => {
                return Err(crate::ProposeError::NotLeader(None))
            }
            Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e))) => {
                let busy = matches!(e, openraft::errors::ChangeMembershipError::InProgress(_));
                if !busy || tokio::time::Instant::now() >= deadline {
                    return Err(crate::ProposeError::Membership(e.to_string()));
                }
                // Another change is in progress. Metrics may not show it yet (the loop's wait
                // would return at once): back off a little before looking again.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(RaftError::APIError(e)) => {
                return Err(crate::ProposeError::Membership(e.to_string()))
            }
            Err(e) => return Err(crate::ProposeError::Stopped(e.to_string())),
        }
    }
}
