//! Node bootstrap: opens the store, starts the write path, binds the listeners, serves the
//! etcd gRPC API and the HTTP API, runs lease expiry, and shuts everything down in order.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_consensus::Environment;
use berth_proto::etcd_watch::watch_server::WatchServer;
use berth_proto::etcdserverpb::{
    auth_server::AuthServer, cluster_server::ClusterServer, kv_server::KvServer,
    lease_server::LeaseServer, maintenance_server::MaintenanceServer,
};
use berth_store::{LeaseLimits, Store, StoreOptions};
use futures::StreamExt;
use tokio::sync::watch;

use crate::api::auth::AuthService;
use crate::api::cluster::ClusterService;
use crate::api::kv::KvService;
use crate::api::lease::LeaseService;
use crate::api::maintenance::MaintenanceService;
use crate::api::watch::WatchService;
use crate::api::Node;
use crate::authority::AuthorityFix;
use crate::config::{ClusterState, Config};
use crate::consensus::Consensus;
use crate::lease::Leases;
use crate::member::MemberInfo;
use crate::metrics::{GrpcMetricsLayer, Metrics};
use berth_net::CoalescedWrites;

/// etcd's allowance for gRPC framing on top of `--max-request-bytes`.
const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// How long open streams (watches) may delay shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often every member checks the quota and its disk's free space.
const SPACE_TICK: Duration = Duration::from_millis(500);

/// Opens the store and builds the shared node state.
pub async fn open(cfg: &Config) -> anyhow::Result<Arc<Node>> {
    open_in(cfg, Environment::default()).await
}

/// [`open`] in an environment of the caller's (the simulation's network and inline storage).
pub async fn open_in(cfg: &Config, env: Environment) -> anyhow::Result<Arc<Node>> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
    let mut member = MemberInfo::load_or_create(cfg)?;
    if cfg.initial_cluster_state == ClusterState::Existing && !member.joined {
        // A member joining a running cluster takes that cluster's ID, as etcd members do.
        let peers: Vec<String> = cfg
            .initial_cluster
            .iter()
            .flat_map(|(_, urls)| urls.iter().cloned())
            .filter(|u| !member.peer_urls.contains(u))
            .collect();
        match berth_consensus::fetch_cluster_id(&peers, Duration::from_secs(10)).await {
            Some(id) => member.adopt_cluster(cfg, id)?,
            None => anyhow::bail!(
                "joining an existing cluster: no member in --initial-cluster answered"
            ),
        }
    }
    let store = Store::open(
        &cfg.data_dir.join("store"),
        StoreOptions {
            lease_limits: LeaseLimits {
                min_ttl: cfg.min_lease_ttl(),
                ..LeaseLimits::default()
            },
            // redb's default cache grows to 1 GiB; the OS page cache serves the rest.
            cache_bytes: 16 << 20,
        },
    )
    .with_context(|| format!("opening the store in {}", cfg.data_dir.display()))?;
    let metrics = Arc::new(Metrics::new());
    let consensus = Consensus::start(store.clone(), cfg, &member, metrics.clone(), env).await?;
    let leases = Leases::new(store.clone(), consensus.clone(), metrics.clone());
    Ok(Arc::new(Node {
        store,
        consensus,
        leases,
        member,
        config: cfg.clone(),
        metrics,
        space: crate::space::SpaceGuard::new(
            cfg.data_dir.clone(),
            cfg.quota_backend_bytes,
            cfg.min_free_disk_bytes,
        ),
    }))
}

/// The etcd v3 services of `node`, with etcd's request size limit.
pub fn grpc_router(node: &Arc<Node>) -> tonic::service::Routes {
    let limit = node.config.max_request_bytes + GRPC_OVERHEAD_BYTES;
    let progress = Duration::from_millis(node.config.watch_progress_notify_interval_ms);
    tonic::service::Routes::new(
        KvServer::new(KvService::new(node.clone())).max_decoding_message_size(limit),
    )
    .add_service(
        WatchServer::new(WatchService::new(node.clone(), progress))
            .max_decoding_message_size(limit),
    )
    .add_service(LeaseServer::new(LeaseService::new(node.clone())).max_decoding_message_size(limit))
    .add_service(
        ClusterServer::new(ClusterService::new(node.clone())).max_decoding_message_size(limit),
    )
    .add_service(
        MaintenanceServer::new(MaintenanceService::new(node.clone()))
            .max_decoding_message_size(limit),
    )
    .add_service(AuthServer::new(AuthService::new(node.clone())).max_decoding_message_size(limit))
}

/// The services of the peer port: Raft's (every group of this member) and the leader's
/// lease service.
pub fn peer_router(node: &Arc<Node>) -> tonic::service::Routes {
    tonic::service::Routes::new(node.consensus.peer_service()).add_service(
        crate::lease::leader::service(node.leases.clone(), node.consensus.clone()),
    )
}

/// Runs a node until `shutdown` completes.
pub async fn serve(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Every listener is bound before anything is written to the data directory: a start
    // that fails on a taken port leaves no half-initialised member behind (whose next start
    // would silently keep the first attempt's flags).
    let bind = |addrs: &[std::net::SocketAddr], what: &str| {
        addrs
            .iter()
            .map(|addr| {
                crate::listen::bind(*addr, &cfg)
                    .with_context(|| format!("binding the {what} listener {addr}"))
            })
            .collect::<anyhow::Result<Vec<_>>>()
    };
    let client_listeners = bind(&cfg.listen_client, "client")?;
    let peer_listeners = bind(&cfg.listen_peer, "peer")?;
    let http_listeners = bind(&cfg.listen_http, "HTTP")?;
    let node = open(&cfg).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();

    for listener in client_listeners {
        tracing::info!(address = %listener.local_addr()?, "serving the etcd v3 API");
        let incoming =
            listener.map(|conn| conn.map(|s| CoalescedWrites::new(AuthorityFix::new(s))));
        let mut stop = stop_rx.clone();
        let routes = grpc_router(&node);
        let metrics = node.metrics.clone();
        let server = crate::listen::grpc_server(&cfg);
        tasks.spawn(async move {
            // AuthorityFix holds client input to the limits h2 is given here.
            server
                .max_frame_size(crate::authority::MAX_FRAME_SIZE)
                .http2_max_header_list_size(crate::authority::MAX_HEADER_LIST_SIZE)
                .layer(GrpcMetricsLayer(metrics))
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("gRPC server")
        });
    }
    for listener in peer_listeners {
        tracing::info!(address = %listener.local_addr()?, "serving peers");
        let incoming = listener.map(|conn| conn.map(CoalescedWrites::new));
        let mut stop = stop_rx.clone();
        let routes = peer_router(&node);
        let mut server = crate::listen::grpc_server(&cfg);
        tasks.spawn(async move {
            server
                .add_routes(routes)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("peer server")
        });
    }
    for listener in http_listeners {
        let listener = crate::listen::HttpListener(listener);
        tracing::info!(address = %listener.local_addr()?, "serving HTTP (metrics, health)");
        let mut stop = stop_rx.clone();
        let app = crate::http::router(node.clone());
        tasks.spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move {
                    let _ = stop.changed().await;
                })
                .await
                .context("HTTP server")
        });
    }
    tasks.spawn({
        let leases = node.leases.clone();
        let stop = stop_rx.clone();
        async move {
            leases.run_expiry(stop).await;
            Ok(())
        }
    });
    tasks.spawn({
        // Every member watches its own disk, also one that takes no client writes: its log
        // and state machine grow with everyone's writes.
        let node = node.clone();
        let mut stop = stop_rx.clone();
        async move {
            let mut tick = tokio::time::interval(SPACE_TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return Ok(()),
                }
                // The same check every write makes (the alarm's proposal runs on a task of
                // its own, so stopping here does not cancel it).
                tokio::select! {
                    _ = node.out_of_space() => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }
    });
    tasks.spawn({
        let consensus = node.consensus.clone();
        let mut stop = stop_rx.clone();
        async move {
            // Raft stops on its own only on a fatal error (a full disk, a damaged or
            // undecodable log entry): the member could then only fail writes and hang
            // linearizable reads. It exits non-zero instead, as etcd does, so a supervisor
            // restarts it (the restart loses nothing: the log holds every acknowledged write).
            let why = tokio::select! {
                why = consensus.wait_stopped() => why,
                // Shutting down: Raft is stopped on purpose after the servers.
                _ = stop.changed() => return Ok(()),
            };
            Err(anyhow::anyhow!(
                "consensus stopped: {why}; exiting so that this member is restarted"
            ))
        }
    });
    tracing::info!(
        name = %node.member.name,
        member_id = format_args!("{:x}", node.member.id),
        cluster_id = format_args!("{:x}", node.member.cluster_id),
        revision = node.store.revision(),
        "ready to serve client requests"
    );

    tokio::select! {
        _ = shutdown => tracing::info!("shutting down"),
        Some(res) = tasks.join_next() => {
            // A server task ended on its own: that is an error worth stopping for.
            let _ = stop_tx.send(true);
            let err = match res {
                Ok(Ok(())) => anyhow::anyhow!("a server task stopped unexpectedly"),
                Ok(Err(e)) => e,
                Err(e) => anyhow::anyhow!("a server task panicked: {e}"),
            };
            tracing::error!(error = format!("{err:#}"), "stopping");
            return Err(err);
        }
    }
    let _ = stop_tx.send(true);
    // Unary calls finish quickly; open watch streams would hold shutdown forever.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    node.consensus.shutdown().await;
    // Make everything the state machine applied durable before exiting.
    if let Err(e) = node.store.flush() {
        tracing::warn!(error = %e, "flushing the store at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}
