//! JetStream on a single member: streams stored under `<data-dir>/jetstream/streams/<name>/`
//! (the configuration in `config.json`, the messages in segment files), the `$JS.API` requests
//! that manage and read them (`api`), and publishes to their subjects stored and acknowledged.
//!
//! Every stream has a writer thread: publishes queue for it, it stores a batch of them, syncs
//! the segment file once (`fdatasync`) and only then sends each publish its acknowledgement, so
//! no acknowledged message is lost to a crash and a busy stream pays one sync per batch.
//!
//! This is JetStream while the member is the only member of its cluster. In a cluster,
//! streams are replicated Raft groups instead (`cluster`).

pub mod api;
pub mod cluster;
pub mod consumers;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use berth_messaging::stream::{ApiError, Config, PubAck, Publish, Stream};
use berth_messaging::Sublist;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::Hub;

/// How often a writer with nothing to store checks its stream's max_age.
const EXPIRE_EVERY: Duration = Duration::from_secs(1);
/// Publishes one writer stores before it syncs.
const BATCH: usize = 4096;

/// What `config.json` holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    config: Config,
    /// UNIX nanoseconds.
    created: i64,
}

/// Called with a publish's outcome once it is stored and synced (or refused).
pub(crate) type Done = Box<dyn FnOnce(&Result<PubAck, ApiError>) + Send>;

/// A publish waiting for its stream's writer.
struct Pending {
    subject: String,
    headers: Option<Bytes>,
    payload: Bytes,
    reply: Option<String>,
    done: Option<Done>,
}

/// A stream and its writer's queue.
pub(crate) struct StreamHandle {
    name: String,
    /// Its directory.
    dir: PathBuf,
    /// `None` once deleted. A replicated stream's is its group's, shared.
    stream: Arc<Mutex<Option<Stream>>>,
    queue: Mutex<Option<mpsc::Sender<Pending>>>,
    /// Its consumers (locked before `stream` when both are).
    consumers: Mutex<consumers::Consumers>,
    /// Wakes the consumers' dispatcher (messages stored, requests, acks).
    wake: tokio::sync::Notify,
    /// Dead letters confirmed while the consumers were locked: (consumer, sequence), for
    /// the dispatcher to apply.
    confirmed: Mutex<Vec<(String, u64)>>,
    /// The consumers' filters (an empty list: every subject), for the writer of an
    /// interest stream, which drops a message no consumer is interested in.
    interest: RwLock<Vec<Vec<String>>>,
    /// A replicated stream's: where consumer states go to be proposed to its group (a
    /// member's own stream saves them to files).
    saver: Option<tokio::sync::mpsc::UnboundedSender<consumers::SaverMsg>>,
    /// True once a replicated stream's leader stepped down (its dispatcher ends).
    closed: std::sync::atomic::AtomicBool,
}

impl StreamHandle {
    /// The consumers' runtime of a replicated stream on its group's leader: the group's
    /// stream, the consumers restored from their replicated states, and their saver.
    pub(crate) fn replicated(
        name: &str,
        stream: Arc<Mutex<Option<Stream>>>,
        consumers: consumers::Consumers,
        saver: tokio::sync::mpsc::UnboundedSender<consumers::SaverMsg>,
    ) -> Arc<StreamHandle> {
        let handle = Arc::new(StreamHandle {
            name: name.to_string(),
            // Its files are its group's: this handle never reopens them itself.
            dir: PathBuf::new(),
            stream,
            queue: Mutex::new(None),
            consumers: Mutex::new(consumers),
            wake: tokio::sync::Notify::new(),
            confirmed: Mutex::default(),
            interest: RwLock::default(),
            saver: Some(saver),
            closed: Default::default(),
        });
        handle.refresh_interest();
        handle
    }

    /// Ends a replicated stream's consumers' runtime here (leadership moved away).
    pub(crate) fn close(&self) {
        self.closed
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.wake.notify_one();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Stream>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn consumers(&self) -> std::sync::MutexGuard<'_, consumers::Consumers> {
        self.consumers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Copies the consumers' filters for the writer (after a consumer is added or removed).
    fn refresh_interest(&self) {
        let filters = self.consumers().filters();
        *self.interest.write().unwrap_or_else(|p| p.into_inner()) = filters;
    }

    /// Whether some consumer is interested in `subject`.
    fn interested(&self, subject: &str) -> bool {
        self.interest
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .any(|f| {
                f.is_empty()
                    || f.iter()
                        .any(|f| berth_messaging::subject::matches(f, subject))
            })
    }
}

/// A member's streams.
pub struct JetStream {
    dir: PathBuf,
    streams: RwLock<BTreeMap<String, Arc<StreamHandle>>>,
    /// Stream subjects → stream name.
    subjects: RwLock<Sublist<String>>,
    /// API requests answered, and those answered with an error.
    api_total: std::sync::atomic::AtomicU64,
    api_errors: std::sync::atomic::AtomicU64,
    /// Streams open: while 0 a publish skips the subject table.
    count: std::sync::atomic::AtomicUsize,
    /// Held across a stream's create, update or delete (check and change as one step).
    lifecycle: Mutex<()>,
}

/// UNIX nanoseconds now.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

impl JetStream {
    /// The streams under `data_dir`, opened (a stream that cannot be opened is logged and
    /// left out).
    pub fn open(data_dir: &Path) -> JetStream {
        let js = JetStream {
            dir: data_dir.join("jetstream").join("streams"),
            streams: RwLock::default(),
            subjects: RwLock::new(Sublist::new()),
            api_total: Default::default(),
            api_errors: Default::default(),
            count: Default::default(),
            lifecycle: Mutex::new(()),
        };
        let Ok(entries) = std::fs::read_dir(&js.dir) else {
            return js;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match Self::load(&path) {
                Ok((stream, _)) => {
                    let name = stream.config().name.clone();
                    let last = stream.store().state().last_seq;
                    let consumers = consumers::Consumers::open(&path, last);
                    tracing::info!(stream = %name, consumers = consumers.len(), "JetStream stream opened");
                    js.add(stream, consumers);
                }
                Err(e) => tracing::error!(
                    dir = %path.display(),
                    error = %e,
                    "JetStream stream not opened: its API answers as if it did not exist"
                ),
            }
        }
        js
    }

    fn load(dir: &Path) -> std::io::Result<(Stream, i64)> {
        let saved: Saved = serde_json::from_slice(&std::fs::read(dir.join("config.json"))?)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        let stream = Stream::open(dir, saved.config, saved.created, now_ns())?;
        Ok((stream, saved.created))
    }

    /// Serializes stream creation, update and deletion.
    fn lifecycle(&self) -> std::sync::MutexGuard<'_, ()> {
        self.lifecycle.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn streams(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Arc<StreamHandle>>> {
        self.streams.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn stream(&self, name: &str) -> Option<Arc<StreamHandle>> {
        self.streams().get(name).cloned()
    }

    /// Registers an opened stream with its consumers.
    fn add(&self, stream: Stream, consumers: consumers::Consumers) -> Arc<StreamHandle> {
        let name = stream.config().name.clone();
        let subjects = stream.config().subjects.clone();
        let handle = Arc::new(StreamHandle {
            dir: self.dir.join(&name),
            name: name.clone(),
            stream: Arc::new(Mutex::new(Some(stream))),
            queue: Mutex::new(None),
            consumers: Mutex::new(consumers),
            wake: tokio::sync::Notify::new(),
            confirmed: Mutex::default(),
            interest: RwLock::default(),
            saver: None,
            closed: Default::default(),
        });
        handle.refresh_interest();
        {
            let mut table = self.subjects.write().unwrap_or_else(|p| p.into_inner());
            for s in &subjects {
                table.insert(s, None, name.clone());
            }
        }
        self.streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, handle.clone());
        self.count
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        handle
    }

    /// Starts the writer threads of every stream (once the hub exists: they acknowledge
    /// through it).
    pub(crate) fn start_writers(&self, hub: &Arc<Hub>) {
        for handle in self.streams().values() {
            start_writer(hub, handle);
        }
    }

    /// The stream whose subjects `subject` matches.
    fn stream_for(&self, subject: &str) -> Option<Arc<StreamHandle>> {
        let m = self
            .subjects
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .matches(subject);
        let name = m.plain.first()?;
        self.stream(name)
    }

    /// Queues a publish for the stream `subject` belongs to; false when none does.
    pub(crate) fn store(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Bytes>,
        payload: &Bytes,
    ) -> bool {
        self.store_then(subject, reply, headers, payload, None)
    }

    /// [`JetStream::store`], calling `done` with the outcome once it is durable (or refused);
    /// false (and `done` not called) when no stream takes `subject`.
    pub(crate) fn store_then(
        &self,
        subject: &str,
        reply: Option<&str>,
        headers: Option<&Bytes>,
        payload: &Bytes,
        done: Option<Done>,
    ) -> bool {
        if self.count.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            return false;
        }
        let Some(handle) = self.stream_for(subject) else {
            return false;
        };
        let queue = handle.queue.lock().unwrap_or_else(|p| p.into_inner());
        let Some(tx) = queue.as_ref() else {
            return false;
        };
        tx.send(Pending {
            subject: subject.to_string(),
            headers: headers.cloned(),
            payload: payload.clone(),
            reply: reply.map(str::to_string),
            done,
        })
        .is_ok()
    }

    /// Forgets a stream's subjects and stops its writer.
    fn remove(&self, handle: &StreamHandle) {
        let removed = self
            .streams
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&handle.name);
        if removed.is_some() {
            self.count
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
        // The stream's subjects first, then the table (never the table's lock while waiting
        // for a stream's).
        let subjects = handle
            .lock()
            .as_ref()
            .map(|s| s.config().subjects.clone())
            .unwrap_or_default();
        let mut table = self.subjects.write().unwrap_or_else(|p| p.into_inner());
        for subject in &subjects {
            table.remove(subject, None, &handle.name);
        }
        drop(table);
        handle
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }

    /// Names of the streams, and whether any other than `except` has a subject overlapping
    /// one of `subjects`.
    fn overlaps(&self, except: &str, subjects: &[String]) -> bool {
        self.streams().iter().any(|(name, h)| {
            name != except
                && h.lock().as_ref().is_some_and(|s| {
                    s.config().subjects.iter().any(|a| {
                        subjects
                            .iter()
                            .any(|b| berth_messaging::subject::overlaps(a, b))
                    })
                })
        })
    }

    /// Creates a stream (checked config, its name free: the caller holds the lifecycle
    /// lock); its directory and `config.json` are durable before it is answered.
    fn create(&self, hub: &Arc<Hub>, config: Config) -> Result<Arc<StreamHandle>, ApiError> {
        let dir = self.dir.join(&config.name);
        let created = now_ns();
        let io = |e: std::io::Error| ApiError::io(&e);
        std::fs::create_dir_all(&dir).map_err(io)?;
        let saved = Saved {
            config: config.clone(),
            created,
        };
        let json =
            serde_json::to_vec(&saved).map_err(|e| ApiError::new(500, 10049, e.to_string()))?;
        crate::durable_file::write(&dir.join("config.json"), &json).map_err(io)?;
        let stream = Stream::open(&dir, config, created, created).map_err(io)?;
        let handle = self.add(stream, consumers::Consumers::default());
        start_writer(hub, &handle);
        Ok(handle)
    }

    /// Replaces a stream's configuration (checked against the old one), durably.
    fn update(&self, handle: &StreamHandle, config: Config) -> Result<(), ApiError> {
        let mut guard = handle.lock();
        let stream = guard
            .as_mut()
            .ok_or_else(|| ApiError::new(404, 10059, "stream not found"))?;
        stream.config().check_update(&config)?;
        let saved = Saved {
            config: config.clone(),
            created: stream.created(),
        };
        let json =
            serde_json::to_vec(&saved).map_err(|e| ApiError::new(500, 10049, e.to_string()))?;
        crate::durable_file::write(&self.dir.join(&handle.name).join("config.json"), &json)
            .map_err(|e| ApiError::io(&e))?;
        let old = stream.config().subjects.clone();
        stream.update(config.clone(), now_ns())?;
        drop(guard);
        let mut table = self.subjects.write().unwrap_or_else(|p| p.into_inner());
        for s in &old {
            table.remove(s, None, &handle.name);
        }
        for s in &config.subjects {
            table.insert(s, None, handle.name.clone());
        }
        Ok(())
    }

    /// Deletes a stream and its files.
    fn delete(&self, handle: &StreamHandle) -> Result<(), ApiError> {
        self.remove(handle);
        let stream = handle.lock().take();
        handle.wake.notify_one();
        if let Some(s) = stream {
            s.destroy().map_err(|e| ApiError::io(&e))?;
        }
        Ok(())
    }
}

/// Starts `handle`'s writer thread: it stores queued publishes in batches, syncs, then
/// acknowledges them; and drops messages past max_age while idle.
fn start_writer(hub: &Arc<Hub>, handle: &Arc<StreamHandle>) {
    let (tx, rx) = mpsc::channel::<Pending>();
    *handle.queue.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
    tokio::spawn(consumers::dispatch(Arc::downgrade(hub), handle.clone()));
    let (hub, handle) = (Arc::downgrade(hub), handle.clone());
    let spawned = std::thread::Builder::new()
        .name(format!("js-{}", handle.name))
        .spawn(move || write_loop(&hub, &handle, &rx));
    if let Err(e) = spawned {
        tracing::error!(error = %e, "JetStream: could not start a stream writer");
    }
}

fn write_loop(hub: &std::sync::Weak<Hub>, handle: &StreamHandle, rx: &mpsc::Receiver<Pending>) {
    let mut batch = Vec::with_capacity(64);
    loop {
        // Idle until a publish, the next schedule, or the next max_age check.
        let wait = handle
            .lock()
            .as_ref()
            .and_then(Stream::next_schedule)
            .map_or(EXPIRE_EVERY, |due| {
                Duration::from_nanos(u64::try_from(due - now_ns()).unwrap_or(0)).min(EXPIRE_EVERY)
            });
        match rx.recv_timeout(wait) {
            Ok(p) => batch.push(p),
            Err(mpsc::RecvTimeoutError::Timeout) => {
                timed_work(handle);
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        }
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let (answers, synced) = store_batch(handle, &batch);
        // Consumers see the new messages.
        handle.wake.notify_one();
        let Some(hub) = hub.upgrade() else { return };
        hub.core.metrics.js_batches.inc();
        for (p, answer) in batch.drain(..).zip(answers) {
            let answer = match (answer, &synced) {
                (Ok(ack), Ok(())) => Ok(ack),
                (Ok(_), Err(e)) => Err(e.clone()),
                (Err(e), _) => Err(e),
            };
            if answer.is_ok() {
                hub.core.metrics.js_stored.inc();
            }
            if let Some(done) = p.done {
                done(&answer);
            }
            let (Some(reply), Some(no_ack)) = (p.reply, no_ack_of(handle)) else {
                continue;
            };
            if no_ack {
                continue;
            }
            let body = api::pub_ack(&handle.name, answer);
            hub.inject(&reply, None, &Bytes::from(body));
        }
    }
}

/// A writer's timed work: messages past max_age go, due schedules fire (their messages
/// stored durably before consumers are told).
fn timed_work(handle: &StreamHandle) {
    let mut guard = handle.lock();
    let Some(s) = guard.as_mut() else { return };
    let now = now_ns();
    if let Err(e) = s.expire(now) {
        tracing::error!(stream = %handle.name, error = %e, "JetStream: expiring messages failed");
    }
    let fired = match s.fire_schedules(now) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(stream = %handle.name, error = %e, "JetStream: firing schedules failed");
            0
        }
    };
    let flushed = s.flush();
    let last = s.store().state().last_seq;
    let file = s.store().durable();
    drop(guard);
    if fired == 0 {
        return;
    }
    let synced = flushed.and_then(|()| file.map_or(Ok(()), |f| f.sync_data()));
    match synced {
        Ok(()) => {
            if let Some(s) = handle.lock().as_mut() {
                s.mark_synced(last);
            }
        }
        Err(e) => {
            tracing::error!(stream = %handle.name, error = %e, "JetStream: syncing fired schedules failed; the stream is reopened from its files");
            reopen(handle);
        }
    }
    handle.wake.notify_one();
}

fn no_ack_of(handle: &StreamHandle) -> Option<bool> {
    handle.lock().as_ref().map(|s| s.config().no_ack)
}

/// Stores a batch under the stream's lock, then syncs (outside it); one answer per publish,
/// and whether the sync succeeded. A storage failure anywhere in the batch fails every
/// publish of it and reopens the stream from its files, so no publish is acknowledged that
/// is not on disk and the indexes and message IDs are what the files hold.
fn store_batch(
    handle: &StreamHandle,
    batch: &[Pending],
) -> (Vec<Result<PubAck, ApiError>>, Result<(), ApiError>) {
    let mut guard = handle.lock();
    let Some(stream) = guard.as_mut() else {
        let gone = ApiError::new(404, 10059, "stream not found");
        return (batch.iter().map(|_| Err(gone.clone())).collect(), Ok(()));
    };
    let now = now_ns();
    let interest_only = stream.config().retention == berth_messaging::stream::Retention::Interest;
    let answers: Vec<Result<PubAck, ApiError>> = batch
        .iter()
        .map(|p| {
            let ack = stream.publish(
                Publish {
                    subject: &p.subject,
                    headers: p.headers.as_deref().unwrap_or_default(),
                    payload: &p.payload,
                },
                now,
            )?;
            // An interest stream keeps nothing nobody is interested in (the publish is
            // still acknowledged, as nats-server does).
            if interest_only && !ack.duplicate && !handle.interested(&p.subject) {
                stream.retire(&[ack.seq])?;
            }
            Ok(ack)
        })
        .collect();
    if let Err(e) = stream.fire_schedules(now) {
        tracing::error!(stream = %handle.name, error = %e, "JetStream: firing schedules failed");
    }
    let flushed = stream.flush().map_err(|e| ApiError::io(&e));
    let last = stream.store().state().last_seq;
    let file = stream.store().durable();
    drop(guard);
    let synced = match (flushed, file) {
        (Err(e), _) => Err(e),
        (Ok(()), Some(f)) => f.sync_data().map_err(|e| ApiError::io(&e)),
        (Ok(()), None) => Ok(()),
    };
    let storage_failed = answers.iter().find_map(|a| {
        a.as_ref()
            .err()
            .filter(|e| e.err_code == STORE_FAILED)
            .cloned()
    });
    match synced.clone().err().or(storage_failed) {
        None => {
            if let Some(s) = handle.lock().as_mut() {
                s.mark_synced(last);
            }
            (answers, synced)
        }
        Some(e) => {
            tracing::error!(stream = %handle.name, error = %e, "JetStream: storing a batch failed; every publish of it is refused and the stream reopened from its files");
            reopen(handle);
            (batch.iter().map(|_| Err(e.clone())).collect(), Err(e))
        }
    }
}

/// JetStream's code for a storage failure.
const STORE_FAILED: u32 = 10049;

/// Replaces a stream's in-memory state with what its files hold (after a storage failure);
/// a stream that cannot be reopened is taken offline.
fn reopen(handle: &StreamHandle) {
    let mut guard = handle.lock();
    let Some(old) = guard.take() else { return };
    let (config, created) = (old.config().clone(), old.created());
    drop(old);
    match Stream::open(&handle.dir, config, created, now_ns()) {
        Ok(s) => *guard = Some(s),
        Err(e) => {
            tracing::error!(stream = %handle.name, error = %e, "JetStream: the stream could not be reopened and is offline")
        }
    }
}
