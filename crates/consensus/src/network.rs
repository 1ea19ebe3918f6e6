//! How a member reaches its peers: gRPC (`berth.raft.RaftPeer`) over each member's first
//! peer URL, with openraft messages serialized inside. Connection failures are reported as
//! "unreachable" so openraft backs off; other failures as network errors.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_proto::berth::raft::raft_peer_client::RaftPeerClient;
use berth_proto::berth::raft::Blob;
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{v2::RaftNetworkV2, RPCOption, RaftNetworkFactory};
use openraft::raft::StreamAppendResult;
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::raft::{TransferLeaderRequest, TransferLeaderResponse};
use openraft::type_config::alias::SnapshotOf;
use openraft::OptionalSend;
use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::env::{StorageIo, Transport};
use crate::group::GroupId;
use crate::identity::PeerStamp;
use crate::state_machine::GroupSnapshot;
use crate::types::{Member, TypeConfig, Vote};
use crate::wire::{from_blob, to_blob};

/// One answer of a replication stream.
type AppendResult = Result<StreamAppendResult<TypeConfig>, RPCError<TypeConfig>>;

/// Bytes per snapshot message.
const SNAPSHOT_CHUNK: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

/// A channel to a peer's port, its requests stamped with who sends them, to whom and for which
/// group: any service on the peer port (Raft's, the leader's lease service) is called over it.
pub type PeerChannel = InterceptedService<Channel, PeerStamp>;

/// A client of a peer's Raft service.
pub type PeerClient = RaftPeerClient<PeerChannel>;

/// A lazily connecting gRPC client for the member's first peer URL, dialed by `transport`,
/// its requests stamped by `stamp`.
pub fn peer_client(
    member: &Member,
    transport: &Transport,
    stamp: PeerStamp,
) -> Result<PeerClient, String> {
    Ok(raft_client(peer_channel(member, transport, stamp)?))
}

/// The Raft service's client over `channel` (messages unbounded: snapshots and batches of
/// entries come from a member of the same cluster, admitted by identity first).
pub fn raft_client(channel: PeerChannel) -> PeerClient {
    RaftPeerClient::new(channel)
        .max_decoding_message_size(usize::MAX)
        .max_encoding_message_size(usize::MAX)
}

/// A lazily connecting channel to the member's first peer URL, dialed by `transport`, its
/// requests stamped by `stamp`.
pub fn peer_channel(
    member: &Member,
    transport: &Transport,
    stamp: PeerStamp,
) -> Result<PeerChannel, String> {
    let url = member
        .peer_urls
        .first()
        .ok_or_else(|| format!("member {} has no peer URL", member.name))?;
    let url = if url.contains("://") {
        url.clone()
    } else {
        format!("http://{url}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .map_err(|e| format!("bad peer URL {url}: {e}"))?
        .connect_timeout(Duration::from_secs(1));
    Ok(InterceptedService::new(transport.channel(endpoint), stamp))
}

/// The network factory: one client per target, made on demand.
#[derive(Debug, Clone)]
pub struct PeerNetwork {
    /// The group whose messages these are, stamped on every message.
    pub group: GroupId,
    /// How peers are dialed.
    pub transport: Transport,
    /// Where snapshot streams are written out.
    pub io: StorageIo,
    /// This member's cluster, stamped on every message.
    pub cluster_id: u64,
    /// This member, stamped on every message.
    pub member_id: u64,
}

/// A connection to one peer.
pub struct PeerConnection {
    target: u64,
    client: Result<PeerClient, String>,
    /// The open `AppendEach` stream, if any: kept between calls, dropped after any failure
    /// (a late answer must never be taken for the next request's).
    each: Option<EachStream>,
    /// Where snapshot streams are written out.
    io: StorageIo,
}

/// A long-lived `AppendEach` stream: one request in flight at a time, answered in order.
struct EachStream {
    requests: tokio::sync::mpsc::Sender<Blob>,
    answers: tonic::Streaming<Blob>,
}

/// The messages of a snapshot transfer, handed to `send` in order: `head` (vote and meta), the
/// snapshot bytes in chunks of [`SNAPSHOT_CHUNK`] (never empty), then an empty end marker. A
/// stream that ends without the marker (the transfer was cancelled, the data unreadable) is
/// refused by the receiver. Blocking: it reads the store or a file.
fn snapshot_messages(
    head: Blob,
    data: &GroupSnapshot,
    mut send: impl FnMut(Blob) -> std::io::Result<()>,
) -> std::io::Result<()> {
    send(head)?;
    let mut buf = Vec::with_capacity(SNAPSHOT_CHUNK);
    data.write_to(|chunk| {
        buf.extend_from_slice(chunk);
        if buf.len() >= SNAPSHOT_CHUNK {
            let full = std::mem::replace(&mut buf, Vec::with_capacity(SNAPSHOT_CHUNK));
            send(Blob { data: full })?;
        }
        Ok(())
    })?;
    if !buf.is_empty() {
        send(Blob { data: buf })?;
    }
    send(Blob::default())
}

impl RaftNetworkFactory<TypeConfig> for PeerNetwork {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: u64, node: &Member) -> PeerConnection {
        PeerConnection {
            target,
            client: peer_client(
                node,
                &self.transport,
                PeerStamp::new(self.cluster_id, self.member_id, target, &self.group),
            ),
            each: None,
            io: self.io,
        }
    }
}

/// Sends one request on an `AppendEach` stream and takes its answer. Failures of the stream
/// itself are network errors (openraft retries soon), not an unreachable peer.
async fn exchange_on(
    mut each: EachStream,
    blob: Blob,
    target: u64,
) -> Result<(EachStream, Blob), RPCError<TypeConfig>> {
    let broken = |what: &str| {
        let e = Msg(format!("member {target:x}: AppendEach stream {what}"));
        RPCError::Network(NetworkError::new(&e))
    };
    if each.requests.send(blob).await.is_err() {
        return Err(broken("closed"));
    }
    match each.answers.message().await {
        Ok(Some(answer)) => Ok((each, answer)),
        Ok(None) => Err(broken("ended")),
        Err(s) => Err(classify(target, s)),
    }
}

fn overdue(target: u64, budget: Duration) -> RPCError<TypeConfig> {
    let e = Msg(format!("member {target:x}: no answer within {budget:?}"));
    RPCError::Network(NetworkError::new(&e))
}

fn classify(target: u64, status: tonic::Status) -> RPCError<TypeConfig> {
    let e = Msg(format!("member {target:x}: {status}"));
    if crate::identity::is_refusal(&status) {
        // What answers at that address belongs to another cluster (or is another member):
        // nothing sent there can succeed until an operator acts. Unreachable: openraft backs
        // off instead of retrying at once.
        static LOGGED: AtomicU64 = AtomicU64::new(0);
        if crate::identity::log_now(&LOGGED, Duration::from_secs(10)) {
            tracing::error!(
                target = format_args!("{target:x}"),
                "a peer refused this member's messages: {}",
                status.message()
            );
        }
        return RPCError::Unreachable(Unreachable::new(&e));
    }
    match status.code() {
        // Connection refused/reset and shutdowns surface as Unavailable: back off.
        tonic::Code::Unavailable | tonic::Code::Cancelled => {
            RPCError::Unreachable(Unreachable::new(&e))
        }
        _ => RPCError::Network(NetworkError::new(&e)),
    }
}

impl PeerConnection {
    fn client(&self) -> Result<PeerClient, RPCError<TypeConfig>> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&Msg(e))))
    }

    fn request<T>(msg: T, option: &RPCOption) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(option.hard_ttl());
        req
    }

    /// Sends one AppendEntries over the long-lived `AppendEach` stream (opened on first use)
    /// and waits for its answer within the RPC budget. Heartbeats come here: a new gRPC
    /// stream per heartbeat cost the leader and each follower a stream setup and teardown.
    async fn append_one(
        &mut self,
        rpc: &AppendEntriesRequest<TypeConfig>,
        option: &RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let blob = self.encode(rpc)?;
        let budget = option.soft_ttl();
        let target = self.target;
        let exchange = async {
            // A kept stream may have died since its last answer (the peer restarted, the
            // connection reset): if it fails, try once more on a new one. AppendEntries is
            // idempotent, so a repeat is harmless.
            if let Some(each) = self.each.take() {
                match exchange_on(each, blob.clone(), target).await {
                    Ok(done) => return Ok(done),
                    Err(e) => tracing::debug!(target, error = %e, "reopening AppendEach"),
                }
            }
            let (requests, rx) = tokio::sync::mpsc::channel(1);
            let answers = self
                .client()?
                .append_each(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await
                .map_err(|s| classify(target, s))?
                .into_inner();
            exchange_on(EachStream { requests, answers }, blob, target).await
        };
        let (each, answer) = tokio::time::timeout(budget, exchange)
            .await
            .map_err(|_| overdue(target, budget))??;
        let resp = self.decode(&answer)?;
        // Answered in full: the stream is in step again and can carry the next request.
        self.each = Some(each);
        Ok(resp)
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, b: &Blob) -> Result<T, RPCError<TypeConfig>> {
        from_blob(b).map_err(|s| classify(self.target, s))
    }

    fn encode<T: serde::Serialize>(&self, v: &T) -> Result<Blob, RPCError<TypeConfig>> {
        to_blob(v).map_err(|s| classify(self.target, s))
    }
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = GroupSnapshot;

    /// Single calls (openraft makes them only through its default `stream_append`, which
    /// this network replaces) share the `AppendEach` stream with one-request sessions.
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.append_one(&rpc, &option).await
    }

    /// Pipelined replication over one gRPC stream per session: requests go out as openraft
    /// produces them, without waiting for earlier answers; the follower answers in order.
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, AppendResult>, RPCError<TypeConfig>>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        Box::pin(async move {
            let mut input = input;
            let Some(first) = input.next().await else {
                return Ok(Box::pin(futures::stream::empty()) as BoxStream<'s, AppendResult>);
            };
            // A session of one request (every heartbeat is one) goes over the long-lived
            // AppendEach stream, answered as a unary AppendEntries would be.
            let second = match futures::FutureExt::now_or_never(input.next()) {
                Some(None) => {
                    let prev = first.prev_log_id;
                    let last = first.entries.last().map(|e| e.log_id).or(prev);
                    let resp = self.append_one(&first, &option).await?;
                    if prev.is_none() && matches!(resp, AppendEntriesResponse::Conflict) {
                        // Nothing precedes the first entry: a conflict there is a bad answer.
                        let e = Msg(format!(
                            "member {target:x}: conflict at the log's start",
                            target = self.target
                        ));
                        return Err(RPCError::Network(NetworkError::new(&e)));
                    }
                    let result = resp.into_stream_result(prev, last);
                    return Ok(Box::pin(futures::stream::once(async move { Ok(result) }))
                        as BoxStream<'s, AppendResult>);
                }
                Some(Some(second)) => Some(second),
                None => None,
            };
            let input = futures::StreamExt::chain(
                futures::stream::iter(std::iter::once(first).chain(second)),
                input,
            );
            let mut client = self.client()?;
            let target = self.target;
            // Requests sent and not yet answered: an answer overdue by the RPC budget ends the
            // session (as a unary call's deadline did); an idle stream may wait indefinitely.
            let unanswered = Arc::new(AtomicU64::new(0));
            let sent = unanswered.clone();
            let requests = input.map_while(move |rpc| {
                let blob = to_blob(&rpc)
                    .map_err(
                        |e| tracing::error!(target, status = %e, "encoding a replication request"),
                    )
                    .ok()?;
                sent.fetch_add(1, Ordering::AcqRel);
                Some(blob)
            });
            let answers = client
                .append_stream(requests)
                .await
                .map_err(|s| classify(target, s))?
                .into_inner();
            let budget = option.soft_ttl();
            let responses =
                futures::stream::unfold(Some((answers, unanswered)), move |state| async move {
                    let (mut answers, unanswered) = state?;
                    loop {
                        match tokio::time::timeout(budget, answers.message()).await {
                            Ok(Ok(Some(blob))) => {
                                unanswered.fetch_sub(1, Ordering::AcqRel);
                                let r = from_blob(&blob).map_err(|s| classify(target, s));
                                return Some((r, Some((answers, unanswered))));
                            }
                            Ok(Ok(None)) => return None,
                            Ok(Err(s)) => return Some((Err(classify(target, s)), None)),
                            Err(_) if unanswered.load(Ordering::Acquire) == 0 => continue,
                            Err(_) => return Some((Err(overdue(target, budget)), None)),
                        }
                    }
                });
            Ok(Box::pin(responses) as BoxStream<'s, AppendResult>)
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let blob = self.encode(&rpc)?;
        let resp = self
            .client()?
            .vote(Self::request(blob, &option))
            .await
            .map_err(|s| classify(self.target, s))?;
        self.decode(resp.get_ref())
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: SnapshotOf<TypeConfig, GroupSnapshot>,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let head = self.encode(&(vote, snapshot.meta.clone()))?;
        let mut client = self.client()?;
        let data = snapshot.snapshot;
        let target = self.target;
        let network_err = |e: std::io::Error| {
            StreamingError::from(RPCError::<TypeConfig>::Network(NetworkError::new(&e)))
        };
        let (requests, reader) = match self.io {
            // Writing the stream reads the store (or a file) and checksums it: off the runtime.
            StorageIo::Threads => {
                let (tx, rx) = tokio::sync::mpsc::channel::<Blob>(4);
                let reader = tokio::task::spawn_blocking(move || {
                    let sent = snapshot_messages(head, &data, |m| {
                        tx.blocking_send(m)
                            .map_err(|_| std::io::Error::other("snapshot receiver gone"))
                    });
                    match sent {
                        // The transfer stopped from the other side; its error is the one to
                        // report.
                        Err(_) if tx.is_closed() => Ok(()),
                        r => r,
                    }
                });
                (rx, Some(reader))
            }
            // Everything on this task (a simulation controls all of it): written out first.
            StorageIo::Inline => {
                let mut all = Vec::new();
                snapshot_messages(head, &data, |m| {
                    all.push(m);
                    Ok(())
                })
                .map_err(network_err)?;
                let (tx, rx) = tokio::sync::mpsc::channel::<Blob>(all.len());
                for m in all {
                    // Room for every message was made above.
                    let _ = tx.try_send(m);
                }
                (rx, None)
            }
        };
        let send = client.snapshot(tokio_stream::wrappers::ReceiverStream::new(requests));
        tokio::pin!(cancel);
        let resp = tokio::select! {
            r = send => r.map_err(|s| StreamingError::from(classify(target, s)))?,
            closed = &mut cancel => {
                if let Some(reader) = &reader {
                    reader.abort();
                }
                return Err(StreamingError::Closed(closed));
            }
        };
        if let Some(reader) = reader {
            if let Ok(Err(e)) = reader.await {
                return Err(network_err(e));
            }
        }
        Ok(self.decode(resp.get_ref())?)
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let blob = self.encode(&req)?;
        let resp = self
            .client()?
            .transfer_leader(Self::request(blob, &option))
            .await
            .map_err(|s| classify(self.target, s))?;
        self.decode(resp.get_ref())
    }
}
