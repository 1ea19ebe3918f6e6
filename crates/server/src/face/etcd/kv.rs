//! etcd `KV` service: Range, Put, DeleteRange, Txn and Compact, with etcd's validation rules.

use std::sync::Arc;

use berth_proto::etcdserverpb::kv_server::Kv;
use berth_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use berth_proto::etcdserverpb::request_op::Request as Op;
use berth_proto::etcdserverpb::{
    CompactionRequest, CompactionResponse, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, TxnRequest, TxnResponse,
};
use berth_store::{check_txn_duplicates, Applied, Command};
use prost::Message;
use tonic::{Request, Response, Status};

use super::Headers as _;
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

    /// Proposes a command that may grow the database: refused while NOSPACE is raised.
    async fn propose_growing(&self, cmd: Command) -> Result<Applied, Status> {
        if self.core.out_of_space().await {
            return Err(ApiError::NoSpace.into());
        }
        Ok(self.core.consensus.propose(cmd).await?)
    }
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
        let r = req.into_inner();
        check_range(&r)?;
        if !r.serializable {
            self.core.consensus.read_index().await?;
        }
        let mut resp = self.core.store.range(&r).map_err(store_status)?;
        self.core.fill(&mut resp.header);
        Ok(Response::new(resp))
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let p = req.into_inner();
        check_put(&p)?;
        self.check_size(p.encoded_len())?;
        match self.propose_growing(Command::Put(p)).await? {
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
        let d = req.into_inner();
        check_delete(&d)?;
        self.check_size(d.encoded_len())?;
        // Deletes stay allowed under NOSPACE: they are how space is freed.
        match self.core.consensus.propose(Command::DeleteRange(d)).await? {
            Applied::DeleteRange(mut resp) => {
                self.core.fill(&mut resp.header);
                Ok(Response::new(resp))
            }
            _ => Err(unexpected("delete")),
        }
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let t = req.into_inner();
        check_txn(&t, self.core.config.max_txn_ops)?;
        self.check_size(t.encoded_len())?;
        // A txn that cannot write is a read: read-index, then evaluate it locally, with no
        // log entry (as etcd does). Only a txn that can put is refused under NOSPACE.
        let applied = if berth_store::apply::txn_is_read_only(&t) {
            self.core.consensus.read_index().await?;
            Applied::Txn(self.core.store.txn_read(t).map_err(store_status)?)
        } else if berth_store::apply::txn_puts(&t) {
            self.propose_growing(Command::Txn(t)).await?
        } else {
            self.core.consensus.propose(Command::Txn(t)).await?
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
        let c = req.into_inner();
        match self.core.consensus.propose(Command::Compaction(c)).await? {
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
