//! bbolt files — the database etcd keeps its keys in and streams as its snapshot — read and
//! written without the bbolt engine: a bounds-checked [`Db`] reader over a file's bytes and a
//! [`Writer`] that lays out a fresh, compact file page by page. berth uses them to restore
//! etcd's snapshots and to stream its own snapshots in a layout `etcdctl` and `etcd` accept.
//!
//! # Layout
//! - `lib.rs`: the on-disk format (below), its constants and [`BoltError`].
//! - `read.rs`: [`Db`] and [`Bucket`]: meta selection, tree walks, inline buckets.
//! - `write.rs`: [`Writer`] and [`BucketWriter`]: sorted puts in, pages out.
//!
//! # The format (bbolt version 2, little-endian integers)
//! A file is a sequence of pages of `page_size` bytes (4096 on the usual platforms). Page `n`
//! starts at byte `n * page_size`. Every page starts with a 16-byte header:
//! `id u64` (its own page number), `flags u16`, `count u16`, `overflow u32`. A page whose
//! content is larger than one page spans `overflow` more pages after it.
//!
//! - **Meta pages** 0 and 1 (flags `0x04`): after the header, `magic u32` (`0xED0CDAED`),
//!   `version u32` (2), `page_size u32`, `flags u32`, the root bucket (`root pgid u64`,
//!   `sequence u64`), `freelist pgid u64`, `pgid u64` (the high-water mark: pages below it
//!   are in use or free), `txid u64` and `checksum u64`, the FNV-1a 64 of the 56 bytes before
//!   it. The valid meta with the higher txid is the current one.
//! - **Freelist page** (flags `0x10`): `count` page ids (`u64` each) that are free; a count of
//!   `0xFFFF` means the real count is the first `u64`. The pgid `u64::MAX` means "no freelist
//!   stored".
//! - **Branch pages** (flags `0x01`): `count` elements of 16 bytes, `pos u32`, `ksize u32`,
//!   `pgid u64`, each pointing at a child page whose smallest key is the element's key; the key
//!   lies `pos` bytes after the element's own start.
//! - **Leaf pages** (flags `0x02`): `count` elements of 16 bytes, `flags u32`, `pos u32`,
//!   `ksize u32`, `vsize u32`; key then value lie `pos` bytes after the element's start. Element
//!   flag `0x01` marks a nested bucket, whose value is a bucket header (`root pgid u64`,
//!   `sequence u64`); a root of 0 is an *inline* bucket, whose single leaf page (header and all)
//!   follows the header inside the value.
//! - The root bucket (named by the meta) holds the top-level buckets. Keys in a page and
//!   across a tree are in ascending byte order.
//!
//! `bbolt check` (what `etcdctl snapshot status` runs) also requires every page below the
//! high-water mark to be reachable exactly once or listed as free; the [`Writer`] keeps that.
//!
//! Nothing read from a file is trusted: every offset and length is checked against the page
//! it lies in, trees are walked with a depth bound and each page at most once, and a damaged
//! file is a [`BoltError`] naming what is wrong.

mod read;
mod write;

pub use read::{Bucket, Db, Entry};
pub use write::{BucketWriter, Writer};

/// The magic number of a meta page.
pub const MAGIC: u32 = 0xED0C_DAED;
/// The file format version this crate reads and writes.
pub const VERSION: u32 = 2;
/// The page size the writer uses (bbolt's default on 4 KiB-page platforms).
pub const PAGE_SIZE: usize = 4096;

const PAGE_HEADER: usize = 16;
const ELEMENT: usize = 16;
const BUCKET_HEADER: usize = 16;
const META_CHECKSUMMED: usize = 56;

const FLAG_BRANCH: u16 = 0x01;
const FLAG_LEAF: u16 = 0x02;
const FLAG_META: u16 = 0x04;
const FLAG_FREELIST: u16 = 0x10;
const ELEMENT_BUCKET: u32 = 0x01;

/// What can go wrong reading or writing a bbolt file.
#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    /// Neither meta page is a valid bbolt meta.
    #[error("not a bbolt database: {0}")]
    NotBolt(String),
    /// A structure inside the file is inconsistent.
    #[error("damaged bbolt database: {0}")]
    Corrupt(String),
    /// The writer was used against its contract (e.g. keys not ascending).
    #[error("bbolt writer: {0}")]
    Misuse(String),
    /// The output failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

/// Result alias of this crate.
pub type Result<T, E = BoltError> = std::result::Result<T, E>;

/// FNV-1a, 64 bits: the meta page checksum.
fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests;

/// Opens arbitrary bytes as a bbolt file and reads every bucket and nested bucket it can
/// reach (what the fuzz target `bbolt` drives, and the kept corpus replays). Never a panic;
/// returns how many entries were read.
#[doc(hidden)]
pub fn fuzz_read(data: &[u8]) -> usize {
    fn visit(b: &Bucket<'_>, depth: usize, n: &mut usize) {
        let Ok(entries) = b.entries() else { return };
        *n += entries.len();
        if depth >= 4 {
            return;
        }
        for e in entries.iter().filter(|e| e.is_bucket) {
            if let Ok(child) = b.open(e) {
                visit(&child, depth + 1, n);
            }
        }
    }
    let mut n = 0;
    if let Ok(db) = Db::open(data) {
        visit(&db.root(), 0, &mut n);
    }
    n
}
