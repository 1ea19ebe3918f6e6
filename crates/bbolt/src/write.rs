//! Writing a fresh bbolt file sequentially: each bucket's sorted entries become leaf pages
//! (with overflow pages for large ones) and branch pages above them, written as they fill;
//! the root bucket, the freelist and both meta pages are written last, at the front.

use std::io::{Seek, SeekFrom, Write};

use crate::{
    fnv64a, BoltError, Result, ELEMENT, ELEMENT_BUCKET, FLAG_BRANCH, FLAG_FREELIST, FLAG_LEAF,
    FLAG_META, MAGIC, PAGE_HEADER, PAGE_SIZE, VERSION,
};

/// Pages 0 and 1 are the metas, page 2 the (empty) freelist; data starts at 3.
const FIRST_DATA_PAGE: u64 = 3;
const FREELIST_PAGE: u64 = 2;

/// Writes a bbolt file of top-level buckets into `out`, which must be empty and seekable.
#[derive(Debug)]
pub struct Writer<W: Write + Seek> {
    out: W,
    next: u64,
    buckets: Vec<(Vec<u8>, u64)>,
}

/// A bucket being written: entries go in with strictly ascending keys.
#[derive(Debug)]
pub struct BucketWriter<'w, W: Write + Seek> {
    w: &'w mut Writer<W>,
    name: Vec<u8>,
    tree: Tree,
}

/// One level of pages being filled, and the pages finished below it.
#[derive(Debug, Default)]
pub(crate) struct Tree {
    elems: Vec<(u32, Vec<u8>, Vec<u8>)>,
    size: usize,
    /// (first key, page id) of every finished leaf page.
    leaves: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl<W: Write + Seek> Writer<W> {
    /// Starts a file: reserves the meta and freelist pages.
    pub fn new(mut out: W) -> Result<Self> {
        out.seek(SeekFrom::Start(FIRST_DATA_PAGE * PAGE_SIZE as u64))?;
        Ok(Writer {
            out,
            next: FIRST_DATA_PAGE,
            buckets: Vec::new(),
        })
    }

    /// Starts the top-level bucket `name` (each name once).
    pub fn bucket(&mut self, name: &[u8]) -> Result<BucketWriter<'_, W>> {
        if self.buckets.iter().any(|(n, _)| n == name) {
            return Err(BoltError::Misuse(format!(
                "bucket {:?} written twice",
                String::from_utf8_lossy(name)
            )));
        }
        Ok(BucketWriter {
            w: self,
            name: name.to_vec(),
            tree: Tree::default(),
        })
    }

    /// Writes the root bucket, the freelist and the metas; returns the output, positioned
    /// at its end (the file is `pages * PAGE_SIZE` bytes).
    pub fn finish(mut self) -> Result<W> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let mut tree = Tree::default();
        for (name, root) in buckets {
            let mut header = root.to_le_bytes().to_vec();
            header.extend_from_slice(&0u64.to_le_bytes());
            tree.push(&mut self, ELEMENT_BUCKET, &name, &header)?;
        }
        let root = tree.finish(&mut self)?;
        let end = self.next;
        // The freelist: no page is free.
        let mut free = vec![0u8; PAGE_SIZE];
        header(&mut free, FREELIST_PAGE, FLAG_FREELIST, 0, 0);
        self.out
            .seek(SeekFrom::Start(FREELIST_PAGE * PAGE_SIZE as u64))?;
        self.out.write_all(&free)?;
        self.out.seek(SeekFrom::Start(0))?;
        for id in 0..2u64 {
            self.out.write_all(&meta_page(id, root, end))?;
        }
        self.out.seek(SeekFrom::Start(end * PAGE_SIZE as u64))?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Writes one page (and its overflow pages) holding `count` elements; returns its id.
    fn page(&mut self, flags: u16, elems: &[(u32, Vec<u8>, Vec<u8>)]) -> Result<u64> {
        let id = self.next;
        let body: usize = elems
            .iter()
            .map(|(_, k, v)| ELEMENT + k.len() + v.len())
            .sum();
        let pages = (PAGE_HEADER + body).div_ceil(PAGE_SIZE).max(1);
        let overflow = u32::try_from(pages - 1)
            .map_err(|_| BoltError::Misuse("a page larger than 16 TiB".into()))?;
        let count = u16::try_from(elems.len())
            .map_err(|_| BoltError::Misuse("too many elements in one page".into()))?;
        let mut buf = vec![0u8; pages * PAGE_SIZE];
        header(&mut buf, id, flags, count, overflow);
        let mut data = PAGE_HEADER + elems.len() * ELEMENT;
        for (i, (f, k, v)) in elems.iter().enumerate() {
            let at = PAGE_HEADER + i * ELEMENT;
            let pos = (data - at) as u32;
            let e = &mut buf[at..at + ELEMENT];
            if flags == FLAG_BRANCH {
                // A branch element's "value" is the child's page id.
                e[0..4].copy_from_slice(&pos.to_le_bytes());
                e[4..8].copy_from_slice(&(k.len() as u32).to_le_bytes());
                e[8..16].copy_from_slice(v);
                buf[data..data + k.len()].copy_from_slice(k);
                data += k.len();
            } else {
                e[0..4].copy_from_slice(&f.to_le_bytes());
                e[4..8].copy_from_slice(&pos.to_le_bytes());
                e[8..12].copy_from_slice(&(k.len() as u32).to_le_bytes());
                e[12..16].copy_from_slice(&(v.len() as u32).to_le_bytes());
                buf[data..data + k.len()].copy_from_slice(k);
                data += k.len();
                buf[data..data + v.len()].copy_from_slice(v);
                data += v.len();
            }
        }
        self.out.write_all(&buf)?;
        self.next += pages as u64;
        Ok(id)
    }
}

fn header(buf: &mut [u8], id: u64, flags: u16, count: u16, overflow: u32) {
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&count.to_le_bytes());
    buf[12..16].copy_from_slice(&overflow.to_le_bytes());
}

fn meta_page(id: u64, root: u64, high_water: u64) -> Vec<u8> {
    let mut page = vec![0u8; PAGE_SIZE];
    header(&mut page, id, FLAG_META, 0, 0);
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&MAGIC.to_le_bytes());
    m.extend_from_slice(&VERSION.to_le_bytes());
    m.extend_from_slice(&(PAGE_SIZE as u32).to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.extend_from_slice(&root.to_le_bytes());
    m.extend_from_slice(&0u64.to_le_bytes());
    m.extend_from_slice(&FREELIST_PAGE.to_le_bytes());
    m.extend_from_slice(&high_water.to_le_bytes());
    // txid = page id, as a freshly created bbolt file has.
    m.extend_from_slice(&id.to_le_bytes());
    let sum = fnv64a(&m);
    m.extend_from_slice(&sum.to_le_bytes());
    page[PAGE_HEADER..PAGE_HEADER + m.len()].copy_from_slice(&m);
    page
}

impl Tree {
    /// Adds a leaf element, writing the current leaf page first if it would overflow.
    fn push<W: Write + Seek>(
        &mut self,
        w: &mut Writer<W>,
        flags: u32,
        key: &[u8],
        value: &[u8],
    ) -> Result<()> {
        if key.is_empty() {
            return Err(BoltError::Misuse("empty key".into()));
        }
        if self.last.as_deref().is_some_and(|last| last >= key) {
            return Err(BoltError::Misuse(format!(
                "key {:?} not above the previous one",
                String::from_utf8_lossy(key)
            )));
        }
        let need = ELEMENT + key.len() + value.len();
        if !self.elems.is_empty() && PAGE_HEADER + self.size + need > PAGE_SIZE {
            self.flush_leaf(w)?;
        }
        self.elems.push((flags, key.to_vec(), value.to_vec()));
        self.size += need;
        self.last = Some(key.to_vec());
        Ok(())
    }

    fn flush_leaf<W: Write + Seek>(&mut self, w: &mut Writer<W>) -> Result<()> {
        let elems = std::mem::take(&mut self.elems);
        self.size = 0;
        let first = elems.first().map(|e| e.1.clone()).unwrap_or_default();
        let id = w.page(FLAG_LEAF, &elems)?;
        self.leaves.push((first, id));
        Ok(())
    }

    /// Writes the last leaf and the branch levels; returns the root page id.
    fn finish<W: Write + Seek>(mut self, w: &mut Writer<W>) -> Result<u64> {
        if !self.elems.is_empty() || self.leaves.is_empty() {
            // An empty bucket is one empty leaf page.
            self.flush_leaf(w)?;
        }
        let mut level = self.leaves;
        while level.len() > 1 {
            let mut up = Vec::new();
            let mut page: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
            let mut size = 0;
            for (key, id) in level {
                let need = ELEMENT + key.len();
                if page.len() >= 2 && PAGE_HEADER + size + need > PAGE_SIZE {
                    let first = page[0].1.clone();
                    up.push((first, w.page(FLAG_BRANCH, &page)?));
                    page.clear();
                    size = 0;
                }
                page.push((0, key, id.to_le_bytes().to_vec()));
                size += need;
            }
            let first = page[0].1.clone();
            up.push((first, w.page(FLAG_BRANCH, &page)?));
            level = up;
        }
        Ok(level[0].1)
    }
}

impl<W: Write + Seek> BucketWriter<'_, W> {
    /// Adds `key` → `value`; keys must be non-empty and strictly ascending.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        self.tree.push(self.w, 0, key, value)
    }

    /// Writes the bucket's remaining pages and registers it in the root bucket.
    pub fn finish(self) -> Result<()> {
        let root = self.tree.finish(self.w)?;
        self.w.buckets.push((self.name, root));
        Ok(())
    }
}

/// Hooks for the crate's tests to build files the public writer never makes (inline
/// buckets, as bbolt itself writes them).
#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    pub(crate) fn tree() -> Tree {
        Tree::default()
    }

    pub(crate) fn push<W: Write + Seek>(
        t: &mut Tree,
        w: &mut Writer<W>,
        f: u32,
        k: &[u8],
        v: &[u8],
    ) {
        t.push(w, f, k, v).expect("push");
    }

    /// Finishes `t` as the root bucket of `w`'s file.
    pub(crate) fn finish_as_root(t: Tree, mut w: Writer<std::io::Cursor<Vec<u8>>>) -> Vec<u8> {
        let root = t.finish(&mut w).expect("tree");
        let end = w.next;
        let mut file = std::mem::take(w.out.get_mut());
        file.resize(end as usize * PAGE_SIZE, 0);
        let mut free = vec![0u8; PAGE_SIZE];
        header(&mut free, FREELIST_PAGE, FLAG_FREELIST, 0, 0);
        file[2 * PAGE_SIZE..3 * PAGE_SIZE].copy_from_slice(&free);
        for id in 0..2usize {
            file[id * PAGE_SIZE..(id + 1) * PAGE_SIZE]
                .copy_from_slice(&meta_page(id as u64, root, end));
        }
        file
    }
}
