//! The registry domain at run time: this member's catalog view (kept current by a watch of
//! the store's `Registry` keyspace), blocking waits on its topics, and every registry write
//! as a proposal through consensus. Faces (Consul HTTP today) translate their wire shapes
//! into calls here.
//!
//! - Reads come from the view. A consistent read first makes the view as fresh as a
//!   linearizable read of the store ([`Registry::sync`]); a stale one reads it as it is.
//! - Writes are txns in the `Registry` keyspace (Consul KV: a multi-keyspace txn, see
//!   `face/consul/kv.rs`); a write returns once this member's view shows it, so the writer
//!   reads its own write even with `?stale`.
//! - A TTL check's liveness is a key attached to a lease: a pass that changes nothing renews
//!   the lease at the leader (no log entry), only a status change is a write, and an expiry
//!   is the lease's revoke, which deletes the key and so turns the check critical.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_proto::etcdserverpb::request_op::Request as Op;
use berth_proto::etcdserverpb::{
    DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use berth_proto::mvccpb::event::EventType;
use berth_registry::catalog::{Change, Record};
use berth_registry::layout;
use berth_registry::register::{CheckDefinition, Registration};
use berth_registry::{Catalog, Check, CheckKind, CheckStatus, Node, RegistryError, Topic};
use berth_store::{Applied, Command, Delivery, KeySpan, Keyspace, Store, WatchSink, WatchSpec};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;

use crate::consensus::WriteError;
use crate::core::Core;

pub mod naming;
pub mod presence;
pub(crate) mod probe;
pub mod reaper;
pub mod runner;
mod sessions;

pub use sessions::{compare_mod, now_ms, tagged};

/// The datacenter berth reports (one per cluster).
pub const DATACENTER: &str = "dc1";

/// Why a registry call failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryFailure {
    /// The domain refused the input, or what it names does not exist.
    #[error(transparent)]
    Refused(#[from] RegistryError),
    /// The write (or the read barrier) did not go through.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// The registry domain of one member. See the module docs.
pub struct Registry {
    store: Arc<Store>,
    view: RwLock<Catalog>,
    topics: Mutex<HashMap<Topic, Arc<Notify>>>,
    /// When each watched topic last changed in the view (for the wake-latency metric).
    changed_at: Mutex<HashMap<Topic, Instant>>,
    applied: crate::applied_mark::AppliedMark,
    barriers: crate::applied_mark::Barriers,
    /// When this member last confirmed its presence with the majority (see `presence`).
    confirmed: Mutex<Option<Instant>>,
    /// Answers faces rendered from the view, by request, with the topic index they reflect:
    /// discovery reads repeat, and the view changes rarely.
    rendered: Mutex<HashMap<String, (i64, bytes::Bytes)>>,
    /// True once the registry is in use: its keyspace holds anything, or a face of it was
    /// asked something here. Until then this member writes nothing of its own (no
    /// presence), so a member used only as an etcd server numbers revisions as etcd does.
    in_use: watch::Sender<bool>,
    /// True once this member's presence was first confirmed.
    established: watch::Sender<bool>,
    /// What verifies TLS check targets, loaded at the first check run (see `probe::roots`).
    check_roots: std::sync::OnceLock<Arc<rustls::RootCertStore>>,
    /// Counts changes of any service's instances (or a reload of the view): the gateway
    /// re-reads its registry-driven upstreams when it moves.
    service_changes: watch::Sender<u64>,
}

/// Most rendered answers kept; past it the cache starts over.
const RENDERED_MAX: usize = 4096;

/// A put op of a txn.
pub fn put_op(key: Vec<u8>, value: Vec<u8>, lease: i64) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestPut(PutRequest {
            key,
            value,
            lease,
            ..Default::default()
        })),
    }
}

/// A delete op of a txn (`range_end` empty: one key).
pub fn delete_op(key: Vec<u8>, range_end: Vec<u8>) -> RequestOp {
    RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key,
            range_end,
            ..Default::default()
        })),
    }
}

pub(crate) fn encode<T: serde::Serialize>(v: &T) -> Vec<u8> {
    // Records are plain structs of strings, numbers and maps with string keys: encoding
    // cannot fail.
    serde_json::to_vec(v).unwrap_or_default()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The lease TTL (whole seconds, at least one) that keeps a TTL check of `ttl` alive.
pub(crate) fn lease_ttl(ttl: Duration) -> i64 {
    i64::try_from(ttl.as_millis().div_ceil(1000))
        .unwrap_or(i64::MAX)
        .max(1)
}

impl Registry {
    /// A registry over `store`; [`Registry::run`] fills and follows its view.
    pub fn new(store: Arc<Store>) -> Arc<Registry> {
        Arc::new(Registry {
            store,
            view: RwLock::new(Catalog::new()),
            topics: Mutex::new(HashMap::new()),
            changed_at: Mutex::new(HashMap::new()),
            applied: crate::applied_mark::AppliedMark::new(),
            barriers: Default::default(),
            confirmed: Mutex::new(None),
            rendered: Mutex::new(HashMap::new()),
            check_roots: std::sync::OnceLock::new(),
            in_use: watch::channel(false).0,
            established: watch::channel(false).0,
            service_changes: watch::channel(0).0,
        })
    }

    /// Marks the registry in use (see the `in_use` field): presence starts.
    pub fn wake_up(&self) {
        self.in_use
            .send_if_modified(|u| !std::mem::replace(u, true));
    }

    /// Waits until the registry is in use.
    pub(crate) async fn until_in_use(&self) {
        let _ = self.in_use.subscribe().wait_for(|u| *u).await;
    }

    /// Waits (at most `max`) until this member's presence was confirmed once, so the first
    /// request a face serves sees this member's node and its serfHealth.
    pub async fn until_established(&self, max: Duration) {
        if *self.established.borrow() {
            return;
        }
        let mut rx = self.established.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(|e| *e)).await;
    }

    /// The roots that verify TLS check targets: the system's and `ca_file`'s, read once.
    pub(crate) fn check_roots(
        &self,
        ca_file: Option<&std::path::Path>,
    ) -> Arc<rustls::RootCertStore> {
        self.check_roots
            .get_or_init(|| probe::roots(ca_file))
            .clone()
    }

    /// A face's answer to request `key` rendered at topic index `index`, if kept.
    pub fn rendered(&self, key: &str, index: i64) -> Option<bytes::Bytes> {
        lock(&self.rendered)
            .get(key)
            .filter(|(at, _)| *at == index)
            .map(|(_, b)| b.clone())
    }

    /// Keeps a face's answer to request `key`, rendered at topic index `index`.
    pub fn remember(&self, key: String, index: i64, body: bytes::Bytes) {
        let mut map = lock(&self.rendered);
        if map.len() >= RENDERED_MAX && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, (index, body));
    }

    /// Records that this member's presence was just confirmed with the majority.
    pub(crate) fn confirm_presence(&self) {
        *lock(&self.confirmed) = Some(Instant::now());
        self.established
            .send_if_modified(|e| !std::mem::replace(e, true));
    }

    /// True when this member confirmed its presence with the majority within `within`: a
    /// member that cannot stops running checks before the others take them over.
    pub fn present_within(&self, within: Duration) -> bool {
        lock(&self.confirmed).is_some_and(|t| t.elapsed() <= within)
    }

    /// Reads the view.
    pub fn read<R>(&self, f: impl FnOnce(&Catalog) -> R) -> R {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        f(&view)
    }

    /// Makes the view at least as fresh as a linearizable read of the store at this moment:
    /// a read index, then every registry change up to it applied to the view.
    pub async fn sync(&self, core: &Core) -> Result<(), WriteError> {
        core.consensus.read_index().await?;
        self.barriers.request("registry view").await
    }

    /// Waits until the view has applied revision `rev` (or five seconds passed).
    pub async fn wait_applied(&self, rev: i64) {
        self.applied.wait(rev, Duration::from_secs(5)).await;
    }

    /// Blocks until `topic`'s index is above `index` or `deadline` passes (Consul's blocking
    /// query). Only changes of this topic wake the waiter. Returns how long ago the change
    /// that woke it reached the view (`None` when the index had moved before, or time ran
    /// out).
    pub async fn wait(&self, topic: &Topic, index: i64, deadline: Instant) -> Option<Duration> {
        let notify = lock(&self.topics)
            .entry(topic.clone())
            .or_insert_with(|| Arc::new(Notify::new()))
            .clone();
        let mut woken = false;
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.read(|c| c.index(topic)) > index {
                return woken
                    .then(|| lock(&self.changed_at).get(topic).map(Instant::elapsed))
                    .flatten();
            }
            tokio::select! {
                _ = notified => woken = true,
                _ = tokio::time::sleep_until(deadline) => return None,
            }
        }
    }

    /// Moves whenever any service's instances (or their checks or nodes) change.
    pub fn service_changes(&self) -> watch::Receiver<u64> {
        self.service_changes.subscribe()
    }

    fn woke(&self, topics: &[Topic]) {
        if topics.iter().any(|t| matches!(t, Topic::Service(_))) {
            self.service_changes.send_modify(|n| *n += 1);
        }
        let map = lock(&self.topics);
        let now = Instant::now();
        let mut changed = lock(&self.changed_at);
        for t in topics {
            if let Some(n) = map.get(t) {
                changed.insert(t.clone(), now);
                n.notify_waiters();
            }
        }
    }

    /// Loads the view from the store and follows the `Registry` keyspace until `stop`;
    /// reloads from scratch if the watch cannot continue (history compacted under it, a
    /// snapshot installed).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut barriers) = self.barriers.take() else {
            return;
        };
        loop {
            let (tx, mut rx) = mpsc::channel::<Delivery>(256);
            let from = match self.load() {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::error!(error = %e, "registry: loading the catalog view");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let spec = WatchSpec {
                keyspace: Keyspace::Registry,
                span: KeySpan::new(b"", b"\0"),
                start_rev: from + 1,
                no_put: false,
                no_delete: false,
            };
            let handle = self.store.watch(spec, 0, WatchSink::new(tx));
            // Catch-up requests wait until the watch is live (not replaying history): only
            // then is every change up to the store's progress revision in the channel.
            let mut parked: Vec<crate::applied_mark::Barrier> = Vec::new();
            let reload = loop {
                use crate::applied_mark::{answer, catch_up, CatchUp};
                match catch_up(&self.store, &handle, &parked, &mut rx, |d| self.deliver(d)) {
                    CatchUp::Wait => {}
                    CatchUp::Broken => break true,
                    CatchUp::UpTo(upto) => {
                        self.advance(upto);
                        answer(&mut parked);
                    }
                }
                let replaying = !parked.is_empty();
                tokio::select! {
                    biased;
                    d = rx.recv() => match d {
                        Some(d) => if !self.deliver(d) { break true },
                        None => break true,
                    },
                    b = barriers.recv() => {
                        let Some(b) = b else { break false };
                        parked.push(b);
                    }
                    _ = tokio::time::sleep(Duration::from_millis(5)), if replaying => {}
                    _ = stop.changed() => break false,
                }
            };
            self.store.cancel_watch(&handle);
            if !reload {
                return;
            }
            tracing::warn!("registry: the catalog watch was interrupted; reloading the view");
        }
    }

    fn advance(&self, rev: i64) {
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            view.advance(rev);
        }
        self.applied.advance(rev);
    }

    /// Applies one delivery; false when the watch cannot continue.
    fn deliver(&self, d: Delivery) -> bool {
        let mut touched = Vec::new();
        {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            for item in &d.items {
                if item.compact_revision != 0 {
                    return false;
                }
                for ev in item.events.iter() {
                    let Some(kv) = &ev.kv else { continue };
                    let change = if ev.r#type == EventType::Delete as i32 {
                        Change::Delete {
                            key: &kv.key,
                            revision: kv.mod_revision,
                        }
                    } else {
                        Change::Put {
                            key: &kv.key,
                            value: &kv.value,
                            create: kv.create_revision,
                            modify: kv.mod_revision,
                        }
                    };
                    match view.apply(change) {
                        Ok(t) => touched.extend(t),
                        Err(e) => tracing::error!(error = %e, "registry: skipping a record"),
                    }
                }
            }
        }
        if d.items.iter().any(|i| !i.events.is_empty()) {
            self.wake_up();
        }
        self.woke(&touched);
        self.advance(d.revision);
        true
    }

    /// Rebuilds the view from the keyspace as it is; returns the revision it reflects.
    fn load(&self) -> Result<i64, berth_store::StoreError> {
        let resp = self.store.range_in(
            Keyspace::Registry,
            &RangeRequest {
                key: Vec::new(),
                range_end: vec![0],
                ..Default::default()
            },
        )?;
        let rev = resp.header.map_or(0, |h| h.revision);
        if !resp.kvs.is_empty() {
            self.wake_up();
        }
        let mut fresh = Catalog::new();
        for kv in &resp.kvs {
            let change = Change::Put {
                key: &kv.key,
                value: &kv.value,
                create: kv.create_revision,
                modify: kv.mod_revision,
            };
            if let Err(e) = fresh.apply(change) {
                tracing::error!(error = %e, "registry: skipping a record");
            }
        }
        fresh.advance(rev);
        let topics: Vec<Topic> = {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            *view = fresh;
            lock(&self.topics).keys().cloned().collect()
        };
        // Anyone blocked re-checks against the new view.
        self.woke(&topics);
        self.service_changes.send_modify(|n| *n += 1);
        self.advance(rev);
        Ok(rev)
    }

    /// Proposes a txn of the `Registry` keyspace and waits until the view shows it.
    pub(crate) async fn write(&self, core: &Core, txn: TxnRequest) -> Result<bool, WriteError> {
        match core
            .consensus
            .propose_in(Keyspace::Registry, Command::Txn(txn))
            .await?
        {
            Applied::Txn(t) => {
                let rev = t.header.map_or(0, |h| h.revision);
                self.wait_applied(rev).await;
                Ok(t.succeeded)
            }
            _ => Err(WriteError::Unknown),
        }
    }

    /// Writes `ops` as one unconditional txn (nothing when there are none) and waits until
    /// the view shows it.
    pub(crate) async fn write_ops(
        &self,
        core: &Core,
        ops: Vec<RequestOp>,
    ) -> Result<(), WriteError> {
        if !ops.is_empty() {
            self.write(
                core,
                TxnRequest {
                    success: ops,
                    ..Default::default()
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Proposes a multi-keyspace txn (keys tagged with their keyspace) under `guard` (the
    /// auth state the caller's checks saw) and waits until the view shows it.
    pub async fn write_multi_guarded(
        &self,
        core: &Core,
        txn: TxnRequest,
        guard: berth_store::Guard,
    ) -> Result<berth_proto::etcdserverpb::TxnResponse, WriteError> {
        let entry = berth_store::Entry {
            guard: Some(guard),
            ..berth_store::Entry::new(Keyspace::User, Command::MultiTxn(txn))
        };
        match core.consensus.propose_entry(entry).await? {
            Applied::Txn(t) => {
                let rev = t.header.as_ref().map_or(0, |h| h.revision);
                self.wait_applied(rev).await;
                Ok(t)
            }
            _ => Err(WriteError::Unknown),
        }
    }

    /// The node record of this member, as the agent endpoints attribute registrations.
    pub fn agent_node(core: &Core) -> Node {
        let host = core
            .member
            .client_urls
            .first()
            .and_then(|u| u.split("://").nth(1))
            .and_then(|hp| hp.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])))
            .unwrap_or("127.0.0.1")
            .to_string();
        let id = core.member.id;
        Node {
            name: core.member.name.clone(),
            id: format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
                (id >> 32) as u32,
                (id >> 16) as u16,
                id as u16,
                (core.member.cluster_id >> 48) as u16,
                core.member.cluster_id & 0xffff_ffff_ffff
            ),
            address: host.clone(),
            datacenter: DATACENTER.into(),
            tagged_addresses: [("lan".to_string(), host.clone()), ("wan".to_string(), host)]
                .into_iter()
                .collect(),
            meta: Default::default(),
            member: true,
        }
    }

    /// The put of `node`'s record when the view does not hold it as it is.
    pub(crate) fn node_op(&self, node: &Node) -> Option<RequestOp> {
        let same = self.read(|c| c.node(&node.name).is_some_and(|r| r.value == *node));
        (!same).then(|| put_op(layout::node(&node.name), encode(node), 0))
    }

    /// The ops that write `check` (and, for a TTL check that starts passing or warning, its
    /// liveness key on a new lease).
    async fn check_ops(
        &self,
        core: &Core,
        mut check: Check,
        lease: Option<i64>,
        ops: &mut Vec<RequestOp>,
    ) -> Result<(), WriteError> {
        // An existing check of the same definition keeps its state: re-registering a
        // service (Spring does on failure) must not flap it.
        let wanted = check.status;
        let existing = self.read(|c| c.check(&check.node, &check.id));
        if let Some(old) = existing {
            if old.value.kind == check.kind && old.value.service_id == check.service_id {
                check.status = old.value.status;
                check.output = old.value.output.clone();
                check.lease = old.value.lease;
                // Registered again with a lease (a Nacos client's connection, perhaps a new
                // one after a reconnect): the liveness key moves to it, and a check whose old
                // lease lapsed lives again in the status registered.
                if let (Some(l), CheckKind::Ttl { .. }) = (lease, &check.kind) {
                    if (check.lease != l || check.status == CheckStatus::Critical)
                        && wanted != CheckStatus::Critical
                    {
                        check.lease = l;
                        check.status = wanted;
                        ops.push(put_op(
                            layout::ttl(&check.node, &check.service_id, &check.id),
                            Vec::new(),
                            l,
                        ));
                    }
                }
                if old.value == check {
                    return Ok(());
                }
                ops.push(put_op(
                    layout::check(&check.node, &check.service_id, &check.id),
                    encode(&check),
                    0,
                ));
                return Ok(());
            }
        }
        if let CheckKind::Ttl { ttl } = check.kind {
            if check.status != CheckStatus::Critical {
                let lease = match lease {
                    Some(id) => id,
                    None => core.leases.grant(lease_ttl(ttl), 0, None).await?.id,
                };
                check.lease = lease;
                ops.push(put_op(
                    layout::ttl(&check.node, &check.service_id, &check.id),
                    Vec::new(),
                    lease,
                ));
            }
        }
        ops.push(put_op(
            layout::check(&check.node, &check.service_id, &check.id),
            encode(&check),
            0,
        ));
        Ok(())
    }

    /// Registers (or replaces) a service instance and its checks on `node`, as Consul's
    /// agent does: checks are upserted by ID, and with `replace_checks` the instance's other
    /// checks are removed.
    pub async fn register(
        &self,
        core: &Core,
        node: &Node,
        reg: Registration,
        replace_checks: bool,
    ) -> Result<(), RegistryFailure> {
        let (service, checks) = reg.into_records(&node.name)?;
        self.register_records(core, node, service, checks, replace_checks, None)
            .await
    }

    /// Writes an instance and its checks as [`Registry::register`] does, from records
    /// already validated; new live TTL checks hang on `lease` when given (else each on its own).
    pub(crate) async fn register_records(
        &self,
        core: &Core,
        node: &Node,
        service: berth_registry::Service,
        checks: Vec<Check>,
        replace_checks: bool,
        lease: Option<i64>,
    ) -> Result<(), RegistryFailure> {
        let mut ops: Vec<RequestOp> = self.node_op(node).into_iter().collect();
        ops.push(put_op(
            layout::service(&node.name, &service.id),
            encode(&service),
            0,
        ));
        if replace_checks {
            let keep: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
            let stale: Vec<String> = self.read(|c| {
                c.checks_of_instance(&node.name, &service.id)
                    .into_iter()
                    .filter(|r| !keep.contains(&r.value.id.as_str()))
                    .map(|r| r.value.id)
                    .collect()
            });
            for id in stale {
                ops.push(delete_op(
                    layout::check(&node.name, &service.id, &id),
                    Vec::new(),
                ));
                ops.push(delete_op(
                    layout::ttl(&node.name, &service.id, &id),
                    Vec::new(),
                ));
            }
        }
        for check in checks {
            self.check_ops(core, check, lease, &mut ops).await?;
        }
        self.write_ops(core, ops).await?;
        tracing::debug!(node = %node.name, service = %service.id, "service registered");
        Ok(())
    }

    /// Registers a check on its own (of the node, or of an instance on the node).
    pub async fn register_check(
        &self,
        core: &Core,
        node: &Node,
        def: CheckDefinition,
    ) -> Result<(), RegistryFailure> {
        let service_name = if def.service_id.is_empty() {
            String::new()
        } else {
            match self.read(|c| c.service(&node.name, &def.service_id)) {
                Some(s) => s.value.name,
                None => {
                    return Err(RegistryError::NotFound(format!(
                        "ServiceID {:?} does not exist",
                        def.service_id
                    ))
                    .into())
                }
            }
        };
        let check = def.into_check(&node.name, &service_name)?;
        let mut ops: Vec<RequestOp> = self.node_op(node).into_iter().collect();
        self.check_ops(core, check, None, &mut ops).await?;
        self.write_ops(core, ops).await?;
        Ok(())
    }

    /// Removes service instance `id` from `node` with its checks; false when it was not
    /// registered.
    pub async fn deregister_service(
        &self,
        core: &Core,
        node: &str,
        id: &str,
    ) -> Result<bool, RegistryFailure> {
        if self.read(|c| c.service(node, id)).is_none() {
            return Ok(false);
        }
        let checks = layout::checks_of(node, id);
        let ttls = layout::ttls_of(node, id);
        let ops = vec![
            delete_op(layout::service(node, id), Vec::new()),
            delete_op(checks.clone(), layout::prefix_end(&checks)),
            delete_op(ttls.clone(), layout::prefix_end(&ttls)),
        ];
        self.write_ops(core, ops).await?;
        tracing::debug!(node, service = id, "service deregistered");
        Ok(true)
    }

    /// Removes check `id` from `node`; false when there was none.
    pub async fn deregister_check(
        &self,
        core: &Core,
        node: &str,
        id: &str,
    ) -> Result<bool, RegistryFailure> {
        let Some(check) = self.read(|c| c.check(node, id)) else {
            return Ok(false);
        };
        let sid = check.value.service_id;
        let ops = vec![
            delete_op(layout::check(node, &sid, id), Vec::new()),
            delete_op(layout::ttl(node, &sid, id), Vec::new()),
        ];
        self.write_ops(core, ops).await?;
        Ok(true)
    }

    /// Consul's TTL update (`pass`, `warn`, `fail`, `update`). When the status stays what
    /// it is and the TTL still holds, this renews the check's lease at the leader and
    /// writes nothing; otherwise it writes the new status (with a new lease if the old one
    /// lapsed).
    pub async fn update_ttl(
        &self,
        core: &Core,
        node: &str,
        id: &str,
        status: CheckStatus,
        output: String,
    ) -> Result<(), RegistryFailure> {
        let Some((Record { value: check, .. }, alive)) = self.read(|c| {
            c.stored_check(node, id).map(|r| {
                let alive = c.ttl_alive(node, &r.value.service_id, id);
                (r, alive)
            })
        }) else {
            return Err(RegistryError::NotFound(format!("Unknown check ID {id:?}")).into());
        };
        let CheckKind::Ttl { ttl } = check.kind else {
            return Err(RegistryError::invalid(format!(
                "CheckID {id:?} does not have associated TTL"
            ))
            .into());
        };
        if alive
            && check.status == status
            && check.lease != 0
            && core.leases.renew(check.lease).await? > 0
        {
            core.metrics.registry_ttl_renewals.inc();
            return Ok(());
        }
        let lease = core.leases.grant(lease_ttl(ttl), 0, None).await?;
        let mut output = output;
        output.truncate(berth_registry::register::floor_char_boundary(
            &output,
            berth_registry::register::MAX_OUTPUT,
        ));
        let updated = Check {
            status,
            output,
            lease: lease.id,
            ..check
        };
        let ops = vec![
            put_op(
                layout::check(node, &updated.service_id, id),
                encode(&updated),
                0,
            ),
            put_op(
                layout::ttl(node, &updated.service_id, id),
                Vec::new(),
                lease.id,
            ),
        ];
        self.write_ops(core, ops).await?;
        core.metrics.registry_status_writes.inc();
        Ok(())
    }

    /// Writes the outcome of an active check's run when its status changed, unless the
    /// check was changed (re-registered, removed) since `seen` (its mod revision).
    pub async fn set_check_status(
        &self,
        core: &Core,
        check: &Check,
        seen: i64,
        status: CheckStatus,
        output: String,
    ) -> Result<bool, WriteError> {
        let key = layout::check(&check.node, &check.service_id, &check.id);
        let updated = Check {
            status,
            output,
            ..check.clone()
        };
        let txn = TxnRequest {
            compare: vec![berth_proto::etcdserverpb::Compare {
                key: key.clone(),
                target: berth_proto::etcdserverpb::compare::CompareTarget::Mod as i32,
                result: berth_proto::etcdserverpb::compare::CompareResult::Equal as i32,
                target_union: Some(
                    berth_proto::etcdserverpb::compare::TargetUnion::ModRevision(seen),
                ),
                ..Default::default()
            }],
            success: vec![put_op(key, encode(&updated), 0)],
            failure: vec![],
        };
        let ok = self.write(core, txn).await?;
        if ok {
            core.metrics.registry_status_writes.inc();
        }
        Ok(ok)
    }

    /// Puts a node (or an instance with `service_id`) into maintenance, or takes it out:
    /// a critical check `_node_maintenance` / `_service_maintenance:<id>` with the reason.
    pub async fn maintenance(
        &self,
        core: &Core,
        node: &Node,
        service_id: Option<&str>,
        enable: bool,
        reason: &str,
    ) -> Result<(), RegistryFailure> {
        let sname = match service_id {
            Some(sid) => match self.read(|c| c.service(&node.name, sid)) {
                Some(s) => Some(s.value.name),
                None => {
                    return Err(
                        RegistryError::NotFound(format!("Unknown service ID {sid:?}")).into(),
                    )
                }
            },
            None => None,
        };
        let check = Check::maintenance(&node.name, service_id.zip(sname.as_deref()), reason);
        if !enable {
            self.deregister_check(core, &node.name, &check.id).await?;
            return Ok(());
        }
        let (sid, id) = (check.service_id.clone(), check.id.clone());
        let mut ops: Vec<RequestOp> = self.node_op(node).into_iter().collect();
        ops.push(put_op(
            layout::check(&node.name, &sid, &id),
            encode(&check),
            0,
        ));
        self.write_ops(core, ops).await?;
        Ok(())
    }

    /// Consul's catalog register: a node (created or updated), optionally one instance and
    /// checks on it, written as given (no agent owns them, none is run).
    pub async fn catalog_register(
        &self,
        core: &Core,
        node: Node,
        service: Option<Registration>,
        checks: Vec<CheckDefinition>,
    ) -> Result<(), RegistryFailure> {
        berth_registry::register::validate_meta(&node.meta)?;
        if node.name.is_empty() || node.name.contains('\0') {
            return Err(RegistryError::invalid("Must provide node").into());
        }
        let mut ops: Vec<RequestOp> = self.node_op(&node).into_iter().collect();
        let mut sid = String::new();
        let mut sname = String::new();
        if let Some(reg) = service {
            let (s, _) = Registration {
                checks: Vec::new(),
                ..reg
            }
            .into_records(&node.name)?;
            ops.push(put_op(layout::service(&node.name, &s.id), encode(&s), 0));
            sid = s.id;
            sname = s.name;
        }
        for mut def in checks {
            if def.service_id.is_empty() {
                def.service_id = sid.clone();
            }
            let name = if def.service_id == sid {
                sname.clone()
            } else {
                self.read(|c| c.service(&node.name, &def.service_id))
                    .map(|s| s.value.name)
                    .unwrap_or_default()
            };
            let mut check = def.into_check(&node.name, &name)?;
            // The catalog takes checks as given: nothing runs them here.
            check.kind = CheckKind::External;
            ops.push(put_op(
                layout::check(&node.name, &check.service_id, &check.id),
                encode(&check),
                0,
            ));
        }
        self.write_ops(core, ops).await?;
        Ok(())
    }

    /// Consul's catalog deregister: one check, one instance (with its checks), or the whole
    /// node with everything on it.
    pub async fn catalog_deregister(
        &self,
        core: &Core,
        node: &str,
        service_id: Option<&str>,
        check_id: Option<&str>,
    ) -> Result<(), RegistryFailure> {
        if let Some(id) = check_id {
            self.deregister_check(core, node, id).await?;
            return Ok(());
        }
        if let Some(id) = service_id {
            self.deregister_service(core, node, id).await?;
            return Ok(());
        }
        let mut ops = vec![delete_op(layout::node(node), Vec::new())];
        for kind in [layout::SERVICE, layout::CHECK, layout::TTL] {
            let p = layout::of_node(kind, node);
            ops.push(delete_op(p.clone(), layout::prefix_end(&p)));
        }
        self.write_ops(core, ops).await?;
        Ok(())
    }
}
