//! The etcd v3 gRPC services: decode and validate requests, call the store or the write path,
//! and map results and errors to etcd's responses. One file per service.

pub mod auth;
pub mod cluster;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;

use berth_proto::etcdserverpb::ResponseHeader;
use berth_store::Store;

use crate::config::Config;
use crate::consensus::Consensus;
use crate::member::MemberInfo;
use crate::metrics::Metrics;

/// What every service shares.
pub struct Node {
    /// The state machine.
    pub store: Arc<Store>,
    /// The write path.
    pub consensus: Consensus,
    /// The lease domain.
    pub leases: Arc<crate::lease::Leases>,
    /// This member.
    pub member: MemberInfo,
    /// Resolved configuration (limits).
    pub config: Config,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The quota and the disk's reserve (the NOSPACE alarm itself is in the store).
    pub space: crate::space::SpaceGuard,
}

impl Node {
    /// A response header for `revision`.
    pub fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.member.cluster_id,
            member_id: self.member.id,
            revision,
            raft_term: self.consensus.status().term,
        })
    }

    /// Fills the member fields of a header the store produced (keeping its revision).
    pub fn fill(&self, h: &mut Option<ResponseHeader>) {
        let revision = h
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_else(|| self.store.revision());
        *h = self.header(revision);
    }

    /// True when a NOSPACE alarm blocks writes. Raises it (through Raft, for every member)
    /// when the database has grown past `--quota-backend-bytes`, as etcd does, or the disk
    /// is below `--min-free-disk-bytes`; the request that finds the shortage waits until
    /// the alarm is in place, so a client told "space exceeded" then finds the alarm listed.
    pub async fn out_of_space(&self) -> bool {
        if self.store.no_space() {
            return true;
        }
        match self.space.shortage(self.store.db_size()) {
            Some(why) => {
                if let Some(raised) = self.space.raise(why, self.member.id, &self.consensus) {
                    let _ = raised.await;
                }
                true
            }
            None => false,
        }
    }
}
