//! The write path: commands are queued, made durable and applied in order. On a single node a
//! dedicated thread drains the queue and commits each batch with one fsync (group commit);
//! the Raft layer replaces this behind the same `propose` call.

use std::sync::Arc;
use std::time::Instant;

use berth_store::{Applied, Command, Store, StoreError};
use tokio::sync::{mpsc, oneshot};

use crate::errors::ApiError;
use crate::metrics::Metrics;

/// How many proposals may wait for the writer before callers are slowed down.
const QUEUE_DEPTH: usize = 16 * 1024;

struct Proposal {
    cmd: Command,
    reply: oneshot::Sender<Result<Applied, StoreError>>,
}

/// Called once if the storage engine fails; the node must stop serving.
pub type FatalHook = Box<dyn Fn(&StoreError) + Send + Sync>;

/// Hands commands to the writer and waits until they are durable and applied.
#[derive(Clone)]
pub struct Proposer {
    tx: mpsc::Sender<Proposal>,
}

impl Proposer {
    /// Starts the writer thread for `store`, committing up to `max_batch` commands per fsync.
    pub fn start(
        store: Arc<Store>,
        max_batch: usize,
        metrics: Arc<Metrics>,
        on_fatal: FatalHook,
    ) -> Proposer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let spawned = std::thread::Builder::new()
            .name("berth-writer".into())
            .spawn(move || writer_loop(store, rx, max_batch, metrics, on_fatal));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the writer thread");
        }
        Proposer { tx }
    }

    /// Proposes one command; returns its result once it is durable.
    pub async fn propose(&self, cmd: Command) -> Result<Applied, ApiError> {
        let (reply, wait) = oneshot::channel();
        self.tx
            .send(Proposal { cmd, reply })
            .await
            .map_err(|_| ApiError::Stopped)?;
        match wait.await {
            Ok(Ok(applied)) => Ok(applied),
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(ApiError::Stopped),
        }
    }
}

fn writer_loop(
    store: Arc<Store>,
    mut rx: mpsc::Receiver<Proposal>,
    max_batch: usize,
    metrics: Arc<Metrics>,
    on_fatal: FatalHook,
) {
    let mut cmds = Vec::with_capacity(max_batch);
    let mut replies = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        cmds.push(first.cmd);
        replies.push(first.reply);
        while cmds.len() < max_batch {
            match rx.try_recv() {
                Ok(p) => {
                    cmds.push(p.cmd);
                    replies.push(p.reply);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let outcome = store.apply_batch(&cmds);
        metrics.observe_commit(started.elapsed(), cmds.len());
        match outcome {
            Ok(results) => {
                for (reply, result) in replies.drain(..).zip(results) {
                    // The caller may have gone away (timeout, disconnect); the write stands.
                    let _ = reply.send(result);
                }
                cmds.clear();
            }
            Err(e) => {
                tracing::error!(error = %e, batch = cmds.len(), "write batch failed; no write of it was acknowledged");
                on_fatal(&e);
                return;
            }
        }
    }
}
