//! Coalesces concurrent writes into one `client_write_many` call: openraft runs its engine,
//! and so appends to the log, once per API message, so writes that arrive together now cost
//! one message and one log append instead of one each.
//!
//! A write that finds no other write in flight goes straight to `client_write`, so a lone
//! client pays nothing for the batching.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use openraft::errors::{ClientWriteError, Fatal, RaftError};
use openraft::raft::ClientWriteResponse;
use openraft::Raft;
use tokio::sync::oneshot;

use crate::batch_counts::{BatchCounts, Tally};
use crate::state_machine::StateMachine;
use crate::types::{RaftRequest, TypeConfig};

/// What a write returns: as [`Raft::client_write`].
pub(crate) type Answer =
    Result<ClientWriteResponse<TypeConfig>, RaftError<TypeConfig, ClientWriteError<TypeConfig>>>;

/// Writes per `client_write_many` call at most.
const MAX_BATCH: usize = 1024;

#[derive(Default)]
struct Queue {
    /// Writes waiting for the next call, with where their answers go.
    waiting: Vec<(RaftRequest, oneshot::Sender<Answer>)>,
    /// True while a task is about to take `waiting` and submit it.
    collecting: bool,
}

/// The write batcher of one member.
pub(crate) struct WriteBatcher {
    raft: Raft<TypeConfig, StateMachine>,
    /// Writes between arrival and answer.
    in_flight: AtomicUsize,
    queue: Arc<Mutex<Queue>>,
    /// Raft calls made and the writes they proposed.
    counts: Arc<Tally>,
}

/// Counts a write in flight until dropped (also when its caller gives up).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl WriteBatcher {
    pub fn new(raft: Raft<TypeConfig, StateMachine>) -> Self {
        WriteBatcher {
            raft,
            in_flight: AtomicUsize::new(0),
            queue: Arc::default(),
            counts: Arc::default(),
        }
    }

    /// Raft calls and the writes they proposed, since start.
    pub fn counts(&self) -> BatchCounts {
        self.counts.get()
    }

    /// Proposes `req` and waits for it to be applied, as [`Raft::client_write`] does.
    pub async fn write(&self, req: RaftRequest) -> Answer {
        let others = self.in_flight.fetch_add(1, Ordering::AcqRel);
        let _in_flight = InFlight(&self.in_flight);
        if others == 0 {
            self.counts.add(1);
            return self.raft.client_write(req).await;
        }
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut q = lock(&self.queue);
            q.waiting.push((req, tx));
            !std::mem::replace(&mut q.collecting, true)
        };
        if start {
            // On a task of its own: a caller that gives up must not strand the others.
            let (raft, queue, counts) =
                (self.raft.clone(), self.queue.clone(), self.counts.clone());
            tokio::spawn(submit(raft, queue, counts));
        }
        // The sender is dropped only if Raft stopped before answering.
        rx.await.unwrap_or(Err(RaftError::Fatal(Fatal::Stopped)))
    }
}

fn lock(q: &Mutex<Queue>) -> std::sync::MutexGuard<'_, Queue> {
    crate::sync::LockExt::locked(q)
}

/// Takes the waiting writes (after letting the tasks that are about to add theirs run once),
/// proposes them in one call per [`MAX_BATCH`] and hands each its answer.
async fn submit(
    raft: Raft<TypeConfig, StateMachine>,
    queue: Arc<Mutex<Queue>>,
    counts: Arc<Tally>,
) {
    // If a submission panics, its queue is left to the next write instead of waiting forever:
    // the writes queued now see Raft stopped (their answers are dropped), later ones start anew.
    let unwinding = queue.clone();
    let _guard = crate::sync::OnUnwind(move || {
        let mut q = lock(&unwinding);
        q.waiting.clear();
        q.collecting = false;
    });
    tokio::task::yield_now().await;
    loop {
        let (batch, last) = {
            let mut q = lock(&queue);
            let n = q.waiting.len().min(MAX_BATCH);
            let batch: Vec<_> = q.waiting.drain(..n).collect();
            let last = q.waiting.is_empty();
            if last {
                // Under the lock: a write arriving after this starts a new submission.
                q.collecting = false;
            }
            (batch, last)
        };
        let (requests, answers): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        counts.add(requests.len());
        match raft.client_write_many(requests).await {
            Ok(results) if last => return deliver(results, answers).await,
            Ok(results) => {
                tokio::spawn(deliver(results, answers));
            }
            Err(fatal) => {
                for tx in answers {
                    let _ = tx.send(Err(RaftError::Fatal(fatal.clone())));
                }
                if last {
                    return;
                }
            }
        }
    }
}

/// The results of one call, in submission order.
type Results = futures::stream::BoxStream<
    'static,
    Result<openraft::raft::WriteResult<TypeConfig>, Fatal<TypeConfig>>,
>;

/// Hands each write of a batch its answer as it is applied; any left unanswered see Raft
/// stopped. (The stream is fused: openraft's ends for good when Raft stops, and polling it
/// again would panic.)
async fn deliver(results: Results, answers: Vec<oneshot::Sender<Answer>>) {
    let mut results = results.fuse();
    for tx in answers {
        let answer = match results.next().await {
            Some(Ok(Ok(resp))) => Ok(ClientWriteResponse {
                log_id: resp.log_id,
                data: resp.response,
                membership: None,
            }),
            Some(Ok(Err(e))) => Err(RaftError::APIError(e)),
            Some(Err(fatal)) => Err(RaftError::Fatal(fatal)),
            None => Err(RaftError::Fatal(Fatal::Stopped)),
        };
        let _ = tx.send(answer);
    }
}
