//! The one wiring point: opens the [`Core`] (store, write path, lease domain), and
//! [`serve_on`] runs every face on listeners bound beforehand, with the background work every
//! member does (lease expiry, the disk watch, the Raft watch), and shuts it all down in
//! order. `berth server` ([`serve`]) binds TCP listeners and calls it; the simulation calls
//! it with simulated ones, so a face added here runs everywhere. Faces are wired here only.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_consensus::{Environment, TlsDialer, Transport};
use berth_net::tls::{tls_incoming, ServerConn};
use berth_net::{CoalescedWrites, FirstBytes};
use berth_store::{LeaseLimits, Store, StoreOptions};
use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tonic::transport::server::Connected;

use crate::config::{ClusterState, Config};
use crate::consensus::Consensus;
use crate::core::Core;
use crate::face;
use crate::lease::Leases;
use crate::member::MemberInfo;
use crate::metrics::Metrics;

/// How long open streams (watches) may delay shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// How often every member checks the quota and its disk's free space.
const SPACE_TICK: Duration = Duration::from_millis(500);

/// Opens the store and builds the core.
pub async fn open(cfg: &Config) -> anyhow::Result<Arc<Core>> {
    // Peers are dialed in plain TCP, or over TLS for https:// peer URLs.
    let env = Environment {
        transport: Transport::new(TlsDialer(cfg.tls.peer_connector()?)),
        ..Environment::default()
    };
    open_in(cfg, env).await
}

/// [`open`] in an environment of the caller's (the simulation's network and inline storage).
pub async fn open_in(cfg: &Config, env: Environment) -> anyhow::Result<Arc<Core>> {
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
        let found =
            berth_consensus::fetch_cluster_id(&peers, &env.transport, Duration::from_secs(10))
                .await;
        match found {
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
    let storage_io = env.storage_io;
    let consensus = Consensus::start(store.clone(), cfg, &member, metrics.clone(), env).await?;
    let leases = Leases::new(store.clone(), consensus.clone(), metrics.clone());
    let auth = Arc::new(crate::auth::Auth::new(
        store.clone(),
        consensus.clone(),
        cfg,
    )?);
    let registry = crate::registry::Registry::new(store.clone());
    let config_center = crate::config_center::ConfigCenter::new(store.clone(), cfg.config_limits);
    let gateway = crate::gateway::Gateway::new(store.clone(), consensus.clone(), metrics.clone());
    Ok(Arc::new(Core {
        store,
        consensus,
        leases,
        auth,
        registry,
        config_center,
        gateway,
        member,
        config: cfg.clone(),
        metrics,
        space: crate::space::SpaceGuard::new(
            cfg.data_dir.clone(),
            cfg.quota_backend_bytes,
            cfg.min_free_disk_bytes,
        ),
        storage_io,
    }))
}

/// The services of the peer port: Raft's (every group of this member), the leader's lease
/// and rate-limit share services, and NATS's routes.
pub fn peer_router(core: &Arc<Core>, nats: &Arc<face::nats::Hub>) -> tonic::service::Routes {
    tonic::service::Routes::new(core.consensus.peer_service())
        .add_service(crate::lease::leader::service(
            core.leases.clone(),
            core.consensus.clone(),
        ))
        .add_service(face::nats::route::service(nats.clone()))
        .add_service(crate::gateway::quota::service(core.gateway.quotas.clone()))
}

/// A bound listener: the connections it accepts (accept errors are handled underneath).
pub type Accepted<C> = Pin<Box<dyn Stream<Item = std::io::Result<C>> + Send>>;

/// Every listener of a member, bound before the member opens its data directory, each kind
/// a list (a member may listen on several addresses).
pub struct Listeners<C> {
    /// The etcd v3 gRPC API (`--listen-client-urls`).
    pub client: Vec<Accepted<C>>,
    /// Raft and the leader's services (`--listen-peer-urls`).
    pub peer: Vec<Accepted<C>>,
    /// Metrics, health, the Consul API and berth's own (`--listen-http-urls`), each
    /// connection with its peer's address.
    pub http: Vec<Accepted<(C, crate::listen::ClientAddr)>>,
    /// Nacos's API (`--listen-nacos-urls`), each connection with its peer's address.
    pub nacos: Vec<Accepted<(C, crate::listen::ClientAddr)>>,
    /// Nacos's gRPC protocol (each Nacos listener's port + 1000).
    pub nacos_grpc: Vec<Accepted<(C, crate::listen::ClientAddr)>>,
    /// Consul's DNS interface (`--listen-dns-addr`), UDP and TCP; the simulation has none.
    pub dns: Vec<face::dns::Sockets>,
    /// NATS's client protocol (`--listen-nats-urls`), each with its bound address (INFO
    /// reports it) and, for a `tls://` URL, the TLS its clients must upgrade to after INFO.
    pub nats: Vec<NatsListener<C>>,
    /// The gateway's data plane (`--listen-gateway-urls`), each with whether it serves TLS
    /// (with the gateway's own certificates, by SNI).
    pub gateway: Vec<(bool, Accepted<(C, crate::listen::ClientAddr)>)>,
}

/// A NATS listener: its bound address, its TLS (for `tls://`), its connections.
pub type NatsListener<C> = (
    std::net::SocketAddr,
    Option<Arc<rustls::ServerConfig>>,
    Accepted<(C, crate::listen::ClientAddr)>,
);

impl Listeners<ServerConn<FirstBytes<TcpStream>>> {
    /// Binds the TCP listeners `cfg` asks for (backlog, accept backoff, handshake deadline
    /// and keepalive as [`crate::listen::bind`] sets them); `https://` ones shake hands in
    /// TLS first (see [`crate::tls`]). Certificate files are read here: a bad one is a
    /// start-up error naming it.
    pub fn bind(cfg: &Config) -> anyhow::Result<Self> {
        type Tls = fn(&crate::tls::TlsConfig) -> anyhow::Result<Arc<rustls::ServerConfig>>;
        let bind = |addrs: &[std::net::SocketAddr], what: &str, serving: &str, tls: Tls| {
            addrs
                .iter()
                .map(|addr| {
                    let listener = crate::listen::bind(*addr, cfg)
                        .with_context(|| format!("binding the {what} listener {addr}"))?;
                    let local = listener.local_addr()?;
                    if cfg.tls.is_https(addr) {
                        let config = tls(&cfg.tls)?;
                        tracing::info!(address = %local, "serving {serving} over TLS");
                        let conns = tls_incoming(listener, config, cfg.handshake_timeout);
                        Ok(Box::pin(conns) as Accepted<_>)
                    } else {
                        tracing::info!(address = %local, "serving {serving}");
                        let conns = listener.map(|conn| conn.map(ServerConn::plain));
                        Ok(Box::pin(conns) as Accepted<_>)
                    }
                })
                .collect::<anyhow::Result<Vec<_>>>()
        };
        Ok(Listeners {
            client: bind(
                &cfg.listen_client,
                "client",
                "the etcd v3 API",
                crate::tls::TlsConfig::client_listener,
            )?,
            peer: bind(
                &cfg.listen_peer,
                "peer",
                "peers",
                crate::tls::TlsConfig::peer_listener,
            )?,
            http: addressed(bind(
                &cfg.listen_http,
                "HTTP",
                "HTTP (metrics, health, Consul's API, berth's API)",
                crate::tls::TlsConfig::http_listener,
            )?),
            nacos: addressed(bind(
                &cfg.listen_nacos,
                "Nacos",
                "Nacos's API",
                crate::tls::TlsConfig::http_listener,
            )?),
            nacos_grpc: addressed(
                cfg.listen_nacos
                    .iter()
                    .zip(&cfg.listen_nacos_grpc)
                    .map(|(http, grpc)| {
                        let listener = crate::listen::bind(*grpc, cfg).with_context(|| {
                            format!("binding the Nacos gRPC listener {grpc} (--listen-nacos-urls port + 1000)")
                        })?;
                        if cfg.tls.is_https(http) {
                            let config = cfg.tls.client_listener()?;
                            tracing::info!(address = %grpc, "serving Nacos's gRPC protocol over TLS");
                            Ok(Box::pin(tls_incoming(listener, config, cfg.handshake_timeout)) as Accepted<_>)
                        } else {
                            tracing::info!(address = %grpc, "serving Nacos's gRPC protocol");
                            let conns = listener.map(|conn| conn.map(ServerConn::plain));
                            Ok(Box::pin(conns) as Accepted<_>)
                        }
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?,
            ),
            dns: cfg
                .listen_dns
                .iter()
                .map(|addr| face::dns::Sockets::bind(*addr, cfg))
                .collect::<anyhow::Result<_>>()?,
            nats: cfg
                .listen_nats
                .iter()
                .map(|addr| {
                    let listener = crate::listen::bind(*addr, cfg)
                        .with_context(|| format!("binding the NATS listener {addr}"))?;
                    let local = listener.local_addr()?;
                    let tls = cfg
                        .tls
                        .nats_tls
                        .contains(addr)
                        .then(|| cfg.tls.nats_listener())
                        .transpose()?;
                    tracing::info!(address = %local, tls = tls.is_some(), "serving NATS's client protocol");
                    let conns = listener.map(|conn| conn.map(ServerConn::plain));
                    let conns = addressed(vec![Box::pin(conns) as Accepted<_>]);
                    Ok(conns
                        .into_iter()
                        .map(|c| (local, tls.clone(), c))
                        .collect::<Vec<_>>())
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect(),
            gateway: cfg
                .listen_gateway
                .iter()
                .map(|(addr, https)| {
                    let listener = crate::listen::bind(*addr, cfg)
                        .with_context(|| format!("binding the gateway listener {addr}"))?;
                    let local = listener.local_addr()?;
                    tracing::info!(address = %local, tls = https, "serving the gateway");
                    let conns = listener.map(|conn| conn.map(ServerConn::plain));
                    let conns = addressed(vec![Box::pin(conns) as Accepted<_>]);
                    Ok(conns.into_iter().map(|c| (*https, c)).collect::<Vec<_>>())
                })
                .collect::<anyhow::Result<Vec<_>>>()?
                .into_iter()
                .flatten()
                .collect(),
        })
    }
}

type Conn = ServerConn<FirstBytes<TcpStream>>;

/// Pairs each accepted connection with its peer's address (for faces that record it).
fn addressed(listeners: Vec<Accepted<Conn>>) -> Vec<Accepted<(Conn, crate::listen::ClientAddr)>> {
    listeners
        .into_iter()
        .map(|conns| {
            let conns = conns.map(|conn| {
                conn.map(|c| {
                    let peer = c.connect_info().transport.remote_addr();
                    (c, crate::listen::ClientAddr(peer))
                })
            });
            Box::pin(conns) as Accepted<_>
        })
        .collect()
}

/// Adapts an accept stream of addressed connections to axum (faces read the client's
/// address through `ConnectInfo<ClientAddr>`).
struct AddressedAccept<C>(Accepted<(C, crate::listen::ClientAddr)>);

impl<C: AsyncRead + AsyncWrite + Unpin + Send + 'static> axum::serve::Listener
    for AddressedAccept<C>
{
    type Io = C;
    type Addr = crate::listen::ClientAddr;

    async fn accept(&mut self) -> (C, crate::listen::ClientAddr) {
        loop {
            match self.0.next().await {
                Some(Ok(conn)) => return conn,
                Some(Err(e)) => tracing::debug!(error = %e, "Nacos accept"),
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<crate::listen::ClientAddr> {
        Ok(crate::listen::ClientAddr(None))
    }
}

impl<C: AsyncRead + AsyncWrite + Unpin + Send + 'static>
    axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AddressedAccept<C>>>
    for crate::listen::ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AddressedAccept<C>>) -> Self {
        *stream.remote_addr()
    }
}

/// Runs a node until `shutdown` completes: binds its TCP listeners, opens it, and serves.
pub async fn serve(cfg: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    // Every listener is bound before anything is written to the data directory: a start
    // that fails on a taken port leaves no half-initialised member behind (whose next start
    // would silently keep the first attempt's flags).
    let listeners = Listeners::bind(&cfg)?;
    let core = open(&cfg).await?;
    serve_on(core, listeners, shutdown).await
}

/// Serves `core` on `listeners` until `shutdown` completes or a server task fails: every
/// face, and every member's background work. Then stops the servers (open streams get a
/// grace period), Raft, and makes the store durable.
pub async fn serve_on<C>(
    core: Arc<Core>,
    listeners: Listeners<C>,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()>
where
    C: AsyncRead + AsyncWrite + Connected + Unpin + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut spawn =
        |name: &'static str, task: Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>| {
            tasks.spawn(async move { task.await.with_context(|| name) });
        };

    // One NATS hub per member: its NATS listeners share it, and peers' routes reach it
    // (a member without NATS listeners has no subscribers, but answers its peers' routes).
    let nats = face::nats::Hub::new(core.clone(), core.config.nats_limits.clone());
    for incoming in listeners.client {
        spawn(
            "etcd face",
            Box::pin(face::etcd::serve(
                core.clone(),
                incoming,
                stop_rx.clone(),
                crate::http::router(core.clone()),
            )),
        );
    }
    for incoming in listeners.peer {
        let incoming = incoming.map(|conn| conn.map(CoalescedWrites::new));
        let mut stop = stop_rx.clone();
        let server = crate::listen::grpc_server(&core.config).add_routes(peer_router(&core, &nats));
        spawn(
            "peer server",
            Box::pin(async move {
                server
                    .serve_with_incoming_shutdown(incoming, async move {
                        let _ = stop.changed().await;
                    })
                    .await
                    .map_err(anyhow::Error::from)
            }),
        );
    }
    // The NATS hub's /varz and /connz go on the HTTP listeners when NATS is served.
    let serves_nats = !listeners.nats.is_empty();
    for incoming in listeners.http {
        let mut stop = stop_rx.clone();
        let mut app = crate::http::router(core.clone())
            .merge(face::etcd::http_routes())
            .merge(face::api::routes(core.clone()))
            .merge(face::consul::routes(core.clone()))
            .merge(face::apisix::routes(core.clone()));
        if serves_nats {
            app = app.merge(face::nats::monitor::routes(nats.clone()));
        }
        let app = app.into_make_service_with_connect_info::<crate::listen::ClientAddr>();
        spawn(
            "HTTP server",
            Box::pin(async move {
                axum::serve(AddressedAccept(incoming), app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await
                    .map_err(anyhow::Error::from)
            }),
        );
    }
    for incoming in listeners.nacos {
        let mut stop = stop_rx.clone();
        let app = face::nacos::routes(core.clone())
            .into_make_service_with_connect_info::<crate::listen::ClientAddr>();
        spawn(
            "Nacos server",
            Box::pin(async move {
                axum::serve(AddressedAccept(incoming), app)
                    .with_graceful_shutdown(async move {
                        let _ = stop.changed().await;
                    })
                    .await
                    .map_err(anyhow::Error::from)
            }),
        );
    }
    for incoming in listeners.nacos_grpc {
        spawn(
            "Nacos gRPC server",
            Box::pin(face::nacos::grpc::serve(
                core.clone(),
                incoming,
                stop_rx.clone(),
            )),
        );
    }
    for (local, tls, incoming) in listeners.nats {
        spawn(
            "NATS server",
            Box::pin(face::nats::serve(
                nats.clone(),
                local,
                tls,
                incoming,
                stop_rx.clone(),
            )),
        );
    }
    if serves_nats {
        let (hub, stop) = (nats.clone(), stop_rx.clone());
        spawn(
            "NATS routes",
            Box::pin(async move {
                face::nats::route::run(hub, stop).await;
                Ok(())
            }),
        );
        let (hub, stop) = (nats.clone(), stop_rx.clone());
        spawn(
            "JetStream in the cluster",
            Box::pin(async move {
                hub.run_jetstream_cluster(stop).await;
                Ok(())
            }),
        );
    }
    let access_log = match (
        &core.config.gateway_access_log,
        listeners.gateway.is_empty(),
    ) {
        (Some(settings), false) => Some(crate::gateway::access_log::AccessLog::start(settings)?),
        _ => None,
    };
    if let Some(log) = &access_log {
        core.metrics.watch_access_log(log.clone());
    }
    for (https, incoming) in listeners.gateway {
        let tls = https.then(|| crate::gateway::sni::server_config(core.gateway.clone()));
        spawn(
            "gateway server",
            Box::pin(crate::gateway::proxy::serve(
                core.clone(),
                incoming,
                tls,
                access_log.clone(),
                stop_rx.clone(),
            )),
        );
    }
    let (gateway, registry, metrics, stop) = (
        core.gateway.clone(),
        core.registry.clone(),
        core.metrics.clone(),
        stop_rx.clone(),
    );
    // What verifies https health probes and gateway nodes: the system's roots and
    // --check-ca-file's.
    let roots = core
        .registry
        .check_roots(core.config.check_ca_file.as_deref());
    spawn(
        "gateway snapshot",
        Box::pin(async move {
            gateway.run(registry, metrics, roots, stop).await;
            Ok(())
        }),
    );
    for sockets in listeners.dns {
        spawn(
            "DNS server",
            Box::pin(face::dns::serve(core.clone(), sockets, stop_rx.clone())),
        );
    }
    let registry = core.registry.clone();
    let stop = stop_rx.clone();
    spawn(
        "registry view",
        Box::pin(async move {
            registry.run(stop).await;
            Ok(())
        }),
    );
    let (presence_core, stop) = (core.clone(), stop_rx.clone());
    spawn(
        "presence",
        Box::pin(async move {
            crate::registry::presence::run(presence_core, stop).await;
            Ok(())
        }),
    );
    let (runner_core, stop) = (core.clone(), stop_rx.clone());
    spawn(
        "check runner",
        Box::pin(async move {
            crate::registry::runner::run(runner_core, stop).await;
            Ok(())
        }),
    );
    let (config_center, stop) = (core.config_center.clone(), stop_rx.clone());
    spawn(
        "config view",
        Box::pin(async move {
            config_center.run(stop).await;
            Ok(())
        }),
    );
    let (trimmer_core, stop) = (core.clone(), stop_rx.clone());
    spawn(
        "config history housekeeping",
        Box::pin(async move {
            crate::config_center::trimmer::run(trimmer_core, stop).await;
            Ok(())
        }),
    );
    let (reaper_core, stop) = (core.clone(), stop_rx.clone());
    spawn(
        "registry housekeeping",
        Box::pin(async move {
            crate::registry::reaper::run(reaper_core, stop).await;
            Ok(())
        }),
    );
    let leases = core.leases.clone();
    let stop = stop_rx.clone();
    spawn(
        "lease expiry",
        Box::pin(async move {
            leases.run_expiry(stop).await;
            Ok(())
        }),
    );
    let (store, io, stop) = (core.store.clone(), core.storage_io, stop_rx.clone());
    spawn(
        "store flush",
        Box::pin(async move {
            crate::store_flush::run(store, io, stop).await;
            Ok(())
        }),
    );
    if let Some(retention) = core.config.auto_compaction {
        let (core, stop) = (core.clone(), stop_rx.clone());
        spawn(
            "auto-compaction",
            Box::pin(async move {
                crate::compaction::run(core, retention, stop).await;
                Ok(())
            }),
        );
    }
    // Every member watches its own disk, also one that takes no client writes: its log and
    // state machine grow with everyone's writes.
    let watched = core.clone();
    let mut stop = stop_rx.clone();
    spawn(
        "disk watch",
        Box::pin(async move {
            let mut tick = tokio::time::interval(SPACE_TICK);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return Ok(()),
                }
                // The same check every write makes (the alarm's proposal runs on a task of
                // its own, so stopping here does not cancel it).
                tokio::select! {
                    _ = watched.out_of_space() => {}
                    _ = stop.changed() => return Ok(()),
                }
            }
        }),
    );
    let consensus = core.consensus.clone();
    let mut stop = stop_rx.clone();
    spawn(
        "raft watch",
        Box::pin(async move {
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
        }),
    );
    tracing::info!(
        name = %core.member.name,
        member_id = format_args!("{:x}", core.member.id),
        cluster_id = format_args!("{:x}", core.member.cluster_id),
        revision = core.store.revision(),
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
    core.consensus.shutdown().await;
    // Make everything the state machine applied durable before exiting.
    if let Err(e) = core.store.flush() {
        tracing::warn!(error = %e, "flushing the store at shutdown");
    }
    tracing::info!("stopped");
    Ok(())
}
