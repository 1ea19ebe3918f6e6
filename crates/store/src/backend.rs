//! On-disk layout in redb: the tables and the encoding of stored changes. (The database file
//! itself is opened by `store.rs`, through `file.rs`.) Every change is stored under its
//! revision; the key index is rebuilt from it at startup.

use berth_proto::mvccpb::KeyValue;
use prost::Message;
use redb::{ReadableTable, TableDefinition};

use crate::error::{Result, StoreError};
use crate::revision::Revision;

/// Every change, keyed by revision: a flag byte then the encoded `mvccpb.KeyValue`.
pub(crate) const REVS: TableDefinition<u128, &[u8]> = TableDefinition::new("revs");
/// Store-wide counters (compaction mark, applied index).
pub(crate) const META: TableDefinition<&str, i64> = TableDefinition::new("meta");
/// Opaque values a consensus layer keeps atomically with the data (applied log id,
/// membership): name → bytes.
pub(crate) const BLOBS: TableDefinition<&str, &[u8]> = TableDefinition::new("blobs");
/// Granted leases: ID → TTL in seconds.
pub(crate) const LEASES: TableDefinition<i64, i64> = TableDefinition::new("leases");

/// Meta key: the revision history is compacted up to.
pub(crate) const META_COMPACTED: &str = "compacted";
/// Meta key: how many commands have been applied (a count kept with the data; the consensus
/// layer keeps its own applied log id in [`BLOBS`]).
pub(crate) const META_APPLIED: &str = "applied";
/// Meta key: the newest revision ever written (survives compaction of the newest tombstone).
pub(crate) const META_REVISION: &str = "revision";

const FLAG_PUT: u8 = 0;
const FLAG_TOMBSTONE: u8 = 1;

/// Encodes a stored change.
pub(crate) fn encode(kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    buf.push(if tombstone { FLAG_TOMBSTONE } else { FLAG_PUT });
    // Encoding into a Vec cannot fail: it grows as needed.
    let _ = kv.encode(&mut buf);
    buf
}

/// Decodes a stored change: the key-value and whether it is a tombstone.
pub(crate) fn decode(raw: &[u8]) -> Result<(KeyValue, bool)> {
    let (flag, body) = raw
        .split_first()
        .ok_or_else(|| StoreError::Corrupt("empty revision record".into()))?;
    let kv = KeyValue::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok((kv, *flag == FLAG_TOMBSTONE))
}

/// Reads the stored key-value written at `rev`.
pub(crate) fn read_kv<T>(table: &T, rev: Revision) -> Result<KeyValue>
where
    T: ReadableTable<u128, &'static [u8]>,
{
    use crate::error::DbResult;
    let guard = table
        .get(rev.to_key())
        .db()?
        .ok_or_else(|| StoreError::Corrupt(format!("missing value for revision {rev:?}")))?;
    Ok(decode(guard.value())?.0)
}
