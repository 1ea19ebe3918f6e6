//! Streams: JetStream's stored, sequenced messages. A [`Stream`] is a [`Config`] over a
//! [`StreamStore`], and applies JetStream's rules to each publish: the expected-stream,
//! expected-last-sequence (of the stream or of the subject) and expected-last-message-ID
//! conditions, `Nats-Msg-Id` deduplication within the duplicate window, the size, count,
//! bytes, per-subject and age limits with discard old or new, and rollups.
//!
//! The store does I/O (segment files); everything else here is rules. Durability is the
//! caller's: a publish is acknowledged only after the file [`StreamStore::durable`] gives has
//! been synced (the NATS face syncs once per batch of publishes).
//!
//! # Layout
//! - [`config`]: the stream's configuration, with JetStream's names, defaults and checks;
//! - [`headers`]: reading NATS header blocks;
//! - [`holes`]: sequences removed from the middle, as ranges;
//! - [`schedule`]: delayed and repeated delivery (`Nats-Schedule` headers);
//! - [`segment`]: the segment files' records;
//! - [`store`]: the segment files and their indexes.

pub mod command;
pub mod config;
pub mod headers;
pub mod holes;
pub mod schedule;
pub mod segment;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::path::Path;

pub use config::{Config, Discard, Retention, Storage};
pub use store::{State, StoreView, StoredMsg, StreamStore};

/// JetStream's "stream store failed".
const STORE_FAILED: u32 = 10049;

/// A JetStream API error: the HTTP-like code, JetStream's error code and its text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description} ({err_code})")]
pub struct ApiError {
    /// 400, 404, 500, 503 …
    pub code: u16,
    /// JetStream's code (`server/errors.json`).
    pub err_code: u32,
    /// Its text.
    pub description: String,
}

impl ApiError {
    /// An error with JetStream's code `err_code`.
    pub fn new(code: u16, err_code: u32, description: impl Into<String>) -> ApiError {
        ApiError {
            code,
            err_code,
            description: description.into(),
        }
    }

    /// A storage failure (500, 10049 "stream store failed").
    pub fn io(e: &std::io::Error) -> ApiError {
        ApiError::new(500, STORE_FAILED, format!("stream store failed: {e}"))
    }

    /// Whether this is a storage failure ([`ApiError::io`]) rather than a refusal.
    pub fn is_storage(&self) -> bool {
        self.err_code == STORE_FAILED
    }
}

/// A publish as the stream sees it.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// Its subject.
    pub subject: &'a str,
    /// Its headers block (empty: none).
    pub headers: &'a [u8],
    /// Its payload.
    pub payload: &'a [u8],
}

/// What a stored (or deduplicated) publish is answered with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck {
    /// The message's sequence (the original's, for a duplicate).
    pub seq: u64,
    /// True when an earlier publish with the same `Nats-Msg-Id` was stored instead.
    pub duplicate: bool,
}

/// A stream: its configuration, its messages and the message IDs of its duplicate window.
pub struct Stream {
    config: Config,
    store: StreamStore,
    /// Message ID → (sequence, time stored), for the duplicate window.
    ids: HashMap<String, (u64, i64)>,
    /// The same, oldest first, to expire them.
    id_order: VecDeque<(i64, String)>,
    /// The last message ID stored (for `Nats-Expected-Last-Msg-Id`).
    last_id: Option<String>,
    /// When the stream was created (UNIX nanoseconds).
    created: i64,
    /// Schedules waiting to fire.
    schedules: schedule::Table,
    /// A replicated stream's rules ([`Stream::replicated`]).
    replicated: bool,
}

impl Stream {
    /// Opens the stream's store in `dir` with `config` (checked), rebuilding the duplicate
    /// window from the messages stored within it.
    pub fn open(dir: &Path, config: Config, created: i64, now: i64) -> std::io::Result<Stream> {
        Self::from_store(StreamStore::open(dir)?, config, created, now)
    }

    /// A stream over an opened store (a replicated stream's committed store), rebuilding the
    /// duplicate window as of `now`.
    pub fn from_store(
        store: StreamStore,
        config: Config,
        created: i64,
        now: i64,
    ) -> std::io::Result<Stream> {
        let mut stream = Stream {
            config,
            store,
            ids: HashMap::new(),
            id_order: VecDeque::new(),
            last_id: None,
            created,
            schedules: schedule::Table::default(),
            replicated: false,
        };
        if stream.config.allow_msg_schedules {
            // The schedules stored: every message is read once (streams with schedules).
            for seq in stream.store.matching(None) {
                let Some(m) = stream.store.get(seq)? else {
                    continue;
                };
                let subjects = &stream.config.subjects;
                if let Ok(Some(s)) = schedule::parse(&m.headers, &m.subject, subjects, true) {
                    stream.schedules.add(&m.subject, seq, m.time, s);
                }
            }
        }
        let window = stream.config.duplicate_window_ns();
        let from = now.saturating_sub(window);
        // Only messages with headers can carry an ID: the others are not read.
        let window: Vec<u64> = stream.store.with_headers_since(from).collect();
        for seq in window {
            let Some(m) = stream.store.get(seq)? else {
                continue;
            };
            if let Some(id) = headers::get(&m.headers, "Nats-Msg-Id") {
                if stream.last_id.is_none() {
                    stream.last_id = Some(id.to_string());
                }
                stream.ids.entry(id.to_string()).or_insert((seq, m.time));
                stream.id_order.push_front((m.time, id.to_string()));
            }
        }
        Ok(stream)
    }

    /// The configuration.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// When it was created (UNIX nanoseconds).
    pub fn created(&self) -> i64 {
        self.created
    }

    /// Makes this a replicated stream's rules: a message ID is a duplicate only while its
    /// message is stored (within the window), and message times never go back (each
    /// replica's clock proposes publishes; the stream keeps them in order).
    pub fn replicated(&mut self) {
        self.replicated = true;
    }

    /// The last message ID stored (what `Nats-Expected-Last-Msg-Id` is checked against).
    pub fn last_msg_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Sets the last message ID stored: a replicated stream keeps it beside its messages,
    /// since the message that carried it may be gone (rebuilding it from what is stored
    /// would let a replica that restarted judge the header otherwise than the others).
    pub fn set_last_msg_id(&mut self, id: Option<String>) {
        self.last_id = id;
    }

    /// The store, for reads.
    pub fn store(&self) -> &StreamStore {
        &self.store
    }

    /// The store, for a replicated stream's metadata and views.
    pub fn store_mut(&mut self) -> &mut StreamStore {
        &mut self.store
    }

    /// The store, taken back (the stream is closed).
    pub fn into_store(self) -> StreamStore {
        self.store
    }

    /// Replaces the configuration (checked by the caller against the old one) and applies
    /// its limits.
    pub fn update(&mut self, config: Config, now: i64) -> Result<(), ApiError> {
        self.config = config;
        self.enforce_limits(None, now)
    }

    /// Stores one publish, or says why not. Not durable until the store's file is synced.
    pub fn publish(&mut self, p: Publish<'_>, now: i64) -> Result<PubAck, ApiError> {
        let now = if self.replicated {
            now.max(self.store.last_time())
        } else {
            now
        };
        self.expire_ids(now);
        let c = &self.config;
        if c.sealed {
            return Err(ApiError::new(
                400,
                10109,
                "invalid operation on sealed stream",
            ));
        }
        let h = p.headers;
        if let Some(expected) = headers::get(h, "Nats-Expected-Stream") {
            if expected != c.name {
                return Err(ApiError::new(400, 10060, "expected stream does not match"));
            }
        }
        let size = (p.headers.len() + p.payload.len()) as i64;
        if c.max_msg_size >= 0 && size > i64::from(c.max_msg_size) {
            return Err(ApiError::new(
                400,
                10054,
                "message size exceeds maximum allowed",
            ));
        }
        let msg_id = headers::get(h, "Nats-Msg-Id").filter(|id| !id.is_empty());
        if let Some(id) = msg_id {
            // A replicated stream counts only IDs whose messages are still stored: what a
            // replica rebuilds from its messages after a restart is then what the others
            // kept in memory.
            let counted = |seq: u64| !self.replicated || self.store.time_of(seq).is_some();
            if let Some((seq, _)) = self.ids.get(id).filter(|(seq, _)| counted(*seq)) {
                return Ok(PubAck {
                    seq: *seq,
                    duplicate: true,
                });
            }
        }
        let state = self.store.state();
        if let Some(v) = headers::get(h, "Nats-Expected-Last-Sequence") {
            let want: u64 = v.trim().parse().map_err(|_| bad_header(v))?;
            if want != state.last_seq {
                return Err(wrong_last(state.last_seq));
            }
        }
        if let Some(v) = headers::get(h, "Nats-Expected-Last-Subject-Sequence") {
            let want: u64 = v.trim().parse().map_err(|_| bad_header(v))?;
            let on =
                headers::get(h, "Nats-Expected-Last-Subject-Sequence-Subject").unwrap_or(p.subject);
            let last = self.store.last_matching(on).unwrap_or(0);
            if want != last {
                return Err(wrong_last(last));
            }
        }
        if let Some(want) = headers::get(h, "Nats-Expected-Last-Msg-Id") {
            let last = self.last_id.as_deref().unwrap_or("");
            if want != last {
                return Err(ApiError::new(
                    400,
                    10070,
                    format!("wrong last msg ID: {last}"),
                ));
            }
        }
        let rollup = headers::get(h, "Nats-Rollup");
        if let Some(r) = rollup {
            if !c.allow_rollup_hdrs {
                return Err(ApiError::new(500, 10111, "rollup not permitted"));
            }
            if r != "sub" && r != "all" {
                return Err(ApiError::new(
                    400,
                    10111,
                    format!("rollup value invalid: {r}"),
                ));
            }
        }
        if c.discard == Discard::New && rollup.is_none() {
            if c.max_msgs > 0 && state.messages as i64 >= c.max_msgs {
                return Err(ApiError::new(503, 10077, "maximum messages exceeded"));
            }
            let add = store::msg_size(p.subject, p.headers, p.payload) as i64;
            if c.max_bytes > 0 && state.bytes as i64 + add > c.max_bytes {
                return Err(ApiError::new(503, 10077, "maximum bytes exceeded"));
            }
        }
        if c.discard_new_per_subject && c.discard == Discard::New && c.max_msgs_per_subject > 0 {
            let held = self.store.of_subject(p.subject).len() as i64;
            if held >= c.max_msgs_per_subject {
                return Err(ApiError::new(
                    503,
                    10077,
                    "maximum messages per subject exceeded",
                ));
            }
        }
        let sched = schedule::parse(p.headers, p.subject, &c.subjects, c.allow_msg_schedules)?;
        let seq = self
            .store
            .append(p.subject, p.headers, p.payload, now)
            .map_err(|e| ApiError::io(&e))?;
        if let Some(s) = sched {
            if let Some(old) = self.schedules.add(p.subject, seq, now, s) {
                self.store.remove(&[old]).map_err(|e| ApiError::io(&e))?;
            }
        }
        if let Some(id) = msg_id {
            self.ids.insert(id.to_string(), (seq, now));
            self.id_order.push_back((now, id.to_string()));
            self.last_id = Some(id.to_string());
        }
        match rollup {
            Some("all") => {
                self.store.remove_below(seq).map_err(|e| ApiError::io(&e))?;
            }
            Some(_) => {
                let older: Vec<u64> = self
                    .store
                    .of_subject(p.subject)
                    .into_iter()
                    .filter(|s| *s < seq)
                    .collect();
                self.store.remove(&older).map_err(|e| ApiError::io(&e))?;
            }
            None => {}
        }
        self.enforce_limits(Some(p.subject), now)?;
        Ok(PubAck {
            seq,
            duplicate: false,
        })
    }

    fn expire_ids(&mut self, now: i64) {
        let from = now.saturating_sub(self.config.duplicate_window_ns());
        while let Some((t, _)) = self.id_order.front() {
            if *t >= from {
                break;
            }
            if let Some((_, id)) = self.id_order.pop_front() {
                if self.ids.get(&id).is_some_and(|(_, at)| *at < from) {
                    self.ids.remove(&id);
                }
            }
        }
    }

    /// Drops what the limits no longer allow: the oldest messages past max_msgs, max_bytes
    /// and max_age, and the subject's oldest past max_msgs_per_subject (all subjects' when
    /// `subject` is `None`).
    pub fn enforce_limits(&mut self, subject: Option<&str>, now: i64) -> Result<(), ApiError> {
        let c = &self.config;
        let io = |e: std::io::Error| ApiError::io(&e);
        if c.max_msgs_per_subject > 0 {
            let limit = c.max_msgs_per_subject as usize;
            let subjects: Vec<String> = match subject {
                Some(s) => vec![s.to_string()],
                None => self.store.subject_counts(">").into_keys().collect(),
            };
            for s in subjects {
                let seqs = self.store.of_subject(&s);
                if seqs.len() > limit {
                    let drop = &seqs[..seqs.len() - limit];
                    self.store.remove(drop).map_err(io)?;
                }
            }
        }
        let (max_msgs, max_bytes, max_age) = (c.max_msgs, c.max_bytes, c.max_age);
        let state = self.store.state();
        if max_msgs > 0 && state.messages as i64 > max_msgs {
            let keep_from = self.nth_oldest(state.messages - max_msgs as u64);
            self.store.remove_below(keep_from).map_err(io)?;
        }
        if max_bytes > 0 {
            while self.store.state().bytes as i64 > max_bytes {
                let Some((seq, _, _)) = self.store.oldest() else {
                    break;
                };
                self.store.remove_below(seq + 1).map_err(io)?;
            }
        }
        if max_age > 0 {
            self.expire(now)?;
        }
        Ok(())
    }

    /// The sequence after the `n` oldest messages.
    fn nth_oldest(&self, n: u64) -> u64 {
        self.store
            .nth_seq(n)
            .unwrap_or(self.store.state().last_seq + 1)
    }

    /// Drops messages older than max_age; returns how many.
    pub fn expire(&mut self, now: i64) -> Result<u64, ApiError> {
        let max_age = self.config.max_age;
        if max_age <= 0 {
            return Ok(0);
        }
        // Every message up to the first young one goes in one record.
        let upto = self.store.first_not_before(now.saturating_sub(max_age));
        self.store.remove_below(upto).map_err(|e| ApiError::io(&e))
    }

    /// Drops messages its consumers are done with (interest and work-queue retention; not
    /// subject to deny_delete); returns how many were stored.
    pub fn retire(&mut self, seqs: &[u64]) -> Result<u64, ApiError> {
        self.store.remove(seqs).map_err(|e| ApiError::io(&e))
    }

    /// Everything up to sequence `last` is synced: consumers may see it.
    pub fn mark_synced(&mut self, last: u64) {
        self.store.mark_synced(last);
    }

    /// When the next schedule fires (UNIX ns).
    pub fn next_schedule(&self) -> Option<i64> {
        self.schedules.next_due()
    }

    /// The repeating schedules' sequences and due times: a replicated stream keeps them
    /// beside its messages, since a reopened stream rebuilds each as due one period after
    /// it was stored, however often it has fired since.
    pub fn schedule_dues(&self) -> Vec<(u64, i64)> {
        self.schedules.repeating_dues()
    }

    /// Restores repeating schedules' due times kept by [`Stream::schedule_dues`] (those of
    /// schedules no longer stored are ignored).
    pub fn restore_schedule_dues(&mut self, dues: &[(u64, i64)]) {
        for (seq, due) in dues {
            self.schedules.set_due(*seq, *due);
        }
    }

    /// Fires the schedules due at `now`: each stores its message under its target (an `@at`
    /// schedule is then removed; an `@every` one is due again); returns how many messages
    /// were stored. Not durable until the store is synced.
    pub fn fire_schedules(&mut self, now: i64) -> Result<u64, ApiError> {
        let io = |e: std::io::Error| ApiError::io(&e);
        let mut produced = 0;
        for (seq, due, when, target) in self.schedules.take_due(now) {
            // Removed meanwhile (a purge, a limit, a delete): nothing to fire.
            let Some(m) = self.store.get(seq).map_err(io)? else {
                continue;
            };
            let hdrs = schedule::produced_headers(&m.headers, &m.subject);
            self.store
                .append(&target, &hdrs, &m.payload, now)
                .map_err(io)?;
            produced += 1;
            match when {
                schedule::When::At(_) => {
                    self.store.remove(&[seq]).map_err(io)?;
                }
                schedule::When::Every(every) => {
                    let mut next = due.saturating_add(every);
                    if next <= now {
                        next = now.saturating_add(every);
                    }
                    self.schedules
                        .again(&m.subject, seq, next, every, target.clone());
                }
            }
            self.enforce_limits(Some(&target), now)?;
        }
        Ok(produced)
    }

    /// Deletes one message (`MSG.DELETE`).
    pub fn delete(&mut self, seq: u64) -> Result<(), ApiError> {
        if self.config.deny_delete {
            return Err(ApiError::new(400, 10052, "message delete not permitted"));
        }
        if self.config.sealed {
            return Err(ApiError::new(
                400,
                10109,
                "invalid operation on sealed stream",
            ));
        }
        match self.store.remove(&[seq]) {
            Ok(1) => Ok(()),
            Ok(_) => Err(ApiError::new(500, 10057, "no message found")),
            Err(e) => Err(ApiError::io(&e)),
        }
    }

    /// Purges (`STREAM.PURGE`): messages whose subject `filter` reaches (all without one),
    /// below `seq` when given, keeping the `keep` newest when given; returns how many went.
    pub fn purge(
        &mut self,
        filter: Option<&str>,
        seq: Option<u64>,
        keep: Option<u64>,
    ) -> Result<u64, ApiError> {
        if self.config.deny_purge {
            return Err(ApiError::new(400, 10083, "stream purge not permitted"));
        }
        if self.config.sealed {
            return Err(ApiError::new(
                400,
                10109,
                "invalid operation on sealed stream",
            ));
        }
        let io = |e: std::io::Error| ApiError::io(&e);
        if seq.is_some() && keep.is_some() {
            return Err(ApiError::new(
                400,
                10003,
                "bad request: seq and keep together",
            ));
        }
        if filter.is_none() && keep.is_none() {
            let upto = seq.unwrap_or(u64::MAX);
            return self.store.remove_below(upto).map_err(io);
        }
        let mut seqs = self.store.matching(filter);
        if let Some(below) = seq {
            seqs.retain(|s| *s < below);
        }
        if let Some(k) = keep {
            // The `keep` newest of what the filter reaches stay (nats-server's PurgeEx).
            let n = seqs
                .len()
                .saturating_sub(usize::try_from(k).unwrap_or(usize::MAX));
            seqs.truncate(n);
        }
        seqs.sort_unstable();
        self.store.remove(&seqs).map_err(io)
    }

    /// Writes buffered records to the segment file (not synced).
    pub fn flush(&mut self) -> std::io::Result<()> {
        self.store.flush()
    }

    /// Deletes the stream's files.
    pub fn destroy(self) -> std::io::Result<()> {
        self.store.destroy()
    }
}

fn wrong_last(last: u64) -> ApiError {
    ApiError::new(400, 10071, format!("wrong last sequence: {last}"))
}

fn bad_header(v: &str) -> ApiError {
    ApiError::new(400, 10003, format!("bad request: invalid sequence {v:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stream(dir: &Path, f: impl FnOnce(&mut Config)) -> Stream {
        let mut c = Config::named("S", vec!["s.>".into()]);
        f(&mut c);
        c.check().expect("valid config");
        Stream::open(dir, c, 0, 0).expect("open")
    }

    fn publish(s: &mut Stream, subject: &str, headers: &str, now: i64) -> Result<PubAck, ApiError> {
        s.publish(
            Publish {
                subject,
                headers: headers.as_bytes(),
                payload: b"x",
            },
            now,
        )
    }

    const SEC: i64 = 1_000_000_000;

    #[test]
    fn message_ids_deduplicate_within_the_window_and_survive_reopen() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir.path(), |c| c.duplicate_window = 10 * SEC);
        let id = "NATS/1.0\r\nNats-Msg-Id: a1\r\n\r\n";
        assert_eq!(
            publish(&mut s, "s.1", id, SEC),
            Ok(PubAck {
                seq: 1,
                duplicate: false
            })
        );
        assert_eq!(
            publish(&mut s, "s.1", id, 2 * SEC),
            Ok(PubAck {
                seq: 1,
                duplicate: true
            })
        );
        // Newer messages without an ID (with and without headers) do not hide it.
        publish(&mut s, "s.2", "", 2 * SEC).expect("plain");
        publish(&mut s, "s.3", "NATS/1.0\r\nTrace: 1\r\n\r\n", 2 * SEC).expect("headers");
        let config = s.config().clone();
        drop(s);
        let mut s = Stream::open(dir.path(), config, 0, 3 * SEC).expect("reopen");
        assert_eq!(
            publish(&mut s, "s.1", id, 3 * SEC),
            Ok(PubAck {
                seq: 1,
                duplicate: true
            })
        );
        // Past the window the same ID is a new message.
        assert_eq!(
            publish(&mut s, "s.1", id, 20 * SEC).map(|a| a.duplicate),
            Ok(false)
        );
        assert_eq!(s.store().state().messages, 4);
    }

    #[test]
    fn expected_headers_are_checked_as_jetstream_checks_them() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir.path(), |_| {});
        publish(&mut s, "s.a", "", 0).expect("first");
        let e = publish(
            &mut s,
            "s.a",
            "NATS/1.0\r\nNats-Expected-Stream: T\r\n\r\n",
            0,
        );
        assert_eq!(e.map_err(|e| e.err_code), Err(10060));
        let e = publish(
            &mut s,
            "s.a",
            "NATS/1.0\r\nNats-Expected-Last-Sequence: 5\r\n\r\n",
            0,
        )
        .expect_err("wrong last");
        assert_eq!(
            (e.code, e.err_code, e.description.as_str()),
            (400, 10071, "wrong last sequence: 1")
        );
        publish(
            &mut s,
            "s.b",
            "NATS/1.0\r\nNats-Expected-Last-Sequence: 1\r\n\r\n",
            0,
        )
        .expect("right");
        // Per subject: 0 means "the subject has none" (KV create).
        let create = "NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 0\r\n\r\n";
        publish(&mut s, "s.c", create, 0).expect("new subject");
        let e = publish(&mut s, "s.c", create, 0).expect_err("exists");
        assert_eq!(e.description, "wrong last sequence: 3");
        publish(
            &mut s,
            "s.c",
            "NATS/1.0\r\nNats-Expected-Last-Subject-Sequence: 3\r\nNats-Msg-Id: m\r\n\r\n",
            0,
        )
        .expect("update");
        let e = publish(
            &mut s,
            "s.d",
            "NATS/1.0\r\nNats-Expected-Last-Msg-Id: z\r\n\r\n",
            0,
        )
        .expect_err("wrong id");
        assert_eq!(
            (e.err_code, e.description.as_str()),
            (10070, "wrong last msg ID: m")
        );
    }

    #[test]
    fn limits_discard_old_or_refuse_new() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir.path(), |c| {
            c.max_msgs = 3;
            c.max_msgs_per_subject = 2;
        });
        for subject in ["s.a", "s.a", "s.a", "s.b", "s.c"] {
            publish(&mut s, subject, "", 0).expect("publish");
        }
        // s.a kept its 2 newest (2, 3), then max_msgs kept the 3 newest overall.
        assert_eq!(s.store().matching(None), [3, 4, 5]);
        let dir2 = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir2.path(), |c| {
            c.max_msgs = 2;
            c.discard = Discard::New;
        });
        publish(&mut s, "s.a", "", 0).expect("1");
        publish(&mut s, "s.a", "", 0).expect("2");
        let e = publish(&mut s, "s.a", "", 0).expect_err("full");
        assert_eq!(
            (e.code, e.err_code, e.description.as_str()),
            (503, 10077, "maximum messages exceeded")
        );
        let dir3 = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir3.path(), |c| c.max_age = 10 * SEC);
        publish(&mut s, "s.a", "", 0).expect("old");
        publish(&mut s, "s.a", "", 5 * SEC).expect("young");
        assert_eq!(s.expire(12 * SEC), Ok(1));
        assert_eq!(s.store().matching(None), [2]);
    }

    #[test]
    fn schedules_fire_at_their_time_once_or_every_period() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir.path(), |c| c.allow_msg_schedules = true);
        let at = "NATS/1.0\r\nNats-Schedule: @at 1970-01-01T00:00:10Z\r\nNats-Schedule-Target: s.due\r\nTrace: 1\r\n\r\n";
        publish(&mut s, "s.sched.a", at, 0).expect("schedule");
        let every = "NATS/1.0\r\nNats-Schedule: @every 5s\r\nNats-Schedule-Target: s.tick\r\n\r\n";
        publish(&mut s, "s.sched.b", every, 0).expect("schedule");
        assert_eq!(s.next_schedule(), Some(5 * SEC));
        assert_eq!(s.fire_schedules(4 * SEC), Ok(0));
        assert_eq!(s.fire_schedules(5 * SEC), Ok(1));
        assert_eq!(s.fire_schedules(10 * SEC), Ok(2));
        let subjects: Vec<String> = s
            .store()
            .matching(None)
            .into_iter()
            .filter_map(|q| s.store().get(q).ok().flatten().map(|m| m.subject))
            .collect();
        // The @at schedule is gone; the @every one stays; three produced messages.
        assert_eq!(subjects, ["s.sched.b", "s.tick", "s.due", "s.tick"]);
        let due = s
            .store()
            .get(s.store().last_matching("s.due").expect("due"))
            .expect("read")
            .expect("stored");
        assert_eq!(
            due.headers,
            b"NATS/1.0\r\nTrace: 1\r\nNats-Scheduler: s.sched.a\r\n\r\n"
        );
        // The schedules survive a reopen.
        let config = s.config().clone();
        drop(s);
        let mut s = Stream::open(dir.path(), config, 0, 11 * SEC).expect("reopen");
        assert_eq!(
            s.next_schedule(),
            Some(5 * SEC),
            "due again from when it was stored"
        );
        assert_eq!(s.fire_schedules(11 * SEC), Ok(1));
        let dir2 = tempfile::tempdir().expect("tmp");
        let mut off = stream(dir2.path(), |_| {});
        assert_eq!(
            publish(&mut off, "s.x", every, 0).map_err(|e| e.err_code),
            Err(10188)
        );
    }

    #[test]
    fn rollups_purges_and_deletes() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir.path(), |c| c.allow_rollup_hdrs = true);
        for subject in ["s.a", "s.b", "s.a", "s.b"] {
            publish(&mut s, subject, "", 0).expect("publish");
        }
        publish(&mut s, "s.a", "NATS/1.0\r\nNats-Rollup: sub\r\n\r\n", 0).expect("rollup sub");
        assert_eq!(s.store().matching(None), [2, 4, 5]);
        assert_eq!(s.purge(Some("s.b"), None, Some(1)), Ok(1));
        assert_eq!(s.store().matching(None), [4, 5]);
        assert_eq!(s.delete(4), Ok(()));
        assert_eq!(s.delete(4).map_err(|e| e.err_code), Err(10057));
        publish(&mut s, "s.c", "NATS/1.0\r\nNats-Rollup: all\r\n\r\n", 0).expect("rollup all");
        assert_eq!(s.store().matching(None), [6]);
        assert_eq!(s.purge(None, None, None), Ok(1));
        let st = s.store().state();
        assert_eq!((st.messages, st.first_seq, st.last_seq), (0, 7, 6));
        let dir2 = tempfile::tempdir().expect("tmp");
        let mut s = stream(dir2.path(), |_| {});
        let e = publish(&mut s, "s.a", "NATS/1.0\r\nNats-Rollup: sub\r\n\r\n", 0)
            .expect_err("not allowed");
        assert_eq!((e.code, e.err_code), (500, 10111));
    }
}
