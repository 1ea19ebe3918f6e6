//! A follower's writes to the leader over one long-lived `ForwardStream`: each write is one
//! message out and one back (matched by id), instead of a unary call per write.
//!
//! A write whose answer is lost with the stream has an unknown outcome; one that could not be
//! sent was certainly not proposed. The caller maps the two differently.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use berth_proto::berth::raft::{ForwardRefusal, ForwardRequest};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

/// Writes in flight on one stream, waiting for their answers.
#[derive(Default)]
struct Pending {
    /// Set when the stream ended: nothing more will be answered.
    closed: bool,
    waiting: HashMap<u64, oneshot::Sender<Answer>>,
}

/// The leader's answer to one write: the encoded result, or why it was not applied.
pub(crate) type Answer = Result<Vec<u8>, (ForwardRefusal, String)>;

/// What became of one forwarded write.
#[derive(Debug)]
pub(crate) enum Forwarded {
    /// The leader answered.
    Answered(Answer),
    /// The write was not sent: the stream could not be opened or had ended.
    NotSent(String),
    /// The stream ended after the write was sent: its outcome is unknown.
    Lost,
}

/// One open stream to one leader.
pub(crate) struct ForwardStream {
    leader: u64,
    tx: mpsc::Sender<ForwardRequest>,
    pending: Arc<Mutex<Pending>>,
    next_id: AtomicU64,
}

fn lock(p: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    crate::sync::LockExt::locked(p)
}

impl ForwardStream {
    /// Opens a stream to `leader` through `client`.
    pub async fn open(
        leader: u64,
        mut client: crate::network::PeerClient,
    ) -> Result<ForwardStream, Status> {
        let (tx, rx) = mpsc::channel(1024);
        let mut answers = client
            .forward_stream(ReceiverStream::new(rx))
            .await?
            .into_inner();
        let pending: Arc<Mutex<Pending>> = Arc::default();
        let reader = pending.clone();
        tokio::spawn(async move {
            let end = loop {
                match answers.message().await {
                    Ok(Some(a)) => {
                        let answer = match ForwardRefusal::try_from(a.code) {
                            Ok(ForwardRefusal::ForwardOk) => Ok(a.result),
                            Ok(refusal) => Err((refusal, a.message)),
                            // A refusal this build does not know: not known to be harmless.
                            Err(_) => Err((ForwardRefusal::Failed, a.message)),
                        };
                        if let Some(w) = lock(&reader).waiting.remove(&a.id) {
                            let _ = w.send(answer);
                        }
                    }
                    Ok(None) => break None,
                    Err(status) => break Some(status),
                }
            };
            if let Some(status) = end {
                tracing::debug!(leader, %status, "forward stream ended");
            }
            // Dropping the waiters' senders tells them their answers are lost.
            let mut p = lock(&reader);
            p.closed = true;
            p.waiting.clear();
        });
        Ok(ForwardStream {
            leader,
            tx,
            pending,
            next_id: AtomicU64::new(1),
        })
    }

    /// The leader this stream goes to.
    pub fn leader(&self) -> u64 {
        self.leader
    }

    /// False once the stream has ended (a new one must be opened).
    pub fn is_open(&self) -> bool {
        !lock(&self.pending).closed && !self.tx.is_closed()
    }

    /// Sends one encoded command and waits for its answer.
    pub async fn forward(&self, command: Vec<u8>) -> Forwarded {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        {
            let mut p = lock(&self.pending);
            if p.closed {
                return Forwarded::NotSent("forward stream ended".into());
            }
            p.waiting.insert(id, tx);
        }
        let msg = ForwardRequest { id, command };
        if self.tx.send(msg).await.is_err() {
            lock(&self.pending).waiting.remove(&id);
            return Forwarded::NotSent("forward stream ended".into());
        }
        match rx.await {
            Ok(answer) => Forwarded::Answered(answer),
            Err(_) => Forwarded::Lost,
        }
    }
}
