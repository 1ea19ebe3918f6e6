//! A berth node: configuration, bootstrap, the etcd v3 gRPC services, the write path, and the
//! HTTP listener for metrics and health.
//!
//! # Layout
//! - [`config`]: flags, environment and TOML file, layered.
//! - [`member`]: member and cluster identity.
//! - [`durable_file`]: small files replaced atomically and durably.
//! - [`consensus`]: the one write path every face uses (the meta group's Raft), with
//!   protocol-neutral errors; [`meta_group`]: the store as that group's state.
//! - [`stream_group`]: a replicated stream as its own Raft group's state.
//! - [`gateway`]: the gateway's routing snapshot, its writes, and its data plane.
//! - [`lease`]: the lease domain (grant, renewal at the leader, TTL, expiry by role).
//! - [`compaction`]: auto-compaction by the leader (etcd's periodic and revision modes).
//! - [`store_flush`]: the applied state made durable every second.
//! - [`core`]: what every face and domain shares.
//! - [`face`]: the protocols berth speaks, one folder each (`face/etcd`: the etcd v3 API,
//!   its errors and its `:authority` repair); no face imports another.
//! - [`metrics`]: Prometheus metrics and the gRPC metrics layer.
//! - [`space`]: the quota, the disk's reserve and the NOSPACE alarm.
//! - [`http`]: berth's own HTTP endpoints: `/metrics`, `/health`, `/livez`.
//! - [`tls`]: TLS of the listeners and peer connections (etcd's flags), and
//!   [`tls::client_common_name`] for request handlers.
//! - [`listen`]: the listeners' settings (keepalive, handshake bound) and axum's adapter.
//! - [`node`]: the one wiring point: opens the core, binds listeners, `serve_on` runs every
//!   face and background task, and shuts down in order.

pub mod applied_mark;
pub mod auth;
pub mod compaction;
pub mod config;
pub mod config_center;
pub mod consensus;
pub mod core;
pub mod durable_file;
pub mod face;
pub mod gateway;
pub mod http;
pub mod lease;
pub mod listen;
pub mod member;
pub mod meta_group;
pub mod metrics;
pub mod node;
pub mod registry;
pub mod space;
pub mod store_flush;
pub mod stream_group;
pub mod tls;

use tracing_subscriber::EnvFilter;

/// Starts a node from command-line arguments and runs it until SIGINT or SIGTERM.
pub fn run_from_args(args: config::ServerArgs) -> anyhow::Result<()> {
    let cfg = config::Config::resolve(args)?;
    let filter = EnvFilter::try_new(&cfg.log_level)
        .map_err(|e| anyhow::anyhow!("--log-level {:?}: {e}", cfg.log_level))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cfg.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("berth")
        .build()?;
    let result = runtime.block_on(node::serve(cfg, shutdown_signal()));
    // Blocking work still running (a snapshot being written) must not hold up the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
