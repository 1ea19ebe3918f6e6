//! The write path of the state machine: applies Put, DeleteRange, Txn, Compact, lease and
//! alarm commands inside one storage transaction, assigning revisions exactly as etcd does.
//!
//! Every command is applied in one [`Keyspace`]: a Put, DeleteRange or Txn (its compares,
//! reads and writes alike) touches only keys of that keyspace. The one exception is
//! [`Command::MultiTxn`], a txn whose every key carries its keyspace's ID byte, so that a
//! domain can keep records of two keyspaces in step atomically. Compaction, lease grant and
//! revoke, and alarms are store-wide and ignore it: a revoke deletes the lease's keys in
//! whichever keyspaces they live.

use std::collections::HashSet;
use std::time::Instant;

use berth_proto::etcdserverpb::alarm_request::AlarmAction;
use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::request_op::Request;
use berth_proto::etcdserverpb::response_op::Response;
use berth_proto::etcdserverpb::{
    AlarmMember, AlarmRequest, AlarmResponse, AlarmType, CompactionRequest, CompactionResponse,
    Compare, DeleteRangeRequest, DeleteRangeResponse, LeaseGrantRequest, LeaseGrantResponse,
    LeaseRevokeRequest, LeaseRevokeResponse, PutRequest, PutResponse, RangeRequest, RequestOp,
    ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use berth_proto::mvccpb::{event::EventType, Event, KeyValue};
use redb::{ReadableTable, Table};

use crate::backend::{encode, read_kv, META_APPLIED, META_COMPACTED, META_REVISION};
use crate::error::{DbResult, Result, StoreError};
use crate::index::{KeyIndex, KeySpan};
use crate::keyspace::Keyspace;
use crate::lease::Lessor;
use crate::read;
use crate::revision::Revision;

/// A state-machine command: one client write request (what a Raft log entry carries). It is
/// the log's own protobuf oneof (`berth.store.Request`), so adding a command is one field in
/// `store.proto` and one arm of [`Writer::apply`]'s match. `Compaction` is KV.Compact;
/// `LeaseGrant` carries an ID chosen before it is proposed; `LeaseRevoke` is also expiry;
/// `Alarm` activates or deactivates an alarm, which is cluster state, replicated and kept, as
/// in etcd (a NOSPACE alarm raised on one member stops writes on every member).
pub use berth_proto::berth::store::request::Request as Command;

/// A condition checked at apply before a command: refused with [`StoreError::GuardStale`]
/// when `key` of `keyspace` was changed (put or deleted) after `mod_revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guard {
    /// The keyspace of the guard key.
    pub keyspace: Keyspace,
    /// The guard key.
    pub key: Vec<u8>,
    /// The key's mod revision the face's checks saw (0: absent).
    pub mod_revision: i64,
}

/// One log entry's content: a command, the keyspace it applies in, and an optional guard.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The keyspace the command's keys are in.
    pub keyspace: Keyspace,
    /// Checked before the command is applied.
    pub guard: Option<Guard>,
    /// The command.
    pub command: Command,
}

impl Entry {
    /// An unguarded command in `keyspace`.
    pub fn new(keyspace: Keyspace, command: Command) -> Entry {
        Entry {
            keyspace,
            guard: None,
            command,
        }
    }
}

/// The response a command produced; headers carry only the revision.
#[derive(Debug, Clone, PartialEq)]
pub enum Applied {
    /// Response to [`Command::Put`].
    Put(PutResponse),
    /// Response to [`Command::DeleteRange`].
    DeleteRange(DeleteRangeResponse),
    /// Response to [`Command::Txn`].
    Txn(TxnResponse),
    /// Response to [`Command::Compaction`].
    Compaction(CompactionResponse),
    /// Response to [`Command::LeaseGrant`].
    LeaseGrant(LeaseGrantResponse),
    /// Response to [`Command::LeaseRevoke`].
    LeaseRevoke(LeaseRevokeResponse),
    /// Response to [`Command::Alarm`]: the alarms it changed.
    Alarm(AlarmResponse),
}

/// Everything one batch mutates, borrowed for its duration.
pub(crate) struct Writer<'a, 't> {
    pub index: &'a mut KeyIndex,
    pub lessor: &'a mut Lessor,
    pub revs: &'a mut Table<'t, u128, &'static [u8]>,
    pub leases: &'a mut Table<'t, i64, i64>,
    pub meta: &'a mut Table<'t, &'static str, i64>,
    /// Active alarms (kept in `meta` under [`ALARM_PREFIX`]).
    pub alarms: &'a mut Vec<AlarmMember>,
    /// Newest revision written so far (by earlier commands of the batch too).
    pub current: i64,
    /// Events of the batch, in revision order, each with its key's keyspace, for watchers.
    pub events: Vec<(Keyspace, Event)>,
    /// Keyspace of the command being applied (in a multi-keyspace txn: of the op or
    /// compare being applied).
    pub ks: Keyspace,
    /// True while a [`Command::MultiTxn`] applies: keys carry their keyspace's ID byte.
    pub mixed: bool,
    pub now: Instant,
    /// True once anything was written (a batch of pure reads needs no commit).
    pub dirty: bool,
}

/// The revision being written by one request, and how many changes it has made.
struct Rev {
    main: i64,
    sub: i64,
}

impl Rev {
    fn next(&mut self) -> Revision {
        let r = Revision::new(self.main, self.sub);
        self.sub += 1;
        r
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

impl Writer<'_, '_> {
    /// True when `g`'s key is still at the mod revision the guard names (0: still absent),
    /// seeing the writes of earlier commands of this batch.
    pub fn guard_holds(&self, g: &Guard) -> bool {
        let now = self
            .index
            .get(g.keyspace, &g.key, self.current)
            .map_or(0, |v| v.rev.main);
        now == g.mod_revision
    }

    /// Applies one command in keyspace `ks`. Errors leave no trace: every check runs before
    /// the first write.
    pub fn apply(&mut self, ks: Keyspace, cmd: &Command) -> Result<Applied> {
        self.ks = ks;
        let mut rev = Rev {
            main: self.current + 1,
            sub: 0,
        };
        // Under NOSPACE, what would grow the database is refused here, at apply, as etcd's
        // capped applier does: every member decides alike from the same replicated alarms.
        let capped = self
            .alarms
            .iter()
            .any(|a| a.alarm == AlarmType::Nospace as i32);
        if capped
            && match cmd {
                Command::Put(_) | Command::LeaseGrant(_) => true,
                Command::Txn(t) | Command::MultiTxn(t) => txn_puts(t),
                _ => false,
            }
        {
            return Err(StoreError::NoSpace);
        }
        let out = match cmd {
            Command::Put(p) => {
                self.check_put(p)?;
                let mut resp = self.put(&mut rev, p)?;
                resp.header = header(rev.main);
                Applied::Put(resp)
            }
            Command::DeleteRange(d) => Applied::DeleteRange(self.delete(&mut rev, d)?),
            Command::Txn(t) => {
                let path = self.compare_path(t)?;
                self.check_txn(t, &path, &mut 0)?;
                Applied::Txn(self.txn(&mut rev, t, &path, &mut 0)?)
            }
            Command::MultiTxn(t) => {
                self.mixed = true;
                let out = self.compare_path(t).and_then(|path| {
                    self.check_txn(t, &path, &mut 0)?;
                    self.txn(&mut rev, t, &path, &mut 0)
                });
                self.mixed = false;
                Applied::Txn(out?)
            }
            Command::Compaction(c) => Applied::Compaction(self.compact(c)?),
            Command::LeaseGrant(g) => Applied::LeaseGrant(self.lease_grant(g)?),
            Command::LeaseRevoke(r) => Applied::LeaseRevoke(self.lease_revoke(&mut rev, r)?),
            Command::Alarm(a) => Applied::Alarm(self.alarm(a)?),
        };
        if rev.sub > 0
            || matches!(
                out,
                Applied::Compaction(_)
                    | Applied::LeaseGrant(_)
                    | Applied::LeaseRevoke(_)
                    | Applied::Alarm(_)
            )
        {
            self.dirty = true;
        }
        if rev.sub > 0 {
            self.current = rev.main;
            self.meta.insert(META_REVISION, rev.main).db()?;
        }
        Ok(with_revision(out, self.current))
    }

    fn check_put(&self, p: &PutRequest) -> Result<()> {
        let (ks, key) = self.scope(&p.key)?;
        if p.lease != 0 && !p.ignore_lease && !self.lessor.contains(p.lease) {
            return Err(StoreError::LeaseNotFound);
        }
        if (p.ignore_value || p.ignore_lease) && self.index.get(ks, key, self.current).is_none() {
            return Err(StoreError::KeyNotFound);
        }
        Ok(())
    }

    fn put(&mut self, rev: &mut Rev, p: &PutRequest) -> Result<PutResponse> {
        let prev = self.index.get(self.ks, &p.key, rev.main);
        let prev_kv = match prev {
            Some(v) if p.prev_kv || p.ignore_value => Some(read_kv(self.revs, v.rev)?),
            _ => None,
        };
        let value = match (&prev_kv, p.ignore_value) {
            (Some(kv), true) => kv.value.clone(),
            _ => p.value.clone(),
        };
        let lease = match (prev, p.ignore_lease) {
            (Some(v), true) => v.lease,
            _ => p.lease,
        };
        let r = rev.next();
        let (ver, _) = self.index.put(self.ks, &p.key, r, lease);
        let kv = KeyValue {
            key: p.key.clone(),
            create_revision: ver.create,
            mod_revision: r.main,
            version: ver.version,
            value,
            lease,
        };
        self.revs
            .insert(r.to_key(), encode(self.ks, &kv, false).as_slice())
            .db()?;
        if let Some(old) = prev.map(|v| v.lease).filter(|l| *l != 0 && *l != lease) {
            self.lessor.detach(old, self.ks, &p.key);
        }
        if lease != 0 {
            self.lessor.attach(lease, self.ks, &p.key);
        }
        self.events.push((
            self.ks,
            Event {
                r#type: EventType::Put as i32,
                kv: Some(kv),
                prev_kv: None,
            },
        ));
        Ok(PutResponse {
            header: None,
            prev_kv: prev_kv.filter(|_| p.prev_kv),
        })
    }

    fn delete(&mut self, rev: &mut Rev, d: &DeleteRangeRequest) -> Result<DeleteRangeResponse> {
        let span = KeySpan::new(&d.key, &d.range_end);
        let mut doomed = Vec::new();
        self.index.for_each_live(self.ks, &span, rev.main, |k, v| {
            doomed.push((k.to_vec(), v));
            true
        });
        let mut prev_kvs = Vec::new();
        for (key, v) in &doomed {
            if d.prev_kv {
                prev_kvs.push(read_kv(self.revs, v.rev)?);
            }
            self.delete_key(rev, self.ks, key, v.lease)?;
        }
        Ok(DeleteRangeResponse {
            header: header(if doomed.is_empty() {
                self.current
            } else {
                rev.main
            }),
            deleted: doomed.len() as i64,
            prev_kvs,
        })
    }

    fn delete_key(&mut self, rev: &mut Rev, ks: Keyspace, key: &[u8], lease: i64) -> Result<()> {
        let r = rev.next();
        self.index.tombstone(ks, key, r);
        let kv = KeyValue {
            key: key.to_vec(),
            mod_revision: r.main,
            ..Default::default()
        };
        self.revs
            .insert(r.to_key(), encode(ks, &kv, true).as_slice())
            .db()?;
        if lease != 0 {
            self.lessor.detach(lease, ks, key);
        }
        self.events.push((
            ks,
            Event {
                r#type: EventType::Delete as i32,
                kv: Some(kv),
                prev_kv: None,
            },
        ));
        Ok(())
    }

    /// Evaluates every compare of the txn tree against the state before the txn, as etcd
    /// does: one bool per txn node in depth-first order of the chosen branches.
    fn compare_path(&self, t: &TxnRequest) -> Result<Vec<bool>> {
        let mut path = Vec::new();
        self.walk_compares(t, &mut path)?;
        Ok(path)
    }

    fn walk_compares(&self, t: &TxnRequest, path: &mut Vec<bool>) -> Result<()> {
        let mut ok = true;
        for c in &t.compare {
            if !self.compare(c)? {
                ok = false;
                break;
            }
        }
        path.push(ok);
        let branch = if ok { &t.success } else { &t.failure };
        for op in branch {
            if let Some(Request::RequestTxn(inner)) = &op.request {
                self.walk_compares(inner, path)?;
            }
        }
        Ok(())
    }

    fn compare(&self, c: &Compare) -> Result<bool> {
        let (ks, key, range_end) = self.scope_span(&c.key, &c.range_end)?;
        let span = KeySpan::new(key, range_end);
        let target = CompareTarget::try_from(c.target).unwrap_or(CompareTarget::Version);
        let mut versions = Vec::new();
        self.index.for_each_live(ks, &span, self.current, |k, v| {
            versions.push((k.to_vec(), v));
            true
        });
        if versions.is_empty() {
            // A value compare on a missing key always fails: there is no value to compare.
            if target == CompareTarget::Value {
                return Ok(false);
            }
            return Ok(compare_kv(c, target, &KeyValue::default()));
        }
        for (k, v) in versions {
            let kv = read::materialize(self.revs, &k, v, target == CompareTarget::Value)?;
            if !compare_kv(c, target, &kv) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Checks the ops the txn will run (leases exist, ignore_* keys exist) before any write.
    fn check_txn(&self, t: &TxnRequest, path: &[bool], at: &mut usize) -> Result<()> {
        let ok = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        for op in if ok { &t.success } else { &t.failure } {
            match &op.request {
                Some(Request::RequestPut(p)) => self.check_put(p)?,
                Some(Request::RequestTxn(inner)) => self.check_txn(inner, path, at)?,
                Some(Request::RequestRange(r)) => {
                    self.scope_span(&r.key, &r.range_end)?;
                    read::resolve_rev(self.index, r.revision, self.current)?;
                }
                Some(Request::RequestDeleteRange(d)) => {
                    self.scope_span(&d.key, &d.range_end)?;
                }
                None => {}
            }
        }
        Ok(())
    }

    fn txn(
        &mut self,
        rev: &mut Rev,
        t: &TxnRequest,
        path: &[bool],
        at: &mut usize,
    ) -> Result<TxnResponse> {
        let succeeded = path.get(*at).copied().unwrap_or(false);
        *at += 1;
        let branch = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(branch.len());
        for op in branch {
            responses.push(self.op(rev, op, path, at)?);
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }

    fn op(
        &mut self,
        rev: &mut Rev,
        op: &RequestOp,
        path: &[bool],
        at: &mut usize,
    ) -> Result<ResponseOp> {
        let response = match &op.request {
            Some(Request::RequestRange(r)) if self.mixed => {
                let (ks, key, range_end) = self.scope_span(&r.key, &r.range_end)?;
                let r = RangeRequest {
                    key: key.to_vec(),
                    range_end: range_end.to_vec(),
                    ..r.clone()
                };
                self.ks = ks;
                Response::ResponseRange(self.txn_range(rev, &r)?)
            }
            Some(Request::RequestPut(p)) if self.mixed => {
                let (ks, key) = self.scope(&p.key)?;
                let p = PutRequest {
                    key: key.to_vec(),
                    ..p.clone()
                };
                self.ks = ks;
                Response::ResponsePut(self.put(rev, &p)?)
            }
            Some(Request::RequestDeleteRange(d)) if self.mixed => {
                let (ks, key, range_end) = self.scope_span(&d.key, &d.range_end)?;
                let d = DeleteRangeRequest {
                    key: key.to_vec(),
                    range_end: range_end.to_vec(),
                    ..d.clone()
                };
                self.ks = ks;
                Response::ResponseDeleteRange(self.delete(rev, &d)?)
            }
            Some(Request::RequestRange(r)) => Response::ResponseRange(self.txn_range(rev, r)?),
            Some(Request::RequestPut(p)) => Response::ResponsePut(self.put(rev, p)?),
            Some(Request::RequestDeleteRange(d)) => {
                Response::ResponseDeleteRange(self.delete(rev, d)?)
            }
            Some(Request::RequestTxn(t)) => Response::ResponseTxn(self.txn(rev, t, path, at)?),
            None => return Ok(ResponseOp { response: None }),
        };
        Ok(ResponseOp {
            response: Some(response),
        })
    }

    /// The keyspace and key `key` names: in a multi-keyspace txn its first byte is the
    /// keyspace's ID, otherwise it is the command's keyspace.
    fn scope<'k>(&self, key: &'k [u8]) -> Result<(Keyspace, &'k [u8])> {
        if !self.mixed {
            return Ok((self.ks, key));
        }
        match key.split_first() {
            Some((id, rest)) => match Keyspace::from_id(u32::from(*id)) {
                Some(ks) => Ok((ks, rest)),
                None => Err(StoreError::Corrupt(format!(
                    "multi-keyspace txn: no keyspace with ID {id}"
                ))),
            },
            None => Err(StoreError::Corrupt(
                "multi-keyspace txn: a key without its keyspace byte".into(),
            )),
        }
    }

    /// [`Self::scope`] for a key and its range end, which must name the same keyspace (an
    /// empty range end is a single key).
    fn scope_span<'k>(
        &self,
        key: &'k [u8],
        range_end: &'k [u8],
    ) -> Result<(Keyspace, &'k [u8], &'k [u8])> {
        let (ks, key) = self.scope(key)?;
        if range_end.is_empty() {
            return Ok((ks, key, range_end));
        }
        match self.scope(range_end)? {
            (end_ks, end) if end_ks == ks => Ok((ks, key, end)),
            (end_ks, _) => Err(StoreError::Corrupt(format!(
                "multi-keyspace txn: a range from keyspace {} to keyspace {}",
                ks.name(),
                end_ks.name()
            ))),
        }
    }

    /// A range inside a txn sees the txn's own earlier writes.
    fn txn_range(
        &self,
        rev: &Rev,
        r: &RangeRequest,
    ) -> Result<berth_proto::etcdserverpb::RangeResponse> {
        let view = if rev.sub > 0 { rev.main } else { self.current };
        read::range(self.index, self.revs, self.ks, r, view)
    }

    fn compact(&mut self, c: &CompactionRequest) -> Result<CompactionResponse> {
        if c.revision == 0 && self.index.compacted() == 0 {
            // Nothing compacted yet: compacting "up to 0" removes nothing and, as in etcd,
            // is not an error.
            return Ok(CompactionResponse { header: None });
        }
        if c.revision <= self.index.compacted() {
            return Err(StoreError::Compacted);
        }
        if c.revision > self.current {
            return Err(StoreError::FutureRevision);
        }
        for r in self.index.compact(c.revision) {
            self.revs.remove(r.to_key()).db()?;
        }
        self.meta.insert(META_COMPACTED, c.revision).db()?;
        Ok(CompactionResponse { header: None })
    }

    /// Activates or deactivates an alarm; answers with the alarms changed (none when nothing
    /// changed). Other actions (the API answers Get itself) change nothing.
    fn alarm(&mut self, a: &AlarmRequest) -> Result<AlarmResponse> {
        let member = AlarmMember {
            member_id: a.member_id,
            alarm: a.alarm,
        };
        let key = alarm_key(&member);
        let changed = match AlarmAction::try_from(a.action) {
            Ok(AlarmAction::Activate) if a.alarm != AlarmType::None as i32 => {
                self.meta.insert(key.as_str(), 1).db()?;
                if !self.alarms.contains(&member) {
                    self.alarms.push(member);
                }
                vec![member]
            }
            Ok(AlarmAction::Deactivate) if self.alarms.contains(&member) => {
                self.meta.remove(key.as_str()).db()?;
                self.alarms.retain(|m| *m != member);
                vec![member]
            }
            _ => Vec::new(),
        };
        Ok(AlarmResponse {
            header: None,
            alarms: changed,
        })
    }

    fn lease_grant(&mut self, g: &LeaseGrantRequest) -> Result<LeaseGrantResponse> {
        if g.ttl > self.lessor.limits().max_ttl {
            return Err(StoreError::LeaseTtlTooLarge);
        }
        // Any ID but 0 (which means "no lease"); negative IDs are granted, as etcd does. The
        // API layer picks an ID before proposing when the client leaves it 0, so 0 here is a
        // bug of a member, not of a client.
        if g.id == 0 {
            return Err(StoreError::Corrupt("lease grant without an ID".into()));
        }
        if self.lessor.contains(g.id) {
            return Err(StoreError::LeaseExists);
        }
        let ttl = self.lessor.effective_ttl(g.ttl);
        self.lessor.insert(g.id, ttl, self.now);
        self.leases.insert(g.id, ttl).db()?;
        Ok(LeaseGrantResponse {
            header: None,
            id: g.id,
            ttl,
            error: String::new(),
        })
    }

    fn lease_revoke(
        &mut self,
        rev: &mut Rev,
        r: &LeaseRevokeRequest,
    ) -> Result<LeaseRevokeResponse> {
        let keys = self.lessor.remove(r.id).ok_or(StoreError::LeaseNotFound)?;
        tracing::debug!(lease = r.id, revision = rev.main, "lease revoke applied");
        // Every attached key, in the keyspace it lives in (keyspace, then key order).
        for (ks, key) in keys {
            if self.index.get(ks, &key, rev.main).is_some() {
                self.delete_key(rev, ks, &key, 0)?;
            }
        }
        self.leases.remove(r.id).db()?;
        Ok(LeaseRevokeResponse { header: None })
    }
}

/// Compares one key-value against a compare clause (a missing key compares as all zeroes).
fn compare_kv(c: &Compare, target: CompareTarget, kv: &KeyValue) -> bool {
    use std::cmp::Ordering;
    let ord: Ordering = match (target, &c.target_union) {
        (CompareTarget::Value, Some(TargetUnion::Value(v))) => {
            kv.value.as_slice().cmp(v.as_slice())
        }
        (CompareTarget::Value, _) => kv.value.as_slice().cmp(&[][..]),
        (CompareTarget::Version, Some(TargetUnion::Version(v))) => kv.version.cmp(v),
        (CompareTarget::Create, Some(TargetUnion::CreateRevision(v))) => kv.create_revision.cmp(v),
        (CompareTarget::Mod, Some(TargetUnion::ModRevision(v))) => kv.mod_revision.cmp(v),
        (CompareTarget::Lease, Some(TargetUnion::Lease(v))) => kv.lease.cmp(v),
        (CompareTarget::Version, _) => kv.version.cmp(&0),
        (CompareTarget::Create, _) => kv.create_revision.cmp(&0),
        (CompareTarget::Mod, _) => kv.mod_revision.cmp(&0),
        (CompareTarget::Lease, _) => kv.lease.cmp(&0),
    };
    match CompareResult::try_from(c.result).unwrap_or(CompareResult::Equal) {
        CompareResult::Equal => ord == Ordering::Equal,
        CompareResult::NotEqual => ord != Ordering::Equal,
        CompareResult::Greater => ord == Ordering::Greater,
        CompareResult::Less => ord == Ordering::Less,
    }
}

/// Sets the top-level header revision (and every nested txn/op header) once the command is done.
fn with_revision(out: Applied, revision: i64) -> Applied {
    match out {
        Applied::Txn(mut t) => {
            fill_txn_headers(&mut t, revision);
            Applied::Txn(t)
        }
        Applied::Compaction(mut c) => {
            c.header = header(revision);
            Applied::Compaction(c)
        }
        Applied::LeaseGrant(mut g) => {
            g.header = header(revision);
            Applied::LeaseGrant(g)
        }
        Applied::LeaseRevoke(mut r) => {
            r.header = header(revision);
            Applied::LeaseRevoke(r)
        }
        Applied::Alarm(mut a) => {
            a.header = header(revision);
            Applied::Alarm(a)
        }
        other => other,
    }
}

fn fill_txn_headers(t: &mut TxnResponse, revision: i64) {
    t.header = header(revision);
    for op in &mut t.responses {
        match &mut op.response {
            Some(Response::ResponsePut(p)) => p.header = header(revision),
            Some(Response::ResponseDeleteRange(d)) => d.header = header(revision),
            Some(Response::ResponseTxn(inner)) => fill_txn_headers(inner, revision),
            Some(Response::ResponseRange(_)) | None => {}
        }
    }
}

/// Rejects a txn that writes the same key twice along any path (etcd's duplicate-key rule).
pub fn check_txn_duplicates(t: &TxnRequest) -> bool {
    fn walk(ops: &[RequestOp]) -> Option<(Vec<KeySpan>, HashSet<Vec<u8>>)> {
        let mut dels: Vec<KeySpan> = Vec::new();
        let mut puts: HashSet<Vec<u8>> = HashSet::new();
        for op in ops {
            match &op.request {
                Some(Request::RequestPut(p)) if !puts.insert(p.key.clone()) => return None,
                Some(Request::RequestPut(_)) => {}
                Some(Request::RequestDeleteRange(d)) => {
                    dels.push(KeySpan::new(&d.key, &d.range_end))
                }
                Some(Request::RequestTxn(t)) => {
                    let (d1, p1) = walk(&t.success)?;
                    let (d2, p2) = walk(&t.failure)?;
                    for k in p1.union(&p2) {
                        if puts.contains(k) {
                            return None;
                        }
                    }
                    puts.extend(p1.into_iter().chain(p2));
                    dels.extend(d1.into_iter().chain(d2));
                }
                _ => {}
            }
        }
        if puts.iter().any(|k| dels.iter().any(|d| d.contains(k))) {
            return None;
        }
        Some((dels, puts))
    }
    walk(&t.success).is_some() && walk(&t.failure).is_some()
}

/// True when the txn can neither put nor delete on any path (it only compares and reads).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            Some(Request::RequestPut(_)) | Some(Request::RequestDeleteRange(_)) => false,
            Some(Request::RequestTxn(inner)) => txn_is_read_only(inner),
            _ => true,
        })
}

/// True when the txn can put on any path (etcd's "cost" of a txn under NOSPACE).
pub fn txn_puts(t: &TxnRequest) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .any(|op| match &op.request {
            Some(Request::RequestPut(_)) => true,
            Some(Request::RequestTxn(inner)) => txn_puts(inner),
            _ => false,
        })
}

/// Where alarms are kept in the `meta` table: `alarm/<member id hex>/<alarm type>`.
pub(crate) const ALARM_PREFIX: &str = "alarm/";

fn alarm_key(m: &AlarmMember) -> String {
    format!("{ALARM_PREFIX}{:x}/{}", m.member_id, m.alarm)
}

/// The alarms kept in `meta`.
pub(crate) fn read_alarms(
    meta: &impl ReadableTable<&'static str, i64>,
) -> Result<Vec<AlarmMember>> {
    let mut out = Vec::new();
    for item in meta.range(ALARM_PREFIX..).db()? {
        let (k, _) = item.db()?;
        let Some(rest) = k.value().strip_prefix(ALARM_PREFIX) else {
            break;
        };
        let parsed = rest.split_once('/').and_then(|(m, a)| {
            Some(AlarmMember {
                member_id: u64::from_str_radix(m, 16).ok()?,
                alarm: a.parse().ok()?,
            })
        });
        match parsed {
            Some(m) => out.push(m),
            None => return Err(StoreError::Corrupt(format!("bad alarm record {rest:?}"))),
        }
    }
    Ok(out)
}

/// Persisted counters of the store.
pub(crate) struct Counters {
    /// Newest revision written.
    pub revision: i64,
    /// Compaction mark.
    pub compacted: i64,
    /// Commands applied.
    pub applied: u64,
}

/// Reads the persisted counters back.
pub(crate) fn read_counters(meta: &impl ReadableTable<&'static str, i64>) -> Result<Counters> {
    let get = |k: &str| -> Result<i64> { Ok(meta.get(k).db()?.map(|g| g.value()).unwrap_or(0)) };
    Ok(Counters {
        revision: get(META_REVISION)?,
        compacted: get(META_COMPACTED)?,
        applied: get(META_APPLIED)?.max(0) as u64,
    })
}
