//! A follower's lease work at the leader: renewals over one long-lived stream per leader,
//! batched (each message carries every renewal queued while the previous one was in flight,
//! so a flood of keep-alives costs one frame per round trip), and TTL queries as single calls.
//!
//! A renewal that could not be sent, or whose answer was lost, is reported as "no leader":
//! renewing is idempotent, so the caller (a client's keep-alive) simply renews again.

use std::sync::Arc;

use berth_proto::berth::lease::lease_leader_client::LeaseLeaderClient;
use berth_proto::berth::lease::{RenewAnswers, RenewBatch, TimeToLiveRequest, TimeToLiveResponse};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::consensus::{Consensus, WriteError};
use crate::metrics::Metrics;

/// Renewals per message at most (8 bytes or so each).
const MAX_BATCH: usize = 16_384;

/// How long a batch (or opening the stream) may wait for the leader: a leader that hangs or
/// is cut off must not hold keep-alives until their leases expire at the next leader.
const PATIENCE: std::time::Duration = std::time::Duration::from_secs(3);

/// The leader's lease service over `channel` (messages unbounded, as on the Raft service:
/// a TTL query's key list can be long, and the peer is admitted by identity first).
fn client(
    channel: berth_consensus::PeerChannel,
) -> LeaseLeaderClient<berth_consensus::PeerChannel> {
    LeaseLeaderClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// One renewal waiting for its batch's answer.
type Pending = (i64, oneshot::Sender<Result<i64, WriteError>>);

/// The open renewal stream to one leader.
struct RenewStream {
    leader: u64,
    queue: mpsc::UnboundedSender<Pending>,
}

/// Lease requests this member sends to the leader.
pub(super) struct Renewals {
    consensus: Consensus,
    metrics: Arc<Metrics>,
    /// A tokio mutex: opening a stream awaits the leader, and concurrent renewals must wait
    /// for that one stream rather than each open their own.
    stream: tokio::sync::Mutex<Option<Arc<RenewStream>>>,
}

impl Renewals {
    pub(super) fn new(consensus: Consensus, metrics: Arc<Metrics>) -> Renewals {
        Renewals {
            consensus,
            metrics,
            stream: tokio::sync::Mutex::default(),
        }
    }

    /// Renews lease `id` at `leader`; its TTL, 0 when no such lease exists.
    pub(super) async fn renew(&self, leader: u64, id: i64) -> Result<i64, WriteError> {
        let stream = self.stream(leader).await?;
        let (tx, rx) = oneshot::channel();
        if stream.queue.send((id, tx)).is_err() {
            return Err(WriteError::NotLeader);
        }
        rx.await.unwrap_or(Err(WriteError::NotLeader))
    }

    /// A lease's TTL as `leader` knows it.
    pub(super) async fn time_to_live(
        &self,
        leader: u64,
        id: i64,
        keys: bool,
    ) -> Result<TimeToLiveResponse, WriteError> {
        let mut client = client(self.consensus.peer_channel(leader)?);
        let mut req = tonic::Request::new(TimeToLiveRequest { id, keys });
        req.set_timeout(PATIENCE);
        match client.time_to_live(req).await {
            Ok(resp) => Ok(resp.into_inner()),
            Err(status) => {
                tracing::debug!(leader, %status, "lease TTL query at the leader");
                Err(WriteError::NotLeader)
            }
        }
    }

    /// The open stream to `leader`, opened (again) when there is none.
    async fn stream(&self, leader: u64) -> Result<Arc<RenewStream>, WriteError> {
        let mut slot = self.stream.lock().await;
        if let Some(s) = slot.as_ref() {
            if s.leader == leader && !s.queue.is_closed() {
                return Ok(s.clone());
            }
        }
        let mut client = client(self.consensus.peer_channel(leader)?);
        let (requests, outbound) = mpsc::channel(4);
        let opened = tokio::time::timeout(PATIENCE, client.renew(ReceiverStream::new(outbound)));
        let answers = match opened.await {
            Ok(Ok(answers)) => answers.into_inner(),
            Ok(Err(status)) => {
                tracing::debug!(leader, %status, "opening the renewal stream");
                return Err(WriteError::NotLeader);
            }
            Err(_) => {
                tracing::debug!(leader, "opening the renewal stream timed out");
                return Err(WriteError::NotLeader);
            }
        };
        let (queue, pending) = mpsc::unbounded_channel();
        tokio::spawn(run(
            leader,
            pending,
            requests,
            answers,
            self.metrics.clone(),
        ));
        let stream = Arc::new(RenewStream { leader, queue });
        *slot = Some(stream.clone());
        Ok(stream)
    }
}

/// Sends queued renewals in batches, one batch in flight, until the stream fails or the
/// leader refuses (it no longer leads); then the queue closes and the next renewal opens a
/// new stream. Renewals still queued are answered "no leader" when the queue is dropped.
async fn run(
    leader: u64,
    mut pending: mpsc::UnboundedReceiver<Pending>,
    requests: mpsc::Sender<RenewBatch>,
    mut answers: tonic::Streaming<RenewAnswers>,
    metrics: Arc<Metrics>,
) {
    let mut next = 1u64;
    while let Some(first) = pending.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match pending.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let id = next;
        next += 1;
        let leases = batch.iter().map(|(lease, _)| *lease).collect();
        metrics.lease_renew_batches.inc();
        metrics.lease_renewals_forwarded.inc_by(batch.len() as u64);
        if requests.send(RenewBatch { id, leases }).await.is_err() {
            fail(batch);
            break;
        }
        let answer = tokio::time::timeout(PATIENCE, answers.message())
            .await
            .unwrap_or_else(|_| Err(tonic::Status::deadline_exceeded("no answer in time")));
        match answer {
            Ok(Some(a)) if a.id == id && !a.refused && a.ttls.len() == batch.len() => {
                for ((_, tx), ttl) in batch.into_iter().zip(a.ttls) {
                    let _ = tx.send(Ok(ttl));
                }
            }
            other => {
                match other {
                    Ok(Some(a)) if a.refused => {
                        tracing::debug!(leader, "the member no longer leads; renewal stream closed")
                    }
                    Ok(Some(a)) => tracing::warn!(
                        leader,
                        sent = id,
                        answered = a.id,
                        "renewal answer does not match its batch; stream closed"
                    ),
                    Ok(None) => tracing::debug!(leader, "renewal stream ended"),
                    Err(status) => tracing::debug!(leader, %status, "renewal stream failed"),
                }
                fail(batch);
                break;
            }
        }
    }
}

fn fail(batch: Vec<Pending>) {
    for (_, tx) in batch {
        let _ = tx.send(Err(WriteError::NotLeader));
    }
}
