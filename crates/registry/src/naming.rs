//! Nacos-style naming on the registry's model: a Nacos instance (namespace, group, service,
//! cluster, ip, port, weight, enabled, ephemeral, metadata) is a service instance of the
//! catalog, so it is found through every face (Consul HTTP, DNS, Nacos), and an instance
//! registered through Consul is a Nacos instance too.
//!
//! - The catalog name is the Nacos service name in the public namespace's `DEFAULT_GROUP`
//!   (what DNS and Consul clients ask for), `group@@service` in another group, and
//!   `namespace::group@@service` in another namespace.
//! - Nacos's own attributes ride in the instance's metadata under `nacos.` keys; the rest of
//!   the metadata is the Nacos metadata.
//! - Liveness: an ephemeral instance has a TTL check (unhealthy 15 s after its last beat,
//!   removed 15 s later); a persistent one a TCP check on its address, and it is never removed
//!   by berth.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::catalog::Entry;
use crate::error::RegistryError;
use crate::model::{is_maintenance, CheckKind, CheckStatus, Service, Weights};
use crate::register::CheckDefinition;

/// The catalog node Nacos instances are registered on (they belong to no member).
pub const NODE: &str = "nacos";
/// The public namespace's ID.
pub const PUBLIC: &str = "public";
/// The group of a client that names none.
pub const DEFAULT_GROUP: &str = "DEFAULT_GROUP";
/// The cluster of a client that names none.
pub const DEFAULT_CLUSTER: &str = "DEFAULT";
/// An ephemeral instance is unhealthy this long after its last beat (Nacos's
/// `preserved.heart.beat.timeout`).
pub const BEAT_TIMEOUT: Duration = Duration::from_secs(15);
/// ... and removed this long after its last beat (`preserved.ip.delete.timeout`).
pub const DELETE_TIMEOUT: Duration = Duration::from_secs(30);
/// How often clients beat (`preserved.heart.beat.interval`).
pub const BEAT_INTERVAL: Duration = Duration::from_secs(5);

const META_CLUSTER: &str = "nacos.cluster";
const META_WEIGHT: &str = "nacos.weight";
const META_ENABLED: &str = "nacos.enabled";
const META_EPHEMERAL: &str = "nacos.ephemeral";
const META_GROUP: &str = "nacos.group";
const META_NAMESPACE: &str = "nacos.namespace";
const META_SERVICE: &str = "nacos.service";

/// A Nacos service: namespace, group and name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    /// The namespace (`public` for Nacos's `""`).
    pub namespace: String,
    /// The group.
    pub group: String,
    /// The name.
    pub name: String,
}

impl ServiceName {
    /// A service; empty namespace and group take their defaults, and a name given as
    /// `group@@name` sets the group.
    pub fn new(namespace: &str, group: &str, name: &str) -> ServiceName {
        let (group, name) = match name.split_once("@@") {
            Some((g, n)) => (g, n),
            None => (group, name),
        };
        ServiceName {
            namespace: if namespace.is_empty() {
                PUBLIC
            } else {
                namespace
            }
            .to_string(),
            group: if group.is_empty() {
                DEFAULT_GROUP
            } else {
                group
            }
            .to_string(),
            name: name.to_string(),
        }
    }

    /// Checks the names as Nacos allows them.
    pub fn validate(&self) -> Result<(), RegistryError> {
        for (what, v) in [
            ("serviceName", &self.name),
            ("groupName", &self.group),
            ("namespaceId", &self.namespace),
        ] {
            if v.trim().is_empty() {
                return Err(RegistryError::invalid(format!("{what} is missing")));
            }
            if v.len() > 512 || v.contains(['\0', '/']) || v.contains("@@") || v.contains("::") {
                return Err(RegistryError::invalid(format!(
                    "{what} {v:?} is invalid (at most 512 bytes; no '/', '@@', '::' or NUL)"
                )));
            }
        }
        Ok(())
    }

    /// The catalog's name for it (see the module docs).
    pub fn catalog_name(&self) -> String {
        match (self.namespace == PUBLIC, self.group == DEFAULT_GROUP) {
            (true, true) => self.name.clone(),
            (true, false) => format!("{}@@{}", self.group, self.name),
            (false, _) => format!("{}::{}@@{}", self.namespace, self.group, self.name),
        }
    }

    /// Nacos's grouped name, `group@@name`.
    pub fn grouped(&self) -> String {
        format!("{}@@{}", self.group, self.name)
    }

    /// The service a catalog name stands for (the inverse of [`ServiceName::catalog_name`]).
    pub fn from_catalog(name: &str) -> ServiceName {
        let (namespace, rest) = name.split_once("::").unwrap_or((PUBLIC, name));
        ServiceName::new(namespace, DEFAULT_GROUP, rest)
    }
}

/// A Nacos instance.
#[derive(Debug, Clone, PartialEq)]
pub struct Instance {
    /// Its service.
    pub service: ServiceName,
    /// Its cluster.
    pub cluster: String,
    /// Address.
    pub ip: String,
    /// Port.
    pub port: u16,
    /// Relative weight (Nacos: 0 to 10000).
    pub weight: f64,
    /// False: it takes no traffic.
    pub enabled: bool,
    /// Whether checks pass (as read); the initial status (as registered).
    pub healthy: bool,
    /// Lives by beats (or its connection) rather than by berth's checks.
    pub ephemeral: bool,
    /// Free metadata.
    pub metadata: BTreeMap<String, String>,
}

impl Instance {
    /// Nacos's instance ID: `ip#port#cluster#group@@service`.
    pub fn instance_id(&self) -> String {
        format!(
            "{}#{}#{}#{}",
            self.ip,
            self.port,
            self.cluster,
            self.service.grouped()
        )
    }

    /// The catalog instance ID (unique on [`NODE`] across namespaces).
    pub fn record_id(&self) -> String {
        if self.service.namespace == PUBLIC {
            self.instance_id()
        } else {
            format!("{}#{}", self.instance_id(), self.service.namespace)
        }
    }

    /// Checks what the catalog would refuse or Nacos does not allow.
    pub fn validate(&self) -> Result<(), RegistryError> {
        self.service.validate()?;
        if self.ip.trim().is_empty() {
            return Err(RegistryError::invalid("ip is missing"));
        }
        if self.ip.contains(['#', '\0', '/']) {
            return Err(RegistryError::invalid(format!(
                "ip {:?} is invalid",
                self.ip
            )));
        }
        if self.port == 0 {
            return Err(RegistryError::invalid("port must be 1 to 65535"));
        }
        if !(0.0..=10000.0).contains(&self.weight) || self.weight.is_nan() {
            return Err(RegistryError::invalid(format!(
                "weight {} is out of range (0 to 10000)",
                self.weight
            )));
        }
        if self.cluster.is_empty() || self.cluster.contains(['#', '\0', ',', '/']) {
            return Err(RegistryError::invalid(format!(
                "clusterName {:?} is invalid",
                self.cluster
            )));
        }
        if let Some(k) = self.metadata.keys().find(|k| k.starts_with("nacos.")) {
            return Err(RegistryError::invalid(format!(
                "metadata key {k:?} is reserved (nacos.* keys are berth's)"
            )));
        }
        Ok(())
    }

    /// The catalog instance and its check.
    pub fn to_registration(&self) -> (Service, CheckDefinition) {
        let mut meta = self.metadata.clone();
        meta.insert(META_CLUSTER.into(), self.cluster.clone());
        meta.insert(META_WEIGHT.into(), self.weight.to_string());
        meta.insert(META_ENABLED.into(), self.enabled.to_string());
        meta.insert(META_EPHEMERAL.into(), self.ephemeral.to_string());
        meta.insert(META_GROUP.into(), self.service.group.clone());
        meta.insert(META_NAMESPACE.into(), self.service.namespace.clone());
        meta.insert(META_SERVICE.into(), self.service.name.clone());
        let service = Service {
            id: self.record_id(),
            name: self.service.catalog_name(),
            node: NODE.into(),
            address: self.ip.clone(),
            port: self.port,
            meta,
            weights: Weights {
                // Consul's weights are whole numbers: Nacos's 0.5 is 1 here; 0 stays 0.
                passing: if self.weight <= 0.0 {
                    0
                } else {
                    self.weight.ceil() as u32
                },
                warning: 1,
            },
            ..Default::default()
        };
        let status = Some(if self.healthy {
            CheckStatus::Passing
        } else {
            CheckStatus::Critical
        });
        let check = if self.ephemeral {
            CheckDefinition {
                name: Some("Nacos heartbeat".into()),
                status,
                kind: CheckKind::Ttl { ttl: BEAT_TIMEOUT },
                deregister_critical_after: Some(DELETE_TIMEOUT - BEAT_TIMEOUT),
                ..Default::default()
            }
        } else {
            CheckDefinition {
                name: Some("Nacos TCP health check".into()),
                status,
                kind: CheckKind::Tcp {
                    address: socket(&self.ip, self.port),
                },
                interval: Some(BEAT_INTERVAL),
                timeout: Some(Duration::from_secs(3)),
                ..Default::default()
            }
        };
        (service, check)
    }

    /// A catalog entry as a Nacos instance of `service` (Consul-registered ones included:
    /// weight from their passing weight, cluster `DEFAULT`, persistent).
    pub fn from_entry(service: &ServiceName, e: &Entry) -> Instance {
        let s = &e.service.value;
        let meta = &s.meta;
        let address = if s.address.is_empty() {
            e.node.value.address.clone()
        } else {
            s.address.clone()
        };
        Instance {
            service: service.clone(),
            cluster: meta
                .get(META_CLUSTER)
                .cloned()
                .unwrap_or_else(|| DEFAULT_CLUSTER.into()),
            ip: address,
            port: s.port,
            weight: meta
                .get(META_WEIGHT)
                .and_then(|w| w.parse().ok())
                .unwrap_or(f64::from(s.weights.passing)),
            // Maintenance (Consul's way to take an instance out) is Nacos's disabled; the
            // health is that of the other checks.
            enabled: meta.get(META_ENABLED).is_none_or(|v| v != "false")
                && !e.checks.iter().any(|c| is_maintenance(&c.value.id)),
            healthy: e
                .checks
                .iter()
                .filter(|c| !is_maintenance(&c.value.id))
                .all(|c| c.value.status == CheckStatus::Passing),
            ephemeral: meta.get(META_EPHEMERAL).is_some_and(|v| v == "true"),
            metadata: meta
                .iter()
                .filter(|(k, _)| !k.starts_with("nacos."))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }
}

/// Nacos metadata from its JSON object: string values as they are, others as their JSON text.
pub fn metadata(object: &serde_json::Map<String, serde_json::Value>) -> BTreeMap<String, String> {
    object
        .iter()
        .map(|(k, v)| {
            let v = v.as_str().map_or_else(|| v.to_string(), str::to_string);
            (k.clone(), v)
        })
        .collect()
}

/// `ip:port` (IPv6 in brackets).
fn socket(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// A Nacos service's own settings, kept beside its instances (`/nacos/v1/ns/service`): a
/// service may be defined before it has instances and outlives them.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize, serde::Deserialize)]
pub struct ServiceDef {
    /// When the healthy share of the instances is at or below this (0 to 1), clients are
    /// shown every instance, as healthy, so that the few healthy ones are not overrun.
    pub protect_threshold: f64,
    /// Free metadata of the service.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl ServiceDef {
    /// Checks the threshold.
    pub fn validate(&self) -> Result<(), RegistryError> {
        if !(0.0..=1.0).contains(&self.protect_threshold) {
            return Err(RegistryError::Invalid(format!(
                "protectThreshold {} is not between 0 and 1",
                self.protect_threshold
            )));
        }
        Ok(())
    }
}

/// What a client is shown of a service: see [`select`].
#[derive(Debug, Clone, PartialEq)]
pub struct Selection {
    /// The instances shown.
    pub hosts: Vec<Instance>,
    /// True when the protect threshold was reached (every instance shown, as healthy).
    pub protected: bool,
}

/// Nacos's selection of the instances a client is shown: those of `clusters` (all when
/// empty), only enabled ones with `enabled_only`, only healthy ones with `healthy_only`.
/// When the service has a definition and the healthy share of the instances in those
/// clusters is at or below its protect threshold, every one of them is shown instead, the
/// unhealthy ones as healthy (Nacos's rule; without a definition there is no protection).
pub fn select(
    instances: Vec<Instance>,
    clusters: &[&str],
    healthy_only: bool,
    enabled_only: bool,
    def: Option<&ServiceDef>,
) -> Selection {
    let all: Vec<Instance> = instances
        .into_iter()
        .filter(|i| clusters.is_empty() || clusters.contains(&i.cluster.as_str()))
        .filter(|i| !enabled_only || i.enabled)
        .collect();
    let healthy = all.iter().filter(|i| i.healthy).count();
    let reached = def.is_some_and(|d| {
        // An empty service divides 0 by 0: never protected (as Nacos's float rule).
        !all.is_empty() && (healthy as f64 / all.len() as f64) <= d.protect_threshold.max(0.0)
    });
    if reached {
        let hosts = all
            .into_iter()
            .map(|mut i| {
                i.healthy = true;
                i
            })
            .collect();
        return Selection {
            hosts,
            protected: true,
        };
    }
    Selection {
        hosts: all
            .into_iter()
            .filter(|i| !healthy_only || i.healthy)
            .collect(),
        protected: false,
    }
}

/// True when a catalog instance was registered through Nacos (it carries `nacos.` keys).
pub fn from_nacos(s: &Service) -> bool {
    s.meta.contains_key(META_SERVICE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selection_follows_nacos_protect_threshold() {
        let mk = |ip: &str, cluster: &str, healthy: bool, enabled: bool| Instance {
            ip: ip.into(),
            cluster: cluster.into(),
            healthy,
            enabled,
            ..instance("", "")
        };
        let list = vec![
            mk("10.0.0.1", "A", true, true),
            mk("10.0.0.2", "A", false, true),
            mk("10.0.0.3", "A", false, true),
            mk("10.0.0.4", "B", false, false),
        ];
        let ips = |s: &Selection| s.hosts.iter().map(|i| i.ip.clone()).collect::<Vec<_>>();
        // No definition: no protection, healthy only filters.
        let s = select(list.clone(), &[], true, false, None);
        assert_eq!(
            (ips(&s), s.protected),
            (vec!["10.0.0.1".to_string()], false)
        );
        // 1 of 4 healthy = 0.25 <= 0.5: every instance, all shown healthy.
        let def = ServiceDef {
            protect_threshold: 0.5,
            ..ServiceDef::default()
        };
        let s = select(list.clone(), &[], true, false, Some(&def));
        assert!(s.protected);
        assert_eq!(s.hosts.len(), 4);
        assert!(s.hosts.iter().all(|i| i.healthy));
        // Enabled only drops 10.0.0.4 first: 1 of 3 = 0.33 is still under 0.5.
        let s = select(list.clone(), &[], true, true, Some(&def));
        assert_eq!((s.hosts.len(), s.protected), (3, true));
        // A threshold below the share: no protection.
        let low = ServiceDef {
            protect_threshold: 0.2,
            ..ServiceDef::default()
        };
        let s = select(list.clone(), &["A"], true, false, Some(&low));
        assert_eq!(
            (ips(&s), s.protected),
            (vec!["10.0.0.1".to_string()], false)
        );
        // Threshold 0 protects only a service with no healthy instance; an empty one never.
        let zero = ServiceDef::default();
        let s = select(list.clone(), &["B"], true, false, Some(&zero));
        assert_eq!((ips(&s), s.protected), (vec!["10.0.0.4".to_string()], true));
        let s = select(list, &["C"], true, false, Some(&zero));
        assert_eq!((s.hosts.len(), s.protected), (0, false));
        assert!(ServiceDef {
            protect_threshold: 1.5,
            ..ServiceDef::default()
        }
        .validate()
        .is_err());
    }

    fn instance(ns: &str, group: &str) -> Instance {
        Instance {
            service: ServiceName::new(ns, group, "svc"),
            cluster: DEFAULT_CLUSTER.into(),
            ip: "10.0.0.5".into(),
            port: 8080,
            weight: 1.5,
            enabled: true,
            healthy: true,
            ephemeral: true,
            metadata: [("k".to_string(), "v".to_string())].into(),
        }
    }

    #[test]
    fn catalog_names_keep_the_default_group_plain() {
        assert_eq!(ServiceName::new("", "", "svc").catalog_name(), "svc");
        assert_eq!(ServiceName::new("", "G", "svc").catalog_name(), "G@@svc");
        assert_eq!(
            ServiceName::new("dev", "G", "svc").catalog_name(),
            "dev::G@@svc"
        );
        assert_eq!(
            ServiceName::new("", "X", "G@@svc"),
            ServiceName::new("", "G", "svc")
        );
        for n in ["svc", "G@@svc", "dev::G@@svc", "dev::DEFAULT_GROUP@@svc"] {
            assert_eq!(ServiceName::from_catalog(n).catalog_name(), n);
        }
    }

    #[test]
    fn an_instance_round_trips_through_the_catalog_records() {
        let i = instance("dev", "G");
        assert_eq!(i.instance_id(), "10.0.0.5#8080#DEFAULT#G@@svc");
        assert_eq!(i.record_id(), "10.0.0.5#8080#DEFAULT#G@@svc#dev");
        let (service, check) = i.to_registration();
        assert!(from_nacos(&service));
        assert_eq!(service.weights.passing, 2);
        assert!(matches!(check.kind, CheckKind::Ttl { ttl } if ttl == BEAT_TIMEOUT));
        let entry = Entry {
            node: crate::catalog::Record {
                value: crate::model::Node {
                    name: NODE.into(),
                    ..Default::default()
                },
                create: 1,
                modify: 1,
            },
            service: crate::catalog::Record {
                value: service,
                create: 1,
                modify: 1,
            },
            checks: Vec::new(),
        };
        assert_eq!(Instance::from_entry(&i.service, &entry), i);
    }

    #[test]
    fn bad_instances_are_refused() {
        let mut i = instance("", "");
        i.port = 0;
        assert!(i.validate().is_err());
        let mut i = instance("", "");
        i.weight = -1.0;
        assert!(i.validate().is_err());
        let mut i = instance("", "");
        i.metadata.insert("nacos.weight".into(), "9".into());
        assert!(i.validate().is_err());
        assert!(instance("", "").validate().is_ok());
    }
}
