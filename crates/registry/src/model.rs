//! The registry's records, as they are kept in the store (JSON values in the `Registry`
//! keyspace, see [`crate::layout`]). Field names here are berth's, not Consul's: the faces
//! map them to their protocol's shapes.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// A node: where service instances run. Every berth member is one (agent registrations are
/// attributed to the member that received them); the catalog API can add external ones.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    /// Unique name.
    pub name: String,
    /// A UUID (Consul's node ID).
    pub id: String,
    /// The node's address.
    pub address: String,
    /// Datacenter (berth has one, named by `--datacenter`).
    pub datacenter: String,
    /// Named addresses (`lan`, `wan`, …).
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, String>,
    /// Free-form metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// True for a berth member's own node: its `serfHealth` check follows the member's
    /// presence (see [`crate::layout`]'s `member/` keys).
    #[serde(default)]
    pub member: bool,
}

/// A named address of a service, with its port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct TaggedAddress {
    /// Address.
    pub address: String,
    /// Port.
    pub port: u16,
}

/// How much traffic an instance should get in each state (DNS SRV weights, load balancers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    /// Weight while every check passes.
    pub passing: u32,
    /// Weight while a check warns.
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One service instance on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Service {
    /// Instance ID, unique on its node.
    pub id: String,
    /// Service name (what discovery asks for).
    pub name: String,
    /// Node the instance runs on.
    pub node: String,
    /// Tags, in registration order.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Address (empty: the node's).
    #[serde(default)]
    pub address: String,
    /// Port.
    #[serde(default)]
    pub port: u16,
    /// Free-form metadata.
    #[serde(default)]
    pub meta: BTreeMap<String, String>,
    /// Named addresses.
    #[serde(default)]
    pub tagged_addresses: BTreeMap<String, TaggedAddress>,
    /// Traffic weights.
    #[serde(default)]
    pub weights: Weights,
    /// Consul's `EnableTagOverride` (kept and reported; berth has no anti-entropy to apply it).
    #[serde(default)]
    pub enable_tag_override: bool,
    /// Consul's service kind (empty for a plain service).
    #[serde(default)]
    pub kind: String,
}

/// A check's state, as Consul names them.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum CheckStatus {
    /// Healthy.
    Passing,
    /// Degraded: still served (DNS, `?passing` excludes it).
    Warning,
    /// Failing: not served (new checks start here, as in Consul).
    #[default]
    Critical,
}

impl CheckStatus {
    /// Consul's word for the status.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Passing => "passing",
            CheckStatus::Warning => "warning",
            CheckStatus::Critical => "critical",
        }
    }

    /// Parses Consul's word (exactly `passing`, `warning` or `critical`).
    pub fn parse(s: &str) -> Option<CheckStatus> {
        match s {
            "passing" => Some(CheckStatus::Passing),
            "warning" => Some(CheckStatus::Warning),
            "critical" => Some(CheckStatus::Critical),
            _ => None,
        }
    }
}

/// What a check does, and how berth runs it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case", tag = "type")]
pub enum CheckKind {
    /// Set from outside only (catalog registrations, maintenance).
    #[default]
    External,
    /// Critical unless updated (pass, warn, fail) at least every `ttl`.
    Ttl {
        /// How long an update holds.
        #[serde(with = "duration_ms")]
        ttl: Duration,
    },
    /// An HTTP request: 2xx passing, 429 warning, anything else critical.
    Http {
        /// The URL.
        url: String,
        /// Method (GET by default).
        method: String,
        /// Request headers.
        #[serde(default)]
        headers: BTreeMap<String, Vec<String>>,
        /// Request body.
        #[serde(default)]
        body: String,
        /// Accept any certificate.
        #[serde(default)]
        tls_skip_verify: bool,
        /// Server name for TLS (SNI and verification).
        #[serde(default)]
        tls_server_name: String,
    },
    /// A TCP connect to `address` (`host:port`).
    Tcp {
        /// Where to connect.
        address: String,
    },
    /// `grpc.health.v1.Health/Check` at `target` (`host:port[/service]`).
    Grpc {
        /// Where to call, with the optional service name.
        target: String,
        /// Use TLS.
        #[serde(default)]
        use_tls: bool,
        /// Accept any certificate.
        #[serde(default)]
        tls_skip_verify: bool,
    },
}

impl CheckKind {
    /// Consul's `Type` field.
    pub fn type_name(&self) -> &'static str {
        match self {
            CheckKind::External => "",
            CheckKind::Ttl { .. } => "ttl",
            CheckKind::Http { .. } => "http",
            CheckKind::Tcp { .. } => "tcp",
            CheckKind::Grpc { .. } => "grpc",
        }
    }

    /// True for the kinds berth runs itself on an interval.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            CheckKind::Http { .. } | CheckKind::Tcp { .. } | CheckKind::Grpc { .. }
        )
    }
}

/// ID of the maintenance check of instance `service_id`, or of the node when `None`, as
/// Consul names them.
pub fn maintenance_check_id(service_id: Option<&str>) -> String {
    match service_id {
        Some(id) => format!("_service_maintenance:{id}"),
        None => "_node_maintenance".into(),
    }
}

/// True for the ID of a maintenance check (of a node or an instance).
pub fn is_maintenance(check_id: &str) -> bool {
    check_id == "_node_maintenance" || check_id.starts_with("_service_maintenance:")
}

impl Check {
    /// The critical check that puts `node`, or its instance `service` (ID and name), into
    /// maintenance, noting `reason` (Consul's default note when empty).
    pub fn maintenance(node: &str, service: Option<(&str, &str)>, reason: &str) -> Check {
        let (sid, sname) = service.unwrap_or_default();
        Check {
            id: maintenance_check_id(service.map(|(id, _)| id)),
            name: if service.is_some() {
                "Service Maintenance Mode"
            } else {
                "Node Maintenance Mode"
            }
            .into(),
            node: node.into(),
            service_id: sid.into(),
            service_name: sname.into(),
            status: CheckStatus::Critical,
            notes: if reason.is_empty() {
                "Maintenance mode is enabled for this node or service".into()
            } else {
                reason.into()
            },
            ..Check::default()
        }
    }
}

/// A health check of a node (`service_id` empty) or of one service instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Check {
    /// Check ID, unique on its node.
    pub id: String,
    /// Human name.
    pub name: String,
    /// Node the check belongs to.
    pub node: String,
    /// Service instance it checks (empty: the node).
    #[serde(default)]
    pub service_id: String,
    /// That instance's service name.
    #[serde(default)]
    pub service_name: String,
    /// Status as last set (a TTL check is critical whatever this says once its TTL lapsed).
    pub status: CheckStatus,
    /// Free text from the registration.
    #[serde(default)]
    pub notes: String,
    /// Output of the last run or update.
    #[serde(default)]
    pub output: String,
    /// What the check does.
    #[serde(default)]
    pub kind: CheckKind,
    /// How often an active check runs.
    #[serde(default, with = "duration_ms")]
    pub interval: Duration,
    /// How long one run of an active check may take.
    #[serde(default, with = "duration_ms")]
    pub timeout: Duration,
    /// Remove the service once this check has been critical this long (zero: never).
    #[serde(default, with = "duration_ms")]
    pub deregister_critical_after: Duration,
    /// The lease that keeps a TTL check alive (0: none yet).
    #[serde(default)]
    pub lease: i64,
}

/// What happens to the locks of a session that ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Behavior {
    /// Locks are released (the keys stay).
    #[default]
    Release,
    /// Locked keys are deleted.
    Delete,
}

impl Behavior {
    /// Consul's word.
    pub fn as_str(self) -> &'static str {
        match self {
            Behavior::Release => "release",
            Behavior::Delete => "delete",
        }
    }
}

/// A Consul session: what KV locks are held by. It ends when destroyed, when its TTL lapses
/// (its record is attached to a lease), or when one of its checks turns critical.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Session {
    /// UUID.
    pub id: String,
    /// Free-form name.
    #[serde(default)]
    pub name: String,
    /// Node the session belongs to.
    pub node: String,
    /// Node checks it depends on (`serfHealth` by default).
    #[serde(default)]
    pub node_checks: Vec<String>,
    /// Service checks it depends on.
    #[serde(default)]
    pub service_checks: Vec<String>,
    /// How long a released lock cannot be taken again.
    #[serde(with = "duration_ms")]
    pub lock_delay: Duration,
    /// What ending does to its locks.
    #[serde(default)]
    pub behavior: Behavior,
    /// TTL (zero: none).
    #[serde(default, with = "duration_ms")]
    pub ttl: Duration,
    /// The lease holding a TTL session's record (0: none).
    #[serde(default)]
    pub lease: i64,
}

/// What Consul keeps beside a KV key: flags and the lock. Valid only while the key lives the
/// life it had when the metadata was written (see [`KvMeta::applies_to`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct KvMeta {
    /// Opaque client flags.
    #[serde(default)]
    pub flags: u64,
    /// How many times the lock was acquired.
    #[serde(default)]
    pub lock_index: u64,
    /// The session holding the lock.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// Unix milliseconds before which the lock may not be acquired again (the lock delay of
    /// a session that ended holding it).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub delay_until_ms: u64,
    /// While locked: what the holder's end does to the key (copied from the session, so the
    /// lock can be cleaned up after the session's record is gone).
    #[serde(default)]
    pub behavior: Behavior,
    /// While locked: the holder's lock delay, in milliseconds.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub lock_delay_ms: u64,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

impl KvMeta {
    /// True when metadata written at `meta_mod_revision` belongs to a key created at
    /// `key_create_revision`: the Consul face writes both in one txn, so metadata older
    /// than the key's creation was left behind by an earlier life of the key (deleted and
    /// re-created through the etcd API) and no longer applies.
    pub fn applies_to(meta_mod_revision: i64, key_create_revision: i64) -> bool {
        meta_mod_revision >= key_create_revision
    }
}

/// Durations as whole milliseconds in records.
mod duration_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}
