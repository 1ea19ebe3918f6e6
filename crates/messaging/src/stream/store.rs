//! One stream's messages on disk: append-only segment files (`<n>.seg`, a new one past the
//! segment size) of [`segment`](super::segment) records, with the indexes a stream needs in
//! memory: sequence → where the message is, and subject → its sequences (last by subject,
//! messages per subject, filtered purges).
//!
//! Appends are positioned writes; [`StreamStore::durable`] hands out the newest segment's file
//! so a writer can `fdatasync` it without holding the store (group commit: acknowledge every
//! publish of a batch after one sync). Removals are records too (removed sequences, or new
//! bounds when the oldest messages go), and a segment whose messages are all gone is deleted
//! once every older one is. Opening scans every segment: a torn tail of the newest is cut,
//! damage anywhere else is an error naming the file.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::segment::{self, Record};
use crate::subject;

/// A new segment is started past this size.
pub const SEGMENT_BYTES: u64 = 32 << 20;
/// Sequences one removal record lists at most (8 MiB of body).
const REMOVED_PER_RECORD: usize = 1 << 20;
/// Buffered records are written once they reach this size (and at every flush).
const FLUSH_BYTES: usize = 1 << 20;

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMsg {
    /// Its sequence.
    pub seq: u64,
    /// When it was stored (UNIX nanoseconds).
    pub time: i64,
    /// Its subject.
    pub subject: String,
    /// Its NATS headers block (empty: none).
    pub headers: Vec<u8>,
    /// Its payload.
    pub payload: Vec<u8>,
}

/// What the store keeps in memory of each message.
#[derive(Debug, Clone)]
struct Meta {
    segment: u64,
    offset: u64,
    len: u32,
    time: i64,
    subject: Arc<str>,
    size: u64,
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    size: u64,
    /// Messages in it not removed yet.
    live: u64,
}

/// The stream's figures, as JetStream's `state` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct State {
    /// Messages stored.
    pub messages: u64,
    /// Their size (subject, headers and payload, as JetStream counts).
    pub bytes: u64,
    /// The oldest stored sequence (`last + 1` when empty).
    pub first_seq: u64,
    /// When it was stored (0 when empty).
    pub first_time: i64,
    /// The last sequence used.
    pub last_seq: u64,
    /// When that was stored (0 when unknown).
    pub last_time: i64,
    /// Distinct subjects stored.
    pub subjects: u64,
    /// Sequences between first and last that were removed.
    pub deleted: u64,
}

/// JetStream's size of a stored message (what `max_bytes` and `state.bytes` count).
pub fn msg_size(subject: &str, headers: &[u8], payload: &[u8]) -> u64 {
    (subject.len() + headers.len() + payload.len() + 16) as u64
}

fn damaged(path: &Path, at: usize, newest: bool) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "stream segment {} is damaged: a bad record at byte {at} with intact records after \
             it{}. Nothing was cut, since messages there may have been acknowledged",
            path.display(),
            if newest { "" } else { " (a closed segment)" }
        ),
    )
}

/// One stream's messages.
pub struct StreamStore {
    dir: PathBuf,
    segment_bytes: u64,
    segments: BTreeMap<u64, Segment>,
    msgs: BTreeMap<u64, Meta>,
    subjects: HashMap<Arc<str>, BTreeSet<u64>>,
    /// The last sequence known durable (what consumers may be given).
    synced: u64,
    /// Sequences between the first stored and the last used that are not stored (removed
    /// from the middle): counting what follows a sequence is then arithmetic.
    holes: super::holes::Holes,
    first: u64,
    last: u64,
    last_time: i64,
    bytes: u64,
    buf: Vec<u8>,
}

impl StreamStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> io::Result<StreamStore> {
        Self::open_sized(dir, SEGMENT_BYTES)
    }

    /// [`StreamStore::open`] with segments of `segment_bytes`.
    pub fn open_sized(dir: &Path, segment_bytes: u64) -> io::Result<StreamStore> {
        std::fs::create_dir_all(dir)?;
        let mut ids = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let name = entry?.file_name();
            let name = name.to_string_lossy();
            if let Some(id) = name
                .strip_suffix(".seg")
                .and_then(|n| n.parse::<u64>().ok())
            {
                ids.push(id);
            }
        }
        ids.sort_unstable();
        let mut store = StreamStore {
            dir: dir.to_path_buf(),
            segment_bytes,
            segments: BTreeMap::new(),
            msgs: BTreeMap::new(),
            subjects: HashMap::new(),
            holes: Default::default(),
            synced: 0,
            first: 1,
            last: 0,
            last_time: 0,
            bytes: 0,
            buf: Vec::new(),
        };
        for (i, id) in ids.iter().enumerate() {
            store.load_segment(*id, i + 1 == ids.len())?;
        }
        if store.segments.is_empty() {
            store.new_segment(1)?;
        }
        store.settle_bounds();
        // The gaps between what is stored, up to the last sequence used (removed messages at
        // the end are gaps too).
        let mut expected = store.first;
        let mut holes = super::holes::Holes::default();
        for &seq in store.msgs.keys() {
            if seq > expected {
                holes.insert_range(expected, seq - 1);
            }
            expected = seq + 1;
        }
        if !store.msgs.is_empty() && store.last >= expected {
            holes.insert_range(expected, store.last);
        }
        store.holes = holes;
        // What survived on disk is what there is.
        store.synced = store.last;
        // A newest segment left empty by a crash right after it was created has no bounds
        // record yet: without one, deleting the older segments would forget the sequence.
        if store
            .segments
            .last_key_value()
            .is_some_and(|(_, s)| s.size == 0)
        {
            let (first, last) = (store.first, store.last);
            store.write(&Record::Bounds { first, last })?;
            store.flush()?;
            if let Some(f) = store.durable() {
                f.sync_data()?;
            }
        }
        store.drop_dead_segments()?;
        Ok(store)
    }

    fn path_of(&self, id: u64) -> PathBuf {
        self.dir.join(format!("{id:020}.seg"))
    }

    fn load_segment(&mut self, id: u64, newest: bool) -> io::Result<()> {
        let path = self.path_of(id);
        let file = OpenOptions::new().read(true).write(true).open(&path)?;
        let data = std::fs::read(&path)?;
        let scan = segment::scan(&data).map_err(|at| damaged(&path, at, newest))?;
        if scan.torn {
            if !newest {
                return Err(damaged(&path, scan.end, false));
            }
            tracing::warn!(
                file = %path.display(),
                at = scan.end,
                "cutting a record torn by a crash off the end of a stream segment"
            );
            file.set_len(scan.end as u64)?;
            file.sync_all()?;
        }
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                path,
                size: scan.end as u64,
                live: 0,
            },
        );
        for body in scan.records {
            let len = body.len() as u32;
            let offset = (body.start - segment::HEADER) as u64;
            match segment::decode(&data[body]) {
                Ok(Record::Msg {
                    seq,
                    time,
                    subject,
                    headers,
                    payload,
                }) => {
                    let size = msg_size(subject, headers, payload);
                    self.index(seq, id, offset, len, time, subject, size);
                }
                Ok(Record::Removed(seqs)) => {
                    for s in seqs {
                        self.unindex(s);
                    }
                }
                Ok(Record::Bounds { first, last }) => {
                    self.last = self.last.max(last);
                    self.cut_below(first);
                }
                // Checked by the scan.
                Err(_) => {}
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn index(
        &mut self,
        seq: u64,
        segment: u64,
        offset: u64,
        len: u32,
        time: i64,
        subject: &str,
        size: u64,
    ) {
        let subject: Arc<str> = match self.subjects.get_key_value(subject) {
            Some((k, _)) => k.clone(),
            None => subject.into(),
        };
        self.subjects
            .entry(subject.clone())
            .or_default()
            .insert(seq);
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live += 1;
        }
        self.bytes += size;
        self.last = self.last.max(seq);
        self.last_time = time;
        if self.msgs.is_empty() && self.first > seq {
            self.first = seq;
        }
        self.msgs.insert(
            seq,
            Meta {
                segment,
                offset,
                len,
                time,
                subject,
                size,
            },
        );
    }

    /// Forgets `seq` in memory; false when it was not stored.
    fn unindex(&mut self, seq: u64) -> bool {
        let Some(m) = self.msgs.remove(&seq) else {
            return false;
        };
        if let Some(set) = self.subjects.get_mut(&m.subject) {
            set.remove(&seq);
            if set.is_empty() {
                self.subjects.remove(&m.subject);
            }
        }
        if let Some(s) = self.segments.get_mut(&m.segment) {
            s.live = s.live.saturating_sub(1);
        }
        self.bytes -= m.size;
        true
    }

    /// Forgets every message below `first` in memory.
    fn cut_below(&mut self, first: u64) {
        let below: Vec<u64> = self.msgs.range(..first).map(|(s, _)| *s).collect();
        for s in below {
            self.unindex(s);
        }
        self.first = self.first.max(first);
    }

    fn new_segment(&mut self, id: u64) -> io::Result<()> {
        // Whatever the current segment holds is made durable before a newer one exists, so
        // only the newest segment can ever have a torn tail.
        self.flush()?;
        if let Some((_, cur)) = self.segments.last_key_value() {
            cur.file.sync_data()?;
        }
        let path = self.path_of(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        File::open(&self.dir)?.sync_all()?;
        self.segments.insert(
            id,
            Segment {
                file: Arc::new(file),
                path,
                size: 0,
                live: 0,
            },
        );
        let (first, last) = (self.first, self.last);
        self.write(&Record::Bounds { first, last })?;
        Ok(())
    }

    /// Adds one record at the end of the newest segment (buffered: [`StreamStore::flush`]
    /// writes it); returns (segment, offset, length of its body).
    fn write(&mut self, rec: &Record<'_>) -> io::Result<(u64, u64, u32)> {
        let before = self.buf.len();
        segment::encode(rec, &mut self.buf);
        let len = (self.buf.len() - before) as u64;
        let (id, seg) = self
            .segments
            .iter_mut()
            .next_back()
            .ok_or_else(|| io::Error::other("the stream has no segment"))?;
        let at = seg.size;
        seg.size += len;
        let id = *id;
        if self.buf.len() >= FLUSH_BYTES {
            self.flush()?;
        }
        Ok((id, at, (len as usize - segment::HEADER) as u32))
    }

    /// Writes the buffered records to the newest segment (one write for a whole batch of
    /// appends; not synced).
    pub fn flush(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let seg = self
            .segments
            .values()
            .next_back()
            .ok_or_else(|| io::Error::other("the stream has no segment"))?;
        let at = seg.size - self.buf.len() as u64;
        let result = seg.file.write_all_at(&self.buf, at);
        if result.is_err() {
            // What was not written is not in the file: forget it, so the sizes stay true
            // (the caller fails the batch; the indexes are rebuilt when the stream reopens).
            if let Some(seg) = self.segments.values_mut().next_back() {
                seg.size = at;
            }
        }
        self.buf.clear();
        result
    }

    /// Stores a message under the next sequence (not durable until the file from
    /// [`StreamStore::durable`] is synced); returns the sequence.
    pub fn append(
        &mut self,
        subject: &str,
        headers: &[u8],
        payload: &[u8],
        time: i64,
    ) -> io::Result<u64> {
        let newest = self.segments.last_key_value().map_or(0, |(id, s)| {
            if s.size >= self.segment_bytes {
                id + 1
            } else {
                0
            }
        });
        if newest != 0 {
            self.new_segment(newest)?;
            self.drop_dead_segments()?;
        }
        let seq = self.last + 1;
        let (segment, offset, len) = self.write(&Record::Msg {
            seq,
            time,
            subject,
            headers,
            payload,
        })?;
        if self.msgs.is_empty() {
            self.first = seq;
        }
        self.index(
            seq,
            segment,
            offset,
            len,
            time,
            subject,
            msg_size(subject, headers, payload),
        );
        Ok(seq)
    }

    /// The newest segment's file: syncing it makes every append so far durable, once
    /// [`StreamStore::flush`]ed.
    pub fn durable(&self) -> Option<Arc<File>> {
        self.segments.last_key_value().map(|(_, s)| s.file.clone())
    }

    /// Removes the listed messages (those stored); returns how many were.
    pub fn remove(&mut self, seqs: &[u64]) -> io::Result<u64> {
        let stored: Vec<u64> = seqs
            .iter()
            .copied()
            .filter(|s| self.msgs.contains_key(s))
            .collect();
        if stored.is_empty() {
            return Ok(0);
        }
        // In records of at most REMOVED_PER_RECORD sequences (a record's size is bounded).
        for chunk in stored.chunks(REMOVED_PER_RECORD) {
            self.write(&Record::Removed(chunk.to_vec()))?;
        }
        for s in &stored {
            self.unindex(*s);
            self.holes.insert(*s);
        }
        self.settle()?;
        self.flush()?;
        Ok(stored.len() as u64)
    }

    /// Removes every message below `first`; returns how many there were.
    pub fn remove_below(&mut self, first: u64) -> io::Result<u64> {
        let first = first.min(self.last + 1);
        let n = self.msgs.range(..first).count() as u64;
        if first <= self.first && n == 0 {
            return Ok(0);
        }
        let last = self.last;
        self.write(&Record::Bounds { first, last })?;
        self.cut_below(first);
        self.settle()?;
        self.flush()?;
        Ok(n)
    }

    /// After removals: the first sequence moves up to the oldest message left, and segments
    /// with nothing left go.
    fn settle(&mut self) -> io::Result<()> {
        self.settle_bounds();
        self.drop_dead_segments()
    }

    /// The first sequence is the oldest message's (`last + 1` when none); holes below it go.
    fn settle_bounds(&mut self) {
        self.first = self
            .msgs
            .first_key_value()
            .map_or(self.last + 1, |(s, _)| *s);
        self.holes.trim_below(self.first);
    }

    fn drop_dead_segments(&mut self) -> io::Result<()> {
        while self.segments.len() > 1 {
            let Some((&id, seg)) = self.segments.first_key_value() else {
                break;
            };
            if seg.live > 0 {
                break;
            }
            let path = seg.path.clone();
            self.segments.remove(&id);
            std::fs::remove_file(&path)?;
        }
        Ok(())
    }

    /// The message stored under `seq`.
    pub fn get(&self, seq: u64) -> io::Result<Option<StoredMsg>> {
        let Some(m) = self.msgs.get(&seq) else {
            return Ok(None);
        };
        let seg = self
            .segments
            .get(&m.segment)
            .ok_or_else(|| io::Error::other("a message's segment is gone"))?;
        let mut buf = vec![0; segment::HEADER + m.len as usize];
        let flushed = seg.size
            - if self
                .segments
                .last_key_value()
                .is_some_and(|(id, _)| *id == m.segment)
            {
                self.buf.len() as u64
            } else {
                0
            };
        if m.offset >= flushed {
            // Still in the write buffer.
            let at = (m.offset - flushed) as usize;
            let bytes = self
                .buf
                .get(at..at + buf.len())
                .ok_or_else(|| io::Error::other("a buffered message is out of range"))?;
            buf.copy_from_slice(bytes);
        } else {
            seg.file.read_exact_at(&mut buf, m.offset)?;
        }
        let bad = || damaged(&seg.path, m.offset as usize, false);
        let crc = u32::from_le_bytes(buf[4..8].try_into().map_err(|_| bad())?);
        let body = &buf[segment::HEADER..];
        if crc32c::crc32c(body) != crc {
            return Err(bad());
        }
        match segment::decode(body) {
            Ok(Record::Msg {
                seq: s,
                time,
                subject,
                headers,
                payload,
            }) if s == seq => Ok(Some(StoredMsg {
                seq,
                time,
                subject: subject.to_string(),
                headers: headers.to_vec(),
                payload: payload.to_vec(),
            })),
            _ => Err(bad()),
        }
    }

    /// The first stored sequence at or after `from` whose subject `filter` reaches.
    pub fn next_matching(&self, from: u64, filter: &str) -> Option<u64> {
        if !filter.contains(['*', '>']) {
            return self.subjects.get(filter)?.range(from..).next().copied();
        }
        self.msgs
            .range(from..)
            .find(|(_, m)| subject::matches(filter, &m.subject))
            .map(|(s, _)| *s)
    }

    /// The last stored sequence whose subject `filter` reaches.
    pub fn last_matching(&self, filter: &str) -> Option<u64> {
        if !filter.contains(['*', '>']) {
            return self.subjects.get(filter)?.last().copied();
        }
        self.subjects
            .iter()
            .filter(|(s, _)| subject::matches(filter, s))
            .filter_map(|(_, seqs)| seqs.last().copied())
            .max()
    }

    /// Everything up to `last` is synced.
    pub fn mark_synced(&mut self, last: u64) {
        self.synced = self.synced.max(last);
    }

    /// The last sequence known durable.
    pub fn synced(&self) -> u64 {
        self.synced
    }

    /// The `n`-th oldest stored sequence (0: the oldest).
    pub fn nth_seq(&self, n: u64) -> Option<u64> {
        self.msgs.keys().nth(usize::try_from(n).ok()?).copied()
    }

    /// The first stored sequence stored at or after `time`, or `last + 1` when none is: the
    /// oldest messages up to it are older than `time`.
    pub fn first_not_before(&self, time: i64) -> u64 {
        self.msgs
            .iter()
            .find(|(_, m)| m.time >= time)
            .map_or(self.last + 1, |(s, _)| *s)
    }

    /// The subject of `seq`, if stored.
    pub fn subject_of(&self, seq: u64) -> Option<&str> {
        self.msgs.get(&seq).map(|m| &*m.subject)
    }

    /// The stored size of `seq`, if stored.
    pub fn size_of(&self, seq: u64) -> Option<u64> {
        self.msgs.get(&seq).map(|m| m.size)
    }

    /// The first stored sequence at or after `from` that one of `filters` reaches (any
    /// subject when empty), with its size.
    pub fn next_of(&self, from: u64, filters: &[String]) -> Option<(u64, u64)> {
        let seq = match filters {
            [] => self.msgs.range(from..).next().map(|(s, _)| *s),
            [one] if one == ">" => self.msgs.range(from..).next().map(|(s, _)| *s),
            [one] => self.next_matching(from, one),
            many => many
                .iter()
                .filter_map(|f| self.next_matching(from, f))
                .min(),
        }?;
        Some((seq, self.msgs.get(&seq)?.size))
    }

    /// How many stored messages after `seq` one of `filters` reaches (any when empty).
    pub fn count_after(&self, seq: u64, filters: &[String]) -> u64 {
        let after = seq.saturating_add(1);
        let all = || {
            let from = after.max(self.first);
            if self.msgs.is_empty() || from > self.last {
                return 0;
            }
            (self.last + 1 - from).saturating_sub(self.holes.count_from(from))
        };
        match filters {
            [] => all(),
            [one] if one == ">" => all(),
            [one] if !one.contains(['*', '>']) => self
                .subjects
                .get(one.as_str())
                .map_or(0, |s| s.range(after..).count() as u64),
            many => self
                .msgs
                .range(after..)
                .filter(|(_, m)| many.iter().any(|f| subject::matches(f, &m.subject)))
                .count() as u64,
        }
    }

    /// The last stored sequence of each subject `filters` reach (all when empty), in stream
    /// order.
    pub fn last_per_subject(&self, filters: &[String]) -> Vec<u64> {
        let mut seqs: Vec<u64> = self
            .subjects
            .iter()
            .filter(|(s, _)| filters.is_empty() || filters.iter().any(|f| subject::matches(f, s)))
            .filter_map(|(_, seqs)| seqs.last().copied())
            .collect();
        seqs.sort_unstable();
        seqs
    }

    /// The first stored sequence stored at or after `time` (UNIX ns).
    pub fn first_at(&self, time: i64) -> Option<u64> {
        self.msgs
            .iter()
            .find(|(_, m)| m.time >= time)
            .map(|(s, _)| *s)
    }

    /// Stored sequences of the subject, oldest first.
    pub fn of_subject(&self, subject: &str) -> Vec<u64> {
        self.subjects
            .get(subject)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Messages per subject, for the subjects `filter` reaches.
    pub fn subject_counts(&self, filter: &str) -> BTreeMap<String, u64> {
        self.subjects
            .iter()
            .filter(|(s, _)| subject::matches(filter, s))
            .map(|(s, seqs)| (s.to_string(), seqs.len() as u64))
            .collect()
    }

    /// Stored sequences whose subject `filter` reaches (all with `None`), oldest first.
    pub fn matching(&self, filter: Option<&str>) -> Vec<u64> {
        match filter {
            None => self.msgs.keys().copied().collect(),
            Some(f) => {
                let mut seqs: Vec<u64> = self
                    .subjects
                    .iter()
                    .filter(|(s, _)| subject::matches(f, s))
                    .flat_map(|(_, seqs)| seqs.iter().copied())
                    .collect();
                seqs.sort_unstable();
                seqs
            }
        }
    }

    /// The oldest stored message's sequence, time and size.
    pub fn oldest(&self) -> Option<(u64, i64, u64)> {
        self.msgs
            .first_key_value()
            .map(|(s, m)| (*s, m.time, m.size))
    }

    /// The stream's figures.
    pub fn state(&self) -> State {
        let first = self.msgs.first_key_value();
        let messages = self.msgs.len() as u64;
        let span = if messages == 0 {
            0
        } else {
            self.last - self.first + 1
        };
        State {
            messages,
            bytes: self.bytes,
            first_seq: self.first,
            first_time: first.map_or(0, |(_, m)| m.time),
            last_seq: self.last,
            last_time: if self.last == 0 { 0 } else { self.last_time },
            subjects: self.subjects.len() as u64,
            deleted: span - messages,
        }
    }

    /// The time `seq` was stored at, if stored.
    pub fn time_of(&self, seq: u64) -> Option<i64> {
        self.msgs.get(&seq).map(|m| m.time)
    }

    /// Deletes the store's files (the stream is deleted).
    pub fn destroy(mut self) -> io::Result<()> {
        self.buf.clear();
        let dir = self.dir.clone();
        drop(self);
        std::fs::remove_dir_all(dir)
    }
}

impl Drop for StreamStore {
    fn drop(&mut self) {
        if let Err(e) = self.flush() {
            tracing::error!(dir = %self.dir.display(), error = %e, "stream store: writing buffered records failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(s: &mut StreamStore, subject: &str, payload: &str) -> u64 {
        s.append(subject, b"", payload.as_bytes(), 1000)
            .expect("append")
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir).expect("dir").count()
    }

    #[test]
    fn messages_survive_reopen_with_their_indexes() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StreamStore::open_sized(dir.path(), 200).expect("open");
        assert_eq!(s.state().first_seq, 1);
        for i in 0..20 {
            put(&mut s, &format!("o.{}", i % 3), &format!("m{i}"));
        }
        s.append("o.h", b"NATS/1.0\r\nA: 1\r\n\r\n", b"x", 5)
            .expect("append");
        assert!(segments(dir.path()) > 3, "small segments roll over");
        assert_eq!(s.remove(&[2, 5, 99]).expect("remove"), 2);
        let before = s.state();
        drop(s);
        let s = StreamStore::open_sized(dir.path(), 200).expect("reopen");
        assert_eq!(s.state(), before);
        assert_eq!(before.messages, 19);
        assert_eq!(
            (before.first_seq, before.last_seq, before.deleted),
            (1, 21, 2)
        );
        assert_eq!(before.subjects, 4);
        let m = s.get(21).expect("read").expect("stored");
        assert_eq!(
            (m.subject.as_str(), &m.headers[..], &m.payload[..]),
            ("o.h", &b"NATS/1.0\r\nA: 1\r\n\r\n"[..], &b"x"[..])
        );
        assert_eq!(s.get(2).expect("read"), None);
        assert_eq!(s.last_matching("o.1"), Some(20));
        assert_eq!(s.last_matching("o.*"), Some(21));
        assert_eq!(s.next_matching(4, "o.2"), Some(6));
        assert_eq!(s.next_matching(3, "o.>"), Some(3));
        assert_eq!(s.of_subject("o.0"), [1, 4, 7, 10, 13, 16, 19]);
        assert_eq!(s.subject_counts("o.*").get("o.1"), Some(&5));
    }

    #[test]
    fn removing_the_oldest_drops_segments_and_keeps_the_sequence() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StreamStore::open_sized(dir.path(), 150).expect("open");
        for i in 0..30 {
            put(&mut s, "a", &format!("{i:04}"));
        }
        let many = segments(dir.path());
        assert_eq!(s.remove_below(25).expect("remove"), 24);
        assert!(segments(dir.path()) < many, "dead segments are deleted");
        assert_eq!(s.state().first_seq, 25);
        // Purge everything: the stream is empty, its sequence goes on.
        assert_eq!(s.remove_below(u64::MAX).expect("purge"), 6);
        let st = s.state();
        assert_eq!(
            (st.messages, st.first_seq, st.last_seq, st.bytes),
            (0, 31, 30, 0)
        );
        drop(s);
        let mut s = StreamStore::open_sized(dir.path(), 150).expect("reopen");
        assert_eq!(s.state().first_seq, 31);
        assert_eq!(s.state().last_seq, 30);
        assert_eq!(put(&mut s, "a", "next"), 31);
    }

    #[test]
    fn an_empty_newest_segment_left_by_a_crash_keeps_the_sequence() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StreamStore::open(dir.path()).expect("open");
        for i in 0..5 {
            put(&mut s, "a", &format!("{i}"));
        }
        drop(s);
        // A crash right after the next segment was created, before its bounds record.
        std::fs::File::create(dir.path().join(format!("{:020}.seg", 2))).expect("empty segment");
        let mut s = StreamStore::open(dir.path()).expect("reopen");
        // Everything goes (a work queue drained): the first segment is deleted.
        assert_eq!(s.remove(&[1, 2, 3, 4, 5]).expect("remove"), 5);
        drop(s);
        let mut s = StreamStore::open(dir.path()).expect("reopen");
        assert_eq!(s.state().last_seq, 5, "the sequence is not forgotten");
        assert_eq!(put(&mut s, "a", "next"), 6);
        // Removed messages at the end count as holes after a reopen too.
        assert_eq!(s.remove(&[6]).expect("remove"), 1);
        put(&mut s, "a", "7");
        s.remove(&[7]).expect("remove");
        drop(s);
        let s = StreamStore::open(dir.path()).expect("reopen");
        assert_eq!(s.count_after(0, &[]), 0, "{:?}", s.state());
    }

    #[test]
    fn a_torn_tail_is_cut_and_damage_names_the_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StreamStore::open(dir.path()).expect("open");
        for i in 0..5 {
            put(&mut s, "a", &format!("{i}"));
        }
        drop(s);
        let seg = dir.path().join(format!("{:020}.seg", 1));
        let len = std::fs::metadata(&seg).expect("meta").len();
        // A torn last record: cut, the four before it kept.
        let f = OpenOptions::new().write(true).open(&seg).expect("open seg");
        f.set_len(len - 3).expect("truncate");
        let mut s = StreamStore::open(dir.path()).expect("torn tail cut");
        assert_eq!(s.state().last_seq, 4);
        assert_eq!(put(&mut s, "a", "again"), 5);
        drop(s);
        // A flipped byte in the middle: refused, naming the file.
        let mut data = std::fs::read(&seg).expect("read");
        data[40] ^= 0xff;
        std::fs::write(&seg, &data).expect("write");
        let err = StreamStore::open(dir.path()).err().expect("damage");
        assert!(
            err.to_string().contains(&seg.display().to_string()),
            "{err}"
        );
    }
}
