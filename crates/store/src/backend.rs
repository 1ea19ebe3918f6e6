//! On-disk layout in redb: the tables and the encoding of stored changes. (The database file
//! itself is opened by `store.rs`, through `file.rs`.) Every change is stored under its
//! revision; the key index is rebuilt from it at startup.

use berth_proto::mvccpb::KeyValue;
use prost::Message;
use redb::{ReadableTable, TableDefinition};

use crate::error::{Result, StoreError};
use crate::keyspace::Keyspace;
use crate::revision::Revision;

/// Every change, keyed by revision: a flag byte then the encoded `mvccpb.KeyValue` (whose key
/// is the key within its keyspace, untagged). The flag byte's low bit says tombstone, its
/// upper seven bits the [`Keyspace`] ID: changes written before keyspaces existed (flag 0 or
/// 1) are user-keyspace changes, unchanged.
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
/// Meta key: the layout version of the file (absent = 1, before keyspaces).
pub(crate) const META_LAYOUT: &str = "layout";
/// The layout this build writes: 2 = keyspace IDs in the flag byte of stored changes.
pub(crate) const LAYOUT: i64 = 2;

const FLAG_PUT: u8 = 0;
const FLAG_TOMBSTONE: u8 = 1;

/// Encodes a stored change of a key of `ks`.
pub(crate) fn encode(ks: Keyspace, kv: &KeyValue, tombstone: bool) -> Vec<u8> {
    let mut buf = Vec::with_capacity(1 + kv.encoded_len());
    let flag = if tombstone { FLAG_TOMBSTONE } else { FLAG_PUT };
    buf.push(flag | ks.id() << 1);
    // Encoding into a Vec cannot fail: it grows as needed.
    let _ = kv.encode(&mut buf);
    buf
}

/// A decoded stored change.
pub(crate) struct Change {
    /// The key-value (key untagged; for a tombstone only key and mod revision).
    pub kv: KeyValue,
    /// True when the change deleted the key.
    pub tombstone: bool,
    /// The keyspace of the key.
    pub keyspace: Keyspace,
}

/// Reads a flag byte: (tombstone, keyspace).
pub(crate) fn flag(raw: &[u8]) -> Result<(bool, Keyspace, &[u8])> {
    let (flag, body) = raw
        .split_first()
        .ok_or_else(|| StoreError::Corrupt("empty revision record".into()))?;
    let ks = Keyspace::from_id(u32::from(flag >> 1))
        .ok_or_else(|| StoreError::Corrupt(format!("unknown keyspace {}", flag >> 1)))?;
    Ok((flag & 1 == FLAG_TOMBSTONE, ks, body))
}

/// Decodes a stored change.
pub(crate) fn decode(raw: &[u8]) -> Result<Change> {
    let (tombstone, keyspace, body) = flag(raw)?;
    let kv = KeyValue::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))?;
    Ok(Change {
        kv,
        tombstone,
        keyspace,
    })
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
    let (_, _, body) = flag(guard.value())?;
    KeyValue::decode(body).map_err(|e| StoreError::Corrupt(e.to_string()))
}
