//! Proposing: a write goes through this member's batcher when it leads, else to the leader
//! over one long-lived forward stream; "not proposed" and "outcome unknown" stay apart.

use super::*;

impl Replica {
    /// Replicates `command` (bytes of the group's state machine) through the log and returns
    /// the state machine's result bytes. On a follower the command is forwarded to the leader;
    /// while no leader is known it waits for one.
    pub async fn propose(&self, command: Vec<u8>) -> Result<Vec<u8>, ProposeError> {
        let bytes = command;
        let deadline = tokio::time::Instant::now() + NO_LEADER_PATIENCE;
        loop {
            // The leader known before this attempt: the retry below waits for it to change.
            let known = self.raft.metrics().borrow_watched().current_leader;
            let leader = match self.writes.write(RaftRequest(bytes.clone())).await {
                Ok(resp) => return Ok(resp.data.0),
                // Not proposed here: safe to send elsewhere.
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => f.leader_id,
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                    return Err(ProposeError::Unknown)
                }
                Err(e) => return Err(ProposeError::Stopped(e.to_string())),
            };
            if let Some(leader) = leader.filter(|l| *l != self.id) {
                match self.forward(leader, &bytes).await {
                    Err(ProposeError::NotLeader(_)) => {}
                    other => return other,
                }
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProposeError::NotLeader(None));
            }
            // Try again when the leader known changed since this attempt began (or shortly:
            // the one asked may be a new leader that has not caught up yet). Not compared with
            // the leader Raft named: when that differs from the known one, this would not wait
            // at all, and a loop that never waits never lets a simulated clock move.
            let moved = |m: &RaftMetrics<TypeConfig>| (m.current_leader != known).then_some(());
            watch_metrics(&self.raft, Duration::from_millis(20), moved).await;
        }
    }

    /// Sends an encoded command to the leader over the forward stream. `NotLeader` means it
    /// was certainly not proposed (so it may be retried); a lost answer is `Unknown`.
    async fn forward(&self, leader: u64, bytes: &[u8]) -> Result<Vec<u8>, ProposeError> {
        let stream = self.forward_stream(leader).await?;
        match stream.forward(bytes.to_vec()).await {
            Forwarded::Answered(Ok(resp)) => Ok(resp),
            Forwarded::Answered(Err((ForwardRefusal::NotLeader, _))) => {
                Err(ProposeError::NotLeader(None))
            }
            Forwarded::Answered(Err((ForwardRefusal::Undecodable, why))) => {
                // Never proposed; this member and the leader disagree on what may be applied.
                tracing::error!(leader, why, "the leader refused a forwarded write");
                Err(ProposeError::Stopped(why))
            }
            Forwarded::Answered(Err((refusal, why))) => {
                tracing::warn!(?refusal, why, "forwarded write failed at the leader");
                Err(ProposeError::Unknown)
            }
            Forwarded::NotSent(why) => {
                tracing::debug!(leader, why, "forwarded write not sent");
                Err(ProposeError::NotLeader(None))
            }
            Forwarded::Lost => {
                tracing::warn!(leader, "forwarded write lost its answer");
                Err(ProposeError::Unknown)
            }
        }
    }

    /// The open forward stream to `leader`, opened (again) when there is none.
    async fn forward_stream(&self, leader: u64) -> Result<Arc<ForwardStream>, ProposeError> {
        let mut slot = self.forwarder.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.leader() == leader && s.is_open() {
                return Ok(s.clone());
            }
        }
        let stream = ForwardStream::open(leader, self.peer(leader)?)
            .await
            .map_err(|s| {
                tracing::debug!(leader, status = %s, "opening the forward stream");
                ProposeError::NotLeader(None)
            })?;
        let stream = Arc::new(stream);
        *slot = Some(stream.clone());
        Ok(stream)
    }
}
