//! The gateway's resources, typed: parsed from the JSON the admin API takes (APISIX's Admin
//! API v3 shapes) and the store keeps as it was written, so a client reads back exactly what
//! it wrote. Parsing is validation: a resource that parses is one the data plane can serve.
//! References between resources (a route's `upstream_id`) are checked by the caller, which
//! sees every resource.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use serde_json::Value;

use crate::plugins::Plugins;
use crate::vars::Expr;
use crate::GatewayError;

/// A kind of gateway resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// What requests match, and where they go.
    Route,
    /// Plugins, hosts and an upstream shared by routes.
    Service,
    /// Where requests go: nodes, or a registry service's healthy instances.
    Upstream,
    /// Who calls: credentials and per-caller plugins.
    Consumer,
    /// A certificate served by SNI.
    Ssl,
    /// Plugins routes take by `plugin_config_id`.
    PluginConfig,
    /// Plugins run on every request.
    GlobalRule,
    /// Plugins consumers take by `group_id`.
    ConsumerGroup,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 8] = [
        Kind::Route,
        Kind::Service,
        Kind::Upstream,
        Kind::Consumer,
        Kind::Ssl,
        Kind::PluginConfig,
        Kind::GlobalRule,
        Kind::ConsumerGroup,
    ];

    /// The kind's name in admin API paths and store keys (`routes`).
    pub fn plural(self) -> &'static str {
        match self {
            Kind::Route => "routes",
            Kind::Service => "services",
            Kind::Upstream => "upstreams",
            Kind::Consumer => "consumers",
            Kind::Ssl => "ssls",
            Kind::PluginConfig => "plugin_configs",
            Kind::GlobalRule => "global_rules",
            Kind::ConsumerGroup => "consumer_groups",
        }
    }

    /// The kind's name in messages (`route`).
    pub fn singular(self) -> &'static str {
        match self {
            Kind::Route => "route",
            Kind::Service => "service",
            Kind::Upstream => "upstream",
            Kind::Consumer => "consumer",
            Kind::Ssl => "ssl",
            Kind::PluginConfig => "plugin_config",
            Kind::GlobalRule => "global_rule",
            Kind::ConsumerGroup => "consumer_group",
        }
    }

    /// The kind named `s` in a path (`routes`).
    pub fn from_plural(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.plural() == s)
    }

    /// The field that holds a resource's ID (`username` for consumers, else `id`).
    pub fn id_field(self) -> &'static str {
        match self {
            Kind::Consumer => "username",
            _ => "id",
        }
    }
}

/// Checks a resource ID: 1 to 64 of `[A-Za-z0-9._-]`, as APISIX's.
pub fn check_id(kind: Kind, id: &str) -> Result<(), GatewayError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::invalid(format!(
            "property \"{}\" validation failed: {id:?} must be 1 to 64 of A-Z a-z 0-9 . _ -",
            kind.id_field()
        )))
    }
}

/// Connect, send and read timeouts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeout {
    /// Connecting to a node.
    pub connect: Duration,
    /// Receiving the client's request body before it is sent on (berth reads bodies of up
    /// to 64 KiB ahead; longer ones stream).
    pub send: Duration,
    /// From the request sent to the response's head.
    pub read: Duration,
    /// From when the request is sent on (after the route's plugins: auth, limits) to the
    /// response's head, every attempt included (berth's `timeout.total`; APISIX has none):
    /// past it, a 504.
    pub total: Option<Duration>,
}

impl Default for Timeout {
    /// APISIX's defaults: 60 s each.
    fn default() -> Timeout {
        Timeout {
            connect: Duration::from_secs(60),
            send: Duration::from_secs(60),
            read: Duration::from_secs(60),
            total: None,
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TimeoutSpec {
    connect: f64,
    send: f64,
    read: f64,
    #[serde(default)]
    total: Option<f64>,
}

fn seconds(field: &str, s: f64) -> Result<Duration, GatewayError> {
    if s.is_finite() && s > 0.0 && s <= 365.0 * 86400.0 {
        Ok(Duration::from_secs_f64(s))
    } else {
        Err(GatewayError::invalid(format!(
            "property \"{field}\" validation failed: expected a number of seconds above 0, got {s}"
        )))
    }
}

impl TimeoutSpec {
    fn parse(self) -> Result<Timeout, GatewayError> {
        Ok(Timeout {
            connect: seconds("timeout.connect", self.connect)?,
            send: seconds("timeout.send", self.send)?,
            read: seconds("timeout.read", self.read)?,
            total: self
                .total
                .map(|t| seconds("timeout.total", t))
                .transpose()?,
        })
    }
}

/// Deserializes `value` as `T`, naming the failing field in APISIX's manner.
pub(crate) fn from_value<T: serde::de::DeserializeOwned>(value: &Value) -> Result<T, GatewayError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        if path == "." {
            GatewayError::invalid(inner)
        } else {
            GatewayError::invalid(format!("property \"{path}\" validation failed: {inner}"))
        }
    })
}

/// One string or a list of them (APISIX's `uri`/`uris`, `host`/`hosts` pairs).
fn one_or_many(
    one: Option<String>,
    many: Option<Vec<String>>,
    names: (&str, &str),
) -> Result<Vec<String>, GatewayError> {
    match (one, many) {
        (Some(_), Some(_)) => Err(GatewayError::invalid(format!(
            "value should match only one schema, but matches both: \"{}\" and \"{}\" are exclusive",
            names.0, names.1
        ))),
        (Some(one), None) => Ok(vec![one]),
        (None, Some(many)) => {
            if many.is_empty() {
                return Err(GatewayError::invalid(format!(
                    "property \"{}\" validation failed: expect array to have at least 1 items",
                    names.1
                )));
            }
            Ok(many)
        }
        (None, None) => Ok(Vec::new()),
    }
}

/// A route's path pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// Exactly this path.
    Exact(String),
    /// This prefix (the pattern's part before its trailing `*`).
    Prefix(String),
    /// Segments, some of them parameters (`/user/:id`): each `:x` matches one segment.
    Params(Vec<Segment>),
}

/// A segment of a [`PathPattern::Params`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    /// This text.
    Literal(String),
    /// Any one non-empty segment.
    Param,
}

impl PathPattern {
    /// The pattern of a route's `uri`: `/a` exact, `/a/*` (or `/a*`) a prefix, `/a/:id/b`
    /// with parameters.
    pub fn parse(uri: &str) -> Result<PathPattern, GatewayError> {
        if !uri.starts_with('/') && uri != "*" {
            return Err(GatewayError::invalid(format!(
                "property \"uri\" validation failed: {uri:?} must start with /"
            )));
        }
        if uri.bytes().any(|b| b.is_ascii_control() || b == b' ') {
            return Err(GatewayError::invalid(format!(
                "property \"uri\" validation failed: {uri:?} holds a space or a control character"
            )));
        }
        if let Some(prefix) = uri.strip_suffix('*') {
            if prefix.contains('*') || prefix.contains("/:") {
                return Err(GatewayError::invalid(format!(
                    "property \"uri\" validation failed: {uri:?}: only a trailing * is supported"
                )));
            }
            return Ok(PathPattern::Prefix(prefix.to_string()));
        }
        if uri.contains('*') {
            return Err(GatewayError::invalid(format!(
                "property \"uri\" validation failed: {uri:?}: only a trailing * is supported"
            )));
        }
        if uri.contains("/:") {
            let segments = uri
                .split('/')
                .skip(1)
                .map(|s| match s.strip_prefix(':') {
                    Some(_) => Segment::Param,
                    None => Segment::Literal(s.to_string()),
                })
                .collect();
            return Ok(PathPattern::Params(segments));
        }
        Ok(PathPattern::Exact(uri.to_string()))
    }

    /// True when `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Exact(p) => p == path,
            PathPattern::Prefix(p) => path.starts_with(p.as_str()),
            PathPattern::Params(segments) => {
                let mut parts = path.split('/').skip(usize::from(path.starts_with('/')));
                for seg in segments {
                    match (seg, parts.next()) {
                        (Segment::Literal(l), Some(p)) if l == p => {}
                        (Segment::Param, Some(p)) if !p.is_empty() => {}
                        _ => return false,
                    }
                }
                parts.next().is_none()
            }
        }
    }

    /// The literal length that orders patterns of one kind (longer first).
    pub fn literal_len(&self) -> usize {
        match self {
            PathPattern::Exact(p) | PathPattern::Prefix(p) => p.len(),
            PathPattern::Params(s) => s
                .iter()
                .map(|s| match s {
                    Segment::Literal(l) => l.len() + 1,
                    Segment::Param => 1,
                })
                .sum(),
        }
    }
}

/// A host pattern: exact, or `*.suffix` (any name ending in `.suffix`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// Exactly this name (lower case).
    Exact(String),
    /// Names ending in this (lower case, starting with `.`).
    Suffix(String),
}

impl HostPattern {
    /// Parses a route's or service's host.
    pub fn parse(host: &str) -> Result<HostPattern, GatewayError> {
        let h = host.to_ascii_lowercase();
        if h == "*" {
            return Ok(HostPattern::Suffix(String::new()));
        }
        let (wild, name) = match h.strip_prefix("*.") {
            Some(rest) => (true, rest),
            None => (false, h.as_str()),
        };
        let ok = !name.is_empty()
            && name.len() <= 253
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'));
        if !ok {
            return Err(GatewayError::invalid(format!(
                "property \"host\" validation failed: {host:?} is not a host name or *.name"
            )));
        }
        Ok(if wild {
            HostPattern::Suffix(format!(".{name}"))
        } else {
            HostPattern::Exact(name.to_string())
        })
    }
}

/// An upstream's load-balancing type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin (`roundrobin`).
    RoundRobin,
    /// Consistent hashing on a key (`chash`).
    Chash {
        /// What is hashed.
        hash_on: HashOn,
        /// The variable, header or cookie name.
        key: String,
    },
    /// Power of two choices over peak-EWMA latency × requests in flight (`ewma`).
    Ewma,
    /// Fewest requests in flight per weight (`least_conn`).
    LeastConn,
}

/// What a `chash` upstream hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashOn {
    /// A variable (`remote_addr`, `uri`, `arg_x`, `http_x`, ...).
    Vars,
    /// A request header.
    Header,
    /// A cookie.
    Cookie,
    /// The authenticated consumer's name.
    Consumer,
}

/// A static upstream node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    /// Host name or IP address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Weight (0: never picked).
    pub weight: u32,
}

/// Where a registry-driven upstream's nodes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovery {
    /// The registry's instances as Consul names them (`service_name` is the catalog name).
    Consul {
        /// Instances must carry every one of these tags (berth's `discovery_args.tags`).
        tags: Vec<String>,
    },
    /// The registry's instances as Nacos names them.
    Nacos {
        /// The namespace (`public` when not given).
        namespace: String,
        /// The group (`DEFAULT_GROUP` when not given).
        group: String,
    },
}

/// An upstream's nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Nodes {
    /// Fixed nodes.
    Static(Vec<Node>),
    /// A registry service's healthy instances, live.
    Registry {
        /// The service's name.
        service: String,
        /// How the name is read.
        discovery: Discovery,
    },
}

/// The protocol spoken to the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// HTTP/1.1 (and upgrades).
    Http,
    /// HTTP/1.1 over TLS.
    Https,
    /// gRPC: HTTP/2 without TLS (h2c).
    Grpc,
    /// gRPC over TLS.
    Grpcs,
}

/// What `Host` header the node gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PassHost {
    /// The client's.
    Pass,
    /// The node's `host:port`.
    Node,
    /// This one.
    Rewrite(String),
}

/// An upstream.
#[derive(Debug, Clone, PartialEq)]
pub struct Upstream {
    /// How a node is picked.
    pub balance: Balance,
    /// The nodes.
    pub nodes: Nodes,
    /// The protocol.
    pub scheme: Scheme,
    /// The `Host` sent.
    pub pass_host: PassHost,
    /// How many other nodes a failed request may be retried on (`None`: one fewer than the
    /// nodes, as APISIX).
    pub retries: Option<u32>,
    /// How long retrying may go on.
    pub retry_timeout: Option<Duration>,
    /// Timeouts (a route's own win).
    pub timeout: Option<Timeout>,
    /// Passive health checks: nodes ejected after consecutive failures.
    pub passive: Option<Passive>,
    /// Active health checks: each member probes the nodes itself.
    pub active: Option<Active>,
    /// TLS to the nodes (schemes `https` and `grpcs`; `None` for the others).
    pub tls: Option<NodeTls>,
}

/// TLS to an upstream's nodes (`tls`, APISIX's shape). The server name sent and checked is
/// the `Host` the node gets (its port left out), as APISIX's `upstream_host`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct NodeTls {
    /// Check the node's certificate against the trusted roots (APISIX's default: off).
    pub verify: bool,
    /// The certificate this side shows (mutual TLS), if any.
    pub client_cert: Option<ClientCert>,
}

/// The certificate a gateway shows its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ClientCert {
    /// Given in the upstream (`client_cert`, `client_key`).
    Inline {
        /// PEM certificate chain.
        cert: String,
        /// PEM private key.
        key: String,
    },
    /// An ssl of type `client`, by ID (`client_cert_id`).
    Ssl(String),
}

/// How an active check probes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActiveKind {
    /// An HTTP request.
    Http,
    /// An HTTP request over TLS (`verify`: check the node's certificate).
    Https {
        /// Check the node's certificate against the trusted roots.
        verify: bool,
    },
    /// A TCP connect.
    Tcp,
    /// `grpc.health.v1`'s Check (berth's `grpc` and `grpcs` types; APISIX has none): a
    /// node passes when it answers SERVING.
    Grpc {
        /// Over TLS (`grpcs`), checking the node's certificate when true.
        tls: Option<bool>,
        /// The service asked about (`grpc_service`; empty: the whole server).
        service: String,
    },
}

/// Active health checks (`checks.active`, APISIX's shape and defaults): every member probes
/// each node of the upstream on its own (health is seen from where the traffic leaves, as
/// Kong and APISIX do); a node that fails `http_failures` probes in a row by status (or
/// `tcp_failures` connects, or `timeouts`) is taken out until `successes` probes in a row
/// pass. Nodes out are passed over unless every node is out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Active {
    /// How to probe.
    pub kind: ActiveKind,
    /// A probe's timeout.
    pub timeout: Duration,
    /// The `Host` of HTTP probes (the node's address when unset).
    pub host: Option<String>,
    /// Probe this port instead of the node's.
    pub port: Option<u16>,
    /// The path of HTTP probes.
    pub http_path: String,
    /// Extra headers of HTTP probes.
    pub req_headers: Vec<(String, String)>,
    /// Probe interval of nodes that are in.
    pub healthy_interval: Duration,
    /// Statuses that pass.
    pub healthy_statuses: Vec<u16>,
    /// Passes in a row that bring a node back.
    pub successes: u32,
    /// Probe interval of nodes that are out.
    pub unhealthy_interval: Duration,
    /// Statuses that fail.
    pub unhealthy_statuses: Vec<u16>,
    /// Failed statuses in a row that take a node out.
    pub http_failures: u32,
    /// Failed connects in a row that take a node out.
    pub tcp_failures: u32,
    /// Timeouts in a row that take a node out.
    pub timeouts: u32,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActiveSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    timeout: Option<f64>,
    #[serde(default)]
    concurrency: Option<u32>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    port: Option<u16>,
    #[serde(default)]
    http_path: Option<String>,
    #[serde(default)]
    https_verify_certificate: Option<bool>,
    #[serde(default)]
    req_headers: Option<Vec<String>>,
    #[serde(default)]
    grpc_service: Option<String>,
    #[serde(default)]
    healthy: Option<ActiveHealthySpec>,
    #[serde(default)]
    unhealthy: Option<UnhealthySpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActiveHealthySpec {
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    http_statuses: Option<Vec<u16>>,
    #[serde(default)]
    successes: Option<u32>,
}

fn bad_active(msg: impl std::fmt::Display) -> GatewayError {
    GatewayError::invalid(format!(
        "property \"checks.active\" validation failed: {msg}"
    ))
}

fn parse_active(v: &Value) -> Result<Active, GatewayError> {
    let spec: ActiveSpec = from_value(v)?;
    let _ = spec.concurrency;
    let verify = spec.https_verify_certificate.unwrap_or(true);
    let kind = match spec.kind.as_deref().unwrap_or("http") {
        "http" => ActiveKind::Http,
        "https" => ActiveKind::Https { verify },
        "tcp" => ActiveKind::Tcp,
        g @ ("grpc" | "grpcs") => ActiveKind::Grpc {
            tls: (g == "grpcs").then_some(verify),
            service: spec.grpc_service.clone().unwrap_or_default(),
        },
        other => {
            return Err(bad_active(format!(
            "\"type\" matches none of the enum values (http, https, tcp, grpc, grpcs): {other:?}"
        )))
        }
    };
    if spec.grpc_service.is_some() && !matches!(kind, ActiveKind::Grpc { .. }) {
        return Err(bad_active("\"grpc_service\" goes with type grpc or grpcs"));
    }
    let timeout = spec.timeout.unwrap_or(1.0);
    if !(timeout.is_finite() && timeout > 0.0 && timeout <= 3600.0) {
        return Err(bad_active(
            "\"timeout\" must be above 0 (seconds, at most 3600)",
        ));
    }
    let http_path = spec.http_path.unwrap_or_else(|| "/".into());
    if !http_path.starts_with('/') || http_path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(bad_active("\"http_path\" must be a path starting with /"));
    }
    let mut req_headers = Vec::new();
    for h in spec.req_headers.unwrap_or_default() {
        let Some((k, v)) = h.split_once(':') else {
            return Err(bad_active(format!(
                "req_headers: {h:?} is not \"Name: value\""
            )));
        };
        let (k, v) = (k.trim(), v.trim());
        if http::HeaderName::from_bytes(k.as_bytes()).is_err()
            || http::HeaderValue::from_str(v).is_err()
        {
            return Err(bad_active(format!(
                "req_headers: {h:?} is not a valid header"
            )));
        }
        req_headers.push((k.to_string(), v.to_string()));
    }
    if let Some(h) = &spec.host {
        if http::HeaderValue::from_str(h).is_err() || h.is_empty() {
            return Err(bad_active("\"host\" is not a valid host"));
        }
    }
    if spec.port == Some(0) {
        return Err(bad_active("\"port\" must be 1 to 65535"));
    }
    let healthy = spec.healthy.unwrap_or_default();
    let unhealthy = spec.unhealthy.unwrap_or_default();
    let interval = |v: Option<u64>| match v.unwrap_or(1) {
        0 => Err(bad_active("an \"interval\" must be at least 1 (second)")),
        n if n > 86_400 => Err(bad_active(
            "an \"interval\" must be at most 86400 (seconds)",
        )),
        n => Ok(Duration::from_secs(n)),
    };
    let count = |name: &str, v: Option<u32>, default: u32| match v.unwrap_or(default) {
        n @ 1..=254 => Ok(n),
        _ => Err(bad_active(format!("\"{name}\" must be 1 to 254"))),
    };
    let statuses = |v: Option<Vec<u16>>, default: &[u16]| {
        let v = v.unwrap_or_else(|| default.to_vec());
        if v.iter().any(|s| !(200..=599).contains(s)) {
            return Err(bad_active("\"http_statuses\" must be 200 to 599"));
        }
        Ok(v)
    };
    Ok(Active {
        kind,
        timeout: Duration::from_secs_f64(timeout),
        host: spec.host,
        port: spec.port,
        http_path,
        req_headers,
        healthy_interval: interval(healthy.interval)?,
        healthy_statuses: statuses(healthy.http_statuses, &[200, 302])?,
        successes: count("successes", healthy.successes, 2)?,
        unhealthy_interval: interval(unhealthy.interval)?,
        unhealthy_statuses: statuses(
            unhealthy.http_statuses,
            &[429, 404, 500, 501, 502, 503, 504, 505],
        )?,
        http_failures: count("http_failures", unhealthy.http_failures, 5)?,
        tcp_failures: count("tcp_failures", unhealthy.tcp_failures, 2)?,
        timeouts: count("timeouts", unhealthy.timeouts, 3)?,
    })
}

/// Passive health checks (`checks.passive`, APISIX's shape): a node that fails this many
/// times in a row is ejected for a while (30 s, doubling with each ejection up to 300 s), and
/// comes back by itself; at most half of an upstream's nodes are out at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Passive {
    /// Statuses that count as failures.
    pub unhealthy_statuses: Vec<u16>,
    /// Failed responses in a row that eject a node.
    pub http_failures: u32,
    /// Failed connections in a row that eject a node.
    pub tcp_failures: u32,
    /// Timeouts in a row that eject a node.
    pub timeouts: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChecksSpec {
    #[serde(default)]
    active: Option<Value>,
    #[serde(default)]
    passive: Option<PassiveSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PassiveSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    healthy: Option<Value>,
    #[serde(default)]
    unhealthy: Option<UnhealthySpec>,
}

/// `unhealthy` of active and passive checks (only active ones have an `interval`).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct UnhealthySpec {
    #[serde(default)]
    interval: Option<u64>,
    #[serde(default)]
    http_statuses: Option<Vec<u16>>,
    #[serde(default)]
    http_failures: Option<u32>,
    #[serde(default)]
    tcp_failures: Option<u32>,
    #[serde(default)]
    timeouts: Option<u32>,
}

fn parse_checks(v: &Value) -> Result<(Option<Active>, Option<Passive>), GatewayError> {
    let spec: ChecksSpec = from_value(v)?;
    let active = spec.active.as_ref().map(parse_active).transpose()?;
    let Some(p) = spec.passive else {
        if active.is_none() {
            return Err(GatewayError::invalid(
                "property \"checks\" validation failed: \"active\" or \"passive\" is required",
            ));
        }
        return Ok((active, None));
    };
    if p.kind.as_deref().is_some_and(|k| k != "http") {
        return Err(GatewayError::Unsupported(
            "passive checks of type other than http".into(),
        ));
    }
    let _ = p.healthy;
    let u = p.unhealthy.unwrap_or_default();
    if u.interval.is_some() {
        return Err(GatewayError::invalid(
            "property \"checks.passive.unhealthy\" validation failed: additional properties forbidden, found interval",
        ));
    }
    // APISIX's defaults.
    let passive = Passive {
        unhealthy_statuses: u.http_statuses.unwrap_or_else(|| vec![429, 500, 503]),
        http_failures: u.http_failures.unwrap_or(5),
        tcp_failures: u.tcp_failures.unwrap_or(2),
        timeouts: u.timeouts.unwrap_or(7),
    };
    if passive.http_failures == 0 || passive.tcp_failures == 0 || passive.timeouts == 0 {
        return Err(GatewayError::invalid(
            "property \"checks.passive.unhealthy\" validation failed: counts must be at least 1",
        ));
    }
    Ok((active, Some(passive)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpstreamSpec {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    create_time: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    nodes: Option<Value>,
    #[serde(default)]
    service_name: Option<String>,
    #[serde(default)]
    discovery_type: Option<String>,
    #[serde(default)]
    discovery_args: Option<DiscoveryArgs>,
    #[serde(default)]
    hash_on: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    checks: Option<Value>,
    #[serde(default)]
    retries: Option<u32>,
    #[serde(default)]
    retry_timeout: Option<f64>,
    #[serde(default)]
    timeout: Option<TimeoutSpec>,
    #[serde(default)]
    scheme: Option<String>,
    #[serde(default)]
    pass_host: Option<String>,
    #[serde(default)]
    upstream_host: Option<String>,
    #[serde(default)]
    keepalive_pool: Option<Value>,
    #[serde(default)]
    tls: Option<TlsSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSpec {
    #[serde(default)]
    verify: Option<bool>,
    #[serde(default)]
    client_cert: Option<String>,
    #[serde(default)]
    client_key: Option<String>,
    #[serde(default)]
    client_cert_id: Option<Value>,
}

impl TlsSpec {
    fn parse(self) -> Result<NodeTls, GatewayError> {
        let client_cert = match (self.client_cert, self.client_key, self.client_cert_id) {
            (None, None, None) => None,
            (Some(cert), Some(key), None) => Some(ClientCert::Inline { cert, key }),
            (None, None, Some(id)) => id_ref(Kind::Ssl, Some(id))?.map(ClientCert::Ssl),
            (Some(_), None, _) | (None, Some(_), _) => {
                return Err(GatewayError::invalid(
                    "property \"tls\" validation failed: \"client_cert\" and \"client_key\" go together",
                ))
            }
            (Some(_), Some(_), Some(_)) => {
                return Err(GatewayError::invalid(
                    "property \"tls\" validation failed: \"client_cert_id\" excludes \"client_cert\" and \"client_key\"",
                ))
            }
        };
        Ok(NodeTls {
            verify: self.verify.unwrap_or(false),
            client_cert,
        })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DiscoveryArgs {
    #[serde(default)]
    namespace_id: Option<String>,
    #[serde(default)]
    group_name: Option<String>,
    #[serde(default)]
    tags: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    host: String,
    #[serde(default)]
    port: Option<u16>,
    weight: u32,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    metadata: Option<Value>,
}

fn check_host(host: &str) -> Result<(), GatewayError> {
    let ok = host.parse::<IpAddr>().is_ok()
        || (!host.is_empty()
            && host.len() <= 253
            && host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
    if ok {
        Ok(())
    } else {
        Err(GatewayError::invalid(format!(
            "property \"nodes\" validation failed: {host:?} is not a host name or IP address"
        )))
    }
}

/// Splits `host:port` (`[v6]:port`; the port may be absent).
fn split_node(s: &str) -> Result<(String, Option<u16>), GatewayError> {
    let bad = || {
        GatewayError::invalid(format!(
            "property \"nodes\" validation failed: {s:?} is not host:port"
        ))
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (ip, tail) = rest.split_once(']').ok_or_else(bad)?;
        ip.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((ip.to_string(), Some(p.parse().map_err(|_| bad())?))),
            None if tail.is_empty() => Ok((ip.to_string(), None)),
            None => Err(bad()),
        };
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => {
            Ok((h.to_string(), Some(p.parse().map_err(|_| bad())?)))
        }
        Some(_) => Err(bad()),
        None => Ok((s.to_string(), None)),
    }
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http | Scheme::Grpc => 80,
            Scheme::Https | Scheme::Grpcs => 443,
        }
    }

    /// True for the schemes spoken over TLS.
    pub fn tls(self) -> bool {
        matches!(self, Scheme::Https | Scheme::Grpcs)
    }

    /// True for the gRPC schemes (HTTP/2 to the node).
    pub fn grpc(self) -> bool {
        matches!(self, Scheme::Grpc | Scheme::Grpcs)
    }
}

fn parse_nodes(v: &Value, scheme: Scheme) -> Result<Vec<Node>, GatewayError> {
    let mut nodes = Vec::new();
    match v {
        Value::Object(map) => {
            for (addr, w) in map {
                let (host, port) = split_node(addr)?;
                let weight = w
                    .as_u64()
                    .and_then(|w| u32::try_from(w).ok())
                    .ok_or_else(|| {
                        GatewayError::invalid(format!(
                            "property \"nodes\" validation failed: the weight of {addr:?} must be a whole number from 0"
                        ))
                    })?;
                check_host(&host)?;
                nodes.push(Node {
                    host,
                    port: port.unwrap_or(scheme.default_port()),
                    weight,
                });
            }
        }
        Value::Array(list) => {
            for n in list {
                let spec: NodeSpec = from_value(n)?;
                let _ = (spec.priority, spec.metadata);
                let (host, port) = match spec.port {
                    Some(p) => (spec.host.clone(), Some(p)),
                    None => split_node(&spec.host)?,
                };
                check_host(&host)?;
                nodes.push(Node {
                    host,
                    port: port.unwrap_or(scheme.default_port()),
                    weight: spec.weight,
                });
            }
        }
        _ => {
            return Err(GatewayError::invalid(
                "property \"nodes\" validation failed: expected an object of \"host:port\": weight or an array of nodes",
            ))
        }
    }
    if nodes.iter().any(|n| n.port == 0) {
        return Err(GatewayError::invalid(
            "property \"nodes\" validation failed: port 0 is not a port",
        ));
    }
    Ok(nodes)
}

impl Upstream {
    /// Parses an upstream (a stored one, or one inline in a route or service).
    pub fn parse(v: &Value) -> Result<Upstream, GatewayError> {
        let spec: UpstreamSpec = from_value(v)?;
        let _ = (
            spec.id,
            spec.name,
            spec.desc,
            spec.labels,
            spec.create_time,
            spec.update_time,
        );
        let scheme = match spec.scheme.as_deref().unwrap_or("http") {
            "http" => Scheme::Http,
            "https" => Scheme::Https,
            "grpc" => Scheme::Grpc,
            "grpcs" => Scheme::Grpcs,
            other => {
                return Err(GatewayError::invalid(format!(
                    "property \"scheme\" validation failed: matches none of the enum values (http, https, grpc, grpcs): {other:?}"
                )))
            }
        };
        let (active, passive) = match &spec.checks {
            None => (None, None),
            Some(c) => parse_checks(c)?,
        };
        // APISIX takes `tls` with any scheme and uses it only with https and grpcs.
        let tls = spec.tls.map(TlsSpec::parse).transpose()?;
        let tls = scheme.tls().then(|| tls.unwrap_or_default());
        let _ = spec.keepalive_pool;
        let nodes = match (&spec.nodes, spec.service_name) {
            (Some(_), Some(_)) => {
                return Err(GatewayError::invalid(
                    "value should match only one schema, but matches both: \"nodes\" and \"service_name\" are exclusive",
                ))
            }
            (None, None) => {
                return Err(GatewayError::invalid(
                    "value should match only one schema, but matches none: \"nodes\" or \"service_name\" is required",
                ))
            }
            (Some(n), None) => {
                if spec.discovery_type.is_some() {
                    return Err(GatewayError::invalid(
                        "\"discovery_type\" goes with \"service_name\", not \"nodes\"",
                    ));
                }
                Nodes::Static(parse_nodes(n, scheme)?)
            }
            (None, Some(service)) => {
                if service.is_empty() || service.len() > 256 {
                    return Err(GatewayError::invalid(
                        "property \"service_name\" validation failed: must be 1 to 256 characters",
                    ));
                }
                let args = spec.discovery_args.unwrap_or_default();
                let discovery = match spec.discovery_type.as_deref() {
                    Some("consul") => {
                        if args.namespace_id.is_some() || args.group_name.is_some() {
                            return Err(GatewayError::invalid(
                                "\"discovery_args\": namespace_id and group_name are Nacos's",
                            ));
                        }
                        Discovery::Consul {
                            tags: args.tags.unwrap_or_default(),
                        }
                    }
                    Some("nacos") => {
                        if args.tags.is_some() {
                            return Err(GatewayError::invalid(
                                "\"discovery_args\": tags are Consul's",
                            ));
                        }
                        Discovery::Nacos {
                            namespace: args
                                .namespace_id
                                .filter(|n| !n.is_empty())
                                .unwrap_or_else(|| "public".into()),
                            group: args
                                .group_name
                                .filter(|g| !g.is_empty())
                                .unwrap_or_else(|| "DEFAULT_GROUP".into()),
                        }
                    }
                    Some(other) => {
                        return Err(GatewayError::invalid(format!(
                            "property \"discovery_type\" validation failed: berth's registry answers \"consul\" and \"nacos\", not {other:?}"
                        )))
                    }
                    None => {
                        return Err(GatewayError::invalid(
                            "\"service_name\" needs \"discovery_type\" (\"consul\" or \"nacos\")",
                        ))
                    }
                };
                Nodes::Registry { service, discovery }
            }
        };
        let hash_on = match spec.hash_on.as_deref().unwrap_or("vars") {
            "vars" => HashOn::Vars,
            "header" => HashOn::Header,
            "cookie" => HashOn::Cookie,
            "consumer" => HashOn::Consumer,
            other => {
                return Err(GatewayError::invalid(format!(
                    "property \"hash_on\" validation failed: matches none of the enum values (vars, header, cookie, consumer): {other:?}"
                )))
            }
        };
        let balance = match spec.kind.as_deref().unwrap_or("roundrobin") {
            "roundrobin" => Balance::RoundRobin,
            "ewma" => Balance::Ewma,
            "least_conn" => Balance::LeastConn,
            "chash" => {
                let key = spec.key.unwrap_or_default();
                if key.is_empty() && hash_on != HashOn::Consumer {
                    return Err(GatewayError::invalid(
                        "property \"key\" is required when \"type\" is chash",
                    ));
                }
                Balance::Chash { hash_on, key }
            }
            other => {
                return Err(GatewayError::invalid(format!(
                    "property \"type\" validation failed: matches none of the enum values (roundrobin, chash, ewma, least_conn): {other:?}"
                )))
            }
        };
        let pass_host = match spec.pass_host.as_deref().unwrap_or("pass") {
            "pass" => PassHost::Pass,
            "node" => PassHost::Node,
            "rewrite" => match spec.upstream_host {
                Some(h) if !h.is_empty() => PassHost::Rewrite(h),
                _ => {
                    return Err(GatewayError::invalid(
                        "property \"upstream_host\" is required when \"pass_host\" is rewrite",
                    ))
                }
            },
            other => {
                return Err(GatewayError::invalid(format!(
                    "property \"pass_host\" validation failed: matches none of the enum values (pass, node, rewrite): {other:?}"
                )))
            }
        };
        Ok(Upstream {
            balance,
            nodes,
            scheme,
            pass_host,
            retries: spec.retries,
            retry_timeout: spec
                .retry_timeout
                .filter(|t| *t > 0.0)
                .map(|t| seconds("retry_timeout", t))
                .transpose()?,
            timeout: spec.timeout.map(TimeoutSpec::parse).transpose()?,
            passive,
            active,
            tls,
        })
    }
}

/// A route.
#[derive(Debug, Clone)]
pub struct Route {
    /// Its ID.
    pub id: String,
    /// Its name (metrics prefer it when set).
    pub name: String,
    /// Path patterns (any may match).
    pub paths: Vec<PathPattern>,
    /// Host patterns (empty: any host; then the service's apply).
    pub hosts: Vec<HostPattern>,
    /// Methods (empty: any).
    pub methods: Vec<http::Method>,
    /// Client address ranges (empty: any).
    pub remote_addrs: Vec<IpNet>,
    /// Predicates on the request, all of which must hold.
    pub vars: Vec<Expr>,
    /// Among routes of one host and path kind and length, the higher goes first.
    pub priority: i64,
    /// The route's plugins.
    pub plugins: Plugins,
    /// An upstream of its own.
    pub upstream: Option<Box<Upstream>>,
    /// A stored upstream.
    pub upstream_id: Option<String>,
    /// A service whose plugins, hosts and upstream it takes where it has none.
    pub service_id: Option<String>,
    /// A plugin config whose plugins it takes where it has none of its own.
    pub plugin_config_id: Option<String>,
    /// WebSocket upgrades pass (`None`: the service's setting, else no).
    pub enable_websocket: Option<bool>,
    /// False for `status: 0` (a disabled route matches nothing).
    pub enabled: bool,
    /// Its timeouts (over the upstream's).
    pub timeout: Option<Timeout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RouteSpec {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    create_time: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    uris: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    remote_addr: Option<String>,
    #[serde(default)]
    remote_addrs: Option<Vec<String>>,
    #[serde(default)]
    vars: Option<Value>,
    #[serde(default)]
    priority: Option<i64>,
    #[serde(default)]
    plugins: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    upstream: Option<Value>,
    #[serde(default)]
    upstream_id: Option<Value>,
    #[serde(default)]
    service_id: Option<Value>,
    #[serde(default)]
    plugin_config_id: Option<Value>,
    #[serde(default)]
    enable_websocket: Option<bool>,
    #[serde(default)]
    status: Option<u8>,
    #[serde(default)]
    timeout: Option<TimeoutSpec>,
}

/// An ID given as a string or a number (APISIX takes both).
fn id_ref(kind: Kind, v: Option<Value>) -> Result<Option<String>, GatewayError> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            check_id(kind, &s)?;
            Ok(Some(s))
        }
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(_) => Err(GatewayError::invalid(format!(
            "property \"{}_id\" validation failed: expected a string or a number",
            kind.singular()
        ))),
    }
}

/// The methods APISIX takes.
const METHODS: [&str; 10] = [
    "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "CONNECT", "TRACE", "PURGE",
];

fn parse_hosts(hosts: Vec<String>) -> Result<Vec<HostPattern>, GatewayError> {
    hosts.iter().map(|h| HostPattern::parse(h)).collect()
}

fn parse_addrs(addrs: Vec<String>) -> Result<Vec<IpNet>, GatewayError> {
    addrs.iter().map(|a| parse_net(a, "remote_addrs")).collect()
}

/// An address or a CIDR range.
pub(crate) fn parse_net(a: &str, field: &str) -> Result<IpNet, GatewayError> {
    a.parse::<IpNet>()
        .or_else(|_| a.parse::<IpAddr>().map(IpNet::from))
        .map_err(|_| {
            GatewayError::invalid(format!(
                "property \"{field}\" validation failed: {a:?} is not an IP address or CIDR range"
            ))
        })
}

impl Route {
    /// Parses a route stored under `id`.
    pub fn parse(id: &str, v: &Value) -> Result<Route, GatewayError> {
        let spec: RouteSpec = from_value(v)?;
        let _ = (
            spec.id,
            spec.desc,
            spec.labels,
            spec.create_time,
            spec.update_time,
        );
        let uris = one_or_many(spec.uri, spec.uris, ("uri", "uris"))?;
        if uris.is_empty() {
            return Err(GatewayError::invalid(
                "value should match only one schema, but matches none: \"uri\" or \"uris\" is required",
            ));
        }
        let methods = spec
            .methods
            .unwrap_or_default()
            .iter()
            .map(|m| {
                if METHODS.contains(&m.as_str()) {
                    http::Method::from_bytes(m.as_bytes()).map_err(|_| GatewayError::invalid("method"))
                } else {
                    Err(GatewayError::invalid(format!(
                        "property \"methods\" validation failed: matches none of the enum values: {m:?}"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let upstream = spec
            .upstream
            .as_ref()
            .map(Upstream::parse)
            .transpose()?
            .map(Box::new);
        let upstream_id = id_ref(Kind::Upstream, spec.upstream_id)?;
        let service_id = id_ref(Kind::Service, spec.service_id)?;
        let plugin_config_id = id_ref(Kind::PluginConfig, spec.plugin_config_id)?;
        if upstream.is_none() && upstream_id.is_none() && service_id.is_none() {
            let p = spec.plugins.as_ref();
            // A route that only answers by itself (a plugin ends every request) is fine in
            // APISIX; berth's plugins all pass requests on, so a route needs somewhere to go.
            if p.is_none_or(|p| p.is_empty()) {
                return Err(GatewayError::invalid(
                    "a route needs \"upstream\", \"upstream_id\" or \"service_id\"",
                ));
            }
        }
        let status = spec.status.unwrap_or(1);
        if status > 1 {
            return Err(GatewayError::invalid(
                "property \"status\" validation failed: matches none of the enum values (0, 1)",
            ));
        }
        Ok(Route {
            id: id.to_string(),
            name: spec.name.unwrap_or_default(),
            paths: uris
                .iter()
                .map(|u| PathPattern::parse(u))
                .collect::<Result<_, _>>()?,
            hosts: parse_hosts(one_or_many(spec.host, spec.hosts, ("host", "hosts"))?)?,
            methods,
            remote_addrs: parse_addrs(one_or_many(
                spec.remote_addr,
                spec.remote_addrs,
                ("remote_addr", "remote_addrs"),
            )?)?,
            vars: match &spec.vars {
                None => Vec::new(),
                Some(v) => crate::vars::parse(v)?,
            },
            priority: spec.priority.unwrap_or(0),
            plugins: Plugins::parse(spec.plugins.as_ref(), crate::plugins::Scope::Route)?,
            upstream,
            upstream_id,
            service_id,
            plugin_config_id,
            enable_websocket: spec.enable_websocket,
            enabled: status == 1,
            timeout: spec.timeout.map(TimeoutSpec::parse).transpose()?,
        })
    }
}

/// A service: what routes naming it share.
#[derive(Debug, Clone)]
pub struct Service {
    /// Plugins (a route's own of the same name win).
    pub plugins: Plugins,
    /// An upstream of its own.
    pub upstream: Option<Box<Upstream>>,
    /// A stored upstream.
    pub upstream_id: Option<String>,
    /// Hosts for routes that give none.
    pub hosts: Vec<HostPattern>,
    /// WebSocket upgrades pass for routes that do not say.
    pub enable_websocket: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSpec {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    create_time: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    #[serde(default)]
    plugins: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    upstream: Option<Value>,
    #[serde(default)]
    upstream_id: Option<Value>,
    #[serde(default)]
    hosts: Option<Vec<String>>,
    #[serde(default)]
    enable_websocket: Option<bool>,
}

impl Service {
    /// Parses a service.
    pub fn parse(v: &Value) -> Result<Service, GatewayError> {
        let spec: ServiceSpec = from_value(v)?;
        let _ = (
            spec.id,
            spec.name,
            spec.desc,
            spec.labels,
            spec.create_time,
            spec.update_time,
        );
        Ok(Service {
            plugins: Plugins::parse(spec.plugins.as_ref(), crate::plugins::Scope::Route)?,
            upstream: spec
                .upstream
                .as_ref()
                .map(Upstream::parse)
                .transpose()?
                .map(Box::new),
            upstream_id: id_ref(Kind::Upstream, spec.upstream_id)?,
            hosts: parse_hosts(spec.hosts.unwrap_or_default())?,
            enable_websocket: spec.enable_websocket.unwrap_or(false),
        })
    }
}

/// A consumer: a caller known by its credentials, with plugins of its own.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Its name.
    pub username: String,
    /// Its credentials and plugins.
    pub plugins: Plugins,
    /// The consumer group whose plugins it takes where it has none of its own.
    pub group_id: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsumerSpec {
    username: String,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    create_time: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    #[serde(default)]
    plugins: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    group_id: Option<Value>,
}

impl Consumer {
    /// Parses a consumer.
    pub fn parse(v: &Value) -> Result<Consumer, GatewayError> {
        let spec: ConsumerSpec = from_value(v)?;
        let _ = (spec.desc, spec.labels, spec.create_time, spec.update_time);
        let ok = !spec.username.is_empty()
            && spec.username.len() <= 256
            && spec
                .username
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'));
        if !ok {
            return Err(GatewayError::invalid(format!(
                "property \"username\" validation failed: {:?} must be 1 to 256 of A-Z a-z 0-9 _ -",
                spec.username
            )));
        }
        Ok(Consumer {
            username: spec.username,
            plugins: Plugins::parse(spec.plugins.as_ref(), crate::plugins::Scope::Consumer)?,
            group_id: id_ref(Kind::ConsumerGroup, spec.group_id)?,
        })
    }
}

/// A plugin config, a global rule or a consumer group: a set of plugins others take.
#[derive(Debug, Clone)]
pub struct PluginSet {
    /// The plugins.
    pub plugins: Plugins,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PluginSetSpec {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    create_time: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    plugins: serde_json::Map<String, Value>,
}

impl PluginSet {
    /// Parses a plugin config, global rule or consumer group (`kind`). A consumer group's
    /// plugins are a consumer's but for credentials, which belong to consumers.
    pub fn parse(kind: Kind, v: &Value) -> Result<PluginSet, GatewayError> {
        let spec: PluginSetSpec = from_value(v)?;
        let _ = (
            spec.id,
            spec.name,
            spec.desc,
            spec.labels,
            spec.create_time,
            spec.update_time,
        );
        let scope = match kind {
            Kind::ConsumerGroup => crate::plugins::Scope::Consumer,
            _ => crate::plugins::Scope::Route,
        };
        let plugins = Plugins::parse(Some(&spec.plugins), scope)?;
        if kind == Kind::ConsumerGroup {
            if let Some(plugin) = crate::plugins::credentials(&plugins).keys().next() {
                return Err(GatewayError::invalid(format!(
                    "a consumer group holds no credentials: {plugin} belongs to its consumers"
                )));
            }
        }
        Ok(PluginSet { plugins })
    }
}

/// A certificate and its key, served to clients whose SNI matches.
#[derive(Debug, Clone)]
pub struct Ssl {
    /// PEM certificate chain.
    pub cert: String,
    /// PEM private key.
    pub key: String,
    /// Names served (exact or `*.suffix`).
    pub snis: Vec<HostPattern>,
    /// False for `status: 0`.
    pub enabled: bool,
    /// `type: client`: shown to upstream nodes (`tls.client_cert_id`), never served.
    pub client: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SslSpec {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    desc: Option<String>,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
    #[serde(default)]
    create_time: Option<i64>,
    #[serde(default)]
    update_time: Option<i64>,
    cert: String,
    key: String,
    #[serde(default)]
    sni: Option<String>,
    #[serde(default)]
    snis: Option<Vec<String>>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    status: Option<u8>,
}

impl Ssl {
    /// Parses a certificate resource (the PEM itself is checked by whoever loads it).
    pub fn parse(v: &Value) -> Result<Ssl, GatewayError> {
        let spec: SslSpec = from_value(v)?;
        let _ = (
            spec.id,
            spec.desc,
            spec.labels,
            spec.create_time,
            spec.update_time,
        );
        let client = match spec.kind.as_deref().unwrap_or("server") {
            "server" => false,
            "client" => true,
            other => {
                return Err(GatewayError::invalid(format!(
                    "property \"type\" validation failed: matches none of the enum values (server, client): {other:?}"
                )))
            }
        };
        let snis = one_or_many(spec.sni, spec.snis, ("sni", "snis"))?;
        if snis.is_empty() && !client {
            return Err(GatewayError::invalid(
                "value should match only one schema, but matches none: \"sni\" or \"snis\" is required",
            ));
        }
        Ok(Ssl {
            cert: spec.cert,
            key: spec.key,
            snis: parse_hosts(snis)?,
            enabled: spec.status.unwrap_or(1) == 1,
            client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn active_checks_take_apisix_shapes_and_defaults() {
        let u = Upstream::parse(&json!({"nodes": {"127.0.0.1:1": 1},
            "checks": {"active": {"http_path": "/health", "req_headers": ["X-A: 1"],
                "healthy": {"interval": 2}, "unhealthy": {"http_failures": 3}}}}))
        .expect("active");
        let a = u.active.expect("active");
        assert_eq!(
            (
                a.kind,
                a.timeout,
                a.http_path.as_str(),
                a.req_headers.clone()
            ),
            (
                ActiveKind::Http,
                Duration::from_secs(1),
                "/health",
                vec![("X-A".to_string(), "1".to_string())]
            )
        );
        assert_eq!(
            (a.healthy_interval, a.successes, a.healthy_statuses.clone()),
            (Duration::from_secs(2), 2, vec![200, 302])
        );
        assert_eq!(
            (
                a.unhealthy_interval,
                a.http_failures,
                a.tcp_failures,
                a.timeouts
            ),
            (Duration::from_secs(1), 3, 2, 3)
        );
        assert!(u.passive.is_none());
        let tcp = Upstream::parse(&json!({"nodes": {"127.0.0.1:1": 1},
            "checks": {"active": {"type": "tcp"}, "passive": {"unhealthy": {"tcp_failures": 1}}}}))
        .expect("tcp with passive");
        assert_eq!(tcp.active.map(|a| a.kind), Some(ActiveKind::Tcp));
        assert!(tcp.passive.is_some());
        for bad in [
            json!({"active": {"type": "udp"}}),
            json!({"active": {"timeout": 0}}),
            json!({"active": {"http_path": "health"}}),
            json!({"active": {"req_headers": ["nocolon"]}}),
            json!({"active": {"healthy": {"successes": 0}}}),
            json!({"active": {"unhealthy": {"interval": 0}}}),
            json!({"active": {"healthy": {"http_statuses": [99]}}}),
            json!({"active": {"bogus": 1}}),
            json!({"passive": {"unhealthy": {"interval": 1}}}),
            json!({}),
        ] {
            let e = Upstream::parse(&json!({"nodes": {"127.0.0.1:1": 1}, "checks": bad}));
            assert!(matches!(e, Err(GatewayError::Invalid(_))), "{bad}: {e:?}");
        }
    }

    #[test]
    fn paths() {
        let p = PathPattern::parse("/a/*").expect("prefix");
        assert!(p.matches("/a/") && p.matches("/a/b/c") && !p.matches("/a"));
        let p = PathPattern::parse("/a").expect("exact");
        assert!(p.matches("/a") && !p.matches("/a/"));
        let p = PathPattern::parse("/user/:id/x").expect("params");
        assert!(p.matches("/user/7/x") && !p.matches("/user//x") && !p.matches("/user/7/x/y"));
        assert!(PathPattern::parse("a").is_err());
        assert!(PathPattern::parse("/a/*/b").is_err());
    }

    #[test]
    fn upstream_nodes_both_forms() {
        let u =
            Upstream::parse(&json!({"nodes": {"127.0.0.1:80": 2, "[::1]:81": 1, "h.example": 3}}))
                .expect("hash form");
        let Nodes::Static(nodes) = &u.nodes else {
            panic!("static")
        };
        assert_eq!(nodes.len(), 3);
        assert!(nodes.contains(&Node {
            host: "::1".into(),
            port: 81,
            weight: 1
        }));
        assert!(nodes.contains(&Node {
            host: "h.example".into(),
            port: 80,
            weight: 3
        }));
        let u = Upstream::parse(
            &json!({"nodes": [{"host": "10.0.0.1", "port": 8080, "weight": 1}], "scheme": "grpc"}),
        )
        .expect("array form");
        assert_eq!(u.scheme, Scheme::Grpc);
        assert!(Upstream::parse(&json!({"nodes": {"a:b": 1}})).is_err());
        assert!(Upstream::parse(&json!({})).is_err());
        assert!(Upstream::parse(&json!({"nodes": {}, "type": "chash"})).is_err());
        assert!(Upstream::parse(&json!({"nodes": {}, "bogus": 1})).is_err());
        let u = Upstream::parse(&json!({"service_name": "orders", "discovery_type": "nacos", "discovery_args": {"group_name": "G"}}))
            .expect("registry");
        assert_eq!(
            u.nodes,
            Nodes::Registry {
                service: "orders".into(),
                discovery: Discovery::Nacos {
                    namespace: "public".into(),
                    group: "G".into()
                }
            }
        );
        assert!(
            Upstream::parse(&json!({"service_name": "x", "discovery_type": "eureka"})).is_err()
        );
    }

    #[test]
    fn routes() {
        let r = Route::parse(
            "1",
            &json!({"uris": ["/a", "/b/*"], "hosts": ["A.com", "*.b.com"], "methods": ["GET"], "upstream_id": 1, "priority": 3}),
        )
        .expect("route");
        assert_eq!(
            r.hosts,
            vec![
                HostPattern::Exact("a.com".into()),
                HostPattern::Suffix(".b.com".into())
            ]
        );
        assert_eq!(r.upstream_id.as_deref(), Some("1"));
        assert!(
            Route::parse("1", &json!({"uri": "/a"})).is_err(),
            "nowhere to go"
        );
        assert!(Route::parse(
            "1",
            &json!({"uri": "/a", "uris": ["/b"], "upstream_id": "1"})
        )
        .is_err());
        assert!(Route::parse(
            "1",
            &json!({"uri": "/a", "methods": ["FETCH"], "upstream_id": "1"})
        )
        .is_err());
        let e = Route::parse(
            "1",
            &json!({"uri": "/a", "upstream_id": "1", "plugins": {"nope": {}}}),
        )
        .expect_err("unknown plugin");
        assert_eq!(e.to_string(), "unknown plugin [nope]");
    }
}
