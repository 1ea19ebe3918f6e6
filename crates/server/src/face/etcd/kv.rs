//! etcd `KV` service: Range, Put, DeleteRange, Txn and Compact, with etcd's validation rules.

use std::sync::Arc;

use berth_auth::Access;
use berth_proto::etcdserverpb::kv_server::Kv;
use berth_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use berth_proto::etcdserverpb::request_op::Request as Op;
use berth_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use berth_store::{check_txn_duplicates, Applied, Command, Entry, Keyspace};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{principal, Headers as _};
use crate::auth::Principal;
use crate::core::Core;
use crate::face::etcd::errors::{store_status, ApiError};

/// The KV service.
pub struct KvService {
    core: Arc<Core>,
}

impl KvService {
    /// Creates the service.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    fn check_size(&self, len: usize) -> Result<(), ApiError> {
        if len > self.core.config.max_request_bytes {
            return Err(ApiError::RequestTooLarge);
        }
        Ok(())
    }

    /// Proposes a command checked for `p`, guarded by the auth state it was checked against.
    async fn propose(&self, p: &Principal, cmd: Command) -> Result<Applied, Status> {
        let entry = Entry {
            guard: Some(p.guard()),
            ..Entry::new(Keyspace::User, cmd)
        };
        Ok(self.core.consensus.propose_entry(entry).await?)
    }

    /// Proposes a command that may grow the database: refused while NOSPACE is raised.
    async fn propose_growing(&self, p: &Principal, cmd: Command) -> Result<Applied, Status> {
        if self.core.out_of_space().await {
            return Err(ApiError::NoSpace.into());
        }
        self.propose(p, cmd).await
    }
}

/// etcd's checks of a put: write on the key, read too when the previous value is asked for,
/// and write on every key of the lease it attaches to.
fn allow_put(core: &Core, p: &Principal, r: &PutRequest) -> Result<(), Status> {
    p.check(Keyspace::User, Access::Write, &r.key, b"")?;
    if r.prev_kv {
        p.check(Keyspace::User, Access::Read, &r.key, b"")?;
    }
    if r.lease != 0 {
        super::lease::allow_lease_keys(core, p, r.lease, Access::Write)?;
    }
    Ok(())
}

/// etcd's checks of a txn: read on every compared key, then every op of every branch.
fn allow_txn(core: &Core, p: &Principal, t: &TxnRequest) -> Result<(), Status> {
    if p.is_open() {
        return Ok(());
    }
    for c in &t.compare {
        p.check(Keyspace::User, Access::Read, &c.key, &c.range_end)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => {
                p.check(Keyspace::User, Access::Read, &r.key, &r.range_end)?
            }
            Some(Op::RequestPut(r)) => allow_put(core, p, r)?,
            Some(Op::RequestDeleteRange(d)) => allow_delete(p, d)?,
            Some(Op::RequestTxn(inner)) => allow_txn(core, p, inner)?,
            None => {}
        }
    }
    Ok(())
}

/// etcd's checks of a delete: write on the range, read too when previous values are asked for.
fn allow_delete(p: &Principal, d: &DeleteRangeRequest) -> Result<(), Status> {
    p.check(Keyspace::User, Access::Write, &d.key, &d.range_end)?;
    if d.prev_kv {
        p.check(Keyspace::User, Access::Read, &d.key, &d.range_end)?;
    }
    Ok(())
}

fn check_range(r: &RangeRequest) -> Result<(), ApiError> {
    if r.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if SortOrder::try_from(r.sort_order).is_err() || SortTarget::try_from(r.sort_target).is_err() {
        return Err(ApiError::InvalidSortOption);
    }
    Ok(())
}

fn check_put(p: &PutRequest) -> Result<(), ApiError> {
    if p.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    if p.ignore_value && !p.value.is_empty() {
        return Err(ApiError::ValueProvided);
    }
    if p.ignore_lease && p.lease != 0 {
        return Err(ApiError::LeaseProvided);
    }
    Ok(())
}

fn check_delete(d: &DeleteRangeRequest) -> Result<(), ApiError> {
    if d.key.is_empty() {
        return Err(ApiError::EmptyKey);
    }
    Ok(())
}

/// The deepest txn nesting accepted (a txn inside a txn is two levels deeper for protobuf).
/// The log's decoder (prost's) refuses messages nested more than 100 deep, which a txn nested
/// 49 deep reaches inside its log entry: such an entry would be committed and then fail to
/// apply on every member. This bound keeps every accepted txn far from that limit.
pub const MAX_TXN_DEPTH: usize = 16;

/// etcd's txn validation: op counts, compare keys, every nested op, then duplicate writes;
/// and berth's bound on nesting ([`MAX_TXN_DEPTH`]).
pub fn check_txn(t: &TxnRequest, max_ops: usize) -> Result<(), ApiError> {
    fn walk(t: &TxnRequest, max_ops: usize, depth: usize) -> Result<(), ApiError> {
        if depth > MAX_TXN_DEPTH {
            return Err(ApiError::TxnTooDeep);
        }
        let ops = t.compare.len().max(t.success.len()).max(t.failure.len());
        if ops > max_ops {
            return Err(ApiError::TooManyOps);
        }
        if t.compare.iter().any(|c| c.key.is_empty()) {
            return Err(ApiError::EmptyKey);
        }
        for op in t.success.iter().chain(&t.failure) {
            match &op.request {
                Some(Op::RequestRange(r)) => check_range(r)?,
                Some(Op::RequestPut(p)) => check_put(p)?,
                Some(Op::RequestDeleteRange(d)) => check_delete(d)?,
                Some(Op::RequestTxn(inner)) => walk(inner, max_ops - ops, depth + 1)?,
                None => {}
            }
        }
        Ok(())
    }
    walk(t, max_ops, 1)?;
    if !check_txn_duplicates(t) {
        return Err(ApiError::DuplicateKey);
    }
    Ok(())
}

fn unexpected(what: &str) -> Status {
    Status::internal(format!("berth: unexpected apply result for {what}"))
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let r = req.get_ref();
        check_range(r)?;
        // Caught up first: the permission check then sees every auth change acknowledged
        // before this read (a restarted member may not have replayed them yet).
        if !r.serializable {
            self.core.consensus.read_index().await?;
        }
        let who = principal(&self.core, &req)?;
        let r = req.into_inner();
        who.check(Keyspace::User, Access::Read, &r.key, &r.range_end)?;
        let mut resp = self.core.store.range(&r).map_err(store_status)?;
        self.core.auth.still_current(&who)?;
        self.core.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let who = principal(&self.core, &req)?;
        let p = req.into_inner();
        check_put(&p)?;
        self.check_size(p.encoded_len())?;
        allow_put(&self.core, &who, &p)?;
        match self.propose_growing(&who, Command::Put(p)).await? {
            Applied::Put(mut resp) => {
                self.core.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("put")),
        }
    }

    async fn delete_range(
        &self,
        req: Request<DeleteRangeRequest>,
    ) -> Result<Response<DeleteRangeResponse>, Status> {
        let who = principal(&self.core, &req)?;
        let d = req.into_inner();
        check_delete(&d)?;
        self.check_size(d.encoded_len())?;
        allow_delete(&who, &d)?;
        // Deletes stay allowed under NOSPACE: they are how space is freed.
        match self.propose(&who, Command::DeleteRange(d)).await? {
            Applied::DeleteRange(mut resp) => {
                self.core.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let read_only = berth_store::apply::txn_is_read_only(req.get_ref());
        if read_only {
            // Caught up before the checks, as a range.
            self.core.consensus.read_index().await?;
        }
        let who = principal(&self.core, &req)?;
        let t = req.into_inner();
        check_txn(&t, self.core.config.max_txn_ops)?;
        self.check_size(t.encoded_len())?;
        allow_txn(&self.core, &who, &t)?;
        // A txn that cannot write is a read: read-index, then evaluate it locally, with no
        // log entry (as etcd does). Only a txn that can put is refused under NOSPACE.
        let applied = if read_only {
            let resp = self.core.store.txn_read(t).map_err(store_status)?;
            self.core.auth.still_current(&who)?;
            Applied::Txn(resp)
        } else if berth_store::apply::txn_puts(&t) {
            self.propose_growing(&who, Command::Txn(t)).await?
        } else {
            self.propose(&who, Command::Txn(t)).await?
        };
        match applied {
            Applied::Txn(mut resp) => {
                // Nested responses keep the revision-only headers the store set, as etcd's do.
                self.core.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("txn")),
        }
    }

    async fn compact(
        &self,
        req: Request<CompactionRequest>,
    ) -> Result<Response<CompactionResponse>, Status> {
        let who = principal(&self.core, &req)?;
        who.admin()?;
        let c = req.into_inner();
        match self.propose(&who, Command::Compaction(c)).await? {
            Applied::Compaction(mut resp) => {
                self.core.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("compact")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::etcdserverpb::RequestOp;

    fn put(k: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: k.into(),
                ..Default::default()
            })),
        }
    }

    fn del(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
                key: k.into(),
                range_end: end.into(),
                ..Default::default()
            })),
        }
    }

    fn txn(success: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            success,
            ..Default::default()
        }
    }

    #[test]
    fn txn_rules() {
        assert!(check_txn(&txn(vec![put("a"), put("b")]), 128).is_ok());
        assert!(matches!(
            check_txn(&txn(vec![put("a"), put("a")]), 128),
            Err(ApiError::DuplicateKey)
        ));
        assert!(matches!(
            check_txn(&txn(vec![del("a", "c"), put("b")]), 128),
            Err(ApiError::DuplicateKey)
        ));
        assert!(check_txn(&txn(vec![del("a", "c"), put("c")]), 128).is_ok());
        let nested = RequestOp {
            request: Some(Op::RequestTxn(txn(vec![put("a")]))),
        };
        assert!(matches!(
            check_txn(&txn(vec![put("a"), nested]), 128),
            Err(ApiError::DuplicateKey)
        ));
        assert!(matches!(
            check_txn(&txn(vec![put("a"), put("b"), put("c")]), 2),
            Err(ApiError::TooManyOps)
        ));
        assert!(matches!(
            check_txn(&txn(vec![put("")]), 128),
            Err(ApiError::EmptyKey)
        ));
        let nest = |depth: usize| {
            let mut t = txn(vec![put("a")]);
            for _ in 1..depth {
                t = txn(vec![RequestOp {
                    request: Some(Op::RequestTxn(t)),
                }]);
            }
            t
        };
        assert!(check_txn(&nest(MAX_TXN_DEPTH), 128).is_ok());
        assert!(matches!(
            check_txn(&nest(MAX_TXN_DEPTH + 1), 128),
            Err(ApiError::TxnTooDeep)
        ));
    }
}
