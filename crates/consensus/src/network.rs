//! How a member reaches its peers. This slice runs single-member clusters only: every peer
//! is reported unreachable. The gRPC peer transport (`berth.raft.RaftPeer`) replaces it when
//! multi-member clusters land.

use std::future::Future;

use openraft::errors::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{v2::RaftNetworkV2, RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, VoteRequest, VoteResponse,
};
use openraft::type_config::alias::SnapshotOf;
use openraft::OptionalSend;

use crate::state_machine::SnapshotFile;
use crate::types::{Member, TypeConfig, Vote};

#[derive(Debug, thiserror::Error)]
#[error("member {0} is not reachable: this build replicates within a single member only")]
struct NoTransport(u64);

/// Network factory for a cluster of one.
#[derive(Debug, Clone, Default)]
pub struct LocalOnly;

/// A "connection" to a peer that does not exist.
#[derive(Debug)]
pub struct NoPeer(u64);

impl RaftNetworkFactory<TypeConfig> for LocalOnly {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, _node: &Member) -> NoPeer {
        NoPeer(target)
    }
}

impl RaftNetworkV2<TypeConfig> for NoPeer {
    type SnapshotData = SnapshotFile;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(
            self.0,
        ))))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(Unreachable::new(&NoTransport(
            self.0,
        ))))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: SnapshotOf<TypeConfig, SnapshotFile>,
        _cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(Unreachable::new(&NoTransport(
            self.0,
        ))))
    }
}
