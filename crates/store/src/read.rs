//! Read-only queries over a revision: Range with etcd's limit, sort, filter and count rules.
//! Generic over the table so transactions read their own uncommitted writes the same way.

use berth_proto::etcdserverpb::range_request::{SortOrder, SortTarget};
use berth_proto::etcdserverpb::{RangeRequest, RangeResponse, ResponseHeader};
use berth_proto::mvccpb::KeyValue;
use redb::ReadableTable;

use crate::backend::read_kv;
use crate::error::{Result, StoreError};
use crate::index::{KeyIndex, KeySpan, KeyVersion};
use crate::keyspace::Keyspace;

/// Checks that `requested` (0 = newest) can be read, given the newest revision `current`.
pub(crate) fn resolve_rev(index: &KeyIndex, requested: i64, current: i64) -> Result<i64> {
    let rev = if requested <= 0 { current } else { requested };
    if rev > current {
        return Err(StoreError::FutureRevision);
    }
    if rev < index.compacted() {
        return Err(StoreError::Compacted);
    }
    Ok(rev)
}

/// Builds the key-value of an index entry, reading the value only when it is needed.
pub(crate) fn materialize<T>(
    table: &T,
    key: &[u8],
    v: KeyVersion,
    with_value: bool,
) -> Result<KeyValue>
where
    T: ReadableTable<u128, &'static [u8]>,
{
    if with_value {
        return read_kv(table, v.rev);
    }
    Ok(KeyValue {
        key: key.to_vec(),
        create_revision: v.create,
        mod_revision: v.rev.main,
        version: v.version,
        value: Vec::new(),
        lease: v.lease,
    })
}

/// Serves a Range request over the keys of `ks` at the view `current` (the newest revision
/// the caller may see).
pub(crate) fn range<T>(
    index: &KeyIndex,
    table: &T,
    ks: Keyspace,
    req: &RangeRequest,
    current: i64,
) -> Result<RangeResponse>
where
    T: ReadableTable<u128, &'static [u8]>,
{
    let rev = resolve_rev(index, req.revision, current)?;
    let span = KeySpan::new(&req.key, &req.range_end);
    let filtered = req.min_mod_revision != 0
        || req.max_mod_revision != 0
        || req.min_create_revision != 0
        || req.max_create_revision != 0;
    let sort_order = SortOrder::try_from(req.sort_order).unwrap_or(SortOrder::None);
    let sort_target = SortTarget::try_from(req.sort_target).unwrap_or(SortTarget::Key);
    // Like etcd: with sorting or filters everything is fetched, otherwise one more than the limit.
    let fetch = if sort_order != SortOrder::None || filtered || req.limit <= 0 {
        usize::MAX
    } else {
        req.limit as usize + 1
    };

    let mut count = 0i64;
    let mut hits: Vec<(Vec<u8>, KeyVersion)> = Vec::new();
    index.for_each_live(ks, &span, rev, |k, v| {
        count += 1;
        if !req.count_only && hits.len() < fetch {
            hits.push((k.to_vec(), v));
        }
        true
    });

    let mut resp = RangeResponse {
        header: Some(ResponseHeader {
            revision: current,
            ..Default::default()
        }),
        count,
        ..Default::default()
    };
    if req.count_only {
        return Ok(resp);
    }

    hits.retain(|(_, v)| {
        !(req.max_mod_revision != 0 && v.rev.main > req.max_mod_revision
            || req.min_mod_revision != 0 && v.rev.main < req.min_mod_revision
            || req.max_create_revision != 0 && v.create > req.max_create_revision
            || req.min_create_revision != 0 && v.create < req.min_create_revision)
    });

    let sort_by_value = sort_target == SortTarget::Value && sort_order != SortOrder::None;
    let eager_values = !req.keys_only || sort_by_value;
    let mut kvs = Vec::with_capacity(hits.len());
    for (k, v) in &hits {
        kvs.push(materialize(table, k, *v, eager_values)?);
    }

    // etcd sorts ascending by default when a non-key target is given without an order.
    let order = if sort_target != SortTarget::Key && sort_order == SortOrder::None {
        SortOrder::Ascend
    } else {
        sort_order
    };
    if order != SortOrder::None {
        match sort_target {
            SortTarget::Key => kvs.sort_by(|a, b| a.key.cmp(&b.key)),
            SortTarget::Version => kvs.sort_by_key(|kv| kv.version),
            SortTarget::Create => kvs.sort_by_key(|kv| kv.create_revision),
            SortTarget::Mod => kvs.sort_by_key(|kv| kv.mod_revision),
            SortTarget::Value => kvs.sort_by(|a, b| a.value.cmp(&b.value)),
        }
        if order == SortOrder::Descend {
            kvs.reverse();
        }
    }
    if req.limit > 0 && kvs.len() > req.limit as usize {
        kvs.truncate(req.limit as usize);
        resp.more = true;
    }
    if req.keys_only {
        for kv in &mut kvs {
            kv.value.clear();
        }
    }
    resp.kvs = kvs;
    Ok(resp)
}
