//! Registrations: what a face hands the domain (already translated from its wire shape),
//! validated here once for every face, and turned into the records to write.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::error::RegistryError;
use crate::model::{Check, CheckKind, CheckStatus, Service};

/// Most checks one instance may have: a registration beyond it is refused whole.
pub const MAX_CHECKS_PER_SERVICE: usize = 64;
/// Most metadata keys of a service or node (Consul's limit).
pub const MAX_META_KEYS: usize = 64;
/// Longest metadata key (Consul's limit).
pub const MAX_META_KEY_LEN: usize = 128;
/// Longest metadata value (Consul's limit).
pub const MAX_META_VALUE_LEN: usize = 512;
/// Shortest interval of an active check (Consul raises shorter ones to this too).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);
/// Timeout of an active check run when none is given (Consul's).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
/// Shortest `DeregisterCriticalServiceAfter` (Consul raises shorter ones to this too).
pub const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);
/// Longest check output kept (Consul's 4 KiB).
pub const MAX_OUTPUT: usize = 4096;

/// A check as a registration defines it, before IDs and defaults are settled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CheckDefinition {
    /// Check ID (default: derived from the service ID, Consul's way).
    pub id: Option<String>,
    /// Name (default: `Service '<name>' check`).
    pub name: Option<String>,
    /// Free text.
    pub notes: String,
    /// Initial status (default critical).
    pub status: Option<CheckStatus>,
    /// Initial output.
    pub output: String,
    /// What the check does.
    pub kind: CheckKind,
    /// Run interval (active checks).
    pub interval: Option<Duration>,
    /// Run timeout (active checks).
    pub timeout: Option<Duration>,
    /// Remove the service after this long critical.
    pub deregister_critical_after: Option<Duration>,
    /// For a check registered on its own: the instance it belongs to (empty: the node).
    pub service_id: String,
}

/// A service registration.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Registration {
    /// The instance (its `id` may be empty: it defaults to the name).
    pub service: Service,
    /// Its checks.
    pub checks: Vec<CheckDefinition>,
}

fn no_nul(what: &str, s: &str) -> Result<(), RegistryError> {
    if s.contains('\0') {
        return Err(RegistryError::invalid(format!(
            "{what} must not contain a NUL byte"
        )));
    }
    Ok(())
}

/// Checks metadata against Consul's limits.
pub fn validate_meta(meta: &BTreeMap<String, String>) -> Result<(), RegistryError> {
    if meta.len() > MAX_META_KEYS {
        return Err(RegistryError::invalid(format!(
            "Node metadata cannot contain more than {MAX_META_KEYS} key/value pairs"
        )));
    }
    for (k, v) in meta {
        if k.is_empty() || k.len() > MAX_META_KEY_LEN {
            return Err(RegistryError::invalid(format!(
                "Key {k:?} is invalid: keys must be 1 to {MAX_META_KEY_LEN} characters"
            )));
        }
        if k.starts_with("consul-") {
            return Err(RegistryError::invalid(format!(
                "Key {k:?} is reserved for internal use"
            )));
        }
        if v.len() > MAX_META_VALUE_LEN {
            return Err(RegistryError::invalid(format!(
                "Value for key {k:?} is too long (limit: {MAX_META_VALUE_LEN} characters)"
            )));
        }
    }
    Ok(())
}

impl Registration {
    /// Validates the registration and settles defaults: the instance (on `node`) and its
    /// checks as records, each check with its final ID and initial status.
    pub fn into_records(self, node: &str) -> Result<(Service, Vec<Check>), RegistryError> {
        let mut service = self.service;
        if service.name.trim().is_empty() {
            return Err(RegistryError::invalid("Missing service name"));
        }
        if service.id.is_empty() {
            service.id = service.name.clone();
        }
        no_nul("service name", &service.name)?;
        no_nul("service ID", &service.id)?;
        for t in &service.tags {
            no_nul("a tag", t)?;
        }
        validate_meta(&service.meta)?;
        service.node = node.to_string();
        if self.checks.len() > MAX_CHECKS_PER_SERVICE {
            return Err(RegistryError::invalid(format!(
                "{} checks given: at most {MAX_CHECKS_PER_SERVICE} per service",
                self.checks.len()
            )));
        }
        let many = self.checks.len() > 1;
        let mut checks = Vec::with_capacity(self.checks.len());
        for (i, mut def) in self.checks.into_iter().enumerate() {
            let default_id = if many {
                format!("service:{}:{}", service.id, i + 1)
            } else {
                format!("service:{}", service.id)
            };
            def.id = Some(def.id.filter(|s| !s.is_empty()).unwrap_or(default_id));
            def.service_id = service.id.clone();
            let check = def.into_check(node, &service.name)?;
            if checks.iter().any(|c: &Check| c.id == check.id) {
                return Err(RegistryError::invalid(format!(
                    "check ID {:?} given twice",
                    check.id
                )));
            }
            checks.push(check);
        }
        Ok((service, checks))
    }
}

impl CheckDefinition {
    /// Validates the definition and settles its defaults into a check record of instance
    /// `service_name` (`self.service_id`; empty for a node check) on `node`.
    pub fn into_check(self, node: &str, service_name: &str) -> Result<Check, RegistryError> {
        let id = match self.id.filter(|s| !s.is_empty()) {
            Some(id) => id,
            None => match self.name.as_deref().filter(|s| !s.is_empty()) {
                // Consul's agent uses the name as the ID when none is given.
                Some(name) => name.to_string(),
                None => return Err(RegistryError::invalid("Missing check name")),
            },
        };
        no_nul("check ID", &id)?;
        let name = match self.name.filter(|s| !s.is_empty()) {
            Some(n) => n,
            None if !service_name.is_empty() => format!("Service '{service_name}' check"),
            None => id.clone(),
        };
        let mut interval = Duration::ZERO;
        let mut timeout = Duration::ZERO;
        match &self.kind {
            CheckKind::Ttl { ttl } if ttl.is_zero() => {
                return Err(RegistryError::invalid("TTL must be > 0 for TTL checks"))
            }
            CheckKind::Http { url, .. }
                if !(url.starts_with("http://") || url.starts_with("https://")) =>
            {
                return Err(RegistryError::invalid(format!(
                    "invalid HTTP check URL {url:?}: must be http:// or https://"
                )));
            }
            CheckKind::Tcp { address } if address.is_empty() => {
                return Err(RegistryError::invalid("TCP check needs host:port"))
            }
            CheckKind::Grpc { target, .. } if target.is_empty() => {
                return Err(RegistryError::invalid(
                    "gRPC check needs host:port[/service]",
                ))
            }
            _ => {}
        }
        if self.kind.is_active() {
            interval = match self.interval {
                Some(i) if !i.is_zero() => i.max(MIN_INTERVAL),
                _ => {
                    return Err(RegistryError::invalid(format!(
                        "Interval must be > 0 for {} checks",
                        self.kind.type_name().to_uppercase()
                    )))
                }
            };
            timeout = self
                .timeout
                .filter(|t| !t.is_zero())
                .unwrap_or(DEFAULT_TIMEOUT);
        }
        let mut output = self.output;
        output.truncate(floor_char_boundary(&output, MAX_OUTPUT));
        Ok(Check {
            id,
            name,
            node: node.to_string(),
            service_id: self.service_id,
            service_name: service_name.to_string(),
            status: self.status.unwrap_or(CheckStatus::Critical),
            notes: self.notes,
            output,
            kind: self.kind,
            interval,
            timeout,
            deregister_critical_after: self
                .deregister_critical_after
                .filter(|d| !d.is_zero())
                .map_or(Duration::ZERO, |d| d.max(MIN_DEREGISTER_AFTER)),
            lease: 0,
        })
    }
}

/// The largest index ≤ `max` that is a char boundary of `s`.
pub fn floor_char_boundary(s: &str, max: usize) -> usize {
    if s.len() <= max {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|i| s.is_char_boundary(*i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(checks: Vec<CheckDefinition>) -> Registration {
        Registration {
            service: Service {
                name: "web".into(),
                ..Service::default()
            },
            checks,
        }
    }

    fn ttl() -> CheckDefinition {
        CheckDefinition {
            kind: CheckKind::Ttl {
                ttl: Duration::from_secs(10),
            },
            ..CheckDefinition::default()
        }
    }

    #[test]
    fn check_ids_and_defaults_follow_consul() {
        let (svc, checks) = reg(vec![ttl()]).into_records("n1").expect("valid");
        assert_eq!(svc.id, "web");
        assert_eq!(svc.node, "n1");
        assert_eq!(checks[0].id, "service:web");
        assert_eq!(checks[0].name, "Service 'web' check");
        assert_eq!(checks[0].status, CheckStatus::Critical);
        let (_, checks) = reg(vec![ttl(), ttl()]).into_records("n1").expect("valid");
        let ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["service:web:1", "service:web:2"]);
    }

    #[test]
    fn bad_registrations_are_refused_whole() {
        let missing = Registration::default().into_records("n");
        assert_eq!(missing, Err(RegistryError::invalid("Missing service name")));
        let http = CheckDefinition {
            kind: CheckKind::Http {
                url: "http://x/".into(),
                method: "GET".into(),
                headers: BTreeMap::new(),
                body: String::new(),
                tls_skip_verify: false,
                tls_server_name: String::new(),
            },
            ..CheckDefinition::default()
        };
        let err = reg(vec![http.clone()])
            .into_records("n")
            .expect_err("refused");
        assert!(err.to_string().contains("Interval must be > 0"), "{err}");
        let ok = CheckDefinition {
            interval: Some(Duration::from_millis(10)),
            deregister_critical_after: Some(Duration::from_secs(1)),
            ..http
        };
        let (_, c) = reg(vec![ok]).into_records("n").expect("valid");
        assert_eq!(c[0].interval, MIN_INTERVAL, "raised to the minimum");
        assert_eq!(c[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(c[0].deregister_critical_after, MIN_DEREGISTER_AFTER);
        let many = reg(vec![ttl(); MAX_CHECKS_PER_SERVICE + 1]).into_records("n");
        assert!(many.expect_err("refused").to_string().contains("at most"));
        let twice = CheckDefinition {
            id: Some("same".into()),
            ..ttl()
        };
        let dup = reg(vec![twice.clone(), twice]).into_records("n");
        assert!(dup.expect_err("refused").to_string().contains("twice"));
        let zero = CheckDefinition {
            kind: CheckKind::Ttl {
                ttl: Duration::ZERO,
            },
            ..CheckDefinition::default()
        };
        assert!(reg(vec![zero]).into_records("n").is_err());
    }
}
