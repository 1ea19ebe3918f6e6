//! The etcd v3 face: the gRPC services etcd clients speak (KV, Watch, Lease, Cluster,
//! Maintenance, Auth), etcd's JSON gateway beside them on the client port ([`gateway`]),
//! etcd's `/version` on the client port and the HTTP listener, etcd's exact errors
//! ([`errors`]) and the `:authority` repair its Go clients need ([`authority`]). Handlers
//! decode, validate with pure functions, call the core's domains, and encode; one file per
//! service. Checked against etcdctl 3.4, the `etcd-client` crate and aetcd (tests/it).
//!
//! Invariant: every key it reads or writes is in the store's user keyspace; response headers
//! carry this member's cluster and member IDs and the current Raft term.
//!
//! Only [`crate::node`] calls [`serve`] and [`http_routes`]; nothing else imports this face.

pub mod auth;
pub mod authority;
pub mod cluster;
pub mod errors;
pub mod gateway;
pub mod health;
pub mod kv;
pub mod lease;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::response::IntoResponse;
use berth_net::CoalescedWrites;
use berth_proto::etcd_watch::watch_server::WatchServer;
use berth_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer, ResponseHeader,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch as signal;
use tokio_stream::{Stream, StreamExt};

use self::authority::AuthorityFix;
use crate::auth::{Credential, Principal};
use crate::core::Core;
use crate::metrics::GrpcMetricsLayer;

/// The etcd version berth reports (etcdctl and clients check it for features).
pub use self::maintenance::ETCD_VERSION;

/// etcd's allowance for gRPC framing on top of `--max-request-bytes`.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;

/// etcd's response headers, from the core's member identity and Raft term.
pub trait Headers {
    /// A response header for `revision`.
    fn header(&self, revision: i64) -> Option<ResponseHeader>;
    /// Fills the member fields of a header the store produced (keeping its revision).
    fn fill(&self, h: &mut Option<ResponseHeader>);
}

impl Headers for Core {
    fn header(&self, revision: i64) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.member.cluster_id,
            member_id: self.member.id,
            revision,
            raft_term: self.consensus.status().term,
        })
    }

    fn fill(&self, h: &mut Option<ResponseHeader>) {
        let revision = h
            .as_ref()
            .map(|h| h.revision)
            .unwrap_or_else(|| self.store.revision());
        *h = self.header(revision);
    }
}

/// The credentials of an etcd request: its `token` metadata (etcd's gRPC name) or
/// `authorization` (what etcd's JSON gateway forwards), and the verified client
/// certificate's CN (present only with client certificate auth; the JSON gateway's requests
/// carry none, as etcd ignores the CN of gateway requests).
pub fn credential<T>(req: &tonic::Request<T>) -> Credential {
    let md = req.metadata();
    let token = ["token", "authorization"]
        .iter()
        .find_map(|k| md.get(*k).and_then(|v| v.to_str().ok()))
        .map(str::to_string);
    Credential {
        token,
        cert_cn: crate::tls::client_common_name(req),
    }
}

/// The principal an etcd request acts as (an invalid token is etcd's error).
pub fn principal<T>(core: &Core, req: &tonic::Request<T>) -> Result<Principal, tonic::Status> {
    Ok(core.auth.principal(&credential(req))?)
}

/// The etcd v3 services of `core`, with etcd's request size limit.
pub fn grpc_router(core: &Arc<Core>) -> tonic::service::Routes {
    let limit = core.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let progress = Duration::from_millis(core.config.watch_progress_notify_interval_ms);
    tonic::service::Routes::new(
        KvServer::new(kv::KvService::new(core.clone())).max_decoding_message_size(limit),
    )
    .add_service(
        WatchServer::new(watch::WatchService::new(core.clone(), progress))
            .max_decoding_message_size(limit),
    )
    .add_service(
        LeaseServer::new(lease::LeaseService::new(core.clone())).max_decoding_message_size(limit),
    )
    .add_service(
        ClusterServer::new(cluster::ClusterService::new(core.clone()))
            .max_decoding_message_size(limit),
    )
    .add_service(
        MaintenanceServer::new(maintenance::MaintenanceService::new(core.clone()))
            .max_decoding_message_size(limit),
    )
    .add_service(
        AuthServer::new(auth::AuthService::new(core.clone())).max_decoding_message_size(limit),
    )
    .add_service(berth_proto::grpc_health::health_server::HealthServer::new(
        health::HealthService::new(core.clone()),
    ))
}

/// Serves the etcd v3 API on `incoming` until `stop` changes: gRPC, and beside it on the same
/// port (as etcd) the JSON gateway, `/version`, and the HTTP routes in `extra` (the node's
/// health and metrics).
pub async fn serve<C, S>(
    core: Arc<Core>,
    incoming: S,
    mut stop: signal::Receiver<bool>,
    extra: axum::Router,
) -> anyhow::Result<()>
where
    S: Stream<Item = std::io::Result<C>> + Send + 'static,
    C: AsyncRead + AsyncWrite + tonic::transport::server::Connected + Unpin + Send + 'static,
{
    let incoming = incoming.map(|conn| conn.map(|s| CoalescedWrites::new(AuthorityFix::new(s))));
    crate::listen::grpc_server(&core.config)
        // AuthorityFix holds client input to the limits h2 is given here.
        .max_frame_size(authority::MAX_FRAME_SIZE)
        .http2_max_header_list_size(authority::MAX_HEADER_LIST_SIZE)
        // HTTP/1.1 for the JSON gateway; gRPC stays HTTP/2.
        .accept_http1(true)
        .layer(GrpcMetricsLayer(core.metrics.clone()))
        .add_routes(tonic::service::Routes::from(
            grpc_router(&core)
                .into_axum_router()
                .merge(gateway::routes(core.clone()))
                .merge(http_routes())
                .merge(extra),
        ))
        .serve_with_incoming_shutdown(incoming, async move {
            let _ = stop.changed().await;
        })
        .await
        .context("etcd gRPC server")
}

/// etcd's HTTP endpoints berth serves beside its own (`/version`).
pub fn http_routes() -> axum::Router {
    axum::Router::new().route("/version", axum::routing::get(version))
}

async fn version() -> impl IntoResponse {
    axum::Json(serde_json::json!({
        "etcdserver": ETCD_VERSION,
        "etcdcluster": ETCD_VERSION,
        "berth": env!("CARGO_PKG_VERSION"),
    }))
}
