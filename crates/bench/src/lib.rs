//! `berth bench`: a load generator speaking the etcd v3 gRPC API, so the same binary measures
//! berth and etcd; it reports throughput and latency percentiles as text or JSON.
//!
//! # Layout
//! - [`config`]: what to run ([`Config`], [`Workload`]) and its validation.
//! - [`keys`]: the keyspace, uniform or sequential key choice ([`KeyOrder`]), values and watch
//!   timestamps.
//! - [`pace`]: the shared `--rate` schedule.
//! - [`driver`]: the closed-loop client loop every request/response workload runs on.
//! - [`report`]: latency histograms (microsecond precision) and the text/JSON [`Report`].
//! - [`workload`]: one file per family: `kv` (put, range, txn, mixed), `watch`, `lease`.
//!
//! The caller dials the gRPC connections (`--conns`) and hands them to [`run`]; clients share
//! them round-robin. Failed requests are counted by kind and reported, never fatal: only setup
//! (prefill, creating watchers, granting leases) failing aborts a run, or an endpoint that stays
//! unavailable for [`Config::give_up_after`] (clients retry it with backoff until then).

pub mod config;
pub mod driver;
pub mod http;
pub mod keys;
pub mod pace;
pub mod report;
pub mod workload;

use berth_proto::client::Transport;

pub use config::{Config, Consistency, Stop, Workload};
pub use keys::KeyOrder;
pub use report::Report;

/// Why a benchmark could not run (request failures during the run are counted, not errors).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The parameters do not describe a runnable benchmark.
    #[error("invalid benchmark parameters: {0}")]
    Config(String),
    /// Preparing the run (prefill, watchers, leases) failed.
    #[error("{what}: {message}")]
    Setup {
        /// The setup step that failed.
        what: &'static str,
        /// The server's or transport's message.
        message: String,
    },
    /// A client's requests all failed as unavailable for longer than the run allows.
    #[error("no request succeeded for {:.1}s, the endpoint looks down: {last}", after.as_secs_f64())]
    Unreachable {
        /// How long the client kept failing.
        after: std::time::Duration,
        /// The last error it saw.
        last: String,
    },
    /// A latency histogram could not be created.
    #[error("latency histogram: {0}")]
    Histogram(String),
}

impl BenchError {
    /// A setup failure caused by a gRPC status.
    pub(crate) fn setup(what: &'static str, status: &tonic::Status) -> Self {
        Self::Setup {
            what,
            message: report::status_label(status),
        }
    }
}

/// Runs one benchmark over already-dialed connections (client `i` uses `channels[i % len]`).
pub async fn run(cfg: Config, channels: Vec<Transport>) -> Result<Report, BenchError> {
    cfg.validate()?;
    if cfg.workload.is_consul() {
        return workload::consul::run(&cfg).await;
    }
    if cfg.workload.is_nacos() {
        return workload::nacos::run(&cfg).await;
    }
    if let Workload::JsPublish { .. } = cfg.workload {
        return workload::jetstream::run(&cfg).await;
    }
    if let Workload::JsConsume { .. } = cfg.workload {
        return workload::jetstream::consume(&cfg).await;
    }
    if cfg.workload.is_nats() {
        return workload::nats::run(&cfg).await;
    }
    if channels.is_empty() {
        return Err(BenchError::Config("no connections".into()));
    }
    match cfg.workload {
        Workload::Watch { .. } => workload::watch::run(&cfg, &channels).await,
        Workload::LeaseKeepalive { .. } => workload::lease::run(&cfg, &channels).await,
        Workload::Put | Workload::Range { .. } | Workload::Txn | Workload::Mixed { .. } => {
            workload::kv::run(&cfg, &channels).await
        }
        Workload::ConsulRegister { .. }
        | Workload::ConsulHeartbeat { .. }
        | Workload::ConsulDiscover { .. }
        | Workload::ConsulWatch { .. } => workload::consul::run(&cfg).await,
        Workload::NacosPublish { .. }
        | Workload::NacosGet { .. }
        | Workload::NacosRegister
        | Workload::NacosBeat { .. }
        | Workload::NacosListen { .. } => workload::nacos::run(&cfg).await,
        Workload::NatsPubSub { .. } => workload::nats::run(&cfg).await,
        Workload::JsPublish { .. } => workload::jetstream::run(&cfg).await,
        Workload::JsConsume { .. } => workload::jetstream::consume(&cfg).await,
    }
}
