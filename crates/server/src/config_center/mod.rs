//! The configuration center at run time: this member's view of the items, betas and
//! namespaces (kept current by a watch of the store's `Config` keyspace), listeners that
//! wait for an item's MD5 to move, and every write as a txn through consensus.
//!
//! - Reads come from the view (as Nacos serves them, from memory); a write returns once this
//!   member's view shows it, so a writer reads its own write on the member it wrote to.
//! - A publish is one txn: the item, its new kept version, the version's age-index entry,
//!   and the deletes of versions past `--config-history-max-versions`. It is guarded by the
//!   item's mod revision, so a compare-and-publish (`cas_md5`) is exact even under
//!   concurrent publishes.
//! - Listeners wait on per-item notifications: a publish wakes only the listeners of its item.
//! - [`trimmer`] removes kept versions older than `--config-history-max-age`, on the leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_config::layout;
use berth_config::{rules, Beta, ConfigError, Item, ItemKey, Namespace, Op, Reader, Version};
use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use berth_proto::etcdserverpb::{Compare, RangeRequest, RequestOp, TxnRequest};
use berth_proto::mvccpb::event::EventType;
use berth_proto::mvccpb::KeyValue;
use berth_store::{
    Applied, Command, Delivery, Entry, Guard, KeySpan, Keyspace, Store, WatchSink, WatchSpec,
};
use tokio::sync::{broadcast, mpsc, watch, Notify};
use tokio::time::Instant;

use crate::consensus::WriteError;
use crate::core::Core;
use crate::registry::{delete_op, encode, now_ms, put_op};

pub mod trimmer;

/// How many times a publish retries when another write moved its item in between.
const PUBLISH_ATTEMPTS: usize = 8;

/// Why a configuration call failed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFailure {
    /// The domain refused the input, or what it names does not exist.
    #[error(transparent)]
    Refused(#[from] ConfigError),
    /// The write (or the read that guards it) did not go through.
    #[error(transparent)]
    Write(#[from] WriteError),
    /// Reading the store failed.
    #[error("reading the store: {0}")]
    Store(#[from] berth_store::StoreError),
}

/// Who writes: the author kept with the versions, and the auth state the face checked the
/// write's permission against (the write is refused at apply if that state moved on, e.g. a
/// grant revoked meanwhile, as etcd's writes are).
#[derive(Clone, Debug)]
pub struct Writer {
    /// Kept with the versions the write makes.
    pub author: berth_config::Author,
    /// The auth guard (none for berth's own writes).
    pub guard: Option<Guard>,
}

/// The limits the configuration center keeps.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest content, in bytes.
    pub max_content: usize,
    /// Most versions kept per item.
    pub history_versions: usize,
    /// Oldest version kept (the current one is always kept).
    pub history_age: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_content: rules::DEFAULT_MAX_CONTENT,
            history_versions: 100,
            history_age: Duration::from_secs(30 * 24 * 3600),
        }
    }
}

/// A publish: what the item becomes.
#[derive(Clone, Debug, Default)]
pub struct Publish {
    /// The content.
    pub content: String,
    /// Its type.
    pub kind: berth_config::ContentType,
    /// A description.
    pub desc: String,
    /// Tags.
    pub tags: Vec<String>,
    /// The application.
    pub app: String,
    /// Publish only if the item's MD5 is this one (`""`: only if it does not exist).
    pub cas_md5: Option<String>,
}

/// What an import does with an item that exists already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Conflicts {
    /// Import nothing when any exists.
    Abort,
    /// Keep the existing item.
    Skip,
    /// Publish over it (a new version).
    Overwrite,
}

impl Conflicts {
    /// The policy named `s` (`abort`, `skip`, `overwrite`).
    pub fn parse(s: &str) -> Option<Conflicts> {
        match s {
            "abort" => Some(Conflicts::Abort),
            "skip" => Some(Conflicts::Skip),
            "overwrite" => Some(Conflicts::Overwrite),
            _ => None,
        }
    }
}

/// What an import did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ImportReport {
    /// Items published.
    pub imported: usize,
    /// Items left as they were (policy skip).
    pub skipped: Vec<String>,
}

/// What the view holds.
#[derive(Default)]
struct View {
    items: BTreeMap<ItemKey, Arc<Item>>,
    betas: HashMap<ItemKey, Arc<Beta>>,
    namespaces: BTreeMap<String, Namespace>,
}

/// The configuration center of one member. See the module docs.
pub struct ConfigCenter {
    store: Arc<Store>,
    limits: Limits,
    view: RwLock<View>,
    listeners: Mutex<HashMap<ItemKey, Arc<Notify>>>,
    applied: crate::applied_mark::AppliedMark,
    /// Every change readers may see, for faces that push (Nacos gRPC).
    changes: broadcast::Sender<Changed>,
    /// Requests to bring the view up to date (see [`ConfigCenter::sync`]).
    barriers: crate::applied_mark::Barriers,
}

/// A listener's hold on the per-item notifications: when it ends (answered, timed out or
/// dropped with its request), entries no other listener holds are removed, so items that
/// clients merely named do not pile up.
struct ListenGuard<'a> {
    map: &'a Mutex<HashMap<ItemKey, Arc<Notify>>>,
    entries: Vec<(ItemKey, Arc<Notify>)>,
}

impl Drop for ListenGuard<'_> {
    fn drop(&mut self) {
        let mut map = lock(self.map);
        for (k, n) in self.entries.drain(..) {
            // The map's reference and this one: nobody else listens.
            if Arc::strong_count(&n) == 2 {
                map.remove(&k);
            }
        }
    }
}

/// What [`ConfigCenter::changes`] reports.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Changed {
    /// This item (or its beta) changed.
    Item(ItemKey),
    /// The view was reloaded: anything may have changed.
    All,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn decode<T: serde::de::DeserializeOwned>(kv: &KeyValue) -> Result<T, ConfigError> {
    serde_json::from_slice(&kv.value).map_err(|e| ConfigError::Corrupt {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        why: e.to_string(),
    })
}

fn now() -> i64 {
    i64::try_from(now_ms()).unwrap_or(i64::MAX)
}

/// A compare that holds while `key`'s mod revision is `rev` (0: the key does not exist).
fn unchanged_since(key: &[u8], rev: i64) -> Compare {
    Compare {
        key: key.to_vec(),
        target: CompareTarget::Mod as i32,
        result: CompareResult::Equal as i32,
        target_union: Some(TargetUnion::ModRevision(rev)),
        ..Default::default()
    }
}

/// Holds while namespace `id` exists (always for `public`, which has no record).
fn namespace_exists(id: &str) -> Option<Compare> {
    (id != berth_config::model::PUBLIC).then(|| Compare {
        key: layout::namespace(id),
        target: CompareTarget::Version as i32,
        result: CompareResult::Greater as i32,
        target_union: Some(TargetUnion::Version(0)),
        ..Default::default()
    })
}

impl ConfigCenter {
    /// A configuration center over `store`; [`ConfigCenter::run`] fills and follows its view.
    pub fn new(store: Arc<Store>, limits: Limits) -> Arc<ConfigCenter> {
        Arc::new(ConfigCenter {
            store,
            limits,
            view: RwLock::new(View::default()),
            listeners: Mutex::new(HashMap::new()),
            applied: crate::applied_mark::AppliedMark::new(),
            changes: broadcast::channel(4096).0,
            barriers: Default::default(),
        })
    }

    /// Changes as they reach this member's view. A receiver that lags behind gets
    /// `Lagged` and must treat it as [`Changed::All`].
    pub fn changes(&self) -> broadcast::Receiver<Changed> {
        self.changes.subscribe()
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn read<R>(&self, f: impl FnOnce(&View) -> R) -> R {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        f(&view)
    }

    /// The item at `k`, as this member's view has it.
    pub fn get(&self, k: &ItemKey) -> Option<Arc<Item>> {
        self.read(|v| v.items.get(k).cloned())
    }

    /// The beta of `k`, if one runs.
    pub fn beta(&self, k: &ItemKey) -> Option<Arc<Beta>> {
        self.read(|v| v.betas.get(k).cloned())
    }

    /// What `reader` reads at `k`: the beta if it covers the reader, else the item. The flag
    /// says whether it is the beta.
    pub fn get_for(&self, k: &ItemKey, reader: &Reader) -> Option<(Arc<Item>, bool)> {
        self.read(|v| {
            let item = v.items.get(k)?;
            match v.betas.get(k).filter(|b| b.covers(reader)) {
                Some(b) => Some((
                    Arc::new(Item {
                        content: b.content.clone(),
                        md5: b.md5.clone(),
                        kind: b.kind,
                        modified_ms: b.at_ms,
                        author: b.author.clone(),
                        ..(**item).clone()
                    }),
                    true,
                )),
                None => Some((item.clone(), false)),
            }
        })
    }

    /// The MD5 `reader` would read at `k` (`""` when there is no item).
    pub fn md5_for(&self, k: &ItemKey, reader: &Reader) -> String {
        self.read(|v| match v.betas.get(k).filter(|b| b.covers(reader)) {
            Some(b) if v.items.contains_key(k) => b.md5.clone(),
            _ => v.items.get(k).map(|i| i.md5.clone()).unwrap_or_default(),
        })
    }

    /// Items of `namespace` whose group and data ID `filter` accepts, in key order.
    pub fn list(
        &self,
        namespace: &str,
        filter: impl Fn(&ItemKey, &Item) -> bool,
    ) -> Vec<(ItemKey, Arc<Item>)> {
        self.read(|v| {
            let start = ItemKey {
                namespace: namespace.to_string(),
                group: String::new(),
                data_id: String::new(),
            };
            v.items
                .range(start..)
                .take_while(|(k, _)| k.namespace == namespace)
                .filter(|(k, i)| filter(k, i))
                .map(|(k, i)| (k.clone(), i.clone()))
                .collect()
        })
    }

    /// The namespaces, `public` first.
    pub fn namespaces(&self) -> Vec<Namespace> {
        let public = Namespace {
            id: berth_config::model::PUBLIC.into(),
            name: berth_config::model::PUBLIC.into(),
            desc: "the default namespace".into(),
            created_ms: 0,
        };
        std::iter::once(public)
            .chain(self.read(|v| v.namespaces.values().cloned().collect::<Vec<_>>()))
            .collect()
    }

    /// How many items `namespace` holds.
    pub fn count(&self, namespace: &str) -> usize {
        self.list(namespace, |_, _| true).len()
    }

    /// Refuses a namespace that does not exist (after catching up with the leader, so one
    /// just created on another member is found).
    pub async fn require_namespace(&self, core: &Core, id: &str) -> Result<(), ConfigFailure> {
        rules::namespace(id)?;
        let known = |c: &Self| {
            id == berth_config::model::PUBLIC || c.read(|v| v.namespaces.contains_key(id))
        };
        if known(self) {
            return Ok(());
        }
        self.sync(core).await?;
        if known(self) {
            return Ok(());
        }
        Err(ConfigError::UnknownNamespace(id.to_string()).into())
    }

    /// Makes the view as fresh as a linearizable read at this moment: a read index, then
    /// every configuration change up to it in the view.
    pub async fn sync(&self, core: &Core) -> Result<(), WriteError> {
        core.consensus.read_index().await?;
        self.barriers.request("config view").await
    }

    /// Waits until the view has applied revision `rev` (or five seconds passed).
    pub async fn wait_applied(&self, rev: i64) {
        self.applied.wait(rev, Duration::from_secs(5)).await;
    }

    /// Waits until one of `probes` (an item and the MD5 its client holds) differs from what
    /// the client at `ip` would read, or `deadline` passes. Returns the items that differ
    /// (none at the deadline).
    pub async fn listen(
        &self,
        probes: &[(ItemKey, String)],
        reader: &Reader,
        deadline: Instant,
    ) -> Vec<ItemKey> {
        let guard = ListenGuard {
            map: &self.listeners,
            entries: {
                let mut map = lock(&self.listeners);
                probes
                    .iter()
                    .map(|(k, _)| (k.clone(), map.entry(k.clone()).or_default().clone()))
                    .collect()
            },
        };
        loop {
            let mut waits: Vec<_> = guard
                .entries
                .iter()
                .map(|(_, n)| Box::pin(n.notified()))
                .collect();
            for w in &mut waits {
                w.as_mut().enable();
            }
            let changed: Vec<ItemKey> = probes
                .iter()
                .filter(|(k, md5)| self.md5_for(k, reader) != *md5)
                .map(|(k, _)| k.clone())
                .collect();
            if !changed.is_empty() || probes.is_empty() {
                if probes.is_empty() {
                    tokio::time::sleep_until(deadline).await;
                }
                return changed;
            }
            tokio::select! {
                _ = futures::future::select_all(waits) => {}
                _ = tokio::time::sleep_until(deadline) => return Vec::new(),
            }
        }
    }

    /// Publishes `p` at `k`: a new version, unless it changes nothing (then the item as it
    /// is). Returns the item as published.
    pub async fn publish(
        &self,
        core: &Core,
        k: &ItemKey,
        p: Publish,
        by: Writer,
    ) -> Result<Arc<Item>, ConfigFailure> {
        let author = &by.author;
        rules::key(k)?;
        rules::content(&p.content, self.limits.max_content)?;
        rules::attributes(&p.desc, &p.app, &p.tags)?;
        self.require_namespace(core, &k.namespace).await?;
        // What the publish compares with (the MD5 of `cas_md5`, "nothing changes") must be
        // the latest, wherever it was published.
        core.consensus.read_index().await?;
        for _ in 0..PUBLISH_ATTEMPTS {
            let (current, seen) = self.stored_item(k)?;
            if let Some(expected) = &p.cas_md5 {
                let md5 = current.as_ref().map(|i| i.md5.clone()).unwrap_or_default();
                if md5 != *expected {
                    return Err(ConfigError::Conflict {
                        expected: expected.clone(),
                        current: md5,
                    }
                    .into());
                }
            }
            let at = now();
            let version = match &current {
                Some(i) => i.version + 1,
                None => self.last_version(k)? + 1,
            };
            let item = Item {
                md5: berth_config::md5_hex(&p.content),
                content: p.content.clone(),
                kind: p.kind,
                desc: p.desc.clone(),
                tags: p.tags.clone(),
                app: p.app.clone(),
                version,
                created_ms: current.as_ref().map_or(at, |i| i.created_ms),
                modified_ms: at,
                author: author.clone(),
            };
            if let Some(c) = &current {
                if c.same_content(&item) {
                    return Ok(Arc::new(c.clone()));
                }
            }
            let op = if current.is_some() {
                Op::Update
            } else {
                Op::Create
            };
            let mut ops = vec![put_op(layout::item(k), encode(&item), 0)];
            self.version_ops(k, op, &item, at, author, &mut ops)?;
            // Guarded by the item as read and by its namespace still existing (a namespace
            // deleted meanwhile must not be left holding this item).
            let mut compare = vec![unchanged_since(&layout::item(k), seen)];
            compare.extend(namespace_exists(&k.namespace));
            let txn = TxnRequest {
                compare,
                success: ops,
                ..Default::default()
            };
            if self.propose(core, txn, by.guard.clone()).await? {
                core.metrics.config_publishes.inc();
                tracing::debug!(item = %k, version, md5 = %item.md5, "config published");
                return Ok(Arc::new(item));
            }
            if k.namespace != berth_config::model::PUBLIC
                && self.stored(&layout::namespace(&k.namespace))?.is_none()
            {
                return Err(ConfigError::UnknownNamespace(k.namespace.clone()).into());
            }
            core.consensus.read_index().await?;
        }
        Err(ConfigError::invalid(format!(
            "{k} changed {PUBLISH_ATTEMPTS} times while this publish was prepared; try again"
        ))
        .into())
    }

    /// Deletes the item at `k` (and its beta), keeping the deleted content as a version.
    /// Returns false when there was no item.
    pub async fn delete(
        &self,
        core: &Core,
        k: &ItemKey,
        by: Writer,
    ) -> Result<bool, ConfigFailure> {
        let author = &by.author;
        rules::key(k)?;
        core.consensus.read_index().await?;
        for _ in 0..PUBLISH_ATTEMPTS {
            let (current, seen) = self.stored_item(k)?;
            let Some(item) = current else {
                return Ok(false);
            };
            let at = now();
            let mut gone = item.clone();
            gone.version += 1;
            let mut ops = vec![delete_key(layout::item(k)), delete_key(layout::beta(k))];
            self.version_ops(k, Op::Delete, &gone, at, author, &mut ops)?;
            if self
                .commit(core, layout::item(k), seen, ops, by.guard.clone())
                .await?
            {
                tracing::debug!(item = %k, "config deleted");
                return Ok(true);
            }
            core.consensus.read_index().await?;
        }
        Err(ConfigError::invalid(format!("{k} kept changing; try again")).into())
    }

    /// Publishes a beta of `k` seen only by the clients at `ips` and those with one of
    /// `labels` (the item must exist).
    #[allow(clippy::too_many_arguments)]
    pub async fn publish_beta(
        &self,
        core: &Core,
        k: &ItemKey,
        content: String,
        kind: berth_config::ContentType,
        ips: Vec<String>,
        labels: BTreeMap<String, BTreeSet<String>>,
        by: Writer,
    ) -> Result<Arc<Beta>, ConfigFailure> {
        rules::key(k)?;
        rules::content(&content, self.limits.max_content)?;
        if ips.is_empty() && labels.is_empty() {
            return Err(
                ConfigError::invalid("a beta needs at least one client IP or label").into(),
            );
        }
        if let Some(bad) = ips
            .iter()
            .find(|ip| ip.parse::<std::net::IpAddr>().is_err())
        {
            return Err(
                ConfigError::invalid(format!("beta IP {bad:?} is not an IP address")).into(),
            );
        }
        self.require_namespace(core, &k.namespace).await?;
        let (current, seen) = self.stored_item(k)?;
        if current.is_none() {
            return Err(ConfigError::NotFound(format!(
                "{k} does not exist: publish it before a beta of it"
            ))
            .into());
        }
        let beta = Beta {
            md5: berth_config::md5_hex(&content),
            content,
            kind,
            ips,
            labels,
            at_ms: now(),
            author: by.author,
        };
        let ops = vec![put_op(layout::beta(k), encode(&beta), 0)];
        if self
            .commit(core, layout::item(k), seen, ops, by.guard)
            .await?
        {
            Ok(Arc::new(beta))
        } else {
            Err(ConfigError::invalid(format!("{k} changed meanwhile; try again")).into())
        }
    }

    /// Ends the beta of `k` without publishing it. Returns false when none ran.
    pub async fn withdraw_beta(
        &self,
        core: &Core,
        k: &ItemKey,
        guard: Option<Guard>,
    ) -> Result<bool, ConfigFailure> {
        rules::key(k)?;
        core.consensus.read_index().await?;
        if self.stored(&layout::beta(k))?.is_none() {
            return Ok(false);
        }
        self.commit_unconditional(core, vec![delete_key(layout::beta(k))], guard)
            .await?;
        Ok(true)
    }

    /// Publishes the beta of `k` to everyone (a new version) and ends it.
    pub async fn promote_beta(
        &self,
        core: &Core,
        k: &ItemKey,
        by: Writer,
    ) -> Result<Arc<Item>, ConfigFailure> {
        rules::key(k)?;
        core.consensus.read_index().await?;
        let Some(kv) = self.stored(&layout::beta(k))? else {
            return Err(ConfigError::NotFound(format!("{k} has no beta")).into());
        };
        let beta_rev = kv.mod_revision;
        let beta: Beta = decode(&kv)?;
        let (current, _) = self.stored_item(k)?;
        let base = current.ok_or_else(|| ConfigError::NotFound(format!("{k} does not exist")))?;
        let item = self
            .publish(
                core,
                k,
                Publish {
                    content: beta.content,
                    kind: beta.kind,
                    desc: base.desc,
                    tags: base.tags,
                    app: base.app,
                    cas_md5: Some(base.md5),
                },
                by.clone(),
            )
            .await?;
        // Ends this beta only: one published meanwhile stays.
        self.commit(
            core,
            layout::beta(k),
            beta_rev,
            vec![delete_key(layout::beta(k))],
            by.guard,
        )
        .await?;
        Ok(item)
    }

    /// Publishes version `v` of `k` again (a new version with its content).
    pub async fn rollback(
        &self,
        core: &Core,
        k: &ItemKey,
        v: u64,
        by: Writer,
    ) -> Result<Arc<Item>, ConfigFailure> {
        let old = self
            .version(k, v)?
            .ok_or_else(|| ConfigError::NotFound(format!("{k} has no kept version {v}")))?;
        let i = old.item;
        self.publish(
            core,
            k,
            Publish {
                content: i.content,
                kind: i.kind,
                desc: i.desc,
                tags: i.tags,
                app: i.app,
                cas_md5: None,
            },
            by,
        )
        .await
    }

    /// The kept versions of `k`, newest first, and how many there are.
    pub fn versions(
        &self,
        k: &ItemKey,
        skip: usize,
        take: usize,
    ) -> Result<(Vec<Version>, usize), ConfigFailure> {
        rules::key(k)?;
        let limit = i64::try_from(skip.saturating_add(take)).unwrap_or(i64::MAX);
        let resp = self.newest_versions(k, limit, false)?;
        let total = usize::try_from(resp.count).unwrap_or(0);
        let versions = resp
            .kvs
            .iter()
            .skip(skip)
            .map(decode::<Version>)
            .collect::<Result<Vec<_>, _>>()?;
        Ok((versions, total))
    }

    /// Version `v` of `k`, if kept.
    pub fn version(&self, k: &ItemKey, v: u64) -> Result<Option<Version>, ConfigFailure> {
        rules::key(k)?;
        self.stored(&layout::version(k, v))?
            .map(|kv| decode(&kv))
            .transpose()
            .map_err(Into::into)
    }

    /// The kept version of `k` before `v`, if any.
    pub fn previous(&self, k: &ItemKey, v: u64) -> Result<Option<Version>, ConfigFailure> {
        rules::key(k)?;
        let resp = self.store.range_in(
            Keyspace::Config,
            &RangeRequest {
                key: layout::versions(k),
                range_end: layout::version(k, v),
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Key as i32,
                limit: 1,
                ..Default::default()
            },
        )?;
        resp.kvs.first().map(decode).transpose().map_err(Into::into)
    }

    /// The items of `namespace` as archive entries, in key order.
    pub fn export(&self, namespace: &str) -> Vec<berth_config::archive::Entry> {
        self.list(namespace, |_, _| true)
            .into_iter()
            .map(|(k, i)| berth_config::archive::Entry {
                group: k.group,
                data_id: k.data_id,
                content: i.content.clone(),
                kind: i.kind,
                desc: i.desc.clone(),
                tags: i.tags.clone(),
                app: i.app.clone(),
            })
            .collect()
    }

    /// Publishes `entries` into `namespace` as `policy` says for items that exist already.
    /// With [`Conflicts::Abort`] nothing is written when any exists.
    pub async fn import(
        &self,
        core: &Core,
        namespace: &str,
        entries: Vec<berth_config::archive::Entry>,
        policy: Conflicts,
        by: Writer,
    ) -> Result<ImportReport, ConfigFailure> {
        self.require_namespace(core, namespace).await?;
        self.sync(core).await?;
        let key = |e: &berth_config::archive::Entry| ItemKey::new(namespace, &e.group, &e.data_id);
        for e in &entries {
            rules::key(&key(e))?;
            rules::content(&e.content, self.limits.max_content)?;
            rules::attributes(&e.desc, &e.app, &e.tags)?;
        }
        let existing: Vec<ItemKey> = entries
            .iter()
            .map(key)
            .filter(|k| self.get(k).is_some())
            .collect();
        if policy == Conflicts::Abort && !existing.is_empty() {
            return Err(ConfigError::Exists(format!(
                "{} items exist already (first: {}); nothing imported (use policy skip or overwrite)",
                existing.len(),
                existing[0]
            ))
            .into());
        }
        let mut report = ImportReport::default();
        for e in entries {
            let k = key(&e);
            if policy == Conflicts::Skip && existing.contains(&k) {
                report.skipped.push(k.to_string());
                continue;
            }
            let p = Publish {
                content: e.content,
                kind: e.kind,
                desc: e.desc,
                tags: e.tags,
                app: e.app,
                cas_md5: None,
            };
            self.publish(core, &k, p, by.clone()).await?;
            report.imported += 1;
        }
        Ok(report)
    }

    /// Creates namespace `ns` (refused when it exists).
    pub async fn create_namespace(
        &self,
        core: &Core,
        ns: Namespace,
        guard: Option<Guard>,
    ) -> Result<(), ConfigFailure> {
        rules::namespace(&ns.id)?;
        if ns.id == berth_config::model::PUBLIC {
            return Err(ConfigError::Exists("namespace public exists already".into()).into());
        }
        if ns.name.trim().is_empty() || ns.name.len() > rules::MAX_NAMESPACE {
            return Err(ConfigError::invalid(format!(
                "namespace name must be 1 to {} bytes",
                rules::MAX_NAMESPACE
            ))
            .into());
        }
        let key = layout::namespace(&ns.id);
        let ops = vec![put_op(key.clone(), encode(&ns), 0)];
        if !self.commit(core, key, 0, ops, guard).await? {
            return Err(ConfigError::Exists(format!("namespace {} exists already", ns.id)).into());
        }
        Ok(())
    }

    /// Deletes namespace `id`, which must hold no items. Returns false when it did not exist.
    pub async fn delete_namespace(
        &self,
        core: &Core,
        id: &str,
        guard: Option<Guard>,
    ) -> Result<bool, ConfigFailure> {
        rules::namespace(id)?;
        if id == berth_config::model::PUBLIC {
            return Err(ConfigError::invalid("namespace public cannot be deleted").into());
        }
        self.sync(core).await?;
        if !self.read(|v| v.namespaces.contains_key(id)) {
            return Ok(false);
        }
        let n = self.count(id);
        if n > 0 {
            return Err(ConfigError::invalid(format!(
                "namespace {id} holds {n} items: delete them first"
            ))
            .into());
        }
        // Only while it holds no item: a publish into it that raced this check fails.
        let items = layout::items_of(id);
        let empty = Compare {
            range_end: layout::prefix_end(&items),
            key: items,
            target: CompareTarget::Version as i32,
            result: CompareResult::Equal as i32,
            target_union: Some(TargetUnion::Version(0)),
        };
        let txn = TxnRequest {
            compare: vec![empty],
            success: vec![delete_key(layout::namespace(id))],
            ..Default::default()
        };
        if !self.propose(core, txn, guard).await? {
            return Err(ConfigError::invalid(format!(
                "namespace {id} received items meanwhile: delete them first"
            ))
            .into());
        }
        Ok(true)
    }

    /// The item at `k` as the store has it on this member, with its mod revision (0: none).
    fn stored_item(&self, k: &ItemKey) -> Result<(Option<Item>, i64), ConfigFailure> {
        match self.stored(&layout::item(k))? {
            Some(kv) => Ok((Some(decode(&kv)?), kv.mod_revision)),
            None => Ok((None, 0)),
        }
    }

    fn stored(&self, key: &[u8]) -> Result<Option<KeyValue>, ConfigFailure> {
        let resp = self.store.range_in(
            Keyspace::Config,
            &RangeRequest {
                key: key.to_vec(),
                ..Default::default()
            },
        )?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Up to `limit` kept versions of `k`, newest first (with the total count).
    fn newest_versions(
        &self,
        k: &ItemKey,
        limit: i64,
        keys_only: bool,
    ) -> Result<berth_proto::etcdserverpb::RangeResponse, ConfigFailure> {
        let prefix = layout::versions(k);
        Ok(self.store.range_in(
            Keyspace::Config,
            &RangeRequest {
                range_end: layout::prefix_end(&prefix),
                key: prefix,
                sort_order: SortOrder::Descend as i32,
                sort_target: SortTarget::Key as i32,
                limit,
                keys_only,
                ..Default::default()
            },
        )?)
    }

    /// The highest version number `k` ever had (0: none kept).
    pub(crate) fn last_version(&self, k: &ItemKey) -> Result<u64, ConfigFailure> {
        let resp = self.newest_versions(k, 1, true)?;
        Ok(resp
            .kvs
            .first()
            .and_then(|kv| layout::parse_version(&kv.key))
            .map_or(0, |(_, v)| v))
    }

    /// The ops that keep `item` as version `item.version` made by `op`, and drop the oldest
    /// versions past the count limit.
    fn version_ops(
        &self,
        k: &ItemKey,
        op: Op,
        item: &Item,
        at: i64,
        author: &berth_config::Author,
        ops: &mut Vec<RequestOp>,
    ) -> Result<(), ConfigFailure> {
        let kept = Version {
            version: item.version,
            op,
            item: item.clone(),
            at_ms: at,
            author: author.clone(),
        };
        ops.push(put_op(layout::version(k, item.version), encode(&kept), 0));
        ops.push(put_op(layout::aged(at, k, item.version), Vec::new(), 0));
        let prefix = layout::versions(k);
        let count = self
            .store
            .range_in(
                Keyspace::Config,
                &RangeRequest {
                    range_end: layout::prefix_end(&prefix),
                    key: prefix.clone(),
                    count_only: true,
                    ..Default::default()
                },
            )?
            .count;
        let excess = usize::try_from(count)
            .unwrap_or(0)
            .saturating_add(1)
            .saturating_sub(self.limits.history_versions.max(1));
        if excess > 0 {
            let oldest = self.store.range_in(
                Keyspace::Config,
                &RangeRequest {
                    range_end: layout::prefix_end(&prefix),
                    key: prefix,
                    limit: i64::try_from(excess).unwrap_or(i64::MAX),
                    ..Default::default()
                },
            )?;
            for kv in &oldest.kvs {
                let old: Version = decode(kv)?;
                ops.push(delete_key(kv.key.clone()));
                ops.push(delete_key(layout::aged(old.at_ms, k, old.version)));
            }
        }
        Ok(())
    }

    /// Proposes `ops` guarded by `guard_key`'s mod revision being `seen`; on success waits
    /// until the view shows it. False when the guard failed.
    async fn commit(
        &self,
        core: &Core,
        guard_key: Vec<u8>,
        seen: i64,
        ops: Vec<RequestOp>,
        guard: Option<Guard>,
    ) -> Result<bool, WriteError> {
        self.propose(
            core,
            TxnRequest {
                compare: vec![unchanged_since(&guard_key, seen)],
                success: ops,
                ..Default::default()
            },
            guard,
        )
        .await
    }

    /// Proposes `ops` with no compare (under the auth `guard` only).
    async fn commit_unconditional(
        &self,
        core: &Core,
        ops: Vec<RequestOp>,
        guard: Option<Guard>,
    ) -> Result<(), WriteError> {
        self.propose(
            core,
            TxnRequest {
                success: ops,
                ..Default::default()
            },
            guard,
        )
        .await
        .map(|_| ())
    }

    /// Proposes `txn` in the `Config` keyspace under the auth `guard`; on success waits until
    /// the view shows it. False when its compares failed.
    async fn propose(
        &self,
        core: &Core,
        txn: TxnRequest,
        guard: Option<Guard>,
    ) -> Result<bool, WriteError> {
        if core.out_of_space().await {
            return Err(WriteError::Refused(berth_store::StoreError::NoSpace));
        }
        let entry = Entry {
            guard,
            ..Entry::new(Keyspace::Config, Command::Txn(txn))
        };
        match core.consensus.propose_entry(entry).await? {
            Applied::Txn(t) => {
                if t.succeeded {
                    self.wait_applied(t.header.map_or(0, |h| h.revision)).await;
                }
                Ok(t.succeeded)
            }
            _ => Err(WriteError::Unknown),
        }
    }

    /// Loads the view and follows the `Config` keyspace until `stop`; reloads from scratch
    /// if the watch cannot continue (history compacted under it, a snapshot installed).
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let Some(mut barriers) = self.barriers.take() else {
            return;
        };
        loop {
            let (tx, mut rx) = mpsc::channel::<Delivery>(256);
            let from = match self.load() {
                Ok(rev) => rev,
                Err(e) => {
                    tracing::error!(error = %e, "config: loading the view");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = stop.changed() => return,
                    }
                }
            };
            let spec = WatchSpec {
                keyspace: Keyspace::Config,
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
            tracing::warn!("config: the view's watch was interrupted; reloading it");
        }
    }

    /// Rebuilds the view from the keyspace; returns the revision it reflects.
    fn load(&self) -> Result<i64, berth_store::StoreError> {
        let mut fresh = View::default();
        // Every part read at one revision, which the watch then follows from.
        let rev = self.store.revision();
        for prefix in [layout::ITEMS, layout::BETAS, layout::NAMESPACES] {
            let resp = self.store.range_in(
                Keyspace::Config,
                &RangeRequest {
                    key: prefix.to_vec(),
                    range_end: layout::prefix_end(prefix),
                    revision: rev,
                    ..Default::default()
                },
            )?;
            for kv in &resp.kvs {
                if let Err(e) = fresh.put(kv) {
                    tracing::error!(error = %e, "config: skipping a record");
                }
            }
        }
        let woken: Vec<ItemKey> = {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            *view = fresh;
            lock(&self.listeners).keys().cloned().collect()
        };
        self.wake(&woken);
        let _ = self.changes.send(Changed::All);
        self.advance(rev);
        Ok(rev)
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
                    let changed = if ev.r#type == EventType::Delete as i32 {
                        view.delete(&kv.key)
                    } else {
                        view.put(kv).unwrap_or_else(|e| {
                            tracing::error!(error = %e, "config: skipping a record");
                            None
                        })
                    };
                    touched.extend(changed);
                }
            }
        }
        self.wake(&touched);
        self.announce(&touched);
        self.advance(d.revision);
        true
    }

    fn wake(&self, keys: &[ItemKey]) {
        let map = lock(&self.listeners);
        for k in keys {
            if let Some(n) = map.get(k) {
                n.notify_waiters();
            }
        }
    }

    fn announce(&self, keys: &[ItemKey]) {
        if self.changes.receiver_count() == 0 {
            return;
        }
        for k in keys {
            let _ = self.changes.send(Changed::Item(k.clone()));
        }
    }

    fn advance(&self, rev: i64) {
        self.applied.advance(rev);
    }
}

impl View {
    /// Applies a put; returns the item whose readers may see a change.
    fn put(&mut self, kv: &KeyValue) -> Result<Option<ItemKey>, ConfigError> {
        if let Some(k) = layout::parse_item(layout::ITEMS, &kv.key) {
            self.items.insert(k.clone(), Arc::new(decode(kv)?));
            return Ok(Some(k));
        }
        if let Some(k) = layout::parse_item(layout::BETAS, &kv.key) {
            self.betas.insert(k.clone(), Arc::new(decode(kv)?));
            return Ok(Some(k));
        }
        if let Some(id) = kv.key.strip_prefix(layout::NAMESPACES) {
            let ns: Namespace = decode(kv)?;
            self.namespaces
                .insert(String::from_utf8_lossy(id).into_owned(), ns);
        }
        Ok(None)
    }

    /// Applies a delete; returns the item whose readers may see a change.
    fn delete(&mut self, key: &[u8]) -> Option<ItemKey> {
        if let Some(k) = layout::parse_item(layout::ITEMS, key) {
            self.items.remove(&k);
            return Some(k);
        }
        if let Some(k) = layout::parse_item(layout::BETAS, key) {
            self.betas.remove(&k);
            return Some(k);
        }
        if let Some(id) = key.strip_prefix(layout::NAMESPACES) {
            self.namespaces.remove(&*String::from_utf8_lossy(id));
        }
        None
    }
}

fn delete_key(key: Vec<u8>) -> RequestOp {
    delete_op(key, Vec::new())
}
