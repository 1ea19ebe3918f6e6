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
//!
//! A replicated stream's store is *committed* ([`StreamStore::open_committed`]): the Raft
//! group writes its applied log position as a metadata record at the end of every applied
//! batch ([`StreamStore::set_meta`]), a new segment starts only there, and opening cuts
//! whatever follows the last such record (a batch cut short by a crash; Raft applies it
//! again). A [`StoreView`] is the segment files as of one moment (the files are append-only,
//! so holding them and their sizes is enough): the snapshot a leader sends, installed with
//! [`StreamStore::install`].

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
    /// It carries headers (a message ID may be among them).
    headers: bool,
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
    /// Metadata values (the latest of each key).
    meta: BTreeMap<String, Vec<u8>>,
    /// For a committed store, the metadata key written at the end of every applied batch.
    commit_key: Option<&'static str>,
    /// While opening: the messages read so far, in sequence order, before the indexes are
    /// built from them in bulk (see [`Loading`]).
    loading: Option<Loading>,
}

/// What opening collects before building the in-memory indexes. Appended one by one in
/// sequence order, a B-tree's nodes are left about half full (each split keeps half); built
/// in bulk from sorted entries they are full: about half the memory, and faster to build.
#[derive(Default)]
struct Loading {
    /// Messages in sequence order; one removed by a later record has [`GONE`] as segment.
    msgs: Vec<(u64, Meta)>,
    /// Entries before this one are all removed (cut below a bound).
    cut: usize,
}

/// The segment of a message removed while loading.
const GONE: u64 = u64::MAX;

/// Marks a message read while loading as removed, out of its segment's live count and the
/// stored bytes; false when it already was.
fn forget_loaded(m: &mut Meta, segments: &mut BTreeMap<u64, Segment>, bytes: &mut u64) -> bool {
    if m.segment == GONE {
        return false;
    }
    let segment = std::mem::replace(&mut m.segment, GONE);
    if let Some(s) = segments.get_mut(&segment) {
        s.live = s.live.saturating_sub(1);
    }
    *bytes -= m.size;
    true
}

impl StreamStore {
    /// Opens (or creates) the store in `dir`.
    pub fn open(dir: &Path) -> io::Result<StreamStore> {
        Self::open_sized(dir, SEGMENT_BYTES)
    }

    /// [`StreamStore::open`] with segments of `segment_bytes`.
    pub fn open_sized(dir: &Path, segment_bytes: u64) -> io::Result<StreamStore> {
        Self::open_with(dir, segment_bytes, None)
    }

    /// Opens (or creates) a committed store: everything after the last `commit_key` metadata
    /// record is cut, and new segments start only after one.
    pub fn open_committed(
        dir: &Path,
        segment_bytes: u64,
        commit_key: &'static str,
    ) -> io::Result<StreamStore> {
        recover_install(dir)?;
        Self::open_with(dir, segment_bytes, Some(commit_key))
    }

    fn open_with(
        dir: &Path,
        segment_bytes: u64,
        commit_key: Option<&'static str>,
    ) -> io::Result<StreamStore> {
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
            meta: BTreeMap::new(),
            commit_key,
            loading: Some(Loading::default()),
        };
        for (i, id) in ids.iter().enumerate() {
            store.load_segment(*id, i + 1 == ids.len())?;
        }
        store.finish_loading();
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
            store.write_meta()?;
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
        let mut scan = segment::scan(&data).map_err(|at| damaged(&path, at, newest))?;
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
        if let (Some(key), true) = (self.commit_key, newest) {
            // Only what the last applied batch ended with counts; Raft applies the rest again.
            let keep = scan
                .records
                .iter()
                .rposition(|r| {
                    matches!(segment::decode(&data[r.clone()]), Ok(Record::Meta { key: k, .. }) if k == key)
                })
                .map_or(0, |i| i + 1);
            let end = scan
                .records
                .get(..keep)
                .and_then(|r| r.last())
                .map_or(0, |r| r.end);
            if end < scan.end {
                tracing::info!(
                    file = %path.display(),
                    at = end,
                    "cutting records of a batch not fully applied off a replicated stream segment"
                );
                file.set_len(end as u64)?;
                file.sync_all()?;
                scan.records.truncate(keep);
                scan.end = end;
            }
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
                    let has = !headers.is_empty();
                    self.index(seq, id, offset, len, time, subject, size, has);
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
                Ok(Record::Meta { key, value: [] }) => {
                    self.meta.remove(key);
                }
                Ok(Record::Meta { key, value }) => {
                    self.meta.insert(key.to_owned(), value.to_vec());
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
        headers: bool,
    ) {
        let subject: Arc<str> = match self.subjects.get_key_value(subject) {
            Some((k, _)) => k.clone(),
            None => subject.into(),
        };
        let seqs = self.subjects.entry(subject.clone()).or_default();
        if self.loading.is_none() {
            seqs.insert(seq);
        }
        if let Some(s) = self.segments.get_mut(&segment) {
            s.live += 1;
        }
        self.bytes += size;
        self.last = self.last.max(seq);
        self.last_time = time;
        if self.msgs.is_empty() && self.first > seq {
            self.first = seq;
        }
        let meta = Meta {
            segment,
            offset,
            len,
            time,
            subject,
            size,
            headers,
        };
        match &mut self.loading {
            Some(l) => {
                // Appends are in sequence order, so the segments are too.
                debug_assert!(l.msgs.last().is_none_or(|(s, _)| *s < seq));
                l.msgs.push((seq, meta));
            }
            None => {
                self.msgs.insert(seq, meta);
            }
        }
    }

    /// Builds the indexes from what opening read (see [`Loading`]): the messages not
    /// removed, and each subject's sequences, in bulk.
    fn finish_loading(&mut self) {
        let Some(Loading { mut msgs, .. }) = self.loading.take() else {
            return;
        };
        msgs.retain(|(_, m)| m.segment != GONE);
        let mut by_subject: HashMap<Arc<str>, Vec<u64>> = HashMap::new();
        let mut last: Option<(Arc<str>, Vec<u64>)> = None;
        for (seq, m) in &msgs {
            // Runs of one subject are common: the map is looked up once per run.
            match &mut last {
                Some((subject, seqs)) if Arc::ptr_eq(subject, &m.subject) => seqs.push(*seq),
                _ => {
                    if let Some((subject, seqs)) = last.take() {
                        by_subject.entry(subject).or_default().extend(seqs);
                    }
                    last = Some((m.subject.clone(), vec![*seq]));
                }
            }
        }
        if let Some((subject, seqs)) = last {
            by_subject.entry(subject).or_default().extend(seqs);
        }
        // Sorted already: collected in place, then built in bulk.
        self.msgs = msgs.into_iter().collect();
        self.subjects = by_subject
            .into_iter()
            .map(|(subject, seqs)| (subject, seqs.into_iter().collect()))
            .collect();
    }

    /// Forgets `seq` in memory; false when it was not stored.
    fn unindex(&mut self, seq: u64) -> bool {
        if let Some(l) = &mut self.loading {
            let Ok(i) = l.msgs.binary_search_by_key(&seq, |(s, _)| *s) else {
                return false;
            };
            return forget_loaded(&mut l.msgs[i].1, &mut self.segments, &mut self.bytes);
        }
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
        if let Some(l) = &mut self.loading {
            let end = l.msgs.partition_point(|(s, _)| *s < first);
            for (_, m) in l.msgs.iter_mut().take(end).skip(l.cut) {
                forget_loaded(m, &mut self.segments, &mut self.bytes);
            }
            l.cut = l.cut.max(end);
        } else {
            let below: Vec<u64> = self.msgs.range(..first).map(|(s, _)| *s).collect();
            for s in below {
                self.unindex(s);
            }
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
        // The metadata too, so that older segments can go.
        self.write_meta()
    }

    /// Writes every metadata value as a record (buffered).
    fn write_meta(&mut self) -> io::Result<()> {
        let meta = std::mem::take(&mut self.meta);
        let result = meta
            .iter()
            .try_for_each(|(key, value)| self.write(&Record::Meta { key, value }).map(|_| ()));
        self.meta = meta;
        result
    }

    /// Sets metadata values (an empty value removes the key), written as records after
    /// everything appended so far (buffered; in a committed store, the commit key's record
    /// ends a batch, and a full segment is followed by a new one here).
    pub fn set_meta(&mut self, entries: &[(&str, &[u8])]) -> io::Result<()> {
        for (key, value) in entries {
            self.write(&Record::Meta { key, value })?;
            if value.is_empty() {
                self.meta.remove(*key);
            } else {
                self.meta.insert((*key).to_owned(), value.to_vec());
            }
        }
        if self.commit_key.is_some() {
            if let Some((&id, seg)) = self.segments.last_key_value() {
                if seg.size >= self.segment_bytes {
                    self.new_segment(id + 1)?;
                }
            }
            // Segments emptied by this batch go now that it is committed (synced first).
            self.drop_dead_segments()?;
        }
        Ok(())
    }

    /// A metadata value.
    pub fn meta(&self, key: &str) -> Option<&[u8]> {
        self.meta.get(key).map(Vec::as_slice)
    }

    /// The metadata values whose keys start with `prefix` (keys without it).
    pub fn metas(&self, prefix: &str) -> Vec<(&str, &[u8])> {
        self.meta
            .range(prefix.to_owned()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (&k[prefix.len()..], v.as_slice()))
            .collect()
    }

    /// Makes everything written durable and returns a view of exactly this state.
    pub fn view(&mut self) -> io::Result<StoreView> {
        self.flush()?;
        if let Some(f) = self.durable() {
            f.sync_data()?;
        }
        Ok(StoreView {
            segments: self
                .segments
                .iter()
                .map(|(id, s)| (*id, s.file.clone(), s.size))
                .collect(),
            meta: self.meta.clone(),
        })
    }

    /// Replaces the committed store in `dir` (closed by the caller) with a snapshot stream
    /// ([`StoreView::write_to`]'s format), checked whole before it replaces anything.
    pub fn install(
        dir: &Path,
        snapshot: &mut dyn io::Read,
        segment_bytes: u64,
        commit_key: &'static str,
    ) -> io::Result<StreamStore> {
        Self::receive_install(dir, snapshot, segment_bytes, commit_key)?;
        Self::finish_install(dir, segment_bytes, commit_key)
    }

    /// The first half of [`StreamStore::install`], which may run while the store in `dir` is
    /// still open and in use: receives and checks the snapshot beside it.
    pub fn receive_install(
        dir: &Path,
        snapshot: &mut dyn io::Read,
        segment_bytes: u64,
        commit_key: &'static str,
    ) -> io::Result<()> {
        let incoming = sibling(dir, "installing");
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)?;
        }
        std::fs::create_dir_all(&incoming)?;
        if let Err(e) = Self::receive(&incoming, snapshot, segment_bytes, commit_key) {
            // Nothing of a refused snapshot stays.
            let _ = std::fs::remove_dir_all(&incoming);
            return Err(e);
        }
        File::open(&incoming)?.sync_all()
    }

    /// The second half of [`StreamStore::install`], once the store in `dir` is closed: the
    /// received snapshot takes its place.
    pub fn finish_install(
        dir: &Path,
        segment_bytes: u64,
        commit_key: &'static str,
    ) -> io::Result<StreamStore> {
        let incoming = sibling(dir, "installing");
        let old = sibling(dir, "replaced");
        if dir.exists() {
            std::fs::rename(dir, &old)?;
        }
        std::fs::rename(&incoming, dir)?;
        if let Some(parent) = dir.parent() {
            File::open(parent)?.sync_all()?;
        }
        if old.exists() {
            std::fs::remove_dir_all(&old)?;
        }
        Self::open_with(dir, segment_bytes, Some(commit_key))
    }

    /// Writes a snapshot stream's segments into `incoming` and checks them by opening them.
    fn receive(
        incoming: &Path,
        snapshot: &mut dyn io::Read,
        segment_bytes: u64,
        commit_key: &'static str,
    ) -> io::Result<()> {
        let bad = |what: &str| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("stream snapshot: {what}"),
            )
        };
        let mut head = [0u8; 16];
        loop {
            match read_full(snapshot, &mut head)? {
                0 => break,
                16 => {}
                _ => return Err(bad("truncated segment header")),
            }
            let id = u64::from_le_bytes(head[..8].try_into().map_err(|_| bad("header"))?);
            let len = u64::from_le_bytes(head[8..].try_into().map_err(|_| bad("header"))?);
            let path = incoming.join(format!("{id:020}.seg"));
            let mut file = File::create(&path)?;
            let copied = io::copy(&mut io::Read::take(&mut *snapshot, len), &mut file)?;
            if copied != len {
                return Err(bad("truncated segment"));
            }
            file.sync_all()?;
        }
        // Checked by opening it (damage is an error; a snapshot ends at a commit record).
        drop(Self::open_with(incoming, segment_bytes, Some(commit_key))?);
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
            // A committed store starts segments only after a batch (in `set_meta`).
            if s.size >= self.segment_bytes && self.commit_key.is_none() {
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
            !headers.is_empty(),
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
        if self.commit_key.is_some() {
            // Deleted only after the batch's commit record (`set_meta`): a crash before it
            // cuts the batch's removal records, and the segment must still be there then.
            return Ok(());
        }
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
        let mut synced = false;
        while self.segments.len() > 1 {
            let Some((&id, seg)) = self.segments.first_key_value() else {
                break;
            };
            if seg.live > 0 {
                break;
            }
            if !synced {
                // The records that removed its messages are made durable before it goes:
                // what a crash leaves is then always some moment of the store.
                synced = true;
                self.flush()?;
                if let Some(f) = self.durable() {
                    f.sync_data()?;
                }
            }
            let Some((_, seg)) = self.segments.first_key_value() else {
                break;
            };
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

    /// The stored messages that carry headers, newest first, back to the first one stored
    /// before `since` (UNIX ns): what a message ID window is rebuilt from, without reading
    /// the others.
    pub fn with_headers_since(&self, since: i64) -> impl Iterator<Item = u64> + '_ {
        self.msgs
            .iter()
            .rev()
            .take_while(move |(_, m)| m.time >= since)
            .filter(|(_, m)| m.headers)
            .map(|(seq, _)| *seq)
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

    /// When the last message was stored (UNIX ns; 0 when none ever was).
    pub fn last_time(&self) -> i64 {
        self.last_time
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

/// `dir` with `.suffix` added to its name.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".");
    name.push(suffix);
    dir.with_file_name(name)
}

/// Finishes or forgets an install a crash interrupted: the old store renamed away with the
/// new one not in place yet is the new one's to take (it was complete and synced before the
/// rename); a half-received snapshot goes.
fn recover_install(dir: &Path) -> io::Result<()> {
    let incoming = sibling(dir, "installing");
    let old = sibling(dir, "replaced");
    if old.exists() {
        if !dir.exists() && incoming.exists() {
            std::fs::rename(&incoming, dir)?;
        }
        std::fs::remove_dir_all(&old)?;
    }
    if incoming.exists() {
        std::fs::remove_dir_all(&incoming)?;
    }
    Ok(())
}

/// Reads until `buf` is full or the input ends; returns how much was read.
fn read_full(r: &mut dyn io::Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A committed store as of one moment: its segment files (held open, so later removals do
/// not take them away) up to their sizes then, and its metadata.
#[derive(Debug)]
pub struct StoreView {
    segments: Vec<(u64, Arc<File>, u64)>,
    meta: BTreeMap<String, Vec<u8>>,
}

impl StoreView {
    /// A metadata value as of the view.
    pub fn meta(&self, key: &str) -> Option<&[u8]> {
        self.meta.get(key).map(Vec::as_slice)
    }

    /// Writes the view as a snapshot stream: each segment as `id u64 | length u64 | bytes`
    /// (little endian), chunk by chunk.
    pub fn write_to(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        let mut buf = vec![0u8; 256 * 1024];
        for (id, file, size) in &self.segments {
            let mut head = [0u8; 16];
            head[..8].copy_from_slice(&id.to_le_bytes());
            head[8..].copy_from_slice(&size.to_le_bytes());
            sink(&head)?;
            let mut at = 0u64;
            while at < *size {
                let n = ((*size - at) as usize).min(buf.len());
                file.read_exact_at(&mut buf[..n], at)?;
                sink(&buf[..n])?;
                at += n as u64;
            }
        }
        Ok(())
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

    /// What the indexes say, for comparing a store before and after a reopen.
    fn fingerprint(s: &StreamStore) -> (State, Vec<u64>, BTreeMap<String, u64>, Vec<Vec<u64>>) {
        let counts = s.subject_counts(">");
        let per_subject = counts.keys().map(|k| s.of_subject(k)).collect();
        (s.state(), s.matching(None), counts, per_subject)
    }

    /// Opening builds the indexes in bulk from what the segments hold: removals of messages
    /// in older segments, a bound that cuts below, a subject whose messages all went, and a
    /// store that goes on (appends, removals, dead segments deleted) after the reopen.
    #[test]
    fn a_reopen_rebuilds_the_same_indexes_in_bulk() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StreamStore::open_sized(dir.path(), 300).expect("open");
        for i in 0..60 {
            put(&mut s, &format!("k.{}", i % 4), &format!("m{i}"));
        }
        put(&mut s, "gone", "x");
        assert_eq!(s.remove(&[3, 17, 40, 61]).expect("remove"), 4);
        assert_eq!(s.remove_below(9).expect("cut"), 7);
        for i in 0..10 {
            put(&mut s, "k.9", &format!("late{i}"));
        }
        assert_eq!(s.remove(&[12, 65]).expect("remove"), 2);
        let before = fingerprint(&s);
        assert!(!before.2.contains_key("gone"));
        drop(s);
        let mut s = StreamStore::open_sized(dir.path(), 300).expect("reopen");
        assert_eq!(fingerprint(&s), before);
        // It goes on as before: new messages, removals, and segments emptied are deleted.
        let next = put(&mut s, "k.0", "after");
        assert_eq!(next, before.0.last_seq + 1);
        let all = s.matching(None);
        let many = segments(dir.path());
        assert_eq!(
            s.remove(&all[..all.len() - 1]).expect("remove"),
            all.len() as u64 - 1
        );
        assert!(segments(dir.path()) < many, "dead segments are deleted");
        assert_eq!(s.of_subject("k.0"), [next]);
        assert_eq!(s.state().messages, 1);
        drop(s);
        let s = StreamStore::open_sized(dir.path(), 300).expect("reopen");
        assert_eq!(s.matching(None), [next]);
        assert_eq!(s.state().first_seq, next);
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

    /// Applies a "batch" of messages to a committed store, ending it with its position.
    fn batch(s: &mut StreamStore, n: usize, applied: u64) {
        for i in 0..n {
            put(s, &format!("c.{}", i % 2), &format!("m{i}"));
        }
        s.set_meta(&[("applied", &applied.to_le_bytes())])
            .expect("meta");
        s.flush().expect("flush");
    }

    #[test]
    fn a_committed_store_keeps_whole_batches_only() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StreamStore::open_committed(dir.path(), 300, "applied").expect("open");
        for b in 1..=10 {
            batch(&mut s, 3, b);
        }
        assert!(
            segments(dir.path()) > 2,
            "segments roll over between batches"
        );
        // Half a batch, then a crash.
        put(&mut s, "c.0", "lost");
        s.set_meta(&[("config", b"{}")]).expect("meta");
        put(&mut s, "c.1", "lost");
        let before = s.state();
        assert_eq!(before.last_seq, 32);
        drop(s);
        let s = StreamStore::open_committed(dir.path(), 300, "applied").expect("reopen");
        assert_eq!(s.state().last_seq, 30, "the unfinished batch is cut");
        assert_eq!(s.meta("applied"), Some(&10u64.to_le_bytes()[..]));
        assert_eq!(
            s.meta("config"),
            None,
            "metadata of a cut batch goes with it"
        );
        let mut s = s;
        s.set_meta(&[
            ("c.a", b"1"),
            ("c.b", b"2"),
            ("d", b"3"),
            ("applied", &10u64.to_le_bytes()),
        ])
        .expect("meta");
        s.set_meta(&[("c.a", b""), ("applied", &10u64.to_le_bytes())])
            .expect("meta");
        drop(s);
        let s = StreamStore::open_committed(dir.path(), 300, "applied").expect("reopen");
        assert_eq!(
            s.metas("c."),
            vec![("b", &b"2"[..])],
            "an empty value removes"
        );
        // Every segment but the newest ends with a whole batch; the newest starts with the
        // metadata, so older segments can go.
        drop(s);
        let mut s = StreamStore::open_committed(dir.path(), 300, "applied").expect("reopen");
        let all: Vec<u64> = (1..=30).collect();
        s.remove(&all).expect("remove");
        s.set_meta(&[("applied", &11u64.to_le_bytes())])
            .expect("meta");
        drop(s);
        assert_eq!(segments(dir.path()), 1);
        let s = StreamStore::open_committed(dir.path(), 300, "applied").expect("reopen");
        assert_eq!((s.state().messages, s.state().last_seq), (0, 30));
        assert_eq!(s.meta("applied"), Some(&11u64.to_le_bytes()[..]));
    }

    /// A batch that empties the oldest segment and is cut short by a crash leaves the store
    /// as its last commit: the segment goes only with the batch's commit record.
    #[test]
    fn a_committed_store_deletes_segments_only_with_a_commit() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = StreamStore::open_committed(dir.path(), 300, "applied").expect("open");
        for b in 1..=4 {
            batch(&mut s, 3, b);
        }
        let at_commit = s.state();
        let before = segments(dir.path());
        s.remove(&(1..=9).collect::<Vec<_>>()).expect("remove");
        assert_eq!(segments(dir.path()), before, "not before the commit");
        drop(s);
        let s = StreamStore::open_committed(dir.path(), 300, "applied").expect("reopen");
        assert_eq!(s.state(), at_commit);
        let mut s = s;
        s.remove(&(1..=9).collect::<Vec<_>>()).expect("remove");
        s.set_meta(&[("applied", &5u64.to_le_bytes())])
            .expect("commit");
        assert!(segments(dir.path()) < before, "gone with the commit");
    }

    #[test]
    fn a_view_installs_as_the_same_store_at_its_moment() {
        let dir = tempfile::tempdir().expect("tmp");
        let src = dir.path().join("src");
        let mut s = StreamStore::open_committed(&src, 300, "applied").expect("open");
        for b in 1..=6 {
            batch(&mut s, 4, b);
        }
        s.remove(&[1, 2, 7]).expect("remove");
        s.set_meta(&[("applied", &7u64.to_le_bytes())])
            .expect("meta");
        let view = s.view().expect("view");
        let at_view = s.state();
        // Later work, old segments dropped included, does not change the view.
        batch(&mut s, 4, 8);
        let all: Vec<u64> = (1..=20).collect();
        s.remove(&all).expect("remove");
        s.set_meta(&[("applied", &9u64.to_le_bytes())])
            .expect("meta");
        assert_eq!(view.meta("applied"), Some(&7u64.to_le_bytes()[..]));
        let mut bytes = Vec::new();
        view.write_to(&mut |c| {
            bytes.extend_from_slice(c);
            Ok(())
        })
        .expect("write");
        let dst = dir.path().join("dst");
        // Replaces what was there.
        let mut old = StreamStore::open_committed(&dst, 300, "applied").expect("open");
        batch(&mut old, 50, 99);
        drop(old);
        let got = StreamStore::install(&dst, &mut &bytes[..], 300, "applied").expect("install");
        assert_eq!(got.state(), at_view);
        assert_eq!(got.meta("applied"), Some(&7u64.to_le_bytes()[..]));
        assert_eq!(
            got.get(3).expect("get").map(|m| m.payload),
            Some(b"m2".to_vec())
        );
        drop(got);
        // A damaged or cut snapshot is refused and the store is left as it was.
        let before = StreamStore::open_committed(&dst, 300, "applied")
            .expect("open")
            .state();
        for bad in [&bytes[..bytes.len() - 5], &bytes[..10]] {
            assert!(StreamStore::install(&dst, &mut &bad[..], 300, "applied").is_err());
            let s = StreamStore::open_committed(&dst, 300, "applied").expect("open");
            assert_eq!(s.state(), before);
        }
        let mut flipped = bytes.clone();
        let n = flipped.len();
        flipped[n / 3] ^= 0xff;
        assert!(StreamStore::install(&dst, &mut &flipped[..], 300, "applied").is_err());
        assert!(!dir.path().join("dst.installing").exists());
    }

    #[test]
    fn an_install_cut_short_by_a_crash_is_finished_or_forgotten() {
        let dir = tempfile::tempdir().expect("tmp");
        let d = dir.path().join("s");
        let mut s = StreamStore::open_committed(&d, 300, "applied").expect("open");
        batch(&mut s, 3, 1);
        drop(s);
        // Crash while receiving: the half-received copy goes, the store stays.
        std::fs::create_dir_all(dir.path().join("s.installing")).expect("mkdir");
        let s = StreamStore::open_committed(&d, 300, "applied").expect("open");
        assert_eq!(s.state().last_seq, 3);
        drop(s);
        assert!(!dir.path().join("s.installing").exists());
        // Crash between the two renames: the received copy is complete, and takes over.
        let mut other =
            StreamStore::open_committed(&dir.path().join("o"), 300, "applied").expect("open");
        batch(&mut other, 5, 2);
        drop(other);
        std::fs::rename(&d, dir.path().join("s.replaced")).expect("rename");
        std::fs::rename(dir.path().join("o"), dir.path().join("s.installing")).expect("rename");
        let s = StreamStore::open_committed(&d, 300, "applied").expect("open");
        assert_eq!(s.state().last_seq, 5);
        assert!(!dir.path().join("s.replaced").exists());
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
