//! `berth bench <workload>`: load generation against `--endpoints` (berth or etcd) over the
//! etcd v3 API; dials `--conns` connections, runs the workload from `berth-bench`, prints text
//! or, with `-w json`, one JSON object with throughput and latency percentiles.

use std::io::{self, Write};
use std::time::Duration;

use anyhow::{bail, Result};
use berth_bench::{Config, Consistency, KeyOrder, Report, Stop, Workload};
use serde_json::Value;

use super::output::Render;
use super::{parse_duration, Ctx};

/// The writer's rate for `watch` when `--rate` is left at 0: an unlimited writer would fan
/// out more events than the client can take in.
const WATCH_DEFAULT_RATE: u64 = 100;

/// `berth bench <workload>`.
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    /// Puts of --val-size bytes to keys from the keyspace.
    Put(CommonArgs),
    /// Single-key range reads (the keyspace is written once first).
    Range(RangeArgs),
    /// Compare-and-swap: read a key's mod revision, then a txn that puts if it is unchanged.
    Txn(CommonArgs),
    /// Reads and puts mixed at random (--read-ratio).
    Mixed(MixedArgs),
    /// Watchers on one key (or the prefix) and one writer at --rate (0 means 100/s);
    /// measures event delivery delay (receive time - send time embedded in the value).
    Watch(WatchArgs),
    /// Keep-alive storm: every client renews its share of --leases leases as fast as it can.
    LeaseKeepalive(LeaseArgs),
    /// Consul API: every request registers a new instance (TTL check) of one of --services.
    ConsulRegister(ConsulRegisterArgs),
    /// Consul API: TTL check passes over --instances instances registered first.
    ConsulHeartbeat(ConsulHeartbeatArgs),
    /// Consul API: `/v1/health/service/<s>?passing` over --services services with
    /// --instances instances registered first.
    ConsulDiscover(ConsulDiscoverArgs),
    /// Consul API: --watchers blocking queries on one service (and --others on other
    /// services); --changes changes of one instance; reports change-to-answer delay.
    ConsulWatch(ConsulWatchArgs),
    /// Nacos v1: every request publishes one of --items configs anew.
    NacosPublish(NacosItemsArgs),
    /// Nacos v1: reads of one of --items configs published first.
    NacosGet(NacosItemsArgs),
    /// Nacos 2.x gRPC (the Nacos port + 1000): every request registers an instance of a new
    /// service over connections set up as clients do.
    NacosRegister(NacosArgs),
    /// Nacos v1: beats over --instances ephemeral instances registered first.
    NacosBeat(NacosBeatArgs),
    /// Nacos v1: --listeners long polls on one config, which changes --changes times;
    /// reports publish-to-answer delay.
    NacosListen(NacosListenArgs),
    /// NATS: --clients publishers flood one subject that --subscribers connections
    /// subscribe to; reports deliveries per second and publish-to-delivery delay. Speaks the
    /// protocol itself, so it measures nats-server the same way.
    NatsPubsub(NatsPubSubArgs),
    /// JetStream: --clients publishers store messages in a fresh stream `BENCH` (subject
    /// `bench.js`), each with up to --window publishes awaiting their acknowledgements;
    /// reports acknowledged publishes per second and publish-to-ack delay. Measures
    /// nats-server the same way.
    JsPublish(JsPublishArgs),
    /// JetStream: --messages are stored in a fresh stream `BENCH` first, then --clients pull
    /// from one durable consumer with explicit acks in batches of --batch, acking each;
    /// reports acked messages per second and pull-to-message delay.
    JsConsume(JsConsumeArgs),
}

/// Arguments of `bench js-consume`.
#[derive(clap::Args, Debug, Clone)]
pub struct JsConsumeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// `host:port` of the NATS listener.
    #[arg(long = "nats-addr", default_value = "127.0.0.1:4222")]
    nats_addr: String,
    /// Messages stored before the measured phase (enough to last --duration).
    #[arg(long, default_value_t = 1_000_000)]
    messages: u64,
    /// Messages per pull request.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// The stream's replicas (1, 3 or 5: a cluster's members keep that many copies).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
}

/// Arguments of `bench js-publish`.
#[derive(clap::Args, Debug, Clone)]
pub struct JsPublishArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// `host:port` of the NATS listener.
    #[arg(long = "nats-addr", default_value = "127.0.0.1:4222")]
    nats_addr: String,
    /// Publishes in flight per client (1: each acknowledgement awaited).
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// The stream's replicas (1, 3 or 5: a cluster's members keep that many copies).
    #[arg(long, default_value_t = 1)]
    replicas: u32,
}

/// Arguments of `bench nats-pubsub`.
#[derive(clap::Args, Debug, Clone)]
pub struct NatsPubSubArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// `host:port` of the NATS listener.
    #[arg(long = "nats-addr", default_value = "127.0.0.1:4222")]
    nats_addr: String,
    /// `host:port` the subscribers connect to (default: --nats-addr): another member of the
    /// cluster measures messages crossing it.
    #[arg(long = "nats-sub-addr")]
    nats_sub_addr: Option<String>,
    /// Subscribing connections.
    #[arg(long, default_value_t = 1)]
    subscribers: u64,
    /// Subscribe as one queue group (each message goes to one subscriber).
    #[arg(long)]
    queue: bool,
}

/// Where the Nacos workloads send their requests.
#[derive(clap::Args, Debug, Clone)]
pub struct NacosTarget {
    /// `host:port` of the Nacos HTTP API (gRPC is its port + 1000).
    #[arg(long = "nacos-addr", default_value = "127.0.0.1:8848")]
    nacos_addr: String,
}

/// Arguments of `bench nacos-register`.
#[derive(clap::Args, Debug, Clone)]
pub struct NacosArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: NacosTarget,
}

/// Arguments of `bench nacos-publish` and `nacos-get`.
#[derive(clap::Args, Debug, Clone)]
pub struct NacosItemsArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: NacosTarget,
    /// Configs (data IDs) the requests are spread over.
    #[arg(long, default_value_t = 1000)]
    items: u64,
}

/// Arguments of `bench nacos-beat`.
#[derive(clap::Args, Debug, Clone)]
pub struct NacosBeatArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: NacosTarget,
    /// Ephemeral instances registered before the run.
    #[arg(long, default_value_t = 1000)]
    instances: u64,
}

/// Arguments of `bench nacos-listen`.
#[derive(clap::Args, Debug, Clone)]
pub struct NacosListenArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: NacosTarget,
    /// Long polls on the listened config (one connection each).
    #[arg(long, default_value_t = 1000)]
    listeners: u64,
    /// Changes of the config, one after another.
    #[arg(long, default_value_t = 5)]
    changes: u64,
    /// Listen as Nacos 2.x clients do instead: one gRPC connection per listener, told of a
    /// change by a pushed `ConfigChangeNotifyRequest` (latency: publish → push).
    #[arg(long)]
    grpc: bool,
}

/// Where the Consul workloads send their requests.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsulTarget {
    /// `host:port` of the HTTP listener serving the Consul API.
    #[arg(long = "consul-addr", default_value = "127.0.0.1:8500")]
    consul_addr: String,
}

/// Arguments of `bench consul-register`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsulRegisterArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: ConsulTarget,
    /// Services the new instances are spread over.
    #[arg(long, default_value_t = 100)]
    services: u64,
}

/// Arguments of `bench consul-heartbeat`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsulHeartbeatArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: ConsulTarget,
    /// Instances registered (passing TTL checks) before the run.
    #[arg(long, default_value_t = 1000)]
    instances: u64,
}

/// Arguments of `bench consul-discover`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsulDiscoverArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: ConsulTarget,
    /// Services.
    #[arg(long, default_value_t = 100)]
    services: u64,
    /// Instances registered over them before the run.
    #[arg(long, default_value_t = 1000)]
    instances: u64,
    /// Read the member's view (`?stale`) instead of a consistent read.
    #[arg(long)]
    stale: bool,
}

/// Arguments of `bench consul-watch`.
#[derive(clap::Args, Debug, Clone)]
pub struct ConsulWatchArgs {
    #[command(flatten)]
    common: CommonArgs,
    #[command(flatten)]
    target: ConsulTarget,
    /// Blocking queries on the watched service (one connection each).
    #[arg(long, default_value_t = 1000)]
    watchers: u64,
    /// Blocking queries on other services, which must not wake.
    #[arg(long, default_value_t = 100)]
    others: u64,
    /// Changes of the watched service, one after another.
    #[arg(long, default_value_t = 5)]
    changes: u64,
    /// Blocking queries read the member's view (`?stale`, as Prometheus asks).
    #[arg(long)]
    stale: bool,
}

/// Parameters every workload takes.
#[derive(clap::Args, Debug, Clone)]
pub struct CommonArgs {
    /// Concurrent requesters, each with one request in flight.
    #[arg(long, default_value_t = 1)]
    pub clients: usize,
    /// gRPC connections, shared round-robin by the clients (and spread over --endpoints).
    #[arg(long, default_value_t = 1)]
    pub conns: usize,
    /// Keyspace size.
    #[arg(long, default_value_t = 10_000)]
    pub key_count: u64,
    /// Key length in bytes, prefix included.
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,
    /// Value length in bytes.
    #[arg(long, default_value_t = 256)]
    pub val_size: usize,
    /// Prefix of every key.
    #[arg(long, default_value = "bench/")]
    pub key_prefix: String,
    /// Choose keys 0, 1, 2, … (shared by all clients) instead of uniformly at random.
    #[arg(long)]
    pub sequential_keys: bool,
    /// How long to measure (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_duration, conflicts_with = "total")]
    pub duration: Duration,
    /// Stop after this many requests instead of after --duration.
    #[arg(long)]
    pub total: Option<u64>,
    /// Total request rate limit in operations per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Unmeasured run time before measuring starts (e.g. 1s).
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Do not write the keyspace before reading workloads (range, txn, mixed).
    #[arg(long)]
    pub no_prefill: bool,
    /// Seed for key choice and read/write mixing.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
}

/// Read consistency (`l` linearizable, `s` serializable).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ConsistencyArg {
    /// Linearizable.
    L,
    /// Serializable.
    S,
}

impl From<ConsistencyArg> for Consistency {
    fn from(c: ConsistencyArg) -> Self {
        match c {
            ConsistencyArg::L => Consistency::Linearizable,
            ConsistencyArg::S => Consistency::Serializable,
        }
    }
}

/// Arguments of `bench range`.
#[derive(clap::Args, Debug, Clone)]
pub struct RangeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Read consistency: l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    consistency: ConsistencyArg,
}

/// Arguments of `bench mixed`.
#[derive(clap::Args, Debug, Clone)]
pub struct MixedArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Fraction of operations that are reads.
    #[arg(long, default_value_t = 0.9)]
    read_ratio: f64,
    /// Read consistency: l (linearizable) or s (serializable).
    #[arg(long, value_enum, default_value = "l")]
    consistency: ConsistencyArg,
}

/// Arguments of `bench watch`.
#[derive(clap::Args, Debug, Clone)]
pub struct WatchArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Number of watchers.
    #[arg(long, default_value_t = 1000)]
    watchers: u64,
    /// Watch streams the watchers are spread over (default: one per connection).
    #[arg(long)]
    streams: Option<usize>,
    /// Watch the whole key prefix and write random keys under it, instead of one key.
    #[arg(long)]
    watch_prefix: bool,
}

/// Arguments of `bench lease-keepalive`.
#[derive(clap::Args, Debug, Clone)]
pub struct LeaseArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Number of leases granted before the storm.
    #[arg(long, default_value_t = 1000)]
    leases: u64,
    /// Lease TTL in seconds.
    #[arg(long, default_value_t = 60)]
    lease_ttl: i64,
}

impl BenchCommand {
    /// The benchmark configuration these arguments describe; `timeout` bounds each request.
    pub fn config(&self, timeout: Duration) -> Config {
        let (common, workload) = match self {
            Self::Put(c) => (c, Workload::Put),
            Self::Txn(c) => (c, Workload::Txn),
            Self::Range(a) => (
                &a.common,
                Workload::Range {
                    consistency: a.consistency.into(),
                },
            ),
            Self::Mixed(a) => (
                &a.common,
                Workload::Mixed {
                    read_ratio: a.read_ratio,
                    consistency: a.consistency.into(),
                },
            ),
            Self::Watch(a) => (
                &a.common,
                Workload::Watch {
                    watchers: a.watchers,
                    streams: a.streams.unwrap_or(a.common.conns),
                    prefix: a.watch_prefix,
                },
            ),
            Self::LeaseKeepalive(a) => (
                &a.common,
                Workload::LeaseKeepalive {
                    leases: a.leases,
                    ttl: a.lease_ttl,
                },
            ),
            Self::ConsulRegister(a) => (
                &a.common,
                Workload::ConsulRegister {
                    services: a.services,
                },
            ),
            Self::ConsulHeartbeat(a) => (
                &a.common,
                Workload::ConsulHeartbeat {
                    instances: a.instances,
                },
            ),
            Self::ConsulDiscover(a) => (
                &a.common,
                Workload::ConsulDiscover {
                    services: a.services,
                    instances: a.instances,
                    stale: a.stale,
                },
            ),
            Self::ConsulWatch(a) => (
                &a.common,
                Workload::ConsulWatch {
                    watchers: a.watchers,
                    others: a.others,
                    changes: a.changes,
                    stale: a.stale,
                },
            ),
            Self::NacosPublish(a) => (&a.common, Workload::NacosPublish { items: a.items }),
            Self::NacosGet(a) => (&a.common, Workload::NacosGet { items: a.items }),
            Self::NacosRegister(a) => (&a.common, Workload::NacosRegister),
            Self::NacosBeat(a) => (
                &a.common,
                Workload::NacosBeat {
                    instances: a.instances,
                },
            ),
            Self::NacosListen(a) => (
                &a.common,
                Workload::NacosListen {
                    listeners: a.listeners,
                    changes: a.changes,
                    grpc: a.grpc,
                },
            ),
            Self::NatsPubsub(a) => (
                &a.common,
                Workload::NatsPubSub {
                    subscribers: a.subscribers,
                    queue: a.queue,
                    sub_addr: a.nats_sub_addr.clone(),
                },
            ),
            Self::JsPublish(a) => (
                &a.common,
                Workload::JsPublish {
                    window: a.window,
                    replicas: a.replicas,
                },
            ),
            Self::JsConsume(a) => (
                &a.common,
                Workload::JsConsume {
                    messages: a.messages,
                    batch: a.batch,
                    replicas: a.replicas,
                },
            ),
        };
        let http_addr = match self {
            Self::NacosPublish(a) | Self::NacosGet(a) => a.target.nacos_addr.clone(),
            Self::NacosRegister(a) => a.target.nacos_addr.clone(),
            Self::NacosBeat(a) => a.target.nacos_addr.clone(),
            Self::NacosListen(a) => a.target.nacos_addr.clone(),
            Self::ConsulRegister(a) => a.target.consul_addr.clone(),
            Self::ConsulHeartbeat(a) => a.target.consul_addr.clone(),
            Self::ConsulDiscover(a) => a.target.consul_addr.clone(),
            Self::ConsulWatch(a) => a.target.consul_addr.clone(),
            Self::NatsPubsub(a) => a.nats_addr.clone(),
            Self::JsPublish(a) => a.nats_addr.clone(),
            Self::JsConsume(a) => a.nats_addr.clone(),
            _ => Config::default().http_addr,
        };
        let rate = match (&workload, common.rate) {
            (Workload::Watch { .. }, 0) => WATCH_DEFAULT_RATE,
            (_, r) => r,
        };
        Config {
            workload,
            clients: common.clients,
            conns: common.conns,
            key_count: common.key_count,
            key_size: common.key_size,
            val_size: common.val_size,
            key_prefix: common.key_prefix.clone(),
            key_order: if common.sequential_keys {
                KeyOrder::Sequential
            } else {
                KeyOrder::Uniform
            },
            stop: common
                .total
                .map_or(Stop::After(common.duration), Stop::Total),
            rate,
            warmup: common.warmup,
            timeout,
            give_up_after: berth_bench::config::GIVE_UP_AFTER,
            prefill: !common.no_prefill,
            seed: common.seed,
            http_addr,
            nats_user: None,
        }
    }
}

/// Runs one benchmark and prints its report.
/// `--command-timeout` bounds each request: a slower one counts as an error.
pub async fn run(ctx: &mut Ctx, cmd: BenchCommand) -> Result<()> {
    let mut cfg = cmd.config(ctx.conn.command_timeout());
    cfg.validate()?;
    // The NATS workloads log in as the global --user, as the messaging commands do.
    cfg.nats_user = ctx.conn.user().cloned();
    if cfg.workload.is_consul() || cfg.workload.is_nacos() || cfg.workload.is_nats() {
        // The registry and Nacos families speak their own protocols to --consul-addr or
        // --nacos-addr: no etcd connection.
        let report = berth_bench::run(cfg, Vec::new()).await?;
        return ctx.out.print(&report);
    }
    let endpoints = ctx.conn.endpoints().to_vec();
    if endpoints.is_empty() {
        bail!("no endpoints given");
    }
    let mut channels = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        // One channel is one HTTP/2 connection; spread them over the endpoints.
        channels.push(ctx.conn.channel_to(&endpoints[i % endpoints.len()]).await?);
    }
    let report = berth_bench::run(cfg, channels).await?;
    ctx.out.print(&report)
}

/// The report as text for people, or one JSON object (no table: the text).
impl Render for Report {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.to_text().trim_end())
    }

    fn json(&self) -> Value {
        self.to_json()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Command, TestCli};
    use clap::Parser;

    fn config(args: &[&str]) -> Option<Config> {
        let cli = TestCli::try_parse_from(args).ok()?;
        match cli.cmd {
            Command::Bench(b) => Some(b.config(cli.global.command_timeout)),
            _ => None,
        }
    }

    #[test]
    fn parses_the_documented_shape() {
        let c = config(&[
            "berth",
            "bench",
            "put",
            "--endpoints",
            "127.0.0.1:2379",
            "--clients",
            "64",
            "--conns",
            "8",
            "--duration",
            "10s",
            "-w",
            "json",
        ])
        .expect("parses");
        assert_eq!(c.workload, Workload::Put);
        assert_eq!((c.clients, c.conns), (64, 8));
        assert_eq!(c.stop, Stop::After(Duration::from_secs(10)));
        assert_eq!(c.timeout, Duration::from_secs(5));
    }

    #[test]
    fn workload_flags_reach_the_config() {
        let c = config(&["berth", "bench", "range", "--consistency", "s"]).expect("range");
        assert_eq!(
            c.workload,
            Workload::Range {
                consistency: Consistency::Serializable
            }
        );
        let c = config(&["berth", "bench", "mixed", "--read-ratio", "0.5"]).expect("mixed");
        assert_eq!(
            c.workload,
            Workload::Mixed {
                read_ratio: 0.5,
                consistency: Consistency::Linearizable
            }
        );
        let c = config(&[
            "berth",
            "bench",
            "watch",
            "--conns",
            "4",
            "--watchers",
            "10",
        ])
        .expect("watch");
        assert_eq!(
            c.workload,
            Workload::Watch {
                watchers: 10,
                streams: 4,
                prefix: false
            }
        );
        assert_eq!(c.rate, WATCH_DEFAULT_RATE);
        let c = config(&[
            "berth",
            "bench",
            "put",
            "--total",
            "100",
            "--sequential-keys",
            "--key-count",
            "100",
        ])
        .expect("put");
        assert_eq!(c.stop, Stop::Total(100));
        assert_eq!(c.key_order, KeyOrder::Sequential);
        let c = config(&["berth", "bench", "lease-keepalive", "--leases", "5"]).expect("lease");
        assert_eq!(c.workload, Workload::LeaseKeepalive { leases: 5, ttl: 60 });
    }

    #[test]
    fn duration_and_total_conflict() {
        assert!(config(&["berth", "bench", "put", "--duration", "1s", "--total", "5"]).is_none());
    }
}
