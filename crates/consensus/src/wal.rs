//! The Raft log's files: entries appended to segment files (`<first index>.wal`, a new one
//! every [`SEGMENT_BYTES`]), each record `index u64 | length u32 | crc32c u32 | payload`, and
//! the vote, committed and purged ids in `state.bin` (replaced atomically). Opening scans the
//! segments, checks every record and cuts a torn tail (a crash in the middle of an append).
//!
//! Appending is one positioned write; making appends durable is one `fdatasync` of the newest
//! segment, done by whoever calls [`Wal::sync`] without holding the log's lock, so appends go
//! on while a sync runs (the caller batches: group commit). Segments are allocated to their
//! full size when created (`fallocate`), so an `fdatasync` after an append has no file size to
//! update (measured on ext4: ~90 µs instead of ~125 µs); the unwritten rest reads as zeros,
//! which a scan takes as the end of the records.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::types::{LogId, Vote};

/// A segment is closed and a new one started past this size.
pub const SEGMENT_BYTES: u64 = 64 << 20;
/// Bytes of the newest entries' payloads kept in memory for reads.
const TAIL_BYTES: usize = 4 << 20;
const HEADER: usize = 16;
const STATE_FILE: &str = "state.bin";
/// Largest record accepted when reading (a corrupt length must not allocate gigabytes).
const MAX_RECORD: u32 = 1 << 30;

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// The error for a damaged segment: which file, where, and what to do about it.
fn damaged(path: &Path, at: u64, intact_records: usize, newest: bool) -> io::Error {
    let which = if newest { "the newest" } else { "a closed" };
    corrupt(format!(
        "the Raft log is damaged: {} ({which} segment) has a bad record at byte {at}, after \
         {intact_records} intact records, with more written after it. It is not a write torn \
         by a crash, so nothing is cut: entries there may have been acknowledged. Recover \
         this member from a peer (member remove, clear the data directory, member add, start \
         with --initial-cluster-state existing) or from a snapshot (berth snapshot restore)",
        path.display()
    ))
}

/// What `state.bin` holds.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct WalState {
    /// The last vote.
    pub vote: Option<Vote>,
    /// The newest committed id known when the state was last written (may lag: it is only
    /// an optimization for restarts).
    pub committed: Option<LogId>,
    /// Entries up to this id are gone.
    pub purged: Option<LogId>,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
}

/// Where one entry is.
#[derive(Clone, Copy)]
struct Loc {
    segment: u64,
    offset: u64,
    len: u32,
}

struct Inner {
    dir: PathBuf,
    segment_bytes: u64,
    /// Segments by the index of their first record.
    segments: BTreeMap<u64, Segment>,
    /// Locations of the live entries `first..first + locs.len()`.
    locs: VecDeque<Loc>,
    first: u64,
    state: WalState,
    /// Payloads of the newest entries (consecutive, ending at the newest), at most
    /// [`TAIL_BYTES`]: applying and replicating read what was just appended, and serving it
    /// from memory saves a read syscall and a copy per batch.
    tail: VecDeque<(u64, Vec<u8>)>,
    tail_bytes: usize,
}

/// The log files of one Raft group.
pub struct Wal {
    inner: Mutex<Inner>,
}

/// Encoded entries ready to append: `(index, payload)`.
pub type Records = Vec<(u64, Vec<u8>)>;

fn segment_name(first: u64) -> String {
    format!("{first:020}.wal")
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Inner {
    fn last(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    /// Keeps just-appended payloads in the tail, dropping the oldest beyond [`TAIL_BYTES`].
    fn remember(&mut self, records: Records) {
        if self.tail.back().map(|(i, _)| i + 1) != records.first().map(|(i, _)| *i) {
            // Not a continuation (a new log after truncation to nothing): start over.
            self.tail.clear();
            self.tail_bytes = 0;
        }
        for (index, payload) in records {
            self.tail_bytes += payload.len();
            self.tail.push_back((index, payload));
        }
        while self.tail_bytes > TAIL_BYTES {
            match self.tail.pop_front() {
                Some((_, p)) => self.tail_bytes -= p.len(),
                None => break,
            }
        }
    }

    fn write_state(&self) -> io::Result<()> {
        let bytes = rmp_serde::to_vec(&self.state).map_err(|e| corrupt(e.to_string()))?;
        let mut buf = Vec::with_capacity(bytes.len() + 4);
        buf.extend_from_slice(&crc32c::crc32c(&bytes).to_le_bytes());
        buf.extend_from_slice(&bytes);
        let tmp = self.dir.join("state.tmp");
        {
            let f = File::create(&tmp)?;
            f.write_all_at(&buf, 0)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, self.dir.join(STATE_FILE))?;
        sync_dir(&self.dir)
    }

    /// Starts a new segment whose first record will be `first`.
    fn new_segment(&mut self, first: u64) -> io::Result<()> {
        if let Some((_, s)) = self.segments.iter().next_back() {
            // The closed segment must be durable before later appends can be reported.
            s.file.sync_data()?;
        }
        let path = self.dir.join(segment_name(first));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)?;
        preallocate(&file, 0, self.segment_bytes)?;
        sync_dir(&self.dir)?;
        self.segments.insert(
            first,
            Segment {
                file: Arc::new(file),
                path,
                size: 0,
            },
        );
        Ok(())
    }

    fn loc(&self, index: u64) -> Option<Loc> {
        let i = index.checked_sub(self.first)?;
        self.locs.get(usize::try_from(i).ok()?).copied()
    }
}

/// Allocates `from..len` of `file` as zeros (extending it to `len` at least). Where that is
/// not possible (no `fallocate`, or no room for a whole segment) the file just grows as
/// records arrive.
fn preallocate(file: &File, from: u64, len: u64) -> io::Result<()> {
    if len <= from {
        return Ok(());
    }
    match rustix::fs::fallocate(file, rustix::fs::FallocateFlags::empty(), from, len - from) {
        Ok(()) => file.sync_all(),
        Err(e) => {
            tracing::debug!(error = %e, "Raft log segment not preallocated");
            Ok(())
        }
    }
}

fn read_state(dir: &Path) -> io::Result<WalState> {
    let raw = match std::fs::read(dir.join(STATE_FILE)) {
        Ok(raw) => raw,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(WalState::default()),
        Err(e) => return Err(e),
    };
    let (crc, body) = raw
        .split_first_chunk::<4>()
        .ok_or_else(|| corrupt("state.bin is too short".into()))?;
    if u32::from_le_bytes(*crc) != crc32c::crc32c(body) {
        return Err(corrupt("state.bin fails its checksum".into()));
    }
    rmp_serde::from_slice(body).map_err(|e| corrupt(format!("state.bin: {e}")))
}

/// A record found by a scan: its index, and where its payload (offset, length) is.
pub type Found = (u64, u64, u32);

/// What [`scan_bytes`] found in one segment file.
#[derive(Debug)]
struct Scanned {
    /// Every intact record, in order.
    records: Vec<Found>,
    /// The length of the intact prefix: where the first damaged or missing record starts.
    intact: u64,
    /// Where the first record that is there but fails its checks would end if its header is
    /// believed; `None` when the scan stopped at a zero header (or the end of the file).
    damaged_end: Option<u64>,
}

fn read_all(file: &File, size: u64) -> io::Result<Vec<u8>> {
    let mut data = vec![0u8; usize::try_from(size).map_err(|e| corrupt(e.to_string()))?];
    file.read_exact_at(&mut data, 0)?;
    Ok(data)
}

/// What a segment holds, as [`check_segment`] found it.
#[derive(Debug)]
pub struct SegmentCheck {
    /// Every intact record: its index, and where its payload is.
    pub records: Vec<Found>,
    /// The length of the intact prefix.
    pub intact: u64,
    /// Where to cut a record torn by a crash, if there is one.
    pub cut_at: Option<u64>,
}

/// Damage found by [`check_segment`].
#[derive(Debug)]
pub struct Damage {
    /// Where the first bad record starts.
    pub at: u64,
    /// Intact records before it.
    pub intact_records: usize,
}

/// Judges the bytes of one segment file whose first record is entry `first`: its intact
/// records, and whether what follows them is nothing (zeros), a record torn by a crash (to
/// be cut, in the `newest` segment only: a closed one was fsynced before the next began), or
/// damage (refused). Pure, so it can be fuzzed: every byte of it comes from disk.
pub fn check_segment(data: &[u8], first: u64, newest: bool) -> Result<SegmentCheck, Damage> {
    let scanned = scan_bytes(data);
    let intact = scanned.intact;
    let zeros_from = trailing_zeros_from(data);
    let mut cut_at = None;
    if zeros_from > intact {
        let next = scanned
            .records
            .last()
            .map_or(first, |(i, _, _)| i.saturating_add(1));
        if !newest || !torn_tail(data, &scanned, zeros_from, next) {
            return Err(Damage {
                at: intact,
                intact_records: scanned.records.len(),
            });
        }
        cut_at = Some(intact);
    }
    Ok(SegmentCheck {
        records: scanned.records,
        intact,
        cut_at,
    })
}

/// Reads the records of a segment's bytes, stopping at the first that is not intact.
fn scan_bytes(data: &[u8]) -> Scanned {
    let mut records = Vec::new();
    let mut pos = 0usize;
    let mut damaged_end = None;
    while pos < data.len() {
        let head = &data[pos..data.len().min(pos + HEADER)];
        if head.iter().all(|b| *b == 0) {
            // The allocated, never written rest of the segment (the caller checks that it is
            // all zeros).
            break;
        }
        // A header cut short by the end of the file reads as zeros past it.
        let byte = |i: usize| head.get(i).copied().unwrap_or(0);
        let le32 =
            |at: usize| u32::from_le_bytes([byte(at), byte(at + 1), byte(at + 2), byte(at + 3)]);
        let index = u64::from(le32(0)) | (u64::from(le32(4)) << 32);
        let len = le32(8);
        let crc = le32(12);
        let start = pos + HEADER;
        let payload = data.get(start..start.saturating_add(len as usize));
        let intact = head.len() == HEADER
            && len != 0
            && len <= MAX_RECORD
            && payload.is_some_and(|p| crc32c::crc32c(p) == crc);
        if !intact {
            damaged_end = Some(start as u64 + u64::from(len));
            break;
        }
        records.push((index, start as u64, len));
        pos = start + len as usize;
    }
    Scanned {
        records,
        intact: pos as u64,
        damaged_end,
    }
}

/// Checks [`check_segment`]'s promises on arbitrary bytes (the fuzz target `wal_segment`
/// and the corpus replay in this module's tests drive it): no panic, every accepted record
/// inside the intact prefix, a cut offered only in the newest segment and only there.
#[doc(hidden)]
pub fn fuzz_check(data: &[u8]) {
    for newest in [false, true] {
        match check_segment(data, 1, newest) {
            Ok(seg) => {
                assert!(seg.intact <= data.len() as u64);
                for (_, offset, len) in &seg.records {
                    assert!(offset + u64::from(*len) <= seg.intact);
                }
                assert!(
                    newest || seg.cut_at.is_none(),
                    "a closed segment is never cut"
                );
                assert!(seg.cut_at.is_none_or(|at| at == seg.intact));
            }
            Err(d) => assert!(d.at <= data.len() as u64),
        }
    }
}

/// Where the run of zeros that ends `data` starts (its length when the last byte is not zero).
fn trailing_zeros_from(data: &[u8]) -> u64 {
    data.iter()
        .rposition(|b| *b != 0)
        .map_or(0, |last| last as u64 + 1)
}

/// How far past a damaged record [`intact_record_after`] looks for the entries that follow it.
const RESYNC_ENTRIES: u64 = 1024;

/// Whether an intact record of one of the entries after `next` (the index the damaged record
/// should have had) starts anywhere in `data[from..]`: proof that more was written, and
/// fsynced or not, after the damage.
fn intact_record_after(data: &[u8], from: usize, next: u64) -> bool {
    let wanted = next.saturating_add(1)..=next.saturating_add(RESYNC_ENTRIES);
    (from..data.len().saturating_sub(HEADER)).any(|pos| {
        let at = |i: usize| {
            data.get(pos + i..pos + i + 4)
                .and_then(|b| b.try_into().ok())
        };
        let (Some(lo), Some(hi), Some(len), Some(crc)) = (at(0), at(4), at(8), at(12)) else {
            return false;
        };
        let index = u64::from(u32::from_le_bytes(lo)) | (u64::from(u32::from_le_bytes(hi)) << 32);
        let len = u32::from_le_bytes(len) as usize;
        wanted.contains(&index)
            && len != 0
            && data
                .get(pos + HEADER..pos + HEADER + len)
                .is_some_and(|p| crc32c::crc32c(p) == u32::from_le_bytes(crc))
    })
}

/// Whether what follows a segment's intact prefix is a record torn by a crash, `next` being
/// the index it should have. Such a record was written after the last fsync (so never
/// acknowledged) and is the last thing in the file: the file ends, or its never-written
/// zeros begin, inside that record, and no intact record follows. Anything else (a record
/// that fails its checks with more written after it, data after a zero header) is damage:
/// cutting there would silently drop entries that may have been acknowledged, and the
/// state machine, rebuilt from the log after a crash, would lose them.
fn torn_tail(data: &[u8], scanned: &Scanned, zeros_from: u64, next: u64) -> bool {
    let cut_short = match scanned.damaged_end {
        None => zeros_from <= scanned.intact,
        Some(end) => zeros_from < end,
    };
    let from = usize::try_from(scanned.intact).unwrap_or(usize::MAX);
    cut_short && !intact_record_after(data, from.saturating_add(1), next)
}

impl Wal {
    /// Opens (or creates) the log in `dir`, checking every record; a torn last record is cut.
    pub fn open(dir: &Path) -> io::Result<Wal> {
        Self::open_sized(dir, SEGMENT_BYTES)
    }

    /// [`Wal::open`] with segments closed past `segment_bytes`.
    pub fn open_sized(dir: &Path, segment_bytes: u64) -> io::Result<Wal> {
        std::fs::create_dir_all(dir)?;
        let state = read_state(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let first = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".wal"))
                .and_then(|n| n.parse::<u64>().ok());
            if let Some(first) = first {
                names.push((first, path));
            }
        }
        names.sort();
        let purged = state.purged.map(|p| p.index);
        let mut inner = Inner {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            first: purged.map_or(0, |p| p + 1),
            state,
            tail: VecDeque::new(),
            tail_bytes: 0,
        };
        let count = names.len();
        for (n, (first, path)) in names.into_iter().enumerate() {
            let file = OpenOptions::new().read(true).write(true).open(&path)?;
            let size = file.metadata()?.len();
            let data = read_all(&file, size)?;
            let is_last = n + 1 == count;
            let segment = check_segment(&data, first, is_last)
                .map_err(|d| damaged(&path, d.at, d.intact_records, is_last))?;
            if let Some(at) = segment.cut_at {
                // A torn record was never fsynced, so never committed; one the log knows was
                // committed (the state's committed id lags, so it is a safe bound) is damage
                // that only looks like a tear (a decayed length, a damaged payload ending in
                // zeros): refused like any other.
                let torn_index = segment
                    .records
                    .last()
                    .map_or(first, |(i, _, _)| i.saturating_add(1));
                if inner.state.committed.is_some_and(|c| c.index >= torn_index) {
                    return Err(damaged(&path, at, segment.records.len(), is_last));
                }
                tracing::warn!(
                    path = %path.display(),
                    at,
                    "cutting a record torn by a crash off the end of the Raft log"
                );
                file.set_len(at)?;
                preallocate(&file, at, segment_bytes)?;
                file.sync_all()?;
            }
            let intact = segment.intact;
            let records = segment.records;
            for (index, offset, len) in records {
                if purged.is_some_and(|p| index <= p) {
                    continue;
                }
                let expected = inner.last().map_or(inner.first, |l| l + 1);
                if index != expected {
                    if inner.locs.is_empty() && purged.is_none() {
                        inner.first = index;
                    } else {
                        return Err(corrupt(format!(
                            "{}: entry {index} where {expected} was expected",
                            path.display()
                        )));
                    }
                }
                inner.locs.push_back(Loc {
                    segment: first,
                    offset,
                    len,
                });
            }
            inner.segments.insert(
                first,
                Segment {
                    file: Arc::new(file),
                    path,
                    size: intact,
                },
            );
        }
        Ok(Wal {
            inner: Mutex::new(inner),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        crate::sync::LockExt::locked(&self.inner)
    }

    /// The persisted state (vote, committed, purged).
    pub fn state(&self) -> WalState {
        self.lock().state.clone()
    }

    /// Index of the newest entry, if any.
    pub fn last_index(&self) -> Option<u64> {
        self.lock().last()
    }

    /// Replaces the state: durably when `durable`, else kept in memory until the next durable
    /// write (used for `committed`, which may lag after a crash).
    pub fn set_state(&self, f: impl FnOnce(&mut WalState), durable: bool) -> io::Result<()> {
        let mut inner = self.lock();
        f(&mut inner.state);
        if durable {
            inner.write_state()?;
        }
        Ok(())
    }

    /// Appends records (consecutive indexes, following the newest entry or starting a log that
    /// is empty). Not durable until [`Wal::sync`].
    pub fn append(&self, records: Records) -> io::Result<()> {
        let Some((first_index, _)) = records.first() else {
            return Ok(());
        };
        let mut inner = self.lock();
        let expected = inner.last().map(|l| l + 1);
        if let Some(e) = expected.filter(|e| e != first_index) {
            return Err(corrupt(format!(
                "append of entry {first_index} where {e} was expected"
            )));
        }
        let needs_segment = match inner.segments.iter().next_back() {
            None => true,
            Some((_, s)) => s.size >= inner.segment_bytes || expected.is_none(),
        };
        if expected.is_none() {
            inner.first = *first_index;
        }
        if needs_segment {
            inner.new_segment(*first_index)?;
        }
        let mut buf = Vec::with_capacity(records.iter().map(|(_, p)| p.len() + HEADER).sum());
        let mut locs = Vec::with_capacity(records.len());
        let (seg_first, seg) = inner
            .segments
            .iter_mut()
            .next_back()
            .ok_or_else(|| io::Error::other("no segment to append to"))?;
        for (index, payload) in &records {
            let len = u32::try_from(payload.len())
                .ok()
                .filter(|l| *l <= MAX_RECORD)
                .ok_or_else(|| corrupt(format!("entry {index} is too large")))?;
            buf.extend_from_slice(&index.to_le_bytes());
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
            locs.push(Loc {
                segment: *seg_first,
                offset: seg.size + (buf.len() as u64),
                len,
            });
            buf.extend_from_slice(payload);
        }
        seg.file.write_all_at(&buf, seg.size)?;
        seg.size += buf.len() as u64;
        inner.locs.extend(locs);
        inner.remember(records);
        Ok(())
    }

    /// Makes every append made before this call durable. The lock is held only to find the
    /// newest segment, not while it syncs.
    pub fn sync(&self) -> io::Result<()> {
        let newest = self
            .lock()
            .segments
            .values()
            .next_back()
            .map(|s| s.file.clone());
        match newest {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Reads the payloads of entries `from..to` that exist.
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<Vec<u8>>> {
        let inner = self.lock();
        let from = from.max(inner.first);
        let to = to.min(inner.last().map_or(0, |l| l + 1));
        if let Some(&(tail_first, _)) = inner.tail.front() {
            if from >= tail_first {
                let skip = (from - tail_first) as usize;
                let take = to.saturating_sub(from) as usize;
                return Ok(inner
                    .tail
                    .iter()
                    .skip(skip)
                    .take(take)
                    .map(|(_, p)| p.clone())
                    .collect());
            }
        }
        let mut out = Vec::new();
        let mut index = from;
        while index < to {
            let Some(first) = inner.loc(index) else { break };
            // One read per run of entries in the same segment.
            let mut end = index + 1;
            let mut last = first;
            while end < to {
                match inner.loc(end) {
                    Some(l) if l.segment == first.segment => {
                        last = l;
                        end += 1;
                    }
                    _ => break,
                }
            }
            let seg = inner
                .segments
                .get(&first.segment)
                .ok_or_else(|| corrupt(format!("entry {index}: its segment is gone")))?;
            let span_start = first.offset;
            let span_end = last.offset + u64::from(last.len);
            let mut buf = vec![0u8; (span_end - span_start) as usize];
            seg.file.read_exact_at(&mut buf, span_start)?;
            for i in index..end {
                let l = inner.loc(i).unwrap_or(first);
                let at = (l.offset - span_start) as usize;
                out.push(buf[at..at + l.len as usize].to_vec());
            }
            index = end;
        }
        Ok(out)
    }

    /// Removes every entry after `last` (none left when `None`), durably.
    pub fn truncate_after(&self, last: Option<u64>) -> io::Result<()> {
        let mut inner = self.lock();
        let from = last.map_or(0, |l| l + 1).max(inner.first);
        let Some(loc) = inner.loc(from) else {
            return Ok(());
        };
        let keep = (from - inner.first) as usize;
        inner.locs.truncate(keep);
        while inner.tail.back().is_some_and(|(i, _)| *i >= from) {
            if let Some((_, p)) = inner.tail.pop_back() {
                inner.tail_bytes -= p.len();
            }
        }
        let later: Vec<u64> = inner
            .segments
            .range(loc.segment + 1..)
            .map(|(k, _)| *k)
            .collect();
        for k in later {
            if let Some(s) = inner.segments.remove(&k) {
                std::fs::remove_file(&s.path)?;
            }
        }
        let header_start = loc.offset - HEADER as u64;
        let segment_bytes = inner.segment_bytes;
        if let Some(seg) = inner.segments.get_mut(&loc.segment) {
            // Cut, then allocate zeros again: the next scan must not find the old records.
            seg.file.set_len(header_start)?;
            preallocate(&seg.file, header_start, segment_bytes)?;
            seg.file.sync_all()?;
            seg.size = header_start;
        }
        sync_dir(&inner.dir)
    }

    /// Forgets entries up to and including `upto` (recorded durably first), deleting segment
    /// files that hold nothing newer.
    pub fn purge(&self, upto: LogId) -> io::Result<()> {
        let mut inner = self.lock();
        inner.state.purged = Some(upto);
        inner.write_state()?;
        let drop_n = (upto.index + 1)
            .saturating_sub(inner.first)
            .min(inner.locs.len() as u64) as usize;
        inner.locs.drain(..drop_n);
        inner.first = inner.first.max(upto.index + 1);
        // A segment can go when the next one starts at or before the first live entry.
        let live_from = inner.first;
        let firsts: Vec<u64> = inner.segments.keys().copied().collect();
        let mut removed = false;
        for pair in firsts.windows(2) {
            if pair[1] <= live_from {
                if let Some(s) = inner.segments.remove(&pair[0]) {
                    std::fs::remove_file(&s.path)?;
                    removed = true;
                }
            }
        }
        if removed {
            sync_dir(&inner.dir)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn recs(range: std::ops::Range<u64>) -> Records {
        range
            .map(|i| (i, format!("entry-{i}").into_bytes()))
            .collect()
    }

    fn log_id(index: u64) -> LogId {
        openraft::testing::log_id::<crate::types::TypeConfig>(1, 0, index)
    }

    /// Segments of about three records, so every test crosses segment boundaries.
    const SMALL: u64 = 60;

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .expect("list")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "wal"))
            })
            .count()
    }

    #[test]
    fn appends_survive_reopen_and_reads_span_segments() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open_sized(dir.path(), SMALL).expect("open");
            for i in 1..50 {
                wal.append(recs(i..i + 1)).expect("append");
            }
            wal.sync().expect("sync");
        }
        assert!(segments(dir.path()) > 10, "appends rotate segments");
        let wal = Wal::open_sized(dir.path(), SMALL).expect("reopen");
        assert_eq!(wal.last_index(), Some(49));
        let got = wal.read(10, 20).expect("read");
        let want: Vec<Vec<u8>> = (10..20)
            .map(|i| format!("entry-{i}").into_bytes())
            .collect();
        assert_eq!(got, want);
        assert!(wal.append(recs(51..52)).is_err(), "a gap is refused");
    }

    #[test]
    fn reads_from_the_memory_tail_and_from_disk_agree() {
        let dir = tempfile::tempdir().expect("tempdir");
        let big = |i: u64| (i, vec![(i % 251) as u8; 512 << 10]);
        let wal = Wal::open_sized(dir.path(), SEGMENT_BYTES).expect("open");
        // 24 entries of 512 KiB: the tail keeps only the newest 8.
        wal.append((1..25).map(big).collect()).expect("append");
        let tail_first = wal.lock().tail.front().map(|(i, _)| *i);
        assert_eq!(tail_first, Some(17));
        let want: Vec<Vec<u8>> = (10..25).map(|i| big(i).1).collect();
        assert_eq!(wal.read(10, 25).expect("read across"), want, "from disk");
        assert_eq!(
            wal.read(20, 22).expect("read tail"),
            want[10..12],
            "from memory"
        );
        // Truncation drops the tail's newer entries; new ones continue it.
        wal.truncate_after(Some(19)).expect("truncate");
        wal.append(recs(20..22)).expect("append");
        let got = wal.read(18, 30).expect("read");
        assert_eq!(got[..2], want[8..10]);
        assert_eq!(
            got[2..],
            recs(20..22).into_iter().map(|r| r.1).collect::<Vec<_>>()[..]
        );
        drop(wal);
        let wal = Wal::open_sized(dir.path(), SEGMENT_BYTES).expect("reopen");
        assert_eq!(wal.read(18, 30).expect("read after reopen"), got);
    }

    #[test]
    fn a_torn_tail_is_cut_but_damage_in_a_closed_segment_is_an_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let end = {
            let wal = Wal::open_sized(dir.path(), SMALL).expect("open");
            for i in 1..11 {
                wal.append(recs(i..i + 1)).expect("append");
            }
            wal.sync().expect("sync");
            let size = wal
                .lock()
                .segments
                .values()
                .next_back()
                .expect("a segment")
                .size;
            size
        };
        let newest = |dir: &Path| {
            let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
                .expect("list")
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "wal"))
                .collect();
            names.sort();
            names
        };
        let last = newest(dir.path()).pop().expect("a segment");
        // A crash in the middle of writing entry 10.
        let f = OpenOptions::new()
            .write(true)
            .open(&last)
            .expect("open seg");
        f.set_len(end - 3).expect("cut");
        let wal = Wal::open_sized(dir.path(), SMALL).expect("reopen");
        assert_eq!(wal.last_index(), Some(9));
        wal.append(recs(10..12)).expect("append after the cut");
        assert_eq!(wal.read(9, 12).expect("read").len(), 3);
        drop(wal);
        // A flipped byte in a segment that others follow is damage, not a torn tail.
        let first = newest(dir.path()).remove(0);
        let f = OpenOptions::new()
            .write(true)
            .open(&first)
            .expect("open seg");
        f.write_all_at(b"X", HEADER as u64 + 1).expect("flip");
        let err = Wal::open_sized(dir.path(), SMALL)
            .err()
            .expect("damage is reported");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn a_torn_write_inside_a_preallocated_segment_is_cut() {
        let dir = tempfile::tempdir().expect("tempdir");
        let seg = dir.path().join(segment_name(1));
        let end = {
            let wal = Wal::open_sized(dir.path(), 1 << 20).expect("open");
            wal.append(recs(1..6)).expect("append");
            wal.sync().expect("sync");
            let size = wal.lock().segments.get(&1).expect("segment").size;
            size
        };
        assert_eq!(
            std::fs::metadata(&seg).expect("stat").len(),
            1 << 20,
            "allocated"
        );
        // Reopening a clean log finds the same entries (the zeros are not records).
        assert_eq!(
            Wal::open_sized(dir.path(), 1 << 20)
                .expect("reopen")
                .last_index(),
            Some(5)
        );
        // A crash while writing entry 6: half a header and some payload bytes.
        let f = OpenOptions::new().write(true).open(&seg).expect("open seg");
        f.write_all_at(&[6, 0, 0, 0, 0, 0, 0, 0, 9, 0, 0], end)
            .expect("torn");
        let wal = Wal::open_sized(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(wal.last_index(), Some(5));
        wal.append(recs(6..8)).expect("append");
        drop(wal);
        let wal = Wal::open_sized(dir.path(), 1 << 20).expect("reopen");
        assert_eq!(wal.last_index(), Some(7));
        assert_eq!(wal.read(6, 8).expect("read")[1], b"entry-7".to_vec());
    }

    /// A preallocated log of entries 1..=n in one segment, fsynced; returns the segment's
    /// path and where each record starts.
    fn one_segment(dir: &Path, n: u64) -> (PathBuf, Vec<u64>) {
        let wal = Wal::open_sized(dir, 1 << 20).expect("open");
        wal.append(recs(1..n + 1)).expect("append");
        wal.sync().expect("sync");
        let inner = wal.lock();
        let starts = inner
            .locs
            .iter()
            .map(|l| l.offset - HEADER as u64)
            .collect();
        (dir.join(segment_name(1)), starts)
    }

    fn damage(path: &Path, at: u64, bytes: &[u8]) {
        let f = OpenOptions::new().write(true).open(path).expect("open seg");
        f.write_all_at(bytes, at).expect("damage");
    }

    #[test]
    fn damage_in_the_middle_of_the_newest_segment_refuses_to_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, starts) = one_segment(dir.path(), 600);
        // Four bytes in the payload of entry 300 (as the hardening run did after kill -9).
        damage(&seg, starts[299] + HEADER as u64 + 2, b"\xde\xad\xbe\xef");
        let err = Wal::open_sized(dir.path(), 1 << 20)
            .err()
            .expect("damage is refused, not cut");
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        let msg = err.to_string();
        assert!(
            msg.contains(&seg.display().to_string()),
            "names the file: {msg}"
        );
        assert!(
            msg.contains(&format!("byte {}", starts[299])),
            "names the offset: {msg}"
        );
        assert!(msg.contains("from a peer"), "says how to recover: {msg}");
        // Nothing was cut: the file still holds every record after the damage.
        assert_eq!(std::fs::metadata(&seg).expect("stat").len(), 1 << 20);
        let raw = std::fs::read(&seg).expect("read");
        assert!(scan_bytes(&raw[starts[300] as usize..]).records.len() >= 300);
    }

    #[test]
    fn a_damaged_header_or_zeroed_record_with_data_after_refuses_to_open() {
        for (what, at, bytes) in [
            ("length", 8u64, vec![0xff, 0xff, 0x00, 0x01]),
            ("crc", 12, vec![1]),
            ("index", 0, vec![7]),
            ("a zeroed header", 0, vec![0; HEADER]),
        ] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (seg, starts) = one_segment(dir.path(), 20);
            damage(&seg, starts[9] + at, &bytes);
            let opened = Wal::open_sized(dir.path(), 1 << 20);
            let err = opened.err().unwrap_or_else(|| panic!("{what}: refused"));
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{what}");
        }
    }

    #[test]
    fn only_the_last_record_may_be_torn() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, starts) = one_segment(dir.path(), 20);
        // The last record's header written, its payload not (zeros): torn, cut.
        let last = starts[19];
        damage(&seg, last + HEADER as u64, &[0; 8]);
        let wal = Wal::open_sized(dir.path(), 1 << 20).expect("a torn last record is cut");
        assert_eq!(wal.last_index(), Some(19));
        drop(wal);
        // A record complete to its last byte but failing its checksum is damage, not a tear.
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, starts) = one_segment(dir.path(), 20);
        damage(&seg, starts[19] + HEADER as u64, b"X");
        assert!(Wal::open_sized(dir.path(), 1 << 20).is_err());
        // What looks torn but the log knows was committed is damage: never cut.
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, starts) = one_segment(dir.path(), 20);
        let wal = Wal::open_sized(dir.path(), 1 << 20).expect("open");
        wal.set_state(|s| s.committed = Some(log_id(20)), true)
            .expect("committed");
        drop(wal);
        damage(&seg, starts[19] + HEADER as u64, &[0; 8]);
        assert!(Wal::open_sized(dir.path(), 1 << 20).is_err());
    }

    #[test]
    fn scanning_arbitrary_bytes_never_panics_and_stays_in_bounds() {
        // A cheap, deterministic stand-in for the fuzz target (fuzz/fuzz_targets/wal_segment.rs)
        // that runs in every test run: damaged copies of a real segment, and raw noise.
        let dir = tempfile::tempdir().expect("tempdir");
        let (seg, _) = one_segment(dir.path(), 50);
        let clean = std::fs::read(&seg).expect("read");
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let mut data = clean[..1200].to_vec();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() % data.len() as u64) as usize;
                data[at] = next() as u8;
            }
            let cut = (next() % data.len() as u64) as usize;
            data.truncate(cut);
            let s = scan_bytes(&data);
            assert!(s.intact <= data.len() as u64);
            for (_, offset, len) in &s.records {
                assert!(offset + u64::from(*len) <= s.intact);
            }
            let noise: Vec<u8> = (0..(next() % 200)).map(|_| next() as u8).collect();
            let s = scan_bytes(&noise);
            assert!(s.intact <= noise.len() as u64);
        }
    }

    #[test]
    fn truncate_and_purge_are_durable() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let wal = Wal::open_sized(dir.path(), SMALL).expect("open");
            for i in 1..21 {
                wal.append(recs(i..i + 1)).expect("append");
            }
            let before = segments(dir.path());
            wal.truncate_after(Some(7)).expect("truncate");
            assert!(segments(dir.path()) < before, "later segments are deleted");
            wal.append(recs(8..18)).expect("append after truncate");
            let before = segments(dir.path());
            wal.purge(log_id(12)).expect("purge");
            assert!(segments(dir.path()) < before, "purged segments are deleted");
            wal.set_state(|s| s.vote = Some(Vote::new(3, 2)), true)
                .expect("vote");
            wal.sync().expect("sync");
        }
        let wal = Wal::open_sized(dir.path(), SMALL).expect("reopen");
        assert_eq!(wal.last_index(), Some(17));
        assert_eq!(wal.state().purged, Some(log_id(12)));
        assert_eq!(wal.state().vote, Some(Vote::new(3, 2)));
        let got = wal.read(0, 100).expect("read");
        let want: Vec<Vec<u8>> = (13..18)
            .map(|i| format!("entry-{i}").into_bytes())
            .collect();
        assert_eq!(got, want);
        // Purging everything, then appending far ahead (after a snapshot install), works.
        wal.purge(log_id(100)).expect("purge all");
        assert_eq!(wal.last_index(), None);
        wal.append(recs(101..103)).expect("append after purge");
        drop(wal);
        let wal = Wal::open_sized(dir.path(), SMALL).expect("reopen");
        assert_eq!(wal.last_index(), Some(102));
        assert_eq!(wal.read(0, 200).expect("read").len(), 2);
        // Truncating everything leaves an empty log that accepts a new start.
        wal.truncate_after(None).expect("truncate all");
        assert_eq!(wal.last_index(), None);
        wal.append(recs(101..102)).expect("append");
        drop(wal);
        let wal = Wal::open_sized(dir.path(), SMALL).expect("reopen");
        assert_eq!(wal.last_index(), Some(101));
    }
}
