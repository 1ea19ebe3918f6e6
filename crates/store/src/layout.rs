//! The database file's layout version and the upgrades between versions. Every file is
//! prepared once when it is opened (or restored from a snapshot): its tables are created and,
//! if it was written by an older layout, it is upgraded and stamped, all in one redb
//! transaction, so a crash leaves either the old file or the fully upgraded one.
//!
//! Versions (`meta["layout"]`, absent = 1):
//! - 1: before keyspaces; every stored change has flag byte 0 (put) or 1 (tombstone).
//! - 2: keyspaces; the flag byte's upper seven bits carry the keyspace ID. A layout-1 record
//!   reads as the same change in the user keyspace, so the upgrade rewrites no record: it
//!   only stamps the version. Every key, its MVCC history, compaction mark, lease and
//!   attached keys stay exactly as they were.
//!
//! A file stamped with a newer layout than this build knows is refused, not misread.

use redb::{Database, ReadableTable};

use crate::backend::{BLOBS, LAYOUT, LEASES, META, META_LAYOUT, REVS};
use crate::error::{DbResult, Result, StoreError};

/// Creates any missing table and upgrades the file to [`LAYOUT`] (see the module doc).
/// Returns the layout the file had.
pub(crate) fn prepare(db: &Database) -> Result<i64> {
    let w = db.begin_write().db()?;
    let found = {
        let revs = w.open_table(REVS).db()?;
        w.open_table(LEASES).db()?;
        w.open_table(BLOBS).db()?;
        let mut meta = w.open_table(META).db()?;
        let found = meta.get(META_LAYOUT).db()?.map(|g| g.value()).unwrap_or(1);
        if found > LAYOUT {
            return Err(StoreError::Corrupt(format!(
                "the database has layout {found}, written by a newer build; this build reads \
                 layouts up to {LAYOUT}"
            )));
        }
        if found < LAYOUT {
            // 1 → 2 rewrites nothing: layout-1 changes are user-keyspace changes of layout 2.
            meta.insert(META_LAYOUT, LAYOUT).db()?;
            if revs.first().db()?.is_some() {
                tracing::info!(from = found, to = LAYOUT, "upgraded the database layout");
            }
        }
        found
    };
    w.commit().db()?;
    Ok(found)
}
