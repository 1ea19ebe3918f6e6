//! `/v1/txn`: Consul's transactions over KV. Up to 128 KV operations (set, cas, lock,
//! unlock, get, get-tree, check-index, check-session, check-not-exists, delete, delete-cas,
//! delete-tree) run in order against one snapshot of the store, each seeing the earlier
//! ones' effects, and commit as one store txn (one revision) or not at all.
//!
//! The operations are evaluated here, at a store revision `R`, and what they leave is
//! proposed as one multi-keyspace txn whose compares say that nothing they read changed
//! since `R` (every key read or written, its metadata, and every tree read or deleted). A
//! concurrent write makes the txn fail; it is evaluated again on the new state. Failed
//! operations answer 409 with Consul's `Errors` (`OpIndex`, `What`) and write nothing; a
//! transaction of reads only is answered without a write (`?stale` from this member's
//! view, otherwise after a read index).
//!
//! Not served yet: Node, Service and Check operations (a 400 that says so). A `check-index`
//! of a key written earlier in the same transaction fails: its new index is the commit's,
//! not known while the operations are evaluated.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::put;
use axum::Router;
use base64::Engine;
use berth_auth::Access;
use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::{Compare, TxnRequest};
use berth_registry::{layout, KvMeta, Session};
use berth_store::Keyspace;
use serde::Deserialize;
use serde_json::{json, Value};

use super::input::decode;
use super::kv::{entry_json, metas_at, next_meta, prefix_end, range_at, META_RETRIES};
use super::{credential, json_reply, ApiError, Params, ReadOpts, MAX_VALUE};
use crate::core::Core;
use crate::registry::{compare_mod, delete_op, put_op, tagged};

/// Most operations in one transaction (Consul's `maxTxnOps`).
const MAX_OPS: usize = 128;

pub(super) fn routes() -> Router<Arc<Core>> {
    Router::new().route("/v1/txn", put(txn))
}

/// One operation of the request body (keys in any case).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OpIn {
    kv: Option<KvOpIn>,
    node: Option<Value>,
    service: Option<Value>,
    check: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct KvOpIn {
    verb: String,
    key: String,
    /// Base64, as Consul takes it.
    value: Option<String>,
    flags: u64,
    index: u64,
    session: String,
}

/// A decoded KV operation.
struct KvOp {
    verb: String,
    key: Vec<u8>,
    value: Vec<u8>,
    flags: u64,
    index: i64,
    session: String,
}

impl KvOp {
    fn writes(&self) -> bool {
        matches!(
            self.verb.as_str(),
            "set" | "cas" | "lock" | "unlock" | "delete" | "delete-cas" | "delete-tree"
        )
    }

    fn is_tree(&self) -> bool {
        matches!(self.verb.as_str(), "get-tree" | "delete-tree")
    }
}

/// A key as the transaction sees it. `create`/`modify` are 0 for what this transaction
/// writes: the commit's revision, filled in once known.
#[derive(Clone, Debug)]
struct Entry {
    value: Vec<u8>,
    create: i64,
    modify: i64,
    meta: KvMeta,
}

/// A KV result: the key and its entry at that point of the transaction.
struct Shown {
    key: Vec<u8>,
    entry: Entry,
    with_value: bool,
}

/// The store at revision `rev` with this transaction's writes laid over it, and what was
/// read (for the commit's compares).
struct View<'c> {
    core: &'c Core,
    rev: i64,
    keys: BTreeMap<Vec<u8>, Option<Entry>>,
    /// Key → (its mod revision, its metadata's mod revision) at `rev`; 0 when absent.
    observed: BTreeMap<Vec<u8>, (i64, i64)>,
    trees: BTreeSet<Vec<u8>>,
    written: BTreeSet<Vec<u8>>,
}

impl<'c> View<'c> {
    fn new(core: &'c Core) -> View<'c> {
        View {
            core,
            rev: core.store.revision(),
            keys: BTreeMap::new(),
            observed: BTreeMap::new(),
            trees: BTreeSet::new(),
            written: BTreeSet::new(),
        }
    }

    /// Loads `[key, end)` at `rev` into the view (keys already in it keep theirs).
    fn load(&mut self, key: &[u8], end: &[u8]) -> Result<(), ApiError> {
        let kvs = range_at(self.core, Keyspace::User, key, end, self.rev)?;
        let mut metas = metas_at(self.core, key, end, self.rev)?;
        let mut found = BTreeSet::new();
        for kv in kvs {
            found.insert(kv.key.clone());
            if self.keys.contains_key(&kv.key) {
                continue;
            }
            let (meta, meta_rev) = metas.remove(&kv.key).unwrap_or_default();
            let meta = if KvMeta::applies_to(meta_rev, kv.create_revision) {
                meta
            } else {
                KvMeta::default()
            };
            self.observed
                .insert(kv.key.clone(), (kv.mod_revision, meta_rev));
            let entry = Entry {
                value: kv.value,
                create: kv.create_revision,
                modify: kv.mod_revision,
                meta,
            };
            self.keys.insert(kv.key, Some(entry));
        }
        if end.is_empty() && !found.contains(key) && !self.keys.contains_key(key) {
            let meta_rev = metas.remove(key).map_or(0, |(_, r)| r);
            self.observed.insert(key.to_vec(), (0, meta_rev));
            self.keys.insert(key.to_vec(), None);
        }
        Ok(())
    }

    fn get(&mut self, key: &[u8]) -> Result<Option<Entry>, ApiError> {
        if !self.keys.contains_key(key) {
            self.load(key, &[])?;
        }
        Ok(self.keys.get(key).cloned().flatten())
    }

    /// Every live key under `prefix`, in order.
    fn tree(&mut self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Entry)>, ApiError> {
        if self.trees.insert(prefix.to_vec()) {
            self.load(prefix, &prefix_end(prefix))?;
        }
        Ok(self
            .keys
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter_map(|(k, e)| e.clone().map(|e| (k.clone(), e)))
            .collect())
    }

    fn put(&mut self, key: &[u8], entry: Entry) {
        self.written.insert(key.to_vec());
        self.keys.insert(key.to_vec(), Some(entry));
    }

    fn delete(&mut self, key: &[u8]) {
        self.written.insert(key.to_vec());
        self.keys.insert(key.to_vec(), None);
    }

    /// The store txn that commits the writes if nothing read changed since `rev`.
    fn commit_txn(&self) -> TxnRequest {
        let mut compare = Vec::new();
        for (key, (key_rev, meta_rev)) in &self.observed {
            compare.push(compare_mod(Keyspace::User, key, *key_rev));
            compare.push(compare_mod(Keyspace::Registry, &layout::kv(key), *meta_rev));
        }
        for prefix in &self.trees {
            compare.push(Compare {
                key: tagged(Keyspace::User, prefix),
                range_end: tagged(Keyspace::User, &prefix_end(prefix)),
                target: CompareTarget::Mod as i32,
                result: CompareResult::Less as i32,
                target_union: Some(TargetUnion::ModRevision(self.rev + 1)),
            });
        }
        let mut success = Vec::new();
        for key in &self.written {
            let meta_key = tagged(Keyspace::Registry, &layout::kv(key));
            match self.keys.get(key).cloned().flatten() {
                Some(e) => {
                    success.push(put_op(tagged(Keyspace::User, key), e.value, 0));
                    success.push(put_op(meta_key, crate::registry::encode(&e.meta), 0));
                }
                None => {
                    success.push(delete_op(tagged(Keyspace::User, key), Vec::new()));
                    success.push(delete_op(meta_key, Vec::new()));
                }
            }
        }
        TxnRequest {
            compare,
            success,
            failure: vec![],
        }
    }
}

async fn txn(
    State(core): State<Arc<Core>>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let q = Params::parse(raw)?;
    let opts = ReadOpts::parse(&q)?;
    let ops = parse(&body)?;
    let principal = core.auth.principal(&credential(&headers, &q))?;
    for op in &ops {
        let access = if op.writes() {
            Access::Write
        } else {
            Access::Read
        };
        let end = if op.is_tree() {
            prefix_end(&op.key)
        } else {
            Vec::new()
        };
        principal.check(Keyspace::User, access, &op.key, &end)?;
    }
    let writes = ops.iter().any(KvOp::writes);
    if !writes && !opts.stale {
        core.consensus.read_index().await?;
    }
    // Sessions named by lock and unlock, looked up once (created on another member a
    // moment ago: the view is synced first).
    let mut sessions = BTreeMap::new();
    for op in ops
        .iter()
        .filter(|o| matches!(o.verb.as_str(), "lock" | "unlock"))
    {
        if op.session.is_empty() || sessions.contains_key(&op.session) {
            continue;
        }
        let mut found = core.registry.read(|c| c.session(&op.session));
        if found.is_none() {
            core.registry.sync(&core).await?;
            found = core.registry.read(|c| c.session(&op.session));
        }
        sessions.insert(op.session.clone(), found.map(|r| r.value));
    }
    for _ in 0..META_RETRIES {
        let mut view = View::new(&core);
        let (shown, errors) = evaluate(&core, &mut view, &ops, &sessions)?;
        if !errors.is_empty() {
            let body = json!({"Results": Value::Null, "Errors": errors});
            let mut resp = json_reply(view.rev, &body);
            *resp.status_mut() = StatusCode::CONFLICT;
            return Ok(resp);
        }
        if !writes {
            return Ok(json_reply(view.rev, &results(shown, 0)));
        }
        let resp = core
            .registry
            .write_multi_guarded(&core, view.commit_txn(), principal.guard())
            .await?;
        if resp.succeeded {
            let rev = resp.header.as_ref().map_or(0, |h| h.revision);
            return Ok(json_reply(rev, &results(shown, rev)));
        }
        // Something the operations read changed under them: evaluate them again.
    }
    Err(ApiError::new(
        StatusCode::CONFLICT,
        "the keys kept changing under concurrent writes; try again",
    ))
}

fn parse(body: &[u8]) -> Result<Vec<KvOp>, ApiError> {
    let raw: Vec<OpIn> = decode(body).map_err(ApiError::bad)?;
    if raw.len() > MAX_OPS {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!(
                "Transaction contains too many operations ({} > {MAX_OPS})",
                raw.len()
            ),
        ));
    }
    let mut ops = Vec::with_capacity(raw.len());
    for (i, op) in raw.into_iter().enumerate() {
        let kind = [
            ("Node", op.node.is_some()),
            ("Service", op.service.is_some()),
            ("Check", op.check.is_some()),
        ]
        .into_iter()
        .find_map(|(k, has)| has.then_some(k));
        let kv = match (op.kv, kind) {
            (_, Some(kind)) => {
                return Err(ApiError::bad(format!(
                    "Operation {i}: {kind} operations in /v1/txn are not served by berth yet; \
                     only KV operations are"
                )))
            }
            (None, None) => {
                return Err(ApiError::bad(format!(
                    "Operation {i}: no KV, Node, Service or Check operation given"
                )))
            }
            (Some(kv), None) => kv,
        };
        let value = match kv.value {
            None => Vec::new(),
            Some(v) => base64::engine::general_purpose::STANDARD
                .decode(v.as_bytes())
                .map_err(|e| {
                    ApiError::bad(format!("Failed to parse body: failed to decode value: {e}"))
                })?,
        };
        if value.len() > MAX_VALUE {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "Value for key {:?} is too large ({} > {MAX_VALUE} bytes)",
                    kv.key,
                    value.len()
                ),
            ));
        }
        ops.push(KvOp {
            verb: kv.verb.to_ascii_lowercase(),
            key: kv.key.into_bytes(),
            value,
            flags: kv.flags,
            index: i64::try_from(kv.index).unwrap_or(i64::MAX),
            session: kv.session,
        });
    }
    Ok(ops)
}

/// Runs `ops` in order on `view`: what each shows, and Consul's errors of those that fail.
fn evaluate(
    core: &Core,
    view: &mut View<'_>,
    ops: &[KvOp],
    sessions: &BTreeMap<String, Option<Session>>,
) -> Result<(Vec<Shown>, Vec<Value>), ApiError> {
    let mut shown = Vec::new();
    let mut errors = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        if let Err(what) = run_op(core, view, op, sessions, &mut shown)? {
            errors.push(json!({"OpIndex": i, "What": what}));
        }
    }
    Ok((shown, errors))
}

/// One operation; `Err(what)` is its failure, in Consul's words.
fn run_op(
    core: &Core,
    view: &mut View<'_>,
    op: &KvOp,
    sessions: &BTreeMap<String, Option<Session>>,
    shown: &mut Vec<Shown>,
) -> Result<Result<(), String>, ApiError> {
    let key = op.key.as_slice();
    let name = String::from_utf8_lossy(key).into_owned();
    if key.is_empty() && !op.is_tree() {
        return Ok(Err("Missing key name".into()));
    }
    let mut show = |entry: Entry, with_value: bool| {
        shown.push(Shown {
            key: key.to_vec(),
            entry,
            with_value,
        })
    };
    match op.verb.as_str() {
        "get" => match view.get(key)? {
            None => return Ok(Err(format!("key {name:?} doesn't exist"))),
            Some(e) => show(e, true),
        },
        "get-tree" => {
            for (k, e) in view.tree(key)? {
                shown.push(Shown {
                    key: k,
                    entry: e,
                    with_value: true,
                });
            }
        }
        "check-index" => match view.get(key)? {
            None => {
                return Ok(Err(format!(
                    "failed to check index, key {name:?} doesn't exist"
                )))
            }
            Some(e) if e.modify != op.index => {
                return Ok(Err(format!(
                    "failed index check for key {name:?}, current modify index {} != {}",
                    e.modify, op.index
                )))
            }
            Some(e) => show(e, false),
        },
        "check-session" => match view.get(key)? {
            None => {
                return Ok(Err(format!(
                    "failed to check session, key {name:?} doesn't exist"
                )))
            }
            Some(e) if e.meta.session.as_deref().unwrap_or("") != op.session => {
                return Ok(Err(format!(
                    "failed session check for key {name:?}, current session {:?} != {:?}",
                    e.meta.session.as_deref().unwrap_or(""),
                    op.session
                )))
            }
            Some(e) => show(e, false),
        },
        "check-not-exists" => {
            if view.get(key)?.is_some() {
                return Ok(Err(format!("key {name:?} exists")));
            }
        }
        "set" | "cas" | "lock" | "unlock" => {
            let old = view.get(key)?;
            if op.verb == "cas" {
                let stale = match &old {
                    None => op.index != 0,
                    Some(e) => op.index == 0 || e.modify != op.index,
                };
                if stale {
                    return Ok(Err(format!("failed to set key {name:?}, index is stale")));
                }
            }
            let lock = match op.verb.as_str() {
                "lock" => Some(true),
                "unlock" => Some(false),
                _ => None,
            };
            let session = match lock {
                None => None,
                Some(_) if op.session.is_empty() => return Ok(Err("missing session".into())),
                Some(_) => match sessions.get(&op.session).cloned().flatten() {
                    None => return Ok(Err(format!("invalid session {:?}", op.session))),
                    Some(s) => Some(s),
                },
            };
            let old_meta = old.as_ref().map(|e| e.meta.clone()).unwrap_or_default();
            let Some(meta) = next_meta(core, old_meta, op.flags, lock, session.as_ref()) else {
                return Ok(Err(if op.verb == "lock" {
                    format!("failed to lock key {name:?}, lock is already held")
                } else {
                    format!(
                        "failed to unlock key {name:?}, lock isn't held, or is held by \
                         another session"
                    )
                }));
            };
            let entry = Entry {
                value: op.value.clone(),
                create: old.map_or(0, |e| e.create),
                modify: 0,
                meta,
            };
            view.put(key, entry.clone());
            show(entry, false);
        }
        "delete" => view.delete(key),
        "delete-cas" => {
            if let Some(e) = view.get(key)? {
                if e.modify != op.index {
                    return Ok(Err(format!(
                        "failed to delete key {name:?}, index is stale"
                    )));
                }
                view.delete(key);
            }
        }
        "delete-tree" => {
            for (k, _) in view.tree(key)? {
                view.delete(&k);
            }
        }
        other => return Ok(Err(format!("unknown KV verb {other:?}"))),
    }
    Ok(Ok(()))
}

/// Consul's answer: `{"Results": [{"KV": …}], "Errors": null}`; entries this transaction
/// wrote get the commit revision `rev` as their index.
fn results(shown: Vec<Shown>, rev: i64) -> Value {
    let list: Vec<Value> = shown
        .into_iter()
        .map(|s| {
            let fill = |i: i64| if i == 0 { rev } else { i };
            let value = s.with_value.then_some(s.entry.value.as_slice());
            json!({"KV": entry_json(
                &s.key,
                value,
                &s.entry.meta,
                fill(s.entry.create),
                fill(s.entry.modify),
            )})
        })
        .collect();
    json!({"Results": list, "Errors": Value::Null})
}
