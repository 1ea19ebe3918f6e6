//! Node configuration: etcd's flag names, `BERTH_*` environment variables and an optional
//! TOML file, layered defaults < file < environment < flags.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context};
use serde::Deserialize;

/// Settings as given by the user; every field optional so the layers can be merged.
/// The same struct is read from flags/environment (clap) and from the TOML file (serde).
#[derive(clap::Args, Deserialize, Debug, Default, Clone)]
#[serde(default, rename_all = "kebab-case", deny_unknown_fields)]
pub struct ServerArgs {
    /// TOML file with any of these settings (keys as the flag names, e.g. `data-dir`).
    #[arg(long, env = "BERTH_CONFIG_FILE")]
    #[serde(skip)]
    pub config_file: Option<PathBuf>,
    /// Human-readable name of this member.
    #[arg(long, env = "BERTH_NAME")]
    pub name: Option<String>,
    /// Directory for all data of this member.
    #[arg(long, env = "BERTH_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// URLs to serve the etcd v3 API on (comma-separated).
    #[arg(long, env = "BERTH_LISTEN_CLIENT_URLS")]
    pub listen_client_urls: Option<String>,
    /// Client URLs announced to the cluster and clients.
    #[arg(long, env = "BERTH_ADVERTISE_CLIENT_URLS")]
    pub advertise_client_urls: Option<String>,
    /// URLs to listen on for peer traffic (used by clustering).
    #[arg(long, env = "BERTH_LISTEN_PEER_URLS")]
    pub listen_peer_urls: Option<String>,
    /// Peer URLs announced to the cluster.
    #[arg(long, env = "BERTH_INITIAL_ADVERTISE_PEER_URLS")]
    pub initial_advertise_peer_urls: Option<String>,
    /// Initial cluster, `name=peer-url,...`.
    #[arg(long, env = "BERTH_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// `new` or `existing`.
    #[arg(long, env = "BERTH_INITIAL_CLUSTER_STATE")]
    pub initial_cluster_state: Option<String>,
    /// Token that makes cluster IDs unique across clusters with the same members.
    #[arg(long, env = "BERTH_INITIAL_CLUSTER_TOKEN")]
    pub initial_cluster_token: Option<String>,
    /// URLs for berth's HTTP API: /metrics, /health (comma-separated).
    #[arg(long, env = "BERTH_LISTEN_HTTP_URLS")]
    pub listen_http_urls: Option<String>,
    /// Addresses (`host:port`, comma-separated) to answer Consul's DNS interface on, over UDP
    /// and TCP (default `127.0.0.1:8600`, Consul's; empty: no DNS listener).
    #[arg(long, env = "BERTH_LISTEN_DNS_ADDR")]
    pub listen_dns_addr: Option<String>,
    /// TTL of the DNS answers for services, e.g. `30s` (default 0s, as Consul).
    #[arg(long, env = "BERTH_DNS_SERVICE_TTL")]
    pub dns_service_ttl: Option<String>,
    /// TTL of the DNS answers for nodes, e.g. `30s` (default 0s, as Consul).
    #[arg(long, env = "BERTH_DNS_NODE_TTL")]
    pub dns_node_ttl: Option<String>,
    /// URLs for Nacos's API (HTTP under `/nacos`), comma-separated (default
    /// `http://127.0.0.1:8848`, Nacos's; empty: no Nacos listener).
    #[arg(long, env = "BERTH_LISTEN_NACOS_URLS")]
    pub listen_nacos_urls: Option<String>,
    /// URLs for NATS's client protocol (`nats://host:port`; `tls://host:port` requires TLS,
    /// with --cert-file and --key-file, and client certificates with --trusted-ca-file),
    /// comma-separated (default `nats://127.0.0.1:4222`, NATS's; empty: no NATS listener).
    #[arg(long, env = "BERTH_LISTEN_NATS_URLS")]
    pub listen_nats_urls: Option<String>,
    /// URLs for the gateway's data plane (`http://host:port`: HTTP/1.1 and h2c;
    /// `https://host:port`: TLS with the certificates of the gateway's ssls, by SNI),
    /// comma-separated (default `http://127.0.0.1:8080`; empty: no gateway listener).
    #[arg(long, env = "BERTH_LISTEN_GATEWAY_URLS")]
    pub listen_gateway_urls: Option<String>,
    /// Where the gateway writes its access log, one JSON object per request: a file path, `-`
    /// for standard error, or empty for none (the default).
    #[arg(long, env = "BERTH_GATEWAY_ACCESS_LOG")]
    pub gateway_access_log: Option<String>,
    /// The access log's fields, comma-separated (default: time, remote_addr, method, host,
    /// path, status, route, upstream, node, duration_ms, upstream_ms, consumer, user_agent,
    /// traceparent).
    #[arg(long, env = "BERTH_GATEWAY_ACCESS_LOG_FIELDS")]
    pub gateway_access_log_fields: Option<String>,
    /// Largest NATS message (headers and payload) a client may publish, in bytes (default
    /// 1048576, as nats-server).
    #[arg(long, env = "BERTH_NATS_MAX_PAYLOAD")]
    pub nats_max_payload: Option<usize>,
    /// Bytes berth queues for one NATS client before closing it as a slow consumer (default
    /// 67108864, as nats-server's max_pending).
    #[arg(long, env = "BERTH_NATS_MAX_PENDING")]
    pub nats_max_pending: Option<usize>,
    /// NATS client connections open at once; more are refused (default 65536, as
    /// nats-server).
    #[arg(long, env = "BERTH_NATS_MAX_CONNECTIONS")]
    pub nats_max_connections: Option<usize>,
    /// Subscriptions one NATS connection may hold (default 0: no limit, as nats-server).
    #[arg(long, env = "BERTH_NATS_MAX_SUBSCRIPTIONS")]
    pub nats_max_subscriptions: Option<usize>,
    /// How often berth pings an idle NATS client, e.g. `2m` (default 2m, as nats-server); two
    /// unanswered pings close the connection.
    #[arg(long, env = "BERTH_NATS_PING_INTERVAL")]
    pub nats_ping_interval: Option<String>,
    /// How long a Nacos gRPC connection may stay silent before berth asks its client whether
    /// it is alive (a `ClientDetectionRequest`); one that does not answer within a quarter of
    /// this is closed and its ephemeral instances go (default 20s, as Nacos).
    #[arg(long, env = "BERTH_NACOS_IDLE_TIMEOUT")]
    pub nacos_idle_timeout: Option<String>,
    /// Largest configuration item content, in bytes (default 102400).
    #[arg(long, env = "BERTH_CONFIG_MAX_CONTENT_BYTES")]
    pub config_max_content_bytes: Option<usize>,
    /// Most versions kept per configuration item (default 100).
    #[arg(long, env = "BERTH_CONFIG_HISTORY_MAX_VERSIONS")]
    pub config_history_max_versions: Option<usize>,
    /// Oldest version kept per configuration item, e.g. `30d` (default 30 days; the current
    /// version is always kept).
    #[arg(long, env = "BERTH_CONFIG_HISTORY_MAX_AGE")]
    pub config_history_max_age: Option<String>,
    /// How often a health check whose status stays the same may write a new output
    /// (default 5m, as Consul's check_update_interval; 0: every run).
    #[arg(long, env = "BERTH_CHECK_UPDATE_INTERVAL")]
    pub check_update_interval: Option<String>,
    /// Largest client request accepted, in bytes.
    #[arg(long, env = "BERTH_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Most operations in one txn.
    #[arg(long, env = "BERTH_MAX_TXN_OPS")]
    pub max_txn_ops: Option<usize>,
    /// Database size at which writes are refused with a NOSPACE alarm (bytes; 0 = 2 GiB).
    #[arg(long, env = "BERTH_QUOTA_BACKEND_BYTES")]
    pub quota_backend_bytes: Option<u64>,
    /// Free space the data directory's disk keeps: below it writes are refused with a NOSPACE
    /// alarm instead of failing on a full disk (bytes; default 64 MiB; 0 turns it off).
    #[arg(long, env = "BERTH_MIN_FREE_DISK_BYTES")]
    pub min_free_disk_bytes: Option<u64>,
    /// Heartbeat interval in milliseconds (Raft; also sets the minimum lease TTL).
    #[arg(long, env = "BERTH_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<u64>,
    /// Election timeout in milliseconds.
    #[arg(long, env = "BERTH_ELECTION_TIMEOUT")]
    pub election_timeout: Option<u64>,
    /// Applied entries between Raft snapshots (then the log behind them is purged).
    #[arg(long, env = "BERTH_SNAPSHOT_COUNT")]
    pub snapshot_count: Option<u64>,
    /// Auto-compaction mode: `periodic` (keep a duration of history) or `revision` (keep a
    /// number of revisions), as etcd.
    #[arg(long, env = "BERTH_AUTO_COMPACTION_MODE")]
    pub auto_compaction_mode: Option<String>,
    /// Auto-compaction retention: a duration (`30m`, `1h`) or hours (`72`) in periodic mode,
    /// a revision count in revision mode; 0 (the default) turns auto-compaction off.
    #[arg(long, env = "BERTH_AUTO_COMPACTION_RETENTION")]
    pub auto_compaction_retention: Option<String>,
    /// Auth token kind, as etcd: `simple` (default) or
    /// `jwt,pub-key=FILE,priv-key=FILE,sign-method=RS256[,ttl=5m]`.
    #[arg(long, env = "BERTH_AUTH_TOKEN")]
    pub auth_token: Option<String>,
    /// Seconds a simple token lives without use (default 300).
    #[arg(long, env = "BERTH_AUTH_TOKEN_TTL")]
    pub auth_token_ttl: Option<u64>,
    /// bcrypt cost of password hashes (default 10, etcd's; 4 to 31).
    #[arg(long, env = "BERTH_BCRYPT_COST")]
    pub bcrypt_cost: Option<u32>,
    /// Interval of `progress_notify` watch responses, in milliseconds.
    #[arg(long, env = "BERTH_WATCH_PROGRESS_NOTIFY_INTERVAL")]
    pub watch_progress_notify_interval: Option<u64>,
    /// How often the server pings an idle client or peer connection to check it is alive,
    /// e.g. `2h` (etcd's default); 0 disables.
    #[arg(long, env = "BERTH_GRPC_KEEPALIVE_INTERVAL")]
    pub grpc_keepalive_interval: Option<String>,
    /// How long a ping may go unanswered before the connection is closed (default 20s).
    #[arg(long, env = "BERTH_GRPC_KEEPALIVE_TIMEOUT")]
    pub grpc_keepalive_timeout: Option<String>,
    /// How long a new connection (client, peer or HTTP) may take to send its HTTP/2 preface
    /// or first request before it is closed (default 10s); 0 waits forever.
    #[arg(long, env = "BERTH_HANDSHAKE_TIMEOUT")]
    pub handshake_timeout: Option<String>,
    /// Log format: `text` or `json`.
    #[arg(long, env = "BERTH_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `berth_server=debug`.
    #[arg(long, env = "BERTH_LOG_LEVEL")]
    pub log_level: Option<String>,
    // --- TLS (etcd's flags; see crate::tls) ---
    /// Certificate (PEM) of the client-side listeners (etcd API, HTTP); re-read on change.
    #[arg(long, env = "BERTH_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Private key (PEM) of `--cert-file`.
    #[arg(long, env = "BERTH_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA bundle (PEM) that client certificates must be signed by; giving it requires them.
    #[arg(long, env = "BERTH_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require client certificates signed by `--trusted-ca-file`.
    #[arg(long, env = "BERTH_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub client_cert_auth: Option<bool>,
    /// Serve https:// client URLs with a generated self-signed certificate.
    #[arg(long, env = "BERTH_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub auto_tls: Option<bool>,
    /// Certificate (PEM) of the peer listener, also presented to peers as client
    /// certificate; re-read on change.
    #[arg(long, env = "BERTH_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Private key (PEM) of `--peer-cert-file`.
    #[arg(long, env = "BERTH_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// CA bundle (PEM) that verifies peers (their server and client certificates).
    #[arg(long, env = "BERTH_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Require peers to present client certificates signed by `--peer-trusted-ca-file`.
    #[arg(long, env = "BERTH_PEER_CLIENT_CERT_AUTH", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub peer_client_cert_auth: Option<bool>,
    /// Use generated self-signed certificates between peers (verifying none).
    #[arg(long, env = "BERTH_PEER_AUTO_TLS", num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub peer_auto_tls: Option<bool>,
    /// TLS 1.2 cipher suites allowed, Go's names comma-separated (e.g.
    /// TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256); default: all berth supports.
    #[arg(long, env = "BERTH_CIPHER_SUITES")]
    pub cipher_suites: Option<String>,
    /// Lowest TLS version accepted: TLS1.2 (default) or TLS1.3.
    #[arg(long, env = "BERTH_TLS_MIN_VERSION")]
    pub tls_min_version: Option<String>,
    /// CA bundle (PEM) that verifies the certificates of HTTPS and gRPC-over-TLS health
    /// check targets and of gateway upstream nodes (`tls.verify`), besides the system's
    /// roots (a check with TLSSkipVerify verifies none).
    #[arg(long, env = "BERTH_CHECK_CA_FILE")]
    pub check_ca_file: Option<PathBuf>,
    // --- end of TLS ---
}

impl ServerArgs {
    /// Fills every field unset here from `lower` (a lower-priority layer).
    fn or(self, lower: ServerArgs) -> ServerArgs {
        ServerArgs {
            config_file: self.config_file.or(lower.config_file),
            name: self.name.or(lower.name),
            data_dir: self.data_dir.or(lower.data_dir),
            listen_client_urls: self.listen_client_urls.or(lower.listen_client_urls),
            advertise_client_urls: self.advertise_client_urls.or(lower.advertise_client_urls),
            listen_peer_urls: self.listen_peer_urls.or(lower.listen_peer_urls),
            initial_advertise_peer_urls: self
                .initial_advertise_peer_urls
                .or(lower.initial_advertise_peer_urls),
            initial_cluster: self.initial_cluster.or(lower.initial_cluster),
            initial_cluster_state: self.initial_cluster_state.or(lower.initial_cluster_state),
            initial_cluster_token: self.initial_cluster_token.or(lower.initial_cluster_token),
            listen_http_urls: self.listen_http_urls.or(lower.listen_http_urls),
            listen_dns_addr: self.listen_dns_addr.or(lower.listen_dns_addr),
            dns_service_ttl: self.dns_service_ttl.or(lower.dns_service_ttl),
            dns_node_ttl: self.dns_node_ttl.or(lower.dns_node_ttl),
            check_update_interval: self.check_update_interval.or(lower.check_update_interval),
            listen_nacos_urls: self.listen_nacos_urls.or(lower.listen_nacos_urls),
            nacos_idle_timeout: self.nacos_idle_timeout.or(lower.nacos_idle_timeout),
            listen_nats_urls: self.listen_nats_urls.or(lower.listen_nats_urls),
            listen_gateway_urls: self.listen_gateway_urls.or(lower.listen_gateway_urls),
            gateway_access_log: self.gateway_access_log.or(lower.gateway_access_log),
            gateway_access_log_fields: self
                .gateway_access_log_fields
                .or(lower.gateway_access_log_fields),
            nats_max_payload: self.nats_max_payload.or(lower.nats_max_payload),
            nats_max_pending: self.nats_max_pending.or(lower.nats_max_pending),
            nats_max_connections: self.nats_max_connections.or(lower.nats_max_connections),
            nats_max_subscriptions: self.nats_max_subscriptions.or(lower.nats_max_subscriptions),
            nats_ping_interval: self.nats_ping_interval.or(lower.nats_ping_interval),
            config_max_content_bytes: self
                .config_max_content_bytes
                .or(lower.config_max_content_bytes),
            config_history_max_versions: self
                .config_history_max_versions
                .or(lower.config_history_max_versions),
            config_history_max_age: self.config_history_max_age.or(lower.config_history_max_age),
            max_request_bytes: self.max_request_bytes.or(lower.max_request_bytes),
            max_txn_ops: self.max_txn_ops.or(lower.max_txn_ops),
            quota_backend_bytes: self.quota_backend_bytes.or(lower.quota_backend_bytes),
            min_free_disk_bytes: self.min_free_disk_bytes.or(lower.min_free_disk_bytes),
            heartbeat_interval: self.heartbeat_interval.or(lower.heartbeat_interval),
            election_timeout: self.election_timeout.or(lower.election_timeout),
            snapshot_count: self.snapshot_count.or(lower.snapshot_count),
            auto_compaction_mode: self.auto_compaction_mode.or(lower.auto_compaction_mode),
            auto_compaction_retention: self
                .auto_compaction_retention
                .or(lower.auto_compaction_retention),
            auth_token: self.auth_token.or(lower.auth_token),
            auth_token_ttl: self.auth_token_ttl.or(lower.auth_token_ttl),
            bcrypt_cost: self.bcrypt_cost.or(lower.bcrypt_cost),
            watch_progress_notify_interval: self
                .watch_progress_notify_interval
                .or(lower.watch_progress_notify_interval),
            grpc_keepalive_interval: self
                .grpc_keepalive_interval
                .or(lower.grpc_keepalive_interval),
            grpc_keepalive_timeout: self.grpc_keepalive_timeout.or(lower.grpc_keepalive_timeout),
            handshake_timeout: self.handshake_timeout.or(lower.handshake_timeout),
            log_format: self.log_format.or(lower.log_format),
            log_level: self.log_level.or(lower.log_level),
            // TLS
            cert_file: self.cert_file.or(lower.cert_file),
            key_file: self.key_file.or(lower.key_file),
            trusted_ca_file: self.trusted_ca_file.or(lower.trusted_ca_file),
            client_cert_auth: self.client_cert_auth.or(lower.client_cert_auth),
            auto_tls: self.auto_tls.or(lower.auto_tls),
            peer_cert_file: self.peer_cert_file.or(lower.peer_cert_file),
            peer_key_file: self.peer_key_file.or(lower.peer_key_file),
            peer_trusted_ca_file: self.peer_trusted_ca_file.or(lower.peer_trusted_ca_file),
            check_ca_file: self.check_ca_file.or(lower.check_ca_file),
            peer_client_cert_auth: self.peer_client_cert_auth.or(lower.peer_client_cert_auth),
            peer_auto_tls: self.peer_auto_tls.or(lower.peer_auto_tls),
            cipher_suites: self.cipher_suites.or(lower.cipher_suites),
            tls_min_version: self.tls_min_version.or(lower.tls_min_version),
        }
    }
}

/// `new` or `existing`, as etcd's `--initial-cluster-state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterState {
    /// Bootstrapping a new cluster.
    New,
    /// Joining a running cluster.
    Existing,
}

/// A fully resolved node configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Member name.
    pub name: String,
    /// Data directory.
    pub data_dir: PathBuf,
    /// etcd API listen addresses.
    pub listen_client: Vec<SocketAddr>,
    /// Advertised client URLs.
    pub advertise_client_urls: Vec<String>,
    /// Peer listen addresses (clustering).
    pub listen_peer: Vec<SocketAddr>,
    /// Advertised peer URLs.
    pub advertise_peer_urls: Vec<String>,
    /// Initial cluster members: (name, peer URLs).
    pub initial_cluster: Vec<(String, Vec<String>)>,
    /// New or existing cluster.
    pub initial_cluster_state: ClusterState,
    /// Cluster token.
    pub initial_cluster_token: String,
    /// HTTP listen addresses.
    pub listen_http: Vec<SocketAddr>,
    /// Nacos API listen addresses; empty: no Nacos listener.
    pub listen_nacos: Vec<SocketAddr>,
    /// Nacos gRPC listen addresses: each Nacos address with its port + 1000.
    pub listen_nacos_grpc: Vec<SocketAddr>,
    /// Silence after which a Nacos gRPC client is asked whether it is alive.
    pub nacos_idle_timeout: Duration,
    /// NATS listen addresses; empty: no NATS listener.
    pub listen_nats: Vec<SocketAddr>,
    /// Gateway data-plane listen addresses, each with whether it serves TLS (`https://`).
    pub listen_gateway: Vec<(SocketAddr, bool)>,
    /// The gateway's access log, if one is written.
    pub gateway_access_log: Option<crate::gateway::access_log::Settings>,
    /// The NATS face's limits.
    pub nats_limits: crate::face::nats::Limits,
    /// The configuration center's limits.
    pub config_limits: crate::config_center::Limits,
    /// DNS listen addresses (each UDP and TCP); empty: no DNS interface.
    pub listen_dns: Vec<SocketAddr>,
    /// TTL of DNS answers about services.
    pub dns_service_ttl: Duration,
    /// TTL of DNS answers about nodes.
    pub dns_node_ttl: Duration,
    /// Extra CA bundle for health check targets' and gateway nodes' certificates
    /// (`--check-ca-file`).
    pub check_ca_file: Option<PathBuf>,
    /// Least time between two output-only writes of a check (`--check-update-interval`).
    pub check_update_interval: Duration,
    /// Request size limit in bytes.
    pub max_request_bytes: usize,
    /// Txn operation limit.
    pub max_txn_ops: usize,
    /// Database size limit in bytes.
    pub quota_backend_bytes: u64,
    /// Free disk space kept in reserve, in bytes (0: no reserve).
    pub min_free_disk_bytes: u64,
    /// Heartbeat interval (ms).
    pub heartbeat_interval_ms: u64,
    /// Election timeout (ms).
    pub election_timeout_ms: u64,
    /// Applied entries between snapshots.
    pub snapshot_count: u64,
    /// How much history auto-compaction keeps; `None`: it is off.
    pub auto_compaction: Option<crate::compaction::Retention>,
    /// `--auth-token` as given (checked at start-up).
    pub auth_token: String,
    /// Idle lifetime of simple tokens.
    pub auth_token_ttl: Duration,
    /// bcrypt cost of new password hashes.
    pub bcrypt_cost: u32,
    /// Interval of watch progress notifications (ms).
    pub watch_progress_notify_interval_ms: u64,
    /// Interval of HTTP/2 pings on idle connections of the gRPC servers; `None`: no pings.
    pub grpc_keepalive_interval: Option<Duration>,
    /// How long a ping may go unanswered before its connection is closed.
    pub grpc_keepalive_timeout: Duration,
    /// How long a new connection may stay silent before it is closed; `None`: forever.
    pub handshake_timeout: Option<Duration>,
    /// `json` logs when true.
    pub log_json: bool,
    /// Log filter directive.
    pub log_level: String,
    /// TLS of the client side, of the peer side, and which listeners serve https.
    pub tls: crate::tls::TlsConfig,
}

fn split_urls(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(String::from)
        .collect()
}

/// Resolves `http://host:port`, `https://host:port` (or `host:port`) to socket addresses.
pub fn url_to_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let rest = if let Some(r) = url.strip_prefix("http://").or(url.strip_prefix("https://")) {
        r
    } else if url.contains("://") {
        bail!("{url}: only http:// and https:// URLs are supported")
    } else {
        url
    };
    let hostport = rest.trim_end_matches('/');
    hostport
        .to_socket_addrs()
        .with_context(|| format!("invalid URL {url}"))?
        .next()
        .with_context(|| format!("{url} resolves to no address"))
}

/// Parses a duration flag as etcd writes them (`2h`, `20s`, `1m30s`, `500ms`); `0` is zero.
fn duration(flag: &str, value: Option<&str>, default: Duration) -> anyhow::Result<Duration> {
    match value.map(str::trim) {
        None => Ok(default),
        Some("0") => Ok(Duration::ZERO),
        Some(v) => humantime::parse_duration(v)
            .with_context(|| format!("{flag} {v:?} is not a duration (e.g. 20s, 2h, 500ms)")),
    }
}

/// `--listen-dns-addr`: `host:port` addresses, comma-separated (no scheme: DNS has none).
fn dns_addrs(list: &str) -> anyhow::Result<Vec<SocketAddr>> {
    split_urls(list)
        .iter()
        .map(|a| {
            if a.contains("://") {
                bail!("--listen-dns-addr {a:?}: give host:port, without a scheme");
            }
            a.to_socket_addrs()
                .with_context(|| format!("--listen-dns-addr {a:?} is not host:port"))?
                .next()
                .with_context(|| format!("--listen-dns-addr {a:?} resolves to no address"))
        })
        .collect()
}

/// A DNS TTL flag: a duration in whole seconds that fits a record's 32-bit TTL.
fn dns_ttl(flag: &str, value: Option<&str>) -> anyhow::Result<Duration> {
    let ttl = duration(flag, value, Duration::ZERO)?;
    if ttl.as_secs() > u64::from(i32::MAX as u32) {
        bail!("{flag} {ttl:?} is too long for a DNS TTL");
    }
    Ok(ttl)
}

/// A duration where zero means "off".
fn nonzero(d: Duration) -> Option<Duration> {
    (!d.is_zero()).then_some(d)
}

/// Resolves `nats://host:port` (or `host:port`) to a socket address.
fn nats_addr(url: &str) -> anyhow::Result<SocketAddr> {
    let hostport = match url.split_once("://") {
        Some(("nats" | "tls", rest)) => rest,
        Some((scheme, _)) => bail!("{url}: a NATS URL is nats:// or tls://, not {scheme}://"),
        None => url,
    };
    hostport
        .trim_end_matches('/')
        .to_socket_addrs()
        .with_context(|| format!("invalid URL {url}"))?
        .next()
        .with_context(|| format!("{url} resolves to no address"))
}

fn addrs(urls: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let list = split_urls(urls);
    if list.is_empty() {
        bail!("no URL given");
    }
    list.iter().map(|u| url_to_addr(u)).collect()
}

impl Config {
    /// Layers flags/environment over the config file over defaults and validates the result.
    pub fn resolve(args: ServerArgs) -> anyhow::Result<Config> {
        let file = match &args.config_file {
            Some(path) => read_file(path)?,
            None => ServerArgs::default(),
        };
        let s = args.or(file);
        // The TLS flags are read from a copy: the fields below are moved out of `s`.
        let tls_args = s.clone();
        let name = s.name.unwrap_or_else(|| "default".into());
        let listen_client_urls = s
            .listen_client_urls
            .unwrap_or_else(|| "http://127.0.0.1:2379".into());
        let advertise_client = s
            .advertise_client_urls
            .unwrap_or_else(|| listen_client_urls.clone());
        let listen_peer_urls = s
            .listen_peer_urls
            .unwrap_or_else(|| "http://127.0.0.1:2380".into());
        let advertise_peer = s
            .initial_advertise_peer_urls
            .unwrap_or_else(|| listen_peer_urls.clone());
        let initial_cluster = s.initial_cluster.unwrap_or_else(|| {
            format!(
                "{name}={}",
                split_urls(&advertise_peer).join(&format!(",{name}="))
            )
        });
        let listen_http_urls = tls_args
            .listen_http_urls
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:8500".into());
        let listen_nacos_urls = tls_args
            .listen_nacos_urls
            .clone()
            .unwrap_or_else(|| "http://127.0.0.1:8848".into());
        let mut tls = crate::tls::TlsConfig::resolve(
            &tls_args,
            &split_urls(&listen_client_urls),
            &split_urls(&listen_peer_urls),
            &[
                split_urls(&listen_http_urls),
                split_urls(&listen_nacos_urls),
            ]
            .concat(),
            &split_urls(tls_args.listen_nats_urls.as_deref().unwrap_or_default()),
        )?;
        let state = match s.initial_cluster_state.as_deref().unwrap_or("new") {
            "new" => ClusterState::New,
            "existing" => ClusterState::Existing,
            other => bail!("--initial-cluster-state must be new or existing, not {other:?}"),
        };
        let heartbeat = s.heartbeat_interval.unwrap_or(100);
        let election = s.election_timeout.unwrap_or(1000);
        if heartbeat == 0 || election < heartbeat * 5 {
            bail!("--election-timeout ({election}ms) must be at least 5x --heartbeat-interval ({heartbeat}ms)");
        }
        let log_format = s.log_format.unwrap_or_else(|| "text".into());
        if log_format != "text" && log_format != "json" {
            bail!("--log-format must be text or json, not {log_format:?}");
        }
        let max_request_bytes = s.max_request_bytes.unwrap_or(1536 * 1024);
        if max_request_bytes == 0 {
            bail!("--max-request-bytes must be positive");
        }
        if name.trim().is_empty() {
            bail!("--name must not be empty");
        }
        for (flag, urls) in [
            ("--advertise-client-urls", &advertise_client),
            ("--initial-advertise-peer-urls", &advertise_peer),
        ] {
            for url in split_urls(urls) {
                check_url(flag, &url)?;
            }
        }
        let initial_cluster = parse_initial_cluster(&initial_cluster)?;
        if state == ClusterState::New {
            // As etcd checks: the initial cluster must list this member, at the peer URLs it
            // advertises, or the members would bootstrap different memberships.
            let mut mine = split_urls(&advertise_peer);
            mine.sort();
            match initial_cluster.iter().find(|(n, _)| *n == name) {
                None => bail!("--initial-cluster does not list this member's --name {name:?}"),
                Some((_, urls)) => {
                    let mut listed = urls.clone();
                    listed.sort();
                    if listed != mine {
                        bail!(
                            "--initial-cluster lists {name}={} but --initial-advertise-peer-urls is {}",
                            listed.join(","),
                            mine.join(",")
                        );
                    }
                }
            }
        }
        // etcd's defaults: a ping after 2 h without traffic, closed 20 s after going unanswered.
        // Dead peers of idle connections are found sooner by TCP keepalive (berth_net::listen).
        let grpc_keepalive_interval = duration(
            "--grpc-keepalive-interval",
            s.grpc_keepalive_interval.as_deref(),
            Duration::from_secs(2 * 60 * 60),
        )?;
        let grpc_keepalive_timeout = duration(
            "--grpc-keepalive-timeout",
            s.grpc_keepalive_timeout.as_deref(),
            Duration::from_secs(20),
        )?;
        if grpc_keepalive_timeout.is_zero() {
            bail!("--grpc-keepalive-timeout must be positive");
        }
        // Real clients send their preface with the connection; 10 s spares slow networks and
        // still frees a silent connection's socket well before a client would give up on it.
        let handshake_timeout = duration(
            "--handshake-timeout",
            s.handshake_timeout.as_deref(),
            Duration::from_secs(10),
        )?;
        let listen_dns = match s.listen_dns_addr.as_deref().map(str::trim) {
            None => vec![SocketAddr::from(([127, 0, 0, 1], 8600))],
            Some("") => Vec::new(),
            Some(list) => dns_addrs(list)?,
        };
        let dns_service_ttl = dns_ttl("--dns-service-ttl", s.dns_service_ttl.as_deref())?;
        let dns_node_ttl = dns_ttl("--dns-node-ttl", s.dns_node_ttl.as_deref())?;
        if let Some(ca) = &s.check_ca_file {
            berth_net::tls::files::trust_roots(ca).context("--check-ca-file")?;
        }
        let config_limits = {
            let d = crate::config_center::Limits::default();
            let limits = crate::config_center::Limits {
                max_content: s.config_max_content_bytes.unwrap_or(d.max_content),
                history_versions: s.config_history_max_versions.unwrap_or(d.history_versions),
                history_age: duration(
                    "--config-history-max-age",
                    s.config_history_max_age.as_deref(),
                    d.history_age,
                )?,
            };
            if limits.max_content == 0 || limits.history_versions == 0 {
                bail!(
                    "--config-max-content-bytes and --config-history-max-versions must be positive"
                );
            }
            if limits.max_content > max_request_bytes {
                bail!(
                    "--config-max-content-bytes ({}) must not exceed --max-request-bytes ({max_request_bytes})",
                    limits.max_content
                );
            }
            limits
        };
        let listen_nacos = if listen_nacos_urls.trim().is_empty() {
            Vec::new()
        } else {
            addrs(&listen_nacos_urls).context("--listen-nacos-urls")?
        };
        let listen_nacos_grpc = listen_nacos
            .iter()
            .map(|a| {
                let port = a.port().checked_add(1000).filter(|_| a.port() != 0).with_context(|| {
                    format!("--listen-nacos-urls {a}: Nacos's gRPC port is this port + 1000, which must be a port (1 to 64535)")
                })?;
                Ok(SocketAddr::new(a.ip(), port))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let listen_nats = match s.listen_nats_urls.as_deref().map(str::trim) {
            None => vec![SocketAddr::from(([127, 0, 0, 1], 4222))],
            Some("") => Vec::new(),
            Some(list) => {
                let mut addrs = Vec::new();
                for url in split_urls(list) {
                    let addr = nats_addr(&url).context("--listen-nats-urls")?;
                    if url.starts_with("tls://") {
                        tls.nats_tls.push(addr);
                    }
                    addrs.push(addr);
                }
                addrs
            }
        };
        let listen_gateway = match s.listen_gateway_urls.as_deref().map(str::trim) {
            None => vec![(SocketAddr::from(([127, 0, 0, 1], 8080)), false)],
            Some("") => Vec::new(),
            Some(list) => split_urls(list)
                .iter()
                .map(|url| {
                    let https = url.starts_with("https://");
                    if !https && !url.starts_with("http://") {
                        bail!("--listen-gateway-urls: {url}: a gateway URL is http:// or https://");
                    }
                    Ok((url_to_addr(url).context("--listen-gateway-urls")?, https))
                })
                .collect::<anyhow::Result<_>>()?,
        };
        let gateway_access_log = match s.gateway_access_log.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(to) => Some(
                crate::gateway::access_log::Settings::new(
                    to,
                    s.gateway_access_log_fields.as_deref(),
                )
                .context("--gateway-access-log-fields")?,
            ),
        };
        let nats_limits = {
            let d = crate::face::nats::Limits::default();
            let max_payload = s.nats_max_payload.unwrap_or(d.max_payload);
            if max_payload == 0 || max_payload > 64 * 1024 * 1024 {
                bail!("--nats-max-payload must be between 1 and 67108864 bytes");
            }
            let max_pending = s.nats_max_pending.unwrap_or(d.max_pending);
            if max_pending < max_payload {
                bail!("--nats-max-pending ({max_pending}) must be at least --nats-max-payload ({max_payload})");
            }
            crate::face::nats::Limits {
                max_payload,
                max_pending,
                max_connections: s.nats_max_connections.unwrap_or(d.max_connections),
                max_subscriptions: s.nats_max_subscriptions.unwrap_or(d.max_subscriptions),
                ping_interval: duration(
                    "--nats-ping-interval",
                    s.nats_ping_interval.as_deref(),
                    d.ping_interval,
                )?
                .max(Duration::from_millis(100)),
                ..d
            }
        };
        Ok(Config {
            tls,
            listen_nats,
            listen_gateway,
            gateway_access_log,
            nats_limits,
            listen_nacos,
            listen_nacos_grpc,
            config_limits,
            nacos_idle_timeout: duration(
                "--nacos-idle-timeout",
                s.nacos_idle_timeout.as_deref(),
                Duration::from_secs(20),
            )?
            .max(Duration::from_millis(100)),
            listen_dns,
            dns_service_ttl,
            dns_node_ttl,
            check_ca_file: s.check_ca_file,
            check_update_interval: duration(
                "--check-update-interval",
                s.check_update_interval.as_deref(),
                Duration::from_secs(300),
            )?,
            data_dir: s.data_dir.unwrap_or_else(|| PathBuf::from("berth-data")),
            listen_client: addrs(&listen_client_urls).context("--listen-client-urls")?,
            advertise_client_urls: split_urls(&advertise_client),
            listen_peer: addrs(&listen_peer_urls).context("--listen-peer-urls")?,
            advertise_peer_urls: split_urls(&advertise_peer),
            initial_cluster,
            initial_cluster_state: state,
            initial_cluster_token: s
                .initial_cluster_token
                .unwrap_or_else(|| "berth-cluster".into()),
            listen_http: addrs(&listen_http_urls).context("--listen-http-urls")?,
            max_request_bytes,
            max_txn_ops: s.max_txn_ops.unwrap_or(128).max(1),
            // etcd's default quota: 2 GiB.
            quota_backend_bytes: match s.quota_backend_bytes.unwrap_or(0) {
                0 => 2 << 30,
                q => q,
            },
            min_free_disk_bytes: s.min_free_disk_bytes.unwrap_or(64 << 20),
            heartbeat_interval_ms: heartbeat,
            election_timeout_ms: election,
            // etcd 3.4's default.
            snapshot_count: s.snapshot_count.unwrap_or(100_000).max(1),
            auto_compaction: crate::compaction::Retention::parse(
                s.auto_compaction_mode.as_deref().unwrap_or("periodic"),
                s.auto_compaction_retention.as_deref().unwrap_or("0"),
            )
            .map_err(|e| anyhow::anyhow!(e))?,
            auth_token: {
                let option = s.auth_token.unwrap_or_else(|| "simple".into());
                berth_auth::Tokens::parse(&option, Duration::from_secs(1))
                    .map_err(|e| anyhow::anyhow!("--auth-token: {e}"))?;
                option
            },
            auth_token_ttl: Duration::from_secs(match s.auth_token_ttl.unwrap_or(300) {
                0 => bail!("--auth-token-ttl must be at least 1 second"),
                t => t,
            }),
            bcrypt_cost: match s.bcrypt_cost.unwrap_or(berth_auth::password::DEFAULT_COST) {
                c if berth_auth::password::COSTS.contains(&c) => c,
                c => bail!("--bcrypt-cost {c}: must be between 4 and 31"),
            },
            // etcd's default: ten minutes.
            watch_progress_notify_interval_ms: s
                .watch_progress_notify_interval
                .unwrap_or(600_000)
                .max(100),
            grpc_keepalive_interval: nonzero(grpc_keepalive_interval),
            grpc_keepalive_timeout,
            handshake_timeout: nonzero(handshake_timeout),
            log_json: log_format == "json",
            // openraft warns on every failed heartbeat while a peer is down; keep its errors.
            log_level: s.log_level.unwrap_or_else(|| "info,openraft=error".into()),
            name,
        })
    }

    /// Smallest lease TTL, as etcd derives it: 1.5 election timeouts, rounded up to seconds.
    pub fn min_lease_ttl(&self) -> i64 {
        let ticks = self.election_timeout_ms / self.heartbeat_interval_ms;
        let ms = (3 * ticks / 2) * self.heartbeat_interval_ms;
        ms.div_ceil(1000).max(1) as i64
    }
}

fn read_file(path: &Path) -> anyhow::Result<ServerArgs> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Checks an advertised URL: `http://host:port`, as members and clients will dial it.
fn check_url(flag: &str, url: &str) -> anyhow::Result<()> {
    let uri: http::Uri = url
        .parse()
        .with_context(|| format!("{flag}: {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") | Some("https") => {}
        _ => bail!("{flag}: {url:?} must start with http:// or https://"),
    }
    let authority = uri
        .authority()
        .with_context(|| format!("{flag}: {url:?} names no host"))?;
    if authority.host().is_empty() || authority.port_u16().is_none() {
        bail!("{flag}: {url:?} must name a host and a port (http[s]://host:port)");
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        bail!("{flag}: {url:?} must not have a path");
    }
    Ok(())
}

fn parse_initial_cluster(s: &str) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for part in split_urls(s) {
        let (name, url) = part
            .split_once('=')
            .with_context(|| format!("--initial-cluster entry {part:?} is not name=url"))?;
        if name.trim().is_empty() {
            bail!("--initial-cluster entry {part:?} has no member name (name=url)");
        }
        check_url("--initial-cluster", url)?;
        match out.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => out.push((name.to_string(), vec![url.to_string()])),
        }
    }
    if out.is_empty() {
        bail!("--initial-cluster is empty");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_documented_ones() {
        let c = Config::resolve(ServerArgs::default()).expect("defaults resolve");
        assert_eq!(
            c.listen_client,
            vec!["127.0.0.1:2379".parse().expect("addr")]
        );
        assert_eq!(c.listen_http, vec!["127.0.0.1:8500".parse().expect("addr")]);
        assert_eq!(c.listen_dns, vec!["127.0.0.1:8600".parse().expect("addr")]);
        assert_eq!(c.dns_service_ttl, Duration::ZERO);
        assert_eq!(c.dns_node_ttl, Duration::ZERO);
        assert_eq!(c.data_dir, PathBuf::from("berth-data"));
        assert_eq!(
            c.initial_cluster,
            vec![("default".into(), vec!["http://127.0.0.1:2380".into()])]
        );
        assert_eq!(c.min_lease_ttl(), 2);
        assert_eq!(c.max_request_bytes, 1536 * 1024);
        assert_eq!(
            c.grpc_keepalive_interval,
            Some(Duration::from_secs(2 * 60 * 60))
        );
        assert_eq!(c.grpc_keepalive_timeout, Duration::from_secs(20));
        assert_eq!(c.handshake_timeout, Some(Duration::from_secs(10)));
    }

    #[test]
    fn flags_override_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let f = dir.path().join("b.toml");
        std::fs::write(
            &f,
            "name = \"from-file\"\nmax-txn-ops = 7\nlog-format = \"json\"\n",
        )
        .expect("write");
        let args = ServerArgs {
            config_file: Some(f),
            name: Some("from-flag".into()),
            ..Default::default()
        };
        let c = Config::resolve(args).expect("resolve");
        assert_eq!(c.name, "from-flag");
        assert_eq!(c.max_txn_ops, 7);
        assert!(c.log_json);
    }

    #[test]
    fn bad_values_are_rejected() {
        let bad = |a: ServerArgs| Config::resolve(a).is_err();
        assert!(bad(ServerArgs {
            initial_cluster_state: Some("weird".into()),
            ..Default::default()
        }));
        assert!(bad(ServerArgs {
            listen_client_urls: Some("unix://127.0.0.1:1".into()),
            ..Default::default()
        }));
        assert!(bad(ServerArgs {
            initial_cluster: Some("nourl".into()),
            ..Default::default()
        }));
        let err = |a: ServerArgs| format!("{:#}", Config::resolve(a).expect_err("refused"));
        let msg = err(ServerArgs {
            initial_cluster: Some("=http://127.0.0.1:2380".into()),
            ..Default::default()
        });
        assert!(msg.contains("no member name"), "{msg}");
        let msg = err(ServerArgs {
            initial_advertise_peer_urls: Some("http://127.0.0.1".into()),
            ..Default::default()
        });
        assert!(msg.contains("port"), "{msg}");
        let msg = err(ServerArgs {
            initial_advertise_peer_urls: Some("ftp://127.0.0.1:2380".into()),
            ..Default::default()
        });
        assert!(msg.contains("https://"), "{msg}");
        let msg = err(ServerArgs {
            name: Some("m1".into()),
            initial_cluster: Some("m2=http://127.0.0.1:2380".into()),
            ..Default::default()
        });
        assert!(msg.contains("does not list"), "{msg}");
        let msg = err(ServerArgs {
            initial_cluster: Some("default=http://127.0.0.1:9999".into()),
            ..Default::default()
        });
        assert!(msg.contains("--initial-advertise-peer-urls"), "{msg}");
        assert!(bad(ServerArgs {
            grpc_keepalive_interval: Some("often".into()),
            ..Default::default()
        }));
        assert!(bad(ServerArgs {
            grpc_keepalive_timeout: Some("0".into()),
            ..Default::default()
        }));
    }

    #[test]
    fn dns_flags_resolve_and_bad_ones_are_refused() {
        let c = Config::resolve(ServerArgs {
            listen_dns_addr: Some("127.0.0.1:5353, [::1]:5354".into()),
            dns_service_ttl: Some("30s".into()),
            dns_node_ttl: Some("1m".into()),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(
            c.listen_dns,
            vec![
                "127.0.0.1:5353".parse().expect("addr"),
                "[::1]:5354".parse().expect("addr")
            ]
        );
        assert_eq!(c.dns_service_ttl, Duration::from_secs(30));
        assert_eq!(c.dns_node_ttl, Duration::from_secs(60));
        let off = Config::resolve(ServerArgs {
            listen_dns_addr: Some(String::new()),
            ..Default::default()
        })
        .expect("resolve");
        assert!(off.listen_dns.is_empty());
        let err = |a: ServerArgs| format!("{:#}", Config::resolve(a).expect_err("refused"));
        let msg = err(ServerArgs {
            listen_dns_addr: Some("udp://127.0.0.1:53".into()),
            ..Default::default()
        });
        assert!(msg.contains("--listen-dns-addr"), "{msg}");
        let msg = err(ServerArgs {
            dns_node_ttl: Some("soon".into()),
            ..Default::default()
        });
        assert!(msg.contains("--dns-node-ttl"), "{msg}");
        let msg = err(ServerArgs {
            dns_service_ttl: Some("100000000h".into()),
            ..Default::default()
        });
        assert!(msg.contains("--dns-service-ttl"), "{msg}");
    }

    #[test]
    fn a_check_ca_file_must_be_a_readable_bundle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("missing.pem");
        let err = |a: ServerArgs| format!("{:#}", Config::resolve(a).expect_err("refused"));
        let msg = err(ServerArgs {
            check_ca_file: Some(missing.clone()),
            ..Default::default()
        });
        assert!(msg.contains("--check-ca-file"), "{msg}");
        assert!(msg.contains("missing.pem"), "{msg}");
        let junk = dir.path().join("junk.pem");
        std::fs::write(&junk, "not a certificate").expect("write");
        let msg = err(ServerArgs {
            check_ca_file: Some(junk),
            ..Default::default()
        });
        assert!(msg.contains("junk.pem"), "{msg}");
        let ca = dir.path().join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["ca".into()]).expect("generate");
        std::fs::write(&ca, cert.cert.pem()).expect("write");
        let c = Config::resolve(ServerArgs {
            check_ca_file: Some(ca.clone()),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(c.check_ca_file, Some(ca));
    }

    #[test]
    fn durations_take_etcds_spelling_and_zero_turns_them_off() {
        let c = Config::resolve(ServerArgs {
            grpc_keepalive_interval: Some("1m30s".into()),
            grpc_keepalive_timeout: Some("500ms".into()),
            handshake_timeout: Some("0".into()),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(c.grpc_keepalive_interval, Some(Duration::from_secs(90)));
        assert_eq!(c.grpc_keepalive_timeout, Duration::from_millis(500));
        assert_eq!(c.handshake_timeout, None);
        let c = Config::resolve(ServerArgs {
            grpc_keepalive_interval: Some("0".into()),
            ..Default::default()
        })
        .expect("resolve");
        assert_eq!(c.grpc_keepalive_interval, None);
    }
}
