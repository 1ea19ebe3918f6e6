//! The read index: a linearizable read waits until this member has applied everything
//! committed when it began, as a quorum confirms (at the leader, or asked of it).

use super::*;

impl Replica {
    /// Waits until this member has applied everything committed when the call began, as
    /// confirmed by a quorum (read-index): a read after this sees every acknowledged write.
    /// A follower asks the leader for the read index and waits to have applied that far.
    pub async fn read_index(&self) -> Result<(), ProposeError> {
        if self.status().is_leader {
            // Concurrent reads at the leader share one confirmation (which also waits for the
            // read index to be applied). Should leadership have moved, ask again below.
            let raft = self.raft.clone();
            let confirm = move || {
                let raft = raft.clone();
                async move {
                    raft.ensure_linearizable(ReadPolicy::ReadIndex)
                        .await
                        .ok()
                        .map(|_| 0)
                }
            };
            if self.local_reads.index(confirm).await.is_some() {
                return Ok(());
            }
            match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                Ok(_) => return Ok(()),
                Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(_))) => {}
                Err(e) => return Err(ProposeError::Stopped(e.to_string())),
            }
        }
        // A follower (Raft would only answer "ask the leader"): ask the leader directly. A
        // leader elected moments ago may not answer yet (its term has committed nothing):
        // ask again, the leader known then, until the patience runs out.
        let deadline = tokio::time::Instant::now() + NO_LEADER_PATIENCE;
        let index = loop {
            let leader = self.leader().await?;
            let client = self.peer(leader)?;
            // Concurrent reads share one request to the leader.
            let fetch = move || {
                let mut client = client.clone();
                async move {
                    // Bounded: an unreachable former leader must not hold up the readers
                    // queued behind this round (they ask the leader they know next).
                    let mut req = tonic::Request::new(Blob::default());
                    req.set_timeout(NO_LEADER_PATIENCE);
                    let resp = client.read_index(req).await.ok()?;
                    Some(resp.into_inner().index)
                }
            };
            if let Some(index) = self.reads.index(fetch).await {
                break index;
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(ProposeError::NotLeader(None));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        // Usually applied already; otherwise wait for it.
        let applied = |m: &RaftMetrics<TypeConfig>| {
            m.last_applied
                .is_some_and(|l| l.index >= index)
                .then_some(())
        };
        watch_metrics(&self.raft, NO_LEADER_PATIENCE, applied)
            .await
            .ok_or_else(|| ProposeError::Stopped(format!("read index {index} not applied in time")))
    }
}
