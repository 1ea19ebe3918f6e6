//! Nacos naming at run time, on the registry (see `berth_registry::naming` for the mapping):
//! register, deregister and beat an instance, list a service's instances and a namespace's
//! services. Faces (Nacos HTTP v1 and gRPC) translate their wire shapes into these calls.
//!
//! A beat is a TTL check pass: at the leader, a lease renewal and no log entry while the
//! instance stays healthy.

use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::{Compare, TxnRequest};
use berth_registry::layout;
use berth_registry::naming::{self, Instance, ServiceDef, ServiceName};
use berth_registry::register::Registration;
use berth_registry::{CheckStatus, Node, RegistryError, Topic};

use super::{delete_op, put_op, Registry, RegistryFailure, DATACENTER};
use crate::core::Core;

/// How [`Registry::nacos_define`] treats an existing definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Define {
    /// The service must not exist yet (no definition, no instances).
    Create,
    /// The service must exist (a definition, or instances).
    Update,
}

/// What a beat found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The instance lives on.
    Renewed,
    /// No such instance (the client re-registers).
    Unknown,
}

/// The catalog node Nacos instances live on.
fn node(core: &Core) -> Node {
    let id = core.member.cluster_id;
    Node {
        name: naming::NODE.into(),
        id: format!(
            "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
            (id >> 32) as u32,
            (id >> 16) as u16,
            id as u16,
            0x4e41u16,
            id & 0xffff_ffff_ffff
        ),
        address: String::new(),
        datacenter: DATACENTER.into(),
        meta: [("source".to_string(), "nacos".to_string())].into(),
        ..Default::default()
    }
}

/// The catalog ID of the instance of `service` at `ip:port` in `cluster`.
pub fn record_id(service: &ServiceName, ip: &str, port: u16, cluster: &str) -> String {
    Instance {
        service: service.clone(),
        cluster: if cluster.is_empty() {
            naming::DEFAULT_CLUSTER.into()
        } else {
            cluster.into()
        },
        ip: ip.into(),
        port,
        weight: 1.0,
        enabled: true,
        healthy: true,
        ephemeral: true,
        metadata: Default::default(),
    }
    .record_id()
}

impl Registry {
    /// Registers (or replaces) a Nacos instance with its liveness check; an ephemeral one's
    /// liveness hangs on `lease` when given (a gRPC connection's: one renewal keeps all its
    /// instances), else on a lease of its own that beats renew.
    pub async fn nacos_register(
        &self,
        core: &Core,
        i: &Instance,
        lease: Option<i64>,
    ) -> Result<(), RegistryFailure> {
        i.validate()?;
        self.wake_up();
        let (service, check) = i.to_registration();
        let (service, mut checks) = Registration {
            service,
            checks: vec![check],
        }
        .into_records(naming::NODE)?;
        if i.ephemeral {
            // Nacos's documented 15 s / 30 s, below the floor Consul's API keeps.
            for c in &mut checks {
                c.deregister_critical_after = naming::DELETE_TIMEOUT - naming::BEAT_TIMEOUT;
            }
        }
        // A disabled instance takes no traffic through any face: Consul's maintenance (the
        // checks are replaced, so enabling it again ends the maintenance).
        if !i.enabled {
            checks.push(berth_registry::Check::maintenance(
                naming::NODE,
                Some((&service.id, &service.name)),
                "disabled through Nacos (enabled=false)",
            ));
        }
        self.register_records(core, &node(core), service, checks, true, lease)
            .await
    }

    /// Removes a Nacos instance; false when it was not registered.
    pub async fn nacos_deregister(
        &self,
        core: &Core,
        service: &ServiceName,
        ip: &str,
        port: u16,
        cluster: &str,
    ) -> Result<bool, RegistryFailure> {
        service.validate()?;
        self.deregister_service(core, naming::NODE, &record_id(service, ip, port, cluster))
            .await
    }

    /// A beat of the instance of `service` at `ip:port` in `cluster`.
    pub async fn nacos_beat(
        &self,
        core: &Core,
        service: &ServiceName,
        ip: &str,
        port: u16,
        cluster: &str,
    ) -> Result<Beat, RegistryFailure> {
        service.validate()?;
        let id = format!("service:{}", record_id(service, ip, port, cluster));
        match self
            .update_ttl(core, naming::NODE, &id, CheckStatus::Passing, "beat".into())
            .await
        {
            Ok(()) => Ok(Beat::Renewed),
            Err(RegistryFailure::Refused(RegistryError::NotFound(_))) => Ok(Beat::Unknown),
            Err(e) => Err(e),
        }
    }

    /// True when instance `i`'s liveness hangs on `lease`.
    pub fn nacos_on_lease(&self, i: &Instance, lease: i64) -> bool {
        let id = format!("service:{}", i.record_id());
        self.read(|c| c.stored_check(naming::NODE, &id))
            .is_some_and(|r| r.value.lease == lease)
    }

    /// The instances of `service` (healthy or not) and the index of that list.
    pub fn nacos_instances(&self, service: &ServiceName) -> (Vec<Instance>, i64) {
        let name = service.catalog_name();
        self.read(|c| {
            let list = c
                .entries(&name)
                .iter()
                .map(|e| Instance::from_entry(service, e))
                .collect();
            (list, c.index(&Topic::Service(name.clone())))
        })
    }

    /// The definition of `service`, if it has one.
    pub fn nacos_def(&self, service: &ServiceName) -> Option<ServiceDef> {
        self.read(|c| c.service_def(&service.catalog_name()))
            .map(|r| r.value)
    }

    /// Defines `service` (see [`Define`]); the write is guarded by the definition's revision
    /// as read, so two operators cannot overwrite each other blindly.
    pub async fn nacos_define(
        &self,
        core: &Core,
        service: &ServiceName,
        def: &ServiceDef,
        mode: Define,
    ) -> Result<(), RegistryFailure> {
        service.validate()?;
        def.validate()?;
        let name = service.catalog_name();
        let (seen, instances) = self.read(|c| {
            (
                c.service_def(&name).map_or(0, |r| r.modify),
                !c.entries(&name).is_empty(),
            )
        });
        match mode {
            Define::Create if seen != 0 || instances => {
                return Err(RegistryError::Invalid(format!(
                    "specified service already exists, serviceName : {}",
                    service.grouped()
                ))
                .into())
            }
            Define::Update if seen == 0 && !instances => {
                return Err(RegistryError::NotFound(format!(
                    "service {} not found",
                    service.grouped()
                ))
                .into())
            }
            _ => {}
        }
        let key = layout::service_def(&name);
        let value = serde_json::to_vec(def)
            .map_err(|e| RegistryError::Invalid(format!("service definition: {e}")))?;
        let txn = TxnRequest {
            compare: vec![Compare {
                key: key.clone(),
                target: CompareTarget::Mod as i32,
                result: CompareResult::Equal as i32,
                target_union: Some(TargetUnion::ModRevision(seen)),
                ..Default::default()
            }],
            success: vec![put_op(key, value, 0)],
            failure: vec![],
        };
        if !self.write(core, txn).await? {
            return Err(RegistryError::Invalid(format!(
                "service {} changed meanwhile; read it again",
                service.grouped()
            ))
            .into());
        }
        tracing::debug!(service = %name, "nacos service defined");
        Ok(())
    }

    /// Removes `service`'s definition; refused while it has instances.
    pub async fn nacos_undefine(
        &self,
        core: &Core,
        service: &ServiceName,
    ) -> Result<(), RegistryFailure> {
        service.validate()?;
        let name = service.catalog_name();
        let (seen, instances) = self.read(|c| {
            (
                c.service_def(&name).map_or(0, |r| r.modify),
                c.entries(&name).len(),
            )
        });
        if instances > 0 {
            return Err(RegistryError::Invalid(format!(
                "service {} has {instances} instances; deregister them first",
                service.grouped()
            ))
            .into());
        }
        if seen == 0 {
            return Err(RegistryError::NotFound(format!(
                "service {} not found",
                service.grouped()
            ))
            .into());
        }
        self.write_ops(
            core,
            vec![delete_op(layout::service_def(&name), Vec::new())],
        )
        .await?;
        Ok(())
    }

    /// The services of `namespace` in `group` (every group when empty), by name.
    pub fn nacos_services(&self, namespace: &str, group: &str) -> Vec<ServiceName> {
        let namespace = if namespace.is_empty() {
            naming::PUBLIC
        } else {
            namespace
        };
        self.read(|c| {
            let mut names: std::collections::BTreeSet<String> =
                c.service_names().into_keys().collect();
            names.extend(c.defined_services().cloned());
            names
                .into_iter()
                .map(|n| ServiceName::from_catalog(&n))
                .filter(|s| s.namespace == namespace && (group.is_empty() || s.group == group))
                .collect()
        })
    }
}
