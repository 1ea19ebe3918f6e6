//! The gateway at run time: this member's routing snapshot, kept current from the store's
//! `Gateway` keyspace and the registry, and the writes of the admin face.
//!
//! - The builder task ([`Gateway::run`]) follows the keyspace with a watch and the registry
//!   with its change counter; on either it builds a new [`Snapshot`] (routing table,
//!   upstreams with their live nodes, consumers, certificates) off the request path and swaps
//!   it in atomically. Requests load the snapshot once; a connection, a WebSocket or a gRPC
//!   stream holds nothing the swap takes away, so a change never closes one.
//! - A watch that cannot continue (history compacted under it, a snapshot installed) reloads
//!   the keyspace and builds afresh; the old snapshot serves until the new one is in.
//! - Nodes' live figures (requests in flight, latency) and rate-limit counters are kept
//!   outside snapshots, by node address and by counter key, so a change does not reset them.
//! - Writes go through consensus as txns of the keyspace, validated first: a resource that
//!   is stored is one the data plane can serve.
//!
//! [`proxy`] is the data plane; [`limit`] the rate-limit counters of one member, [`quota`]
//! the cluster-wide ones; [`sni`] the TLS certificates by SNI.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use berth_gateway::balance::{Choice, NodeStats, Picker};
use berth_gateway::layout;
use berth_gateway::model::{Discovery, Nodes};
use berth_gateway::table::{Table, UpstreamKey};
use berth_gateway::{Consumer, GatewayError, Kind, PluginSet, Route, Service, Ssl, Upstream};
use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::{Compare, RangeRequest, TxnRequest};
use berth_proto::mvccpb::event::EventType;
use berth_proto::mvccpb::KeyValue;
use berth_store::{
    Applied, Command, Delivery, Entry, Guard, KeySpan, Keyspace, Store, WatchSink, WatchSpec,
};
use serde_json::Value;
use tokio::sync::{mpsc, watch};

use crate::consensus::WriteError;
use crate::core::Core;
use crate::registry::{delete_op, put_op, Registry};

pub mod access_log;
pub mod breaker;
pub mod checks;
pub mod h1_guard;
pub mod jwt;
pub mod limit;
pub mod node_tls;
pub mod pool;
pub mod proxy;
pub mod quota;
pub mod sni;

/// Why a gateway call failed.
#[derive(Debug, thiserror::Error)]
pub enum GatewayFailure {
    /// The domain refused the input, or what it names does not exist.
    #[error(transparent)]
    Refused(#[from] GatewayError),
    /// The write (or the read that guards it) did not go through.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Reading the store failed.
    #[error("reading the store: {0}")]
    Store(#[from] berth_store::StoreError),
}

/// A stored resource: its JSON and its key's revisions.
#[derive(Debug, Clone)]
pub struct Stored {
    /// The resource as stored.
    pub value: Value,
    /// The key's create revision (`createdIndex`).
    pub created: i64,
    /// The key's mod revision (`modifiedIndex`).
    pub modified: i64,
}

/// Every resource, parsed.
#[derive(Debug, Default, Clone)]
pub struct Resources {
    /// Routes by ID.
    pub routes: BTreeMap<String, Route>,
    /// Services by ID.
    pub services: BTreeMap<String, Service>,
    /// Upstreams by ID.
    pub upstreams: BTreeMap<String, Upstream>,
    /// Consumers by user name.
    pub consumers: BTreeMap<String, Consumer>,
    /// Certificates by ID.
    pub ssls: BTreeMap<String, Ssl>,
    /// Plugin configs by ID.
    pub plugin_configs: BTreeMap<String, PluginSet>,
    /// Global rules by ID.
    pub global_rules: BTreeMap<String, PluginSet>,
    /// Consumer groups by ID.
    pub consumer_groups: BTreeMap<String, PluginSet>,
}

impl Resources {
    /// Applies a put of `id` of `kind`; a record that does not parse is logged and dropped.
    fn put(&mut self, kind: Kind, id: String, value: &[u8]) {
        let parsed = serde_json::from_slice::<Value>(value)
            .map_err(|e| GatewayError::Corrupt {
                key: format!("{}/{id}", kind.plural()),
                why: e.to_string(),
            })
            .and_then(|v| self.insert(kind, &id, &v));
        if let Err(e) = parsed {
            tracing::error!(kind = kind.plural(), %id, error = %e, "gateway: skipping a stored resource");
            self.remove(kind, &id);
        }
    }

    fn insert(&mut self, kind: Kind, id: &str, v: &Value) -> Result<(), GatewayError> {
        let id = id.to_string();
        match kind {
            Kind::Route => {
                self.routes.insert(id.clone(), Route::parse(&id, v)?);
            }
            Kind::Service => {
                self.services.insert(id, Service::parse(v)?);
            }
            Kind::Upstream => {
                self.upstreams.insert(id, Upstream::parse(v)?);
            }
            Kind::Consumer => {
                self.consumers.insert(id, Consumer::parse(v)?);
            }
            Kind::Ssl => {
                self.ssls.insert(id, Ssl::parse(v)?);
            }
            Kind::PluginConfig => {
                self.plugin_configs.insert(id, PluginSet::parse(kind, v)?);
            }
            Kind::GlobalRule => {
                self.global_rules.insert(id, PluginSet::parse(kind, v)?);
            }
            Kind::ConsumerGroup => {
                self.consumer_groups.insert(id, PluginSet::parse(kind, v)?);
            }
        }
        Ok(())
    }

    fn remove(&mut self, kind: Kind, id: &str) {
        match kind {
            Kind::Route => drop(self.routes.remove(id)),
            Kind::Service => drop(self.services.remove(id)),
            Kind::Upstream => drop(self.upstreams.remove(id)),
            Kind::Consumer => drop(self.consumers.remove(id)),
            Kind::Ssl => drop(self.ssls.remove(id)),
            Kind::PluginConfig => drop(self.plugin_configs.remove(id)),
            Kind::GlobalRule => drop(self.global_rules.remove(id)),
            Kind::ConsumerGroup => drop(self.consumer_groups.remove(id)),
        }
    }

    /// True when some upstream takes its nodes from the registry.
    fn uses_registry(&self) -> bool {
        let registry = |u: &Upstream| matches!(u.nodes, Nodes::Registry { .. });
        self.upstreams.values().any(registry)
            || self
                .routes
                .values()
                .filter_map(|r| r.upstream.as_deref())
                .any(registry)
            || self
                .services
                .values()
                .filter_map(|s| s.upstream.as_deref())
                .any(registry)
    }
}

/// An upstream with the nodes it has now.
#[derive(Debug)]
pub struct LiveUpstream {
    /// Its name in metrics and errors (`upstreams/1`, `routes/7`, `services/s`).
    pub label: String,
    /// Its definition.
    pub def: Upstream,
    /// Its nodes and how one is picked.
    pub picker: Picker,
    /// TLS to its nodes (`https`, `grpcs`), or why it cannot be set up.
    pub tls: Option<Result<Arc<node_tls::TlsConfig>, String>>,
}

/// Consumers by credential.
#[derive(Debug, Default)]
pub struct Consumers {
    /// By `key-auth` key.
    pub by_key: HashMap<String, Arc<Consumer>>,
    /// By `basic-auth` user name: the password and the consumer.
    pub by_user: HashMap<String, (String, Arc<Consumer>)>,
    /// By `jwt-auth` key: the consumer and how its tokens are verified.
    pub by_jwt: HashMap<String, (Arc<Consumer>, Arc<jwt::Verifier>)>,
    /// Tokens verified under these consumers.
    pub verified: jwt::Verified,
    /// Consumers whose `limit-count` comes from their group: the group's ID (the group's
    /// consumers share its counters).
    pub count_by_group: HashMap<String, String>,
    /// Likewise for `limit-req`.
    pub pace_by_group: HashMap<String, String>,
}

/// What requests are served with: one immutable build. See the module docs.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// The store revision it reflects.
    pub revision: i64,
    /// The routing table.
    pub table: Table,
    /// Upstreams by what routes call them.
    pub upstreams: HashMap<UpstreamKey, Arc<LiveUpstream>>,
    /// Consumers.
    pub consumers: Consumers,
    /// Certificates by SNI.
    pub certs: sni::Certs,
    /// The global rules' gates (`ip-restriction`, `limit-count`, `limit-req`), by rule ID,
    /// run for every request before its route's plugins; their other plugins are in every
    /// route's (under the route's own).
    pub global_gates: Vec<(String, berth_gateway::plugins::Plugins)>,
}

/// The gateway of one member. See the module docs.
pub struct Gateway {
    store: Arc<Store>,
    snapshot: ArcSwap<Snapshot>,
    resources: RwLock<Arc<Resources>>,
    applied: crate::applied_mark::AppliedMark,
    nodes: Mutex<HashMap<String, Weak<NodeStats>>>,
    /// Rate-limit counters.
    pub limits: limit::Counters,
    /// Cluster-wide rate-limit counts.
    pub quotas: Arc<quota::Quotas>,
    /// `limit-req` buckets.
    pub buckets: limit::Buckets,
    /// Retry budget (see [`proxy`]).
    pub retry_budget: proxy::RetryBudget,
    /// Upstream HTTP clients, by connect timeout (gRPC and upgrades).
    pub clients: proxy::Clients,
    /// Upstream HTTP/1.1 connections of plain requests.
    pub pool: Arc<pool::Pool>,
    /// JWKS documents `jwt-auth` consumers name.
    pub jwks: jwt::JwksCache,
    /// `api-breaker` states by route.
    pub breakers: breaker::Breakers,
    /// Active health checks' probers.
    pub probers: checks::Probers,
    /// Client configurations for TLS to nodes.
    pub node_tls: node_tls::TlsConfigs,
    /// Requests to bring the snapshot up to date (see [`Gateway::sync`]).
    barriers: crate::applied_mark::Barriers,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A compare that holds while `key`'s mod revision is `rev` (0: the key does not exist).
fn unchanged_since(key: Vec<u8>, rev: i64) -> Compare {
    Compare {
        key,
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// A compare that holds while `key` exists.
fn exists(key: Vec<u8>) -> Compare {
    Compare {
        key,
        target: CompareTarget::Version as i32,
        result: CompareResult::Greater as i32,
        target_union: Some(TargetUnion::Version(0)),
        ..Default::default()
    }
}

/// What a put did.
#[derive(Debug)]
pub struct PutOutcome {
    /// True when the key did not exist before.
    pub created: bool,
    /// The resource as stored now.
    pub stored: Stored,
}

/// Seconds since the epoch.
fn now_secs() -> i64 {
    i64::try_from(crate::registry::now_ms() / 1000).unwrap_or(i64::MAX)
}

impl Gateway {
    /// A gateway over `store`; [`Gateway::run`] fills and follows its snapshot. Cluster-wide
    /// rate limits are counted by `consensus`'s leader.
    pub fn new(
        store: Arc<Store>,
        consensus: crate::consensus::Consensus,
        metrics: Arc<crate::metrics::Metrics>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            barriers: Default::default(),
            store,
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            resources: RwLock::new(Arc::new(Resources::default())),
            applied: crate::applied_mark::AppliedMark::new(),
            nodes: Mutex::new(HashMap::new()),
            limits: limit::Counters::default(),
            quotas: Arc::new(quota::Quotas::new(consensus, metrics)),
            buckets: limit::Buckets::default(),
            retry_budget: proxy::RetryBudget::default(),
            clients: proxy::Clients::default(),
            pool: Arc::default(),
            jwks: jwt::JwksCache::default(),
            breakers: breaker::Breakers::default(),
            probers: checks::Probers::default(),
            node_tls: node_tls::TlsConfigs::default(),
        })
    }

    /// The snapshot requests are served with now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.snapshot.load_full()
    }

    /// The revision the snapshot reflects.
    pub fn applied_revision(&self) -> i64 {
        self.applied.get()
    }

    /// Every resource as the builder parsed them.
    pub fn resources(&self) -> Arc<Resources> {
        self.resources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the snapshot has applied revision `rev` (or five seconds passed).
    pub async fn wait_applied(&self, rev: i64) {
        self.applied.wait(rev, Duration::from_secs(5)).await;
    }

    /// Makes the snapshot as fresh as a linearizable read at this moment: a read index, then
    /// every gateway change up to it in the snapshot (the builder answers once it has taken
    /// every change the store had handed it, whatever keyspace the last revisions were in).
    pub async fn sync(&self, core: &Core) -> Result<(), WriteError> {
        core.consensus.read_index().await?;
        self.barriers.request("gateway snapshot builder").await
    }

    /// Resource `id` of `kind` as stored (read after `sync` for a linearizable answer).
    pub fn get(&self, kind: Kind, id: &str) -> Result<Option<Stored>, GatewayFailure> {
        Ok(self.range(kind, Some(id))?.into_iter().next())
    }

    /// Every resource of `kind`, in ID order.
    pub fn list(&self, kind: Kind) -> Result<Vec<Stored>, GatewayFailure> {
        self.range(kind, None)
    }

    fn range(&self, kind: Kind, id: Option<&str>) -> Result<Vec<Stored>, GatewayFailure> {
        let (key, range_end) = match id {
            Some(id) => (layout::key(kind, id), Vec::new()),
            None => {
                let p = layout::prefix(kind);
                let end = layout::prefix_end(&p);
                (p, end)
            }
        };
        let resp = self.store.range_in(
            Keyspace::Gateway,
            &RangeRequest {
                key,
                range_end,
                ..Default::default()
            },
        )?;
        resp.kvs.iter().map(stored).collect()
    }

    /// Validates `value` as resource `id` of `kind` (with its references, against the
    /// resources as they are) and stores it, keeping `create_time` of an existing one. With
    /// `expect`, only if the resource is still at that mod revision (a PATCH's read). Under
    /// `lease` (0: none), it goes when the lease expires.
    #[allow(clippy::too_many_arguments)]
    pub async fn put(
        &self,
        core: &Core,
        kind: Kind,
        id: &str,
        mut value: Value,
        expect: Option<i64>,
        lease: i64,
        guard: Option<Guard>,
    ) -> Result<PutOutcome, GatewayFailure> {
        berth_gateway::model::check_id(kind, id)?;
        self.sync(core).await?;
        let mut compares = self.check(kind, id, &value)?;
        let key = layout::key(kind, id);
        let existing = self.get(kind, id)?;
        let now = now_secs();
        let created_at = existing
            .as_ref()
            .and_then(|e| e.value.get("create_time").cloned())
            .unwrap_or(Value::from(now));
        if let Value::Object(map) = &mut value {
            map.insert(kind.id_field().into(), Value::String(id.to_string()));
            map.insert("create_time".into(), created_at);
            map.insert("update_time".into(), Value::from(now));
        }
        let seen = existing.as_ref().map_or(0, |e| e.modified);
        if expect.is_some_and(|want| want != seen) {
            return Err(GatewayError::Refused(format!(
                "{} {id} changed since it was read; try again",
                kind.singular()
            ))
            .into());
        }
        compares.push(unchanged_since(key.clone(), seen));
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        let rev = self
            .commit(core, compares, vec![put_op(key, bytes, lease)], guard)
            .await?;
        let Some(rev) = rev else {
            return Err(GatewayError::invalid(format!(
                "{} {id} (or what it names) changed while it was written; try again",
                kind.singular()
            ))
            .into());
        };
        Ok(PutOutcome {
            created: existing.is_none(),
            stored: Stored {
                value,
                created: existing.as_ref().map_or(rev, |e| e.created),
                modified: rev,
            },
        })
    }

    /// Deletes resource `id` of `kind` unless another uses it (`force`: even then). `None`
    /// when it does not exist.
    pub async fn delete(
        &self,
        core: &Core,
        kind: Kind,
        id: &str,
        force: bool,
        guard: Option<Guard>,
    ) -> Result<Option<i64>, GatewayFailure> {
        self.sync(core).await?;
        let Some(existing) = self.get(kind, id)? else {
            return Ok(None);
        };
        if !force {
            self.check_unused(kind, id)?;
        }
        let key = layout::key(kind, id);
        let rev = self
            .commit(
                core,
                vec![unchanged_since(key.clone(), existing.modified)],
                vec![delete_op(key, Vec::new())],
                guard,
            )
            .await?;
        match rev {
            Some(rev) => Ok(Some(rev)),
            None => Err(GatewayError::invalid(format!(
                "{} {id} changed while it was deleted; try again",
                kind.singular()
            ))
            .into()),
        }
    }

    /// Parses `value` as `kind` and checks what it refers to; returns compares that keep the
    /// referred resources in place until the write applies.
    fn check(&self, kind: Kind, id: &str, value: &Value) -> Result<Vec<Compare>, GatewayError> {
        if !value.is_object() {
            return Err(GatewayError::invalid("the body must be a JSON object"));
        }
        let res = self.resources();
        let mut compares = Vec::new();
        let mut need = |kind: Kind, rid: &Option<String>| -> Result<(), GatewayError> {
            if let Some(rid) = rid {
                let present = match kind {
                    Kind::Upstream => res.upstreams.contains_key(rid),
                    Kind::Service => res.services.contains_key(rid),
                    Kind::Ssl => res.ssls.get(rid).is_some_and(|s| s.client),
                    Kind::PluginConfig => res.plugin_configs.contains_key(rid),
                    Kind::ConsumerGroup => res.consumer_groups.contains_key(rid),
                    _ => true,
                };
                if !present {
                    return Err(GatewayError::Missing {
                        kind: kind.singular(),
                        id: rid.clone(),
                    });
                }
                compares.push(exists(layout::key(kind, rid)));
            }
            Ok(())
        };
        match kind {
            Kind::Route => {
                let r = Route::parse(id, value)?;
                check_limit_group(&res, kind, id, &r.plugins)?;
                need(Kind::Upstream, &r.upstream_id)?;
                need(Kind::Service, &r.service_id)?;
                need(Kind::PluginConfig, &r.plugin_config_id)?;
                if let Some(u) = &r.upstream {
                    check_node_tls(u, &mut need)?;
                }
            }
            Kind::Service => {
                let s = Service::parse(value)?;
                check_limit_group(&res, kind, id, &s.plugins)?;
                need(Kind::Upstream, &s.upstream_id)?;
                if let Some(u) = &s.upstream {
                    check_node_tls(u, &mut need)?;
                }
            }
            Kind::Upstream => {
                check_node_tls(&Upstream::parse(value)?, &mut need)?;
            }
            Kind::Consumer => {
                let c = Consumer::parse(value)?;
                check_limit_group(&res, kind, id, &c.plugins)?;
                if let Some(j) = &c.plugins.jwt_credential {
                    jwt::Verifier::new(j).map_err(GatewayError::Refused)?;
                }
                if c.username != id {
                    return Err(GatewayError::Refused("wrong username".into()));
                }
                need(Kind::ConsumerGroup, &c.group_id)?;
                for (plugin, cred) in berth_gateway::plugins::credentials(&c.plugins) {
                    let clash = res.consumers.iter().find(|(name, other)| {
                        name.as_str() != id
                            && berth_gateway::plugins::credentials(&other.plugins).get(plugin)
                                == Some(&cred)
                    });
                    if let Some((name, _)) = clash {
                        return Err(GatewayError::Refused(format!(
                            "duplicate key of plugin {plugin} found with consumer: {name}"
                        )));
                    }
                }
            }
            Kind::Ssl => {
                let ssl = Ssl::parse(value)?;
                sni::load(&ssl).map_err(|e| GatewayError::invalid(e.to_string()))?;
                if !ssl.client {
                    if let Some((user, user_id)) = client_cert_user(&res, id) {
                        return Err(GatewayError::Refused(format!(
                            "ssl {id} is the client certificate of {user} {user_id}: it stays of type client"
                        )));
                    }
                }
            }
            Kind::PluginConfig | Kind::GlobalRule | Kind::ConsumerGroup => {
                let set = PluginSet::parse(kind, value)?;
                check_limit_group(&res, kind, id, &set.plugins)?;
            }
        }
        Ok(compares)
    }

    /// Refuses deleting what a route or service still uses.
    fn check_unused(&self, kind: Kind, id: &str) -> Result<(), GatewayError> {
        let res = self.resources();
        let in_use = |user: &'static str, user_id: &String| GatewayError::InUse {
            kind: kind.singular(),
            user,
            user_id: user_id.clone(),
        };
        // The first resource of `map` whose `field` names `id`.
        fn naming<T>(
            map: &BTreeMap<String, T>,
            id: &str,
            field: impl Fn(&T) -> Option<&str>,
        ) -> Option<String> {
            map.iter()
                .find(|(_, v)| field(v) == Some(id))
                .map(|(k, _)| k.clone())
        }
        let routes = |field: fn(&Route) -> Option<&str>| {
            naming(&res.routes, id, field).map(|r| ("route", r))
        };
        let user = match kind {
            Kind::Upstream => routes(|r| r.upstream_id.as_deref()).or_else(|| {
                naming(&res.services, id, |s| s.upstream_id.as_deref()).map(|s| ("service", s))
            }),
            Kind::Service => routes(|r| r.service_id.as_deref()),
            Kind::PluginConfig => routes(|r| r.plugin_config_id.as_deref()),
            Kind::ConsumerGroup => {
                naming(&res.consumers, id, |c| c.group_id.as_deref()).map(|c| ("consumer", c))
            }
            Kind::Ssl => client_cert_user(&res, id),
            _ => None,
        };
        if let Some((user, user_id)) = user {
            return Err(in_use(user, &user_id));
        }
        Ok(())
    }

    /// Proposes a txn of the keyspace; on success waits until the snapshot shows it and
    /// returns its revision (`None` when a compare failed).
    async fn commit(
        &self,
        core: &Core,
        compare: Vec<Compare>,
        success: Vec<berth_proto::etcdserverpb::RequestOp>,
        guard: Option<Guard>,
    ) -> Result<Option<i64>, WriteError> {
        if core.out_of_space().await {
            return Err(WriteError::Refused(berth_store::StoreError::NoSpace));
        }
        let entry = Entry {
            guard,
            ..Entry::new(
                Keyspace::Gateway,
                Command::Txn(TxnRequest {
                    compare,
                    success,
                    ..Default::default()
                }),
            )
        };
        match core.consensus.propose_entry(entry).await? {
            Applied::Txn(t) if t.succeeded => {
                let rev = t.header.map_or(0, |h| h.revision);
                self.wait_applied(rev).await;
                Ok(Some(rev))
            }
            Applied::Txn(_) => Ok(None),
            _ => Err(WriteError::Unknown),
        }
    }

    /// Loads the keyspace and follows it and the registry until `stop`, swapping in a new
    /// snapshot after every change.
    pub async fn run(
        self: Arc<Self>,
        registry: Arc<Registry>,
        metrics: Arc<crate::metrics::Metrics>,
        roots: Arc<rustls::RootCertStore>,
        mut stop: watch::Receiver<bool>,
    ) {
        let _ = self.probers.metrics.set(metrics.clone());
        let _ = self.probers.stop.set(stop.clone());
        self.node_tls.set_roots(roots.clone());
        let _ = self.probers.roots.set(roots);
        let (pool, mut sweeps_stop) = (Arc::downgrade(&self.pool), stop.clone());
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(10));
            loop {
                tokio::select! {
                    _ = tick.tick() => match pool.upgrade() {
                        Some(p) => p.sweep(),
                        None => return,
                    },
                    _ = sweeps_stop.changed() => return,
                }
            }
        });
        let mut registry_changes = registry.service_changes();
        let Some(mut barriers) = self.barriers.take() else {
            return;
        };
        loop {
            let (tx, mut rx) = mpsc::channel::<Delivery>(256);
            let (mut res, from) = match self.load() {
                Ok(loaded) => loaded,
                Err(e) => {
                    tracing::error!(error = %e, "gateway: loading the resources");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            self.publish(&res, from, &registry, &metrics);
            let spec = WatchSpec {
                keyspace: Keyspace::Gateway,
                span: KeySpan::new(b"", b"\0"),
                start_rev: from + 1,
                no_put: false,
                no_delete: false,
            };
            let handle = self.store.watch(spec, 0, WatchSink::new(tx));
            let mut revision = from;
            // Catch-up requests wait here until the watch is live (not replaying history):
            // only then is every change up to the store's progress revision in the channel.
            let mut parked: Vec<crate::applied_mark::Barrier> = Vec::new();
            let reload = loop {
                use crate::applied_mark::{answer, catch_up, CatchUp};
                let mut took = false;
                let caught = catch_up(&self.store, &handle, &parked, &mut rx, |d| {
                    revision = d.revision;
                    took = true;
                    apply(&mut res, &d)
                });
                match caught {
                    CatchUp::Wait => {}
                    CatchUp::Broken => break true,
                    CatchUp::UpTo(upto) => {
                        if took {
                            self.publish(&res, revision, &registry, &metrics);
                        }
                        self.applied.advance(upto);
                        answer(&mut parked);
                    }
                }
                let replaying = !parked.is_empty();
                tokio::select! {
                    // A parked request is looked at again shortly (the watch catches up).
                    _ = tokio::time::sleep(Duration::from_millis(5)), if replaying => {}
                    d = rx.recv() => {
                        let Some(d) = d else { break true };
                        revision = d.revision;
                        // Take whatever else arrived: one build for a burst of changes.
                        let ok = apply(&mut res, &d)
                            && crate::applied_mark::drain(&mut rx, |d| {
                                revision = d.revision;
                                apply(&mut res, &d)
                            });
                        if !ok {
                            break true;
                        }
                        self.publish(&res, revision, &registry, &metrics);
                    }
                    b = barriers.recv() => {
                        let Some(b) = b else { break false };
                        parked.push(b);
                    }
                    changed = registry_changes.changed() => {
                        if changed.is_err() {
                            break false;
                        }
                        if res.uses_registry() {
                            self.publish(&res, revision, &registry, &metrics);
                        }
                    }
                    _ = stop.changed() => break false,
                }
            };
            self.store.cancel_watch(&handle);
            if !reload {
                return;
            }
            metrics.gateway_reloaded();
            tracing::warn!("gateway: the watch was interrupted; reloading the resources");
        }
    }

    /// Reads every resource at one revision.
    fn load(&self) -> Result<(Resources, i64), berth_store::StoreError> {
        let rev = self.store.revision();
        let resp = self.store.range_in(
            Keyspace::Gateway,
            &RangeRequest {
                key: Vec::new(),
                range_end: vec![0],
                revision: rev,
                ..Default::default()
            },
        )?;
        let mut res = Resources::default();
        for kv in &resp.kvs {
            if let Some((kind, id)) = layout::parse(&kv.key) {
                res.put(kind, id, &kv.value);
            }
        }
        Ok((res, rev))
    }

    /// Builds a snapshot of `res` at `revision` and swaps it in.
    fn publish(
        &self,
        res: &Resources,
        revision: i64,
        registry: &Registry,
        metrics: &crate::metrics::Metrics,
    ) {
        let started = std::time::Instant::now();
        let snapshot = self.build(res, revision, registry);
        let routes = snapshot.table.targets().len();
        let before = std::mem::replace(
            &mut *self.resources.write().unwrap_or_else(|p| p.into_inner()),
            Arc::new(res.clone()),
        );
        self.snapshot.store(Arc::new(snapshot));
        self.applied.advance(revision);
        // A deleted route's metric series go with it (series are created by requests, so
        // the routes that had any are among those the previous build had).
        for id in before
            .routes
            .keys()
            .filter(|id| !res.routes.contains_key(*id))
        {
            metrics.forget_gateway_route(id);
        }
        self.breakers.retain(|r| res.routes.contains_key(r));
        metrics.observe_gateway_build(started.elapsed(), routes);
        tracing::debug!(revision, routes, elapsed = ?started.elapsed(), "gateway: snapshot swapped in");
    }

    fn build(&self, res: &Resources, revision: i64, registry: &Registry) -> Snapshot {
        // The global rules' plugins but their gates, the lowest ID's first.
        let base = res
            .global_rules
            .values()
            .fold(berth_gateway::plugins::Plugins::default(), |acc, rule| {
                acc.over(&rule.plugins.without_gates())
            });
        let global_gates = res
            .global_rules
            .iter()
            .map(|(id, rule)| (id.clone(), rule.plugins.gates()))
            .collect();
        let (table, skipped) = Table::build(
            res.routes.values(),
            &res.services,
            &res.plugin_configs,
            &base,
        );
        for s in skipped {
            tracing::warn!(route = %s.route, why = %s.why, "gateway: route left out of the table");
        }
        let mut upstreams = HashMap::new();
        let mut tls_used = std::collections::HashSet::new();
        let mut nodes = lock(&self.nodes);
        nodes.retain(|_, w| w.strong_count() > 0);
        for target in table.targets() {
            let Some(key) = &target.upstream else {
                continue;
            };
            if upstreams.contains_key(key) {
                continue;
            }
            let (label, def) = match key {
                UpstreamKey::Stored(id) => (format!("upstreams/{id}"), res.upstreams.get(id)),
                UpstreamKey::OfRoute(id) => (
                    format!("routes/{id}"),
                    res.routes.get(id).and_then(|r| r.upstream.as_deref()),
                ),
                UpstreamKey::OfService(id) => (
                    format!("services/{id}"),
                    res.services.get(id).and_then(|s| s.upstream.as_deref()),
                ),
            };
            let Some(def) = def else { continue };
            // Active checks over TLS show the certificate the upstream shows its nodes (one
            // that cannot be had leaves the upstream unserved, below; probes go without).
            let client_pem = def
                .tls
                .as_ref()
                .and_then(|t| node_tls::client_pem(t, &res.ssls).ok().flatten());
            let choices = resolve_nodes(def, registry)
                .into_iter()
                .map(|(authority, weight)| {
                    let stats = match nodes.get(&authority).and_then(Weak::upgrade) {
                        Some(s) => s,
                        None => {
                            let s = Arc::new(NodeStats::default());
                            nodes.insert(authority.clone(), Arc::downgrade(&s));
                            s
                        }
                    };
                    let probed = def
                        .active
                        .as_ref()
                        .map(|check| self.probers.probed(&label, &authority, check, client_pem));
                    Choice {
                        authority,
                        weight,
                        stats,
                        probed,
                    }
                })
                .collect();
            let tls = def.tls.as_ref().map(|t| {
                let built = self.node_tls.get(t, &res.ssls);
                match &built {
                    Ok(c) => {
                        tls_used.insert(c.id);
                    }
                    Err(e) => {
                        tracing::error!(upstream = %label, error = %e, "gateway: no TLS to the upstream's nodes")
                    }
                }
                built
            });
            upstreams.insert(
                key.clone(),
                Arc::new(LiveUpstream {
                    label,
                    picker: Picker::new(&def.balance, choices),
                    def: def.clone(),
                    tls,
                }),
            );
        }
        drop(nodes);
        self.node_tls.retain(&tls_used);
        let mut consumers = Consumers::default();
        for c in res.consumers.values() {
            let mut c = c.clone();
            if let Some(group) = c.group_id.as_ref().and_then(|g| res.consumer_groups.get(g)) {
                let gid = c.group_id.clone().unwrap_or_default();
                if c.plugins.limit_count.is_none() && group.plugins.limit_count.is_some() {
                    consumers
                        .count_by_group
                        .insert(c.username.clone(), gid.clone());
                }
                if c.plugins.limit_req.is_none() && group.plugins.limit_req.is_some() {
                    consumers.pace_by_group.insert(c.username.clone(), gid);
                }
                c.plugins = c.plugins.over_group(&group.plugins);
            }
            let c = Arc::new(c);
            if let Some(k) = &c.plugins.key_credential {
                consumers.by_key.insert(k.clone(), c.clone());
            }
            if let Some((u, p)) = &c.plugins.basic_credential {
                consumers.by_user.insert(u.clone(), (p.clone(), c.clone()));
            }
            if let Some(j) = &c.plugins.jwt_credential {
                match jwt::Verifier::new(j) {
                    Ok(v) => {
                        consumers
                            .by_jwt
                            .insert(j.key.clone(), (c.clone(), Arc::new(v)));
                    }
                    Err(e) => {
                        tracing::error!(consumer = %c.username, error = %e, "gateway: skipping a jwt-auth credential")
                    }
                }
            }
        }
        Snapshot {
            revision,
            table,
            upstreams,
            consumers,
            certs: sni::Certs::build(res.ssls.iter()),
            global_gates,
        }
    }
}

/// Who shows ssl `id` to nodes as its client certificate, if anyone: an upstream, or a route
/// or service with an upstream of its own.
fn client_cert_user(res: &Resources, id: &str) -> Option<(&'static str, String)> {
    let shows = |u: Option<&Upstream>| {
        u.and_then(|u| u.tls.as_ref())
            .and_then(|t| t.client_cert.as_ref())
            .is_some_and(|c| matches!(c, berth_gateway::ClientCert::Ssl(s) if s == id))
    };
    let upstreams = res.upstreams.iter().map(|(k, u)| ("upstream", k, Some(u)));
    let routes = res
        .routes
        .iter()
        .map(|(k, r)| ("route", k, r.upstream.as_deref()));
    let services = res
        .services
        .iter()
        .map(|(k, s)| ("service", k, s.upstream.as_deref()));
    upstreams
        .chain(routes)
        .chain(services)
        .find(|(_, _, u)| shows(*u))
        .map(|(kind, k, _)| (kind, k.clone()))
}

/// APISIX's rule for `limit-count`'s `group`: the routes (and other plugin holders) of a
/// group share one counter, so they must configure it alike (`group conf mismatched`).
fn check_limit_group(
    res: &Resources,
    kind: Kind,
    id: &str,
    plugins: &berth_gateway::plugins::Plugins,
) -> Result<(), GatewayError> {
    let Some(mine) = plugins.limit_count.as_ref() else {
        return Ok(());
    };
    let Some(group) = mine.group.as_deref() else {
        return Ok(());
    };
    fn each<'a, T>(
        kind: Kind,
        map: &'a BTreeMap<String, T>,
        plugins: fn(&T) -> &berth_gateway::plugins::Plugins,
    ) -> impl Iterator<Item = (Kind, &'a String, &'a berth_gateway::plugins::Plugins)> + 'a {
        map.iter().map(move |(k, v)| (kind, k, plugins(v)))
    }
    let sets: fn(&PluginSet) -> &berth_gateway::plugins::Plugins = |p| &p.plugins;
    let clash = each(Kind::Route, &res.routes, |r| &r.plugins)
        .chain(each(Kind::Service, &res.services, |s| &s.plugins))
        .chain(each(Kind::Consumer, &res.consumers, |c| &c.plugins))
        .chain(each(Kind::PluginConfig, &res.plugin_configs, sets))
        .chain(each(Kind::GlobalRule, &res.global_rules, sets))
        .chain(each(Kind::ConsumerGroup, &res.consumer_groups, sets))
        .filter(|(k, other, _)| !(*k == kind && other.as_str() == id))
        .find(|(_, _, p)| {
            p.limit_count
                .as_ref()
                .is_some_and(|o| o.group.as_deref() == Some(group) && o != mine)
        });
    match clash {
        Some((k, other, _)) => Err(GatewayError::Refused(format!(
            "group conf mismatched: limit-count group {group:?} is configured otherwise in {} {other}",
            k.singular()
        ))),
        None => Ok(()),
    }
}

/// Checks an upstream's client certificate: a PEM given inline parses and its key belongs
/// to it; an ssl named by ID exists and is of type client.
fn check_node_tls(
    u: &Upstream,
    need: &mut impl FnMut(Kind, &Option<String>) -> Result<(), GatewayError>,
) -> Result<(), GatewayError> {
    match u.tls.as_ref().and_then(|t| t.client_cert.as_ref()) {
        None => Ok(()),
        Some(berth_gateway::ClientCert::Inline { cert, key }) => {
            node_tls::check_client_pem(cert, key).map_err(GatewayError::invalid)
        }
        Some(berth_gateway::ClientCert::Ssl(id)) => need(Kind::Ssl, &Some(id.clone())),
    }
}

/// `host:port` for a URL's authority (IPv6 bracketed).
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// The nodes of `def` now: its static ones, or its registry service's instances that take
/// traffic (passing, or warning at their warning weight; enabled Nacos instances at their
/// weight), each as `host:port` and weight.
fn resolve_nodes(def: &Upstream, registry: &Registry) -> Vec<(String, u32)> {
    use berth_registry::model::CheckStatus;
    use berth_registry::naming::{Instance, ServiceName};
    match &def.nodes {
        Nodes::Static(nodes) => nodes
            .iter()
            .map(|n| (authority(&n.host, n.port), n.weight))
            .collect(),
        Nodes::Registry { service, discovery } => match discovery {
            Discovery::Consul { tags } => registry.read(|c| {
                c.entries(service)
                    .into_iter()
                    .filter(|e| tags.iter().all(|t| e.service.value.tags.contains(t)))
                    .filter_map(|e| {
                        let weight = match e.status() {
                            CheckStatus::Passing => e.service.value.weights.passing,
                            CheckStatus::Warning => e.service.value.weights.warning,
                            CheckStatus::Critical => return None,
                        };
                        let s = &e.service.value;
                        let host = if s.address.is_empty() {
                            e.node.value.address.clone()
                        } else {
                            s.address.clone()
                        };
                        (!host.is_empty() && s.port != 0)
                            .then(|| (authority(&host, s.port), weight))
                    })
                    .collect()
            }),
            Discovery::Nacos { namespace, group } => {
                let name = ServiceName::new(namespace, group, service);
                registry.read(|c| {
                    c.entries(&name.catalog_name())
                        .iter()
                        .map(|e| Instance::from_entry(&name, e))
                        .filter(|i| i.healthy && i.enabled && i.weight > 0.0 && i.port != 0)
                        .map(|i| {
                            let w = (i.weight * 100.0).round().clamp(1.0, f64::from(u32::MAX));
                            (authority(&i.ip, i.port), w as u32)
                        })
                        .collect()
                })
            }
        },
    }
}

/// Applies one delivery to `res`; false when the watch cannot continue.
fn apply(res: &mut Resources, d: &Delivery) -> bool {
    for item in &d.items {
        if item.compact_revision != 0 {
            return false;
        }
        for ev in item.events.iter() {
            let Some(kv) = &ev.kv else { continue };
            let Some((kind, id)) = layout::parse(&kv.key) else {
                continue;
            };
            if ev.r#type == EventType::Delete as i32 {
                res.remove(kind, &id);
            } else {
                res.put(kind, id, &kv.value);
            }
        }
    }
    true
}

fn stored(kv: &KeyValue) -> Result<Stored, GatewayFailure> {
    let value = serde_json::from_slice(&kv.value).map_err(|e| GatewayError::Corrupt {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        why: e.to_string(),
    })?;
    Ok(Stored {
        value,
        created: kv.create_revision,
        modified: kv.mod_revision,
    })
}
