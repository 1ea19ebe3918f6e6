//! What a benchmark run does: the workload, its parameters, how it stops, and the checks that
//! reject parameters which cannot describe a run before any connection is made.

use std::time::Duration;

use serde_json::{json, Value};

use crate::keys::{KeyOrder, KeySpace};
use crate::BenchError;

/// Read consistency for range requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consistency {
    /// Linearizable (etcd's default): the read goes through consensus.
    Linearizable,
    /// Serializable: served from the local member's state.
    Serializable,
}

impl Consistency {
    /// `l` or `s`, as etcd's benchmark tool writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Linearizable => "l",
            Self::Serializable => "s",
        }
    }
}

/// When the measured phase ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// After this long (in-flight requests still complete and count).
    After(Duration),
    /// After this many requests.
    Total(u64),
}

/// The workload and its own parameters.
#[derive(Debug, Clone, PartialEq)]
pub enum Workload {
    /// Puts of `val_size` bytes.
    Put,
    /// Single-key ranges.
    Range {
        /// Linearizable or serializable reads.
        consistency: Consistency,
    },
    /// Compare-and-swap: read the key's mod revision, then a txn that puts if it is unchanged.
    Txn,
    /// Reads and puts mixed at random.
    Mixed {
        /// Fraction of operations that are reads, in `[0, 1]`.
        read_ratio: f64,
        /// Consistency of the reads.
        consistency: Consistency,
    },
    /// Watchers on one key (or the key prefix) and one writer; measures event delivery delay.
    Watch {
        /// Number of watchers in total.
        watchers: u64,
        /// Number of watch streams the watchers are spread over (round-robin over connections).
        streams: usize,
        /// Watch the whole key prefix and write random keys, instead of one key.
        prefix: bool,
    },
    /// Keep-alive storm over a set of leases.
    LeaseKeepalive {
        /// Number of leases granted before the run.
        leases: u64,
        /// Their TTL in seconds.
        ttl: i64,
    },
    /// Consul: every request registers a new instance of one of `services` services.
    ConsulRegister {
        /// Services the instances are spread over.
        services: u64,
    },
    /// Consul: TTL check passes over `instances` registered instances.
    ConsulHeartbeat {
        /// Instances registered (with passing TTL checks) before the run.
        instances: u64,
    },
    /// Consul: `?passing` health queries over `services` services.
    ConsulDiscover {
        /// Services.
        services: u64,
        /// Instances registered over them before the run.
        instances: u64,
        /// Read the member's view (`?stale`) instead of a linearizable one.
        stale: bool,
    },
    /// Nacos: every request publishes one of `items` configs anew.
    NacosPublish {
        /// Configs the publishes are spread over.
        items: u64,
    },
    /// Nacos: reads of one of `items` configs published first.
    NacosGet {
        /// Configs published before the run.
        items: u64,
    },
    /// Nacos 2.x gRPC: every request registers an instance of a new service.
    NacosRegister,
    /// Nacos v1: beats over `instances` ephemeral instances registered first.
    NacosBeat {
        /// Instances registered before the run.
        instances: u64,
    },
    /// Nacos: `listeners` listeners of one config that changes `changes` times: v1 long
    /// polls, or Nacos 2.x gRPC connections told by a push.
    NacosListen {
        /// Listeners.
        listeners: u64,
        /// Changes, one after another.
        changes: u64,
        /// gRPC connections (pushes) rather than v1 long polls.
        grpc: bool,
    },
    /// NATS: `--clients` publishers flood one subject that `subscribers` connections
    /// subscribe to (each gets every message, or, with `queue`, they share them as one queue
    /// group); measures publish-to-delivery delay.
    NatsPubSub {
        /// Subscribing connections.
        subscribers: u64,
        /// Subscribe as one queue group.
        queue: bool,
        /// Where subscribers connect, when not where publishers do (another member of a
        /// cluster: the messages cross the cluster's routes).
        sub_addr: Option<String>,
    },
    /// JetStream: `--clients` publishers store messages in one stream (`BENCH`, created
    /// fresh), each with up to `window` publishes awaiting their acknowledgements (1: each
    /// acknowledgement awaited before the next publish); measures publish-to-ack delay.
    JsPublish {
        /// Publishes in flight per client.
        window: usize,
        /// The stream's replicas (in a cluster).
        replicas: u32,
    },
    /// JetStream: `messages` are stored in stream `BENCH` first, then `--clients` pull from
    /// one durable consumer (explicit acks) in batches of `batch`, acking every message;
    /// measures consumed (acked) messages per second and the time from pull to message.
    JsConsume {
        /// Messages stored before the measured phase.
        messages: u64,
        /// Messages per pull request.
        batch: u64,
        /// The stream's replicas (in a cluster).
        replicas: u32,
    },
    /// Consul: blocking queries on one service, answered when one of its instances changes.
    ConsulWatch {
        /// Blocking queries on the watched service.
        watchers: u64,
        /// Blocking queries on other services (must not wake).
        others: u64,
        /// Changes made, one after another.
        changes: u64,
        /// Blocking queries read the member's view (`?stale`, as Prometheus asks).
        stale: bool,
    },
}

impl Workload {
    /// The workload's subcommand name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Put => "put",
            Self::Range { .. } => "range",
            Self::Txn => "txn",
            Self::Mixed { .. } => "mixed",
            Self::Watch { .. } => "watch",
            Self::LeaseKeepalive { .. } => "lease-keepalive",
            Self::ConsulRegister { .. } => "consul-register",
            Self::ConsulHeartbeat { .. } => "consul-heartbeat",
            Self::ConsulDiscover { .. } => "consul-discover",
            Self::ConsulWatch { .. } => "consul-watch",
            Self::NacosPublish { .. } => "nacos-publish",
            Self::NacosGet { .. } => "nacos-get",
            Self::NacosRegister => "nacos-register",
            Self::NacosBeat { .. } => "nacos-beat",
            Self::NacosListen { .. } => "nacos-listen",
            Self::NatsPubSub { .. } => "nats-pubsub",
            Self::JsPublish { .. } => "js-publish",
            Self::JsConsume { .. } => "js-consume",
        }
    }

    /// True for the configuration and naming family, which speaks Nacos's APIs.
    pub fn is_nacos(&self) -> bool {
        matches!(
            self,
            Self::NacosPublish { .. }
                | Self::NacosGet { .. }
                | Self::NacosRegister
                | Self::NacosBeat { .. }
                | Self::NacosListen { .. }
        )
    }

    /// True for the messaging family, which speaks NATS's protocol (no gRPC connections).
    pub fn is_nats(&self) -> bool {
        matches!(
            self,
            Self::NatsPubSub { .. } | Self::JsPublish { .. } | Self::JsConsume { .. }
        )
    }

    /// True for the registry family, which speaks Consul's HTTP API (no gRPC connections).
    pub fn is_consul(&self) -> bool {
        matches!(
            self,
            Self::ConsulRegister { .. }
                | Self::ConsulHeartbeat { .. }
                | Self::ConsulDiscover { .. }
                | Self::ConsulWatch { .. }
        )
    }

    /// Whether the keyspace is written once before the run (reads should find keys).
    pub fn wants_prefill(&self) -> bool {
        matches!(self, Self::Range { .. } | Self::Txn | Self::Mixed { .. })
    }
}

/// Default of [`Config::give_up_after`]: long enough to ride out a leader election or a
/// member's restart, short enough that a dead endpoint is reported rather than measured.
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(10);

/// Everything one run needs besides its connections.
#[derive(Debug, Clone)]
pub struct Config {
    /// What to run.
    pub workload: Workload,
    /// Concurrent requesters, each with one request in flight.
    pub clients: usize,
    /// Number of gRPC connections (informational: the caller dials them).
    pub conns: usize,
    /// Keyspace size.
    pub key_count: u64,
    /// Length of each key in bytes, prefix included.
    pub key_size: usize,
    /// Length of each value in bytes.
    pub val_size: usize,
    /// Prefix of every key.
    pub key_prefix: String,
    /// Uniform or sequential key choice.
    pub key_order: KeyOrder,
    /// When the measured phase ends.
    pub stop: Stop,
    /// Total request rate limit in operations per second (0 = unlimited).
    pub rate: u64,
    /// Unmeasured time before measuring starts.
    pub warmup: Duration,
    /// Limit for one request; a request that takes longer counts as an error.
    pub timeout: Duration,
    /// How long a client's requests may keep failing as `Unavailable` (its endpoint down or
    /// without a leader) before the run fails; meanwhile the client retries with backoff.
    pub give_up_after: Duration,
    /// Write every key once before the run, for workloads that read.
    pub prefill: bool,
    /// Seed for key choice and read/write mixing.
    pub seed: u64,
    /// `host:port` of the server the Consul, Nacos and NATS workloads talk to.
    pub http_addr: String,
    /// The NATS workloads' user and password (CONNECT's `user` and `pass`), when given.
    pub nats_user: Option<(String, String)>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workload: Workload::Put,
            clients: 1,
            conns: 1,
            key_count: 10_000,
            key_size: 16,
            val_size: 256,
            key_prefix: "bench/".into(),
            key_order: KeyOrder::Uniform,
            stop: Stop::After(Duration::from_secs(10)),
            rate: 0,
            warmup: Duration::ZERO,
            timeout: Duration::from_secs(5),
            give_up_after: GIVE_UP_AFTER,
            prefill: true,
            seed: 1,
            http_addr: "127.0.0.1:8500".into(),
            nats_user: None,
        }
    }
}

impl Config {
    /// Rejects parameters that cannot describe a run.
    pub fn validate(&self) -> Result<(), BenchError> {
        let bad = |m: String| Err(BenchError::Config(m));
        if self.clients == 0 {
            return bad("--clients must be at least 1".into());
        }
        if self.conns == 0 {
            return bad("--conns must be at least 1".into());
        }
        if self.timeout.is_zero() {
            return bad("the request timeout must be positive".into());
        }
        match self.stop {
            Stop::After(d) if d.is_zero() => return bad("--duration must be positive".into()),
            Stop::Total(0) => return bad("--total must be at least 1".into()),
            _ => {}
        }
        KeySpace::new(&self.key_prefix, self.key_size, self.key_count)?;
        match &self.workload {
            Workload::Mixed { read_ratio, .. } if !(0.0..=1.0).contains(read_ratio) => {
                bad(format!("--read-ratio {read_ratio} is not within [0, 1]"))
            }
            Workload::Watch {
                watchers, streams, ..
            } if *watchers == 0 || *streams == 0 => {
                bad("--watchers and --streams must be at least 1".into())
            }
            Workload::Watch { .. } if self.val_size < crate::keys::STAMP_LEN => bad(format!(
                "watch needs --val-size of at least {} bytes for the send timestamp",
                crate::keys::STAMP_LEN
            )),
            Workload::LeaseKeepalive { leases, ttl } if *leases == 0 || *ttl <= 0 => {
                bad("--leases and --lease-ttl must be at least 1".into())
            }
            Workload::ConsulRegister { services: 0 }
            | Workload::ConsulHeartbeat { instances: 0 }
            | Workload::ConsulWatch { watchers: 0, .. } => {
                bad("--services, --instances and --watchers must be at least 1".into())
            }
            Workload::JsPublish { window: 0, .. } => bad("--window must be at least 1".into()),
            Workload::JsPublish { replicas, .. } | Workload::JsConsume { replicas, .. }
                if !matches!(replicas, 1 | 3 | 5) =>
            {
                bad("--replicas must be 1, 3 or 5".into())
            }
            Workload::JsConsume { messages: 0, .. } | Workload::JsConsume { batch: 0, .. } => {
                bad("--messages and --batch must be at least 1".into())
            }
            Workload::NatsPubSub { subscribers: 0, .. } => {
                bad("--subscribers must be at least 1".into())
            }
            Workload::NatsPubSub { .. } if self.val_size < crate::keys::STAMP_LEN => bad(format!(
                "nats-pubsub needs --val-size of at least {} bytes for the send timestamp",
                crate::keys::STAMP_LEN
            )),
            Workload::NacosPublish { items: 0 }
            | Workload::NacosGet { items: 0 }
            | Workload::NacosBeat { instances: 0 }
            | Workload::NacosListen { listeners: 0, .. } => {
                bad("--items, --instances and --listeners must be at least 1".into())
            }
            Workload::ConsulDiscover {
                services,
                instances,
                ..
            } if *services == 0 || instances < services => {
                bad("consul-discover needs --services >= 1 and --instances >= --services".into())
            }
            _ => Ok(()),
        }
    }

    /// The parameters as JSON, for the report.
    pub fn params(&self) -> Value {
        let mut p = json!({
            "key_count": self.key_count,
            "key_size": self.key_size,
            "val_size": self.val_size,
            "key_order": match self.key_order {
                KeyOrder::Uniform => "uniform",
                KeyOrder::Sequential => "sequential",
            },
            "rate": self.rate,
            "warmup_s": self.warmup.as_secs_f64(),
        });
        match self.stop {
            Stop::After(d) => p["duration_s"] = json!(d.as_secs_f64()),
            Stop::Total(n) => p["total"] = json!(n),
        }
        match &self.workload {
            Workload::Range { consistency } => p["consistency"] = json!(consistency.as_str()),
            Workload::Mixed {
                read_ratio,
                consistency,
            } => {
                p["read_ratio"] = json!(read_ratio);
                p["consistency"] = json!(consistency.as_str());
            }
            Workload::Watch {
                watchers,
                streams,
                prefix,
            } => {
                p["watchers"] = json!(watchers);
                p["streams"] = json!(streams);
                p["watch_prefix"] = json!(prefix);
            }
            Workload::LeaseKeepalive { leases, ttl } => {
                p["leases"] = json!(leases);
                p["lease_ttl"] = json!(ttl);
            }
            Workload::ConsulRegister { services } => p["services"] = json!(services),
            Workload::ConsulHeartbeat { instances } => p["instances"] = json!(instances),
            Workload::ConsulDiscover {
                services,
                instances,
                stale,
            } => {
                p["services"] = json!(services);
                p["instances"] = json!(instances);
                p["stale"] = json!(stale);
            }
            Workload::ConsulWatch {
                watchers,
                others,
                changes,
                stale,
            } => {
                p["watchers"] = json!(watchers);
                p["others"] = json!(others);
                p["changes"] = json!(changes);
                p["stale"] = json!(stale);
            }
            Workload::NacosPublish { items } | Workload::NacosGet { items } => {
                p["items"] = json!(items);
            }
            Workload::NacosBeat { instances } => p["instances"] = json!(instances),
            Workload::NacosListen {
                listeners,
                changes,
                grpc,
            } => {
                p["listeners"] = json!(listeners);
                p["changes"] = json!(changes);
                p["grpc"] = json!(grpc);
            }
            Workload::NatsPubSub {
                subscribers,
                queue,
                sub_addr,
            } => {
                p["subscribers"] = json!(subscribers);
                p["queue"] = json!(queue);
                if let Some(a) = sub_addr {
                    p["sub_addr"] = json!(a);
                }
                p["val_size"] = json!(self.val_size);
            }
            Workload::JsPublish { window, replicas } => {
                p["window"] = json!(window);
                p["replicas"] = json!(replicas);
                p["val_size"] = json!(self.val_size);
            }
            Workload::JsConsume {
                messages,
                batch,
                replicas,
            } => {
                p["messages"] = json!(messages);
                p["replicas"] = json!(replicas);
                p["batch"] = json!(batch);
                p["val_size"] = json!(self.val_size);
            }
            Workload::Put | Workload::Txn | Workload::NacosRegister => {}
        }
        if self.workload.is_consul() || self.workload.is_nacos() || self.workload.is_nats() {
            p["http_addr"] = json!(self.http_addr);
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert!(Config::default().validate().is_ok());
    }

    #[test]
    fn rejects_unrunnable_parameters() {
        let with = |f: &dyn Fn(&mut Config)| {
            let mut c = Config::default();
            f(&mut c);
            c.validate().is_err()
        };
        assert!(with(&|c| c.clients = 0));
        assert!(with(&|c| c.conns = 0));
        assert!(with(&|c| c.stop = Stop::Total(0)));
        assert!(with(&|c| c.stop = Stop::After(Duration::ZERO)));
        assert!(with(&|c| c.key_count = 0));
        // "bench/" leaves 2 digits in 8 bytes: too few for 10,000 keys.
        assert!(with(&|c| c.key_size = 8));
        assert!(with(&|c| c.workload = Workload::Mixed {
            read_ratio: 1.5,
            consistency: Consistency::Linearizable
        }));
        assert!(with(&|c| {
            c.workload = Workload::Watch {
                watchers: 10,
                streams: 1,
                prefix: false,
            };
            c.val_size = 4;
        }));
        assert!(with(
            &|c| c.workload = Workload::LeaseKeepalive { leases: 0, ttl: 10 }
        ));
    }

    #[test]
    fn params_name_the_workload_options() {
        let c = Config {
            workload: Workload::Mixed {
                read_ratio: 0.9,
                consistency: Consistency::Serializable,
            },
            stop: Stop::Total(100),
            ..Config::default()
        };
        let p = c.params();
        assert_eq!(p["read_ratio"], json!(0.9));
        assert_eq!(p["consistency"], json!("s"));
        assert_eq!(p["total"], json!(100));
        assert!(p.get("duration_s").is_none());
    }
}
