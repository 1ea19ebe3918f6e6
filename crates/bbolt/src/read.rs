//! Reading a bbolt file held in memory: picks the current meta page, then walks bucket trees
//! (branch, leaf and overflow pages, inline buckets) with every offset checked.

use std::collections::HashSet;

use crate::{
    fnv64a, BoltError, Result, BUCKET_HEADER, ELEMENT, ELEMENT_BUCKET, FLAG_BRANCH, FLAG_LEAF,
    FLAG_META, MAGIC, META_CHECKSUMMED, PAGE_HEADER, VERSION,
};

/// Deepest bucket tree walked (bbolt's trees are a handful of levels deep).
const MAX_DEPTH: usize = 64;
/// Smallest and largest page size accepted (bbolt uses the OS page size).
const MIN_PAGE: usize = 512;
const MAX_PAGE: usize = 1 << 20;

fn corrupt(msg: String) -> BoltError {
    BoltError::Corrupt(msg)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// A bbolt database file, as bytes (without any trailer after the last page).
#[derive(Debug, Clone, Copy)]
pub struct Db<'a> {
    data: &'a [u8],
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

/// A meta page's fields that matter to a reader.
struct Meta {
    page_size: usize,
    root: u64,
    high_water: u64,
    txid: u64,
}

fn meta_at(data: &[u8], offset: usize) -> Result<Meta, String> {
    let m = offset + PAGE_HEADER;
    let field = |at: usize| u32_at(data, m + at).ok_or_else(|| "file too short".to_string());
    let flags = u16_at(data, offset + 8).ok_or("file too short")?;
    if flags != FLAG_META {
        return Err(format!("page flags {flags:#x} are not a meta page's"));
    }
    if field(0)? != MAGIC {
        return Err("bad magic".into());
    }
    let version = field(4)?;
    if version != VERSION {
        return Err(format!("version {version}, expected {VERSION}"));
    }
    let sum = u64_at(data, m + META_CHECKSUMMED).ok_or("file too short")?;
    let body = data.get(m..m + META_CHECKSUMMED).ok_or("file too short")?;
    if fnv64a(body) != sum {
        return Err("meta checksum mismatch".into());
    }
    let page_size = field(8)? as usize;
    if !(MIN_PAGE..=MAX_PAGE).contains(&page_size) || !page_size.is_power_of_two() {
        return Err(format!("page size {page_size} out of range"));
    }
    let long = |at: usize| u64_at(data, m + at).ok_or_else(|| "file too short".to_string());
    Ok(Meta {
        page_size,
        root: long(16)?,
        high_water: long(40)?,
        txid: long(48)?,
    })
}

/// One entry of a bucket: a key and either a value or a nested bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry<'a> {
    /// The key.
    pub key: &'a [u8],
    /// The value (for a nested bucket, its raw bucket header and inline page).
    pub value: &'a [u8],
    /// True when the entry is a nested bucket.
    pub is_bucket: bool,
}

/// A bucket: a tree rooted at a page, or an inline page.
#[derive(Debug, Clone, Copy)]
pub struct Bucket<'a> {
    db: Db<'a>,
    root: Root<'a>,
}

#[derive(Debug, Clone, Copy)]
enum Root<'a> {
    Page(u64),
    Inline(&'a [u8]),
}

impl<'a> Db<'a> {
    /// Opens a file's bytes: validates both meta pages and uses the valid one with the higher
    /// transaction id.
    pub fn open(data: &'a [u8]) -> Result<Db<'a>> {
        let first = meta_at(data, 0);
        // The second meta lies one page in; its page size comes from the first (or, if the
        // first is damaged, from the usual 4 KiB).
        let size = first
            .as_ref()
            .map(|m| m.page_size)
            .unwrap_or(crate::PAGE_SIZE);
        let second = meta_at(data, size);
        let meta = match (first, second) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(m), Err(_)) | (Err(_), Ok(m)) => m,
            (Err(a), Err(_)) => return Err(BoltError::NotBolt(a)),
        };
        let pages = data.len() / meta.page_size;
        if meta.high_water > pages as u64 {
            return Err(corrupt(format!(
                "the meta page counts {} pages but the file holds {pages} (truncated?)",
                meta.high_water
            )));
        }
        if meta.root < 2 || meta.root >= meta.high_water {
            return Err(corrupt(format!(
                "root bucket page {} out of range",
                meta.root
            )));
        }
        Ok(Db {
            data,
            page_size: meta.page_size,
            root: meta.root,
            high_water: meta.high_water,
            txid: meta.txid,
        })
    }

    /// The page size of the file.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// The current transaction id.
    pub fn txid(&self) -> u64 {
        self.txid
    }

    /// The root bucket, whose entries are the top-level buckets.
    pub fn root(&self) -> Bucket<'a> {
        Bucket {
            db: *self,
            root: Root::Page(self.root),
        }
    }

    /// The top-level bucket `name`, if present.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'a>>> {
        self.root().bucket(name)
    }

    /// The bytes of page `id` (with its overflow pages), checked.
    fn page(&self, id: u64) -> Result<&'a [u8]> {
        if id < 2 || id >= self.high_water {
            return Err(corrupt(format!(
                "page {id} out of range (high-water mark {})",
                self.high_water
            )));
        }
        let start = usize::try_from(id)
            .ok()
            .and_then(|i| i.checked_mul(self.page_size))
            .ok_or_else(|| corrupt(format!("page {id} out of range")))?;
        let head = self
            .data
            .get(start..start + PAGE_HEADER)
            .ok_or_else(|| corrupt(format!("page {id} lies past the end of the file")))?;
        let own = u64_at(head, 0).unwrap_or(u64::MAX);
        if own != id {
            return Err(corrupt(format!("page {id} calls itself page {own}")));
        }
        let overflow = u32_at(head, 12).unwrap_or(u32::MAX) as u64;
        let len = (overflow + 1)
            .checked_mul(self.page_size as u64)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or_else(|| corrupt(format!("page {id} overflow {overflow} too large")))?;
        start
            .checked_add(len)
            .and_then(|end| self.data.get(start..end))
            .filter(|_| id + overflow < self.high_water)
            .ok_or_else(|| {
                corrupt(format!(
                    "page {id} with {overflow} overflow pages runs past the end of the file"
                ))
            })
    }
}

/// The entries of one leaf or branch page (its bytes, header included).
enum Node<'a> {
    Leaf(Vec<Entry<'a>>),
    Branch(Vec<u64>),
}

fn node<'a>(page: &'a [u8], what: &dyn Fn() -> String) -> Result<Node<'a>> {
    let flags = u16_at(page, 8).ok_or_else(|| corrupt(format!("{}: no header", what())))?;
    let count = u16_at(page, 10).unwrap_or(0) as usize;
    if PAGE_HEADER + count * ELEMENT > page.len() {
        return Err(corrupt(format!(
            "{}: {count} elements do not fit in the page",
            what()
        )));
    }
    let slice = |at: usize, pos: u32, len: u32| -> Result<&[u8]> {
        let from = at.checked_add(pos as usize);
        let to = from.and_then(|f| f.checked_add(len as usize));
        match (from, to) {
            (Some(f), Some(t)) if t <= page.len() => Ok(&page[f..t]),
            _ => Err(corrupt(format!(
                "{}: an element's key or value lies outside the page",
                what()
            ))),
        }
    };
    let elem = |i: usize| PAGE_HEADER + i * ELEMENT;
    match flags {
        FLAG_LEAF => {
            let mut out = Vec::with_capacity(count);
            for i in 0..count {
                let at = elem(i);
                let (f, pos, ks, vs) = (
                    u32_at(page, at).unwrap_or(0),
                    u32_at(page, at + 4).unwrap_or(0),
                    u32_at(page, at + 8).unwrap_or(0),
                    u32_at(page, at + 12).unwrap_or(0),
                );
                let key = slice(at, pos, ks)?;
                let value = slice(at, pos.saturating_add(ks), vs)?;
                out.push(Entry {
                    key,
                    value,
                    is_bucket: f & ELEMENT_BUCKET != 0,
                });
            }
            Ok(Node::Leaf(out))
        }
        FLAG_BRANCH => Ok(Node::Branch(
            (0..count)
                .map(|i| u64_at(page, elem(i) + 8).unwrap_or(0))
                .collect(),
        )),
        other => Err(corrupt(format!(
            "{}: flags {other:#x}, expected a leaf or branch page",
            what()
        ))),
    }
}

impl<'a> Bucket<'a> {
    /// Every entry of the bucket, in key order. A damaged tree (a page out of range, of the
    /// wrong type, reached twice, too deep, or keys out of order) is an error.
    pub fn entries(&self) -> Result<Vec<Entry<'a>>> {
        let mut out = Vec::new();
        match self.root {
            Root::Inline(page) => match node(page, &|| "inline bucket".to_string())? {
                Node::Leaf(entries) => out = entries,
                Node::Branch(_) => {
                    return Err(corrupt("an inline bucket holds a branch page".into()))
                }
            },
            Root::Page(id) => {
                let mut seen = HashSet::new();
                self.walk(id, 0, &mut seen, &mut out)?;
            }
        }
        if out.windows(2).any(|w| w[0].key >= w[1].key) {
            return Err(corrupt("keys out of order in a bucket".into()));
        }
        Ok(out)
    }

    fn walk(
        &self,
        id: u64,
        depth: usize,
        seen: &mut HashSet<u64>,
        out: &mut Vec<Entry<'a>>,
    ) -> Result<()> {
        if depth > MAX_DEPTH {
            return Err(corrupt(format!(
                "bucket tree deeper than {MAX_DEPTH} at page {id}"
            )));
        }
        if !seen.insert(id) {
            return Err(corrupt(format!("page {id} is referenced twice")));
        }
        let page = self.db.page(id)?;
        match node(page, &|| format!("page {id}"))? {
            Node::Leaf(entries) => out.extend(entries),
            Node::Branch(children) => {
                for child in children {
                    self.walk(child, depth + 1, seen, out)?;
                }
            }
        }
        Ok(())
    }

    /// The nested bucket `name`, if present (an entry of that name that is not a bucket is an
    /// error).
    pub fn bucket(&self, name: &[u8]) -> Result<Option<Bucket<'a>>> {
        let Some(e) = self.entries()?.into_iter().find(|e| e.key == name) else {
            return Ok(None);
        };
        self.open(&e).map(Some)
    }

    /// Opens an entry that is a nested bucket.
    pub fn open(&self, e: &Entry<'a>) -> Result<Bucket<'a>> {
        let name = String::from_utf8_lossy(e.key);
        if !e.is_bucket {
            return Err(corrupt(format!("{name:?} is a value, not a bucket")));
        }
        let root = u64_at(e.value, 0)
            .ok_or_else(|| corrupt(format!("bucket {name:?}: short bucket header")))?;
        let root = if root == 0 {
            Root::Inline(e.value.get(BUCKET_HEADER..).unwrap_or_default())
        } else {
            Root::Page(root)
        };
        Ok(Bucket { db: self.db, root })
    }
}
