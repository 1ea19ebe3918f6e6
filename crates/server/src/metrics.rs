//! Prometheus metrics of a node: gRPC requests and latency per method, commit (fsync) latency
//! and batch sizes, and store gauges read at scrape time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use berth_consensus::{RaftStatus, Sharing};
use berth_store::Store;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// Labels of per-RPC series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// Full gRPC method, e.g. `/etcdserverpb.KV/Put`.
    pub method: String,
    /// gRPC status code name.
    pub code: String,
}

/// Labels of per-RPC latency series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    /// Full gRPC method.
    pub method: String,
}

/// Labels of per-route HTTP API series (the Consul face).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's pattern, e.g. `/v1/health/service/{service}`.
    pub route: String,
    /// HTTP status code.
    pub code: u16,
}

/// Labels of the gateway's per-route series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayRouteLabels {
    /// The route's ID (empty: no route matched).
    pub route: String,
    /// The status class: `1xx` to `5xx`.
    pub code: &'static str,
}

/// Labels of the gateway's per-upstream series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayUpstreamLabels {
    /// The upstream (`upstreams/<id>`, `routes/<id>` or `services/<id>` for inline ones).
    pub upstream: String,
    /// `answered`, `connect_error`, `error`, `timeout` or `no_node`.
    pub outcome: &'static str,
}

/// Labels of the gateway's cluster-wide rate-limit series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GatewayQuotaLabels {
    /// `allowed`, `refused` or `failed` (the leader could not be asked).
    pub outcome: &'static str,
}

/// The status classes of the gateway's series.
const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// Labels of the DNS query series.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsLabels {
    /// The record type asked for (`A`, `SRV`, …; `other` for rare ones, `none` when the
    /// query could not be read).
    pub r#type: &'static str,
    /// The response code (`NOERROR`, `NXDOMAIN`, `FORMERR`, …).
    pub rcode: &'static str,
}

/// Labels of the read-index series: `forwarded` (a follower's requests to the leader) or
/// `confirmed` (the leader's own confirmations).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReadPathLabels {
    path: &'static str,
}

/// All metrics of a node.
pub struct Metrics {
    registry: Registry,
    grpc_requests: Family<RpcLabels, Counter>,
    grpc_latency: Family<MethodLabels, Histogram>,
    commit_latency: Histogram,
    batch_size: Histogram,
    /// Leases revoked because their TTL ran out.
    pub leases_expired: Counter,
    /// Compactions auto-compaction made (as leader).
    pub auto_compactions: Counter,
    /// Renewal batches this member sent to the leader.
    pub lease_renew_batches: Counter,
    /// Lease renewals those batches carried.
    pub lease_renewals_forwarded: Counter,
    /// Watch events delivered to clients.
    pub watch_events: Counter,
    /// TTL check updates that only renewed the check's lease (no Raft write).
    pub registry_ttl_renewals: Counter,
    /// Check updates that wrote a new status (TTL updates and active check runs).
    pub registry_status_writes: Counter,
    /// Runs of active checks (HTTP, TCP, gRPC) on this member.
    pub registry_check_runs: Counter,
    /// Consul HTTP API requests answered, by route and status.
    consul_requests: Family<RouteLabels, Counter>,
    /// Consul HTTP API answer time (blocking queries included), by route and status.
    consul_latency: Family<RouteLabels, Histogram>,
    /// Consul blocking queries waiting right now.
    pub consul_blocked: Gauge,
    /// From a change reaching this member's registry view to each blocking query it wakes
    /// resuming: the server's share of a watcher's change → answer time.
    pub consul_wake: Histogram,
    /// Nacos API requests answered, by route and status.
    nacos_requests: Family<RouteLabels, Counter>,
    /// Nacos API answer time (long polls included), by route and status.
    nacos_latency: Family<RouteLabels, Histogram>,
    /// Nacos config listeners (long polls) waiting right now.
    pub nacos_listeners: Gauge,
    /// Configuration items published (new versions) through any face.
    pub config_publishes: Counter,
    /// DNS queries answered, by record type and response code.
    dns_queries: Family<DnsLabels, Counter>,
    /// DNS responses cut to fit (TC set).
    pub dns_truncated: Counter,
    /// NATS client connections open now.
    pub nats_connections: Gauge,
    /// NATS messages received from publishers.
    pub nats_msgs_in: Counter,
    /// NATS messages sent to subscribers.
    pub nats_msgs_out: Counter,
    /// NATS connections closed as slow consumers (outbound buffer over its limit).
    pub nats_slow_consumers: Counter,
    /// Other members with a NATS route stream open from this one.
    pub nats_routes: Gauge,
    /// NATS messages forwarded to other members.
    pub nats_route_sent: Counter,
    /// NATS messages other members forwarded here.
    pub nats_route_received: Counter,
    /// NATS messages for other members dropped (their route down or its queue full).
    pub nats_route_dropped: Counter,
    /// JetStream publishes stored (and synced) in streams.
    pub js_stored: Counter,
    /// Gateway requests answered, by route and status class.
    gateway_requests: Family<GatewayRouteLabels, Counter>,
    /// Gateway answer time (to the response's head), by route and status class.
    gateway_latency: Family<GatewayRouteLabels, Histogram>,
    /// Gateway attempts to reach upstream nodes, by upstream and outcome.
    gateway_upstream: Family<GatewayUpstreamLabels, Counter>,
    /// Requests counted by cluster-wide `limit-count`, by outcome.
    gateway_quota: Family<GatewayQuotaLabels, Counter>,
    /// Time to build and swap in a gateway routing snapshot.
    gateway_build: Histogram,
    /// Routes in the gateway's current snapshot.
    gateway_routes: Gauge,
    /// Times the gateway's watch ended and it rebuilt from a full read.
    gateway_reloads: Counter,
    /// Upgraded (WebSocket) connections the gateway splices now.
    pub gateway_websockets: Gauge,
    /// Access log lines dropped because the writer fell behind (read at scrape time).
    gateway_access_log_dropped: Gauge,
    access_log: std::sync::OnceLock<Arc<crate::gateway::access_log::AccessLog>>,
    /// Syncs of stream writers (each covers a batch of publishes).
    pub js_batches: Counter,
    /// Messages delivered by JetStream consumers (redeliveries included).
    pub js_delivered: Counter,
    /// Acks received by JetStream consumers.
    pub js_acks: Counter,
    /// Proposals committed and applied.
    pub proposals_committed: Counter,
    /// Proposals that failed (no leader, stopped).
    pub proposals_failed: Counter,
    raft_term: Gauge,
    raft_is_leader: Gauge,
    raft_quorum_lost: Gauge,
    raft_commit_index: Gauge,
    raft_applied_index: Gauge,
    raft_apply_lag: Gauge,
    raft_leader_changes: Gauge,
    raft_snapshots_built: Gauge,
    raft_snapshots_installed: Gauge,
    tls_handshake_failures: Gauge,
    read_rounds: Family<ReadPathLabels, Gauge>,
    reads_answered: Family<ReadPathLabels, Gauge>,
    write_calls: Gauge,
    writes_proposed: Gauge,
    revision: Gauge,
    compacted: Gauge,
    keys: Gauge,
    leases: Gauge,
    watchers: Gauge,
    db_size: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let grpc_requests = Family::<RpcLabels, Counter>::default();
        let grpc_latency = Family::<MethodLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.0001, 2.0, 18))) as fn() -> Histogram,
        );
        let commit_latency = Histogram::new(exponential_buckets(0.0001, 2.0, 18));
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register(
            "berth_grpc_requests",
            "gRPC requests handled, by method and status code",
            grpc_requests.clone(),
        );
        registry.register(
            "berth_grpc_request_duration_seconds",
            "Time to answer a gRPC request (to the start of the stream for streaming calls)",
            grpc_latency.clone(),
        );
        registry.register(
            "berth_disk_commit_duration_seconds",
            "Time to fsync one batch of Raft log entries",
            commit_latency.clone(),
        );
        registry.register(
            "berth_write_batch_size",
            "Raft log entries made durable by one fsync",
            batch_size.clone(),
        );
        let m = Metrics {
            grpc_requests,
            grpc_latency,
            commit_latency,
            batch_size,
            leases_expired: Counter::default(),
            lease_renew_batches: Counter::default(),
            auto_compactions: Counter::default(),
            lease_renewals_forwarded: Counter::default(),
            watch_events: Counter::default(),
            registry_ttl_renewals: Counter::default(),
            registry_status_writes: Counter::default(),
            registry_check_runs: Counter::default(),
            consul_requests: Family::default(),
            consul_latency: Family::new_with_constructor(
                (|| Histogram::new(exponential_buckets(0.0001, 2.0, 24))) as fn() -> Histogram,
            ),
            consul_blocked: Gauge::default(),
            consul_wake: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            nacos_requests: Family::default(),
            nacos_latency: Family::new_with_constructor(
                (|| Histogram::new(exponential_buckets(0.0001, 2.0, 24))) as fn() -> Histogram,
            ),
            nacos_listeners: Gauge::default(),
            config_publishes: Counter::default(),
            dns_queries: Family::default(),
            dns_truncated: Counter::default(),
            nats_connections: Gauge::default(),
            nats_msgs_in: Counter::default(),
            nats_msgs_out: Counter::default(),
            nats_slow_consumers: Counter::default(),
            nats_routes: Gauge::default(),
            nats_route_sent: Counter::default(),
            nats_route_received: Counter::default(),
            nats_route_dropped: Counter::default(),
            js_stored: Counter::default(),
            gateway_requests: Family::default(),
            gateway_latency: Family::<GatewayRouteLabels, Histogram>::new_with_constructor(
                (|| Histogram::new(exponential_buckets(0.0001, 2.0, 18))) as fn() -> Histogram,
            ),
            gateway_upstream: Family::default(),
            gateway_quota: Family::default(),
            gateway_build: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            gateway_routes: Gauge::default(),
            gateway_reloads: Counter::default(),
            gateway_websockets: Gauge::default(),
            gateway_access_log_dropped: Gauge::default(),
            access_log: std::sync::OnceLock::new(),
            js_batches: Counter::default(),
            js_delivered: Counter::default(),
            js_acks: Counter::default(),
            proposals_committed: Counter::default(),
            proposals_failed: Counter::default(),
            raft_term: Gauge::default(),
            raft_is_leader: Gauge::default(),
            raft_quorum_lost: Gauge::default(),
            raft_commit_index: Gauge::default(),
            raft_applied_index: Gauge::default(),
            raft_apply_lag: Gauge::default(),
            raft_leader_changes: Gauge::default(),
            raft_snapshots_built: Gauge::default(),
            raft_snapshots_installed: Gauge::default(),
            tls_handshake_failures: Gauge::default(),
            read_rounds: Family::default(),
            reads_answered: Family::default(),
            write_calls: Gauge::default(),
            writes_proposed: Gauge::default(),
            revision: Gauge::default(),
            compacted: Gauge::default(),
            keys: Gauge::default(),
            leases: Gauge::default(),
            watchers: Gauge::default(),
            db_size: Gauge::default(),
            registry,
        };
        let mut m = m;
        let r = &mut m.registry;
        r.register(
            "berth_leases_expired",
            "Leases revoked on TTL expiry",
            m.leases_expired.clone(),
        );
        r.register(
            "berth_auto_compactions",
            "Compactions made by auto-compaction on this member (as leader)",
            m.auto_compactions.clone(),
        );
        r.register(
            "berth_lease_renew_batches",
            "Batches of lease renewals this member sent to the leader",
            m.lease_renew_batches.clone(),
        );
        r.register(
            "berth_lease_renewals_forwarded",
            "Lease renewals this member sent to the leader (in those batches)",
            m.lease_renewals_forwarded.clone(),
        );
        r.register(
            "berth_registry_ttl_renewals",
            "TTL check updates that only renewed the check's lease (no Raft write)",
            m.registry_ttl_renewals.clone(),
        );
        r.register(
            "berth_registry_status_writes",
            "Check updates that wrote a new status (TTL updates and active check runs)",
            m.registry_status_writes.clone(),
        );
        r.register(
            "berth_registry_check_runs",
            "Runs of active checks (HTTP, TCP, gRPC) on this member",
            m.registry_check_runs.clone(),
        );
        r.register(
            "berth_consul_requests",
            "Consul HTTP API requests answered, by route and status",
            m.consul_requests.clone(),
        );
        r.register(
            "berth_consul_request_duration_seconds",
            "Time to answer a Consul HTTP API request (blocking queries included)",
            m.consul_latency.clone(),
        );
        r.register(
            "berth_consul_blocking_queries",
            "Consul blocking queries waiting now",
            m.consul_blocked.clone(),
        );
        r.register(
            "berth_consul_blocking_wake_seconds",
            "From a registry change reaching this member's view to each blocking query it wakes resuming",
            m.consul_wake.clone(),
        );
        r.register(
            "berth_nacos_requests",
            "Nacos API requests answered, by route and status",
            m.nacos_requests.clone(),
        );
        r.register(
            "berth_nacos_request_duration_seconds",
            "Time to answer a Nacos API request (config listener long polls included)",
            m.nacos_latency.clone(),
        );
        r.register(
            "berth_nacos_config_listeners",
            "Nacos config listeners (long polls) waiting now",
            m.nacos_listeners.clone(),
        );
        r.register(
            "berth_config_publishes",
            "Configuration items published as a new version (any face)",
            m.config_publishes.clone(),
        );
        r.register(
            "berth_gateway_requests",
            "Gateway requests answered, by route ID (empty: no route matched) and status class",
            m.gateway_requests.clone(),
        );
        r.register(
            "berth_gateway_request_duration_seconds",
            "Gateway time to the response's head, by route ID and status class",
            m.gateway_latency.clone(),
        );
        r.register(
            "berth_gateway_upstream_attempts",
            "Gateway attempts to reach an upstream's nodes, by upstream and outcome",
            m.gateway_upstream.clone(),
        );
        r.register(
            "berth_gateway_cluster_limit_requests",
            "Requests counted by a cluster-wide limit-count, by outcome",
            m.gateway_quota.clone(),
        );
        r.register(
            "berth_gateway_snapshot_build_seconds",
            "Time to build and swap in a gateway routing snapshot",
            m.gateway_build.clone(),
        );
        r.register(
            "berth_gateway_routes",
            "Routes in the gateway's current snapshot",
            m.gateway_routes.clone(),
        );
        r.register(
            "berth_gateway_watch_reloads",
            "Times the gateway's watch of its resources could not go on (history compacted \
             under it, a snapshot installed) and the gateway rebuilt them from a full read",
            m.gateway_reloads.clone(),
        );
        r.register(
            "berth_gateway_access_log_dropped",
            "Gateway access log lines dropped because the writer fell behind",
            m.gateway_access_log_dropped.clone(),
        );
        r.register(
            "berth_gateway_websockets",
            "Upgraded (WebSocket) connections the gateway splices now",
            m.gateway_websockets.clone(),
        );
        r.register(
            "berth_dns_queries",
            "DNS queries answered (Consul's DNS interface), by record type and response code",
            m.dns_queries.clone(),
        );
        r.register(
            "berth_dns_truncated_responses",
            "DNS responses cut to fit the transport's size (TC set)",
            m.dns_truncated.clone(),
        );
        r.register(
            "berth_nats_connections",
            "NATS client connections open now",
            m.nats_connections.clone(),
        );
        r.register(
            "berth_nats_messages_in",
            "NATS messages received from publishers",
            m.nats_msgs_in.clone(),
        );
        r.register(
            "berth_nats_messages_out",
            "NATS messages delivered to subscribers",
            m.nats_msgs_out.clone(),
        );
        r.register(
            "berth_nats_slow_consumers",
            "NATS connections closed because their outbound buffer went over its limit",
            m.nats_slow_consumers.clone(),
        );
        r.register(
            "berth_nats_routes",
            "Other members this member has a NATS route stream open to",
            m.nats_routes.clone(),
        );
        r.register(
            "berth_nats_route_messages_sent",
            "NATS messages forwarded to other members with matching subscribers",
            m.nats_route_sent.clone(),
        );
        r.register(
            "berth_nats_route_messages_received",
            "NATS messages other members forwarded to this member's subscribers",
            m.nats_route_received.clone(),
        );
        r.register(
            "berth_nats_route_messages_dropped",
            "NATS messages for other members dropped because the route was down or its queue over --nats-max-pending",
            m.nats_route_dropped.clone(),
        );
        r.register(
            "berth_jetstream_stored_messages",
            "JetStream publishes stored in streams (acknowledged after their batch's sync)",
            m.js_stored.clone(),
        );
        r.register(
            "berth_jetstream_sync_batches",
            "Batches of JetStream publishes stored with one sync of the stream's segment file",
            m.js_batches.clone(),
        );
        r.register(
            "berth_jetstream_delivered_messages",
            "Messages JetStream consumers delivered, redeliveries included",
            m.js_delivered.clone(),
        );
        r.register(
            "berth_jetstream_acks",
            "Acks JetStream consumers received",
            m.js_acks.clone(),
        );
        r.register(
            "berth_watch_events_sent",
            "Watch events sent to clients",
            m.watch_events.clone(),
        );
        r.register(
            "berth_mvcc_revision",
            "Newest store revision",
            m.revision.clone(),
        );
        r.register(
            "berth_mvcc_compacted_revision",
            "Revision history is compacted to",
            m.compacted.clone(),
        );
        r.register("berth_mvcc_keys", "Keys in the index", m.keys.clone());
        r.register("berth_leases", "Granted leases", m.leases.clone());
        r.register("berth_watchers", "Active watchers", m.watchers.clone());
        r.register(
            "berth_db_size_bytes",
            "Size of the database file",
            m.db_size.clone(),
        );
        let raft: [(&str, &str, &Gauge); 12] = [
            ("berth_raft_term", "Current Raft term", &m.raft_term),
            (
                "berth_raft_is_leader",
                "1 when this member leads",
                &m.raft_is_leader,
            ),
            (
                "berth_raft_quorum_lost",
                "1 when this member leads but has not heard from a quorum within the leader lease",
                &m.raft_quorum_lost,
            ),
            (
                "berth_raft_commit_index",
                "Last committed log index",
                &m.raft_commit_index,
            ),
            (
                "berth_raft_applied_index",
                "Last applied log index",
                &m.raft_applied_index,
            ),
            (
                "berth_raft_apply_lag",
                "Committed entries not yet applied",
                &m.raft_apply_lag,
            ),
            (
                "berth_raft_leader_changes",
                "Times the known leader changed since start",
                &m.raft_leader_changes,
            ),
            (
                "berth_raft_snapshots_built",
                "Snapshots built since start",
                &m.raft_snapshots_built,
            ),
            (
                "berth_raft_snapshots_installed",
                "Snapshots installed from a leader since start",
                &m.raft_snapshots_installed,
            ),
            (
                "berth_tls_handshake_failures",
                "TLS handshakes on this member's listeners that failed or timed out since start",
                &m.tls_handshake_failures,
            ),
            (
                "berth_raft_write_calls",
                "Raft calls proposing writes since start (concurrent writes share one)",
                &m.write_calls,
            ),
            (
                "berth_raft_writes_proposed",
                "Writes those Raft calls proposed since start",
                &m.writes_proposed,
            ),
        ];
        for (name, help, g) in raft {
            r.register(name, help, g.clone());
        }
        r.register(
            "berth_read_index_rounds",
            "Read-index rounds since start (shared by concurrent linearizable reads)",
            m.read_rounds.clone(),
        );
        r.register(
            "berth_read_index_reads",
            "Linearizable reads answered by read-index rounds since start",
            m.reads_answered.clone(),
        );
        r.register(
            "berth_raft_proposals_committed",
            "Proposals committed and applied",
            m.proposals_committed.clone(),
        );
        r.register(
            "berth_raft_proposals_failed",
            "Proposals that failed",
            m.proposals_failed.clone(),
        );
        m
    }

    /// Records one Consul HTTP API request.
    pub fn observe_consul(&self, route: &str, code: u16, elapsed: Duration) {
        let labels = RouteLabels {
            route: route.to_string(),
            code,
        };
        self.consul_requests.get_or_create(&labels).inc();
        self.consul_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Records one Nacos API request.
    pub fn observe_nacos(&self, route: &str, code: u16, elapsed: Duration) {
        let labels = RouteLabels {
            route: route.to_string(),
            code,
        };
        self.nacos_requests.get_or_create(&labels).inc();
        self.nacos_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Records one gateway request answered by `route` (empty: none matched).
    pub fn observe_gateway(&self, route: &str, status: u16, elapsed: Duration) {
        let labels = GatewayRouteLabels {
            route: route.to_string(),
            code: STATUS_CLASSES
                .get(usize::from(status / 100).saturating_sub(1))
                .copied()
                .unwrap_or("5xx"),
        };
        self.gateway_requests.get_or_create(&labels).inc();
        self.gateway_latency
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
    }

    /// Records one attempt to reach a node of `upstream`.
    pub fn observe_gateway_upstream(&self, upstream: &str, outcome: &'static str) {
        self.gateway_upstream
            .get_or_create(&GatewayUpstreamLabels {
                upstream: upstream.to_string(),
                outcome,
            })
            .inc();
    }

    /// Records a request counted by a cluster-wide `limit-count`.
    pub fn gateway_quota(&self, outcome: &'static str) {
        self.gateway_quota
            .get_or_create(&GatewayQuotaLabels { outcome })
            .inc();
    }

    /// The gateway's watch ended and it reloads every resource.
    pub fn gateway_reloaded(&self) {
        self.gateway_reloads.inc();
    }

    /// Records a gateway snapshot build.
    pub fn observe_gateway_build(&self, elapsed: Duration, routes: usize) {
        self.gateway_build.observe(elapsed.as_secs_f64());
        self.gateway_routes.set(routes as i64);
    }

    /// Reports `log`'s dropped lines at every scrape.
    pub fn watch_access_log(&self, log: Arc<crate::gateway::access_log::AccessLog>) {
        let _ = self.access_log.set(log);
    }

    /// Drops the series of a deleted route, so series do not pile up with route churn.
    pub fn forget_gateway_route(&self, route: &str) {
        for code in STATUS_CLASSES {
            let labels = GatewayRouteLabels {
                route: route.to_string(),
                code,
            };
            self.gateway_requests.remove(&labels);
            self.gateway_latency.remove(&labels);
        }
    }

    /// Records one DNS query answered.
    pub fn observe_dns(&self, qtype: &'static str, rcode: &'static str) {
        self.dns_queries
            .get_or_create(&DnsLabels {
                r#type: qtype,
                rcode,
            })
            .inc();
    }

    /// Records one gRPC call.
    pub fn observe_rpc(&self, method: &str, code: &str, elapsed: Duration) {
        self.grpc_requests
            .get_or_create(&RpcLabels {
                method: method.to_string(),
                code: code.to_string(),
            })
            .inc();
        self.grpc_latency
            .get_or_create(&MethodLabels {
                method: method.to_string(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Records one committed batch.
    pub fn observe_commit(&self, elapsed: Duration, batch: usize) {
        self.commit_latency.observe(elapsed.as_secs_f64());
        self.batch_size.observe(batch as f64);
    }

    /// Renders the Prometheus text format, refreshing store and Raft gauges first.
    pub fn render(&self, store: &Store, raft: &RaftStatus, sharing: &Sharing) -> String {
        self.raft_term.set(raft.term as i64);
        self.raft_is_leader.set(raft.is_leader as i64);
        self.raft_quorum_lost.set(raft.quorum_lost as i64);
        self.raft_commit_index.set(raft.committed_index as i64);
        self.raft_applied_index.set(raft.applied_index as i64);
        self.raft_apply_lag
            .set(raft.committed_index.saturating_sub(raft.applied_index) as i64);
        self.raft_leader_changes.set(raft.leader_changes as i64);
        self.raft_snapshots_built.set(raft.snapshots_built as i64);
        self.raft_snapshots_installed
            .set(raft.snapshots_installed as i64);
        self.tls_handshake_failures
            .set(berth_net::tls::handshake_failures() as i64);
        self.write_calls.set(sharing.proposed_writes.rounds as i64);
        self.writes_proposed
            .set(sharing.proposed_writes.items as i64);
        for (path, c) in [
            ("forwarded", sharing.forwarded_reads),
            ("confirmed", sharing.confirmed_reads),
        ] {
            let l = ReadPathLabels { path };
            self.read_rounds.get_or_create(&l).set(c.rounds as i64);
            self.reads_answered.get_or_create(&l).set(c.items as i64);
        }
        if let Some(log) = self.access_log.get() {
            self.gateway_access_log_dropped
                .set(i64::try_from(log.dropped()).unwrap_or(i64::MAX));
        }
        let s = store.stats();
        self.revision.set(s.revision);
        self.compacted.set(s.compacted);
        self.keys.set(s.keys as i64);
        self.leases.set(s.leases as i64);
        self.watchers.set(s.watchers as i64);
        self.db_size.set(s.db_size as i64);
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

/// tonic answers an over-limit request with OUT_OF_RANGE; gRPC-Go, and so etcd, with
/// RESOURCE_EXHAUSTED. Clients retry on the code, so answer as etcd does.
fn oversized_is_resource_exhausted(headers: &mut http::HeaderMap) {
    let oversized = headers.get("grpc-status").is_some_and(|v| v == "11")
        && headers
            .get("grpc-message")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|m| {
                m.contains("message%20length%20too%20large")
                    || m.contains("message length too large")
            });
    if oversized {
        headers.insert("grpc-status", http::HeaderValue::from_static("8"));
    }
}

/// A tower layer that counts and times every gRPC call.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            metrics: self.0.clone(),
        }
    }
}

/// Service produced by [`GrpcMetricsLayer`].
#[derive(Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetricsService<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        // Take the service that was driven to readiness, leave a fresh clone behind.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let metrics = self.metrics.clone();
        let method = req.uri().path().to_string();
        Box::pin(async move {
            let started = Instant::now();
            let mut result = inner.call(req).await;
            if let Ok(resp) = &mut result {
                oversized_is_resource_exhausted(resp.headers_mut());
            }
            // Errors returned by a handler travel as `grpc-status` in the headers; a success
            // puts it in the trailers, which are not visible here.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map(|c| format!("{:?}", tonic::Code::from_i32(c)))
                    .unwrap_or_else(|| "Ok".into()),
                Err(_) => "Transport".into(),
            };
            metrics.observe_rpc(&method, &code, started.elapsed());
            result
        })
    }
}
