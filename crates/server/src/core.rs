//! The core every face and domain shares: the store, the one write path, the lease domain,
//! this member, its configuration and metrics. Faces hold an `Arc<Core>` and call domains
//! through it; no face holds another face's state.

use std::sync::Arc;

use berth_store::Store;

use crate::config::Config;
use crate::consensus::Consensus;
use crate::lease::Leases;
use crate::member::MemberInfo;
use crate::metrics::Metrics;

/// What every face and domain shares.
pub struct Core {
    /// The MVCC store (the meta group's state).
    pub store: Arc<Store>,
    /// The write path.
    pub consensus: Consensus,
    /// The lease domain.
    pub leases: Arc<Leases>,
    /// The security domain.
    pub auth: Arc<crate::auth::Auth>,
    /// The registry domain (services, checks, Consul KV metadata).
    pub registry: Arc<crate::registry::Registry>,
    /// The configuration center domain (items, versions, betas, namespaces).
    pub config_center: Arc<crate::config_center::ConfigCenter>,
    /// The gateway (routes, upstreams, consumers, certificates; its routing snapshot).
    pub gateway: Arc<crate::gateway::Gateway>,
    /// This member.
    pub member: MemberInfo,
    /// Resolved configuration (limits).
    pub config: Config,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// The quota and the disk's reserve (the NOSPACE alarm itself is in the store).
    pub space: crate::space::SpaceGuard,
    /// Where storage work runs (blocking threads; inline in the simulation).
    pub storage_io: berth_consensus::StorageIo,
}

impl Core {
    /// True when a NOSPACE alarm blocks writes. Raises it (through Raft, for every member)
    /// when the database has grown past `--quota-backend-bytes`, as etcd does, or the disk
    /// is below `--min-free-disk-bytes`; the request that finds the shortage waits until
    /// the alarm is in place, so a client told "space exceeded" then finds the alarm listed.
    pub async fn out_of_space(&self) -> bool {
        // An alarm applied here may already be disarmed on the leader (a member lags): catch
        // up before refusing, so a refusal never rests on stale state. Costs a read index only
        // while an alarm is raised.
        if self.store.no_space()
            && (self.consensus.read_index().await.is_err() || self.store.no_space())
        {
            return true;
        }
        match self.space.shortage(self.store.db_size()) {
            Some(why) => {
                self.space.raise(why, self.member.id, &self.consensus).await;
                true
            }
            None => false,
        }
    }
}
