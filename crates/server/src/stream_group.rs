//! A replicated stream's Raft group state: the stream (its rules and its committed segment
//! store), seen by consensus through the byte-level [`GroupState`] operations. Commands and
//! outcomes cross as [`berth_messaging::stream::command`] encodes them.
//!
//! Every applied batch ends with one metadata record in the stream's newest segment: the
//! group's applied log position (and, when it changed, the stream's configuration), so a
//! replica that restarts holds exactly the batches up to that record, and Raft applies the
//! rest again. Applying needs no fsync of its own: the Raft log holds the commands. A snapshot
//! is the segment files as of one batch ([`StoreView`]); installing one replaces the store
//! whole.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use std::collections::BTreeMap;

use berth_consensus::{ApplyError, GroupState, GroupView};
use berth_messaging::consumer::ConsumerConfig;
use berth_messaging::stream::command::{Command, Outcome};
use berth_messaging::stream::{ApiError, Config, Retention, StoreView, Stream, StreamStore};
use serde::{Deserialize, Serialize};

/// The metadata key consensus writes the applied log position under (its `raft.state`): the
/// record that ends a batch.
const APPLIED_KEY: &str = "raft.state";
/// The metadata key of the stream's configuration.
const CONFIG_KEY: &str = "config";
/// The metadata key of the last message ID stored (empty value: none).
const LAST_ID_KEY: &str = "last_msg_id";
/// The metadata key of the newest consumers' epoch (the term of the leader that last
/// fenced or saved them), u64 little endian.
const EPOCH_KEY: &str = "consumer_epoch";
/// The metadata keys of the consumers' saved states: this and the consumer's name.
const CONSUMER_PREFIX: &str = "consumer.";
/// The metadata key of the repeating schedules' due times: (sequence u64, due i64) pairs,
/// little endian.
const SCHEDULES_KEY: &str = "schedule_dues";

fn encode_dues(dues: &[(u64, i64)]) -> Vec<u8> {
    dues.iter()
        .flat_map(|(seq, due)| seq.to_le_bytes().into_iter().chain(due.to_le_bytes()))
        .collect()
}

fn decode_dues(bytes: &[u8]) -> Vec<(u64, i64)> {
    bytes
        .chunks_exact(16)
        .map(|c| {
            let (seq, due) = c.split_at(8);
            (
                u64::from_le_bytes(seq.try_into().unwrap_or_default()),
                i64::from_le_bytes(due.try_into().unwrap_or_default()),
            )
        })
        .collect()
}

/// What the configuration record holds.
#[derive(Serialize, Deserialize)]
struct Saved {
    config: Config,
    /// UNIX nanoseconds.
    created: i64,
}

/// What the group reads of a consumer's saved state: its configuration (which subjects it
/// reaches, for interest retention).
#[derive(Deserialize)]
struct SavedConsumer {
    config: ConsumerConfig,
}

/// A consumer's configuration from its saved state (`None`: deleted, or unreadable; either
/// way it counts for no interest, on every replica alike).
fn config_of(name: &str, state: &[u8]) -> Option<ConsumerConfig> {
    if state.is_empty() {
        return None;
    }
    match serde_json::from_slice::<SavedConsumer>(state) {
        Ok(saved) => Some(saved.config),
        Err(e) => {
            tracing::error!(consumer = %name, error = %e, "JetStream: a consumer's saved state does not read; it counts for no interest");
            None
        }
    }
}

/// The applied consumers' configurations, by name, from the stream's metadata.
fn consumer_configs(stream: &Stream) -> BTreeMap<String, ConsumerConfig> {
    stream
        .store()
        .metas(CONSUMER_PREFIX)
        .into_iter()
        .filter_map(|(name, bytes)| Some((name.to_string(), config_of(name, bytes)?)))
        .collect()
}

/// A replicated stream as its group's state.
pub struct StreamGroup {
    dir: PathBuf,
    segment_bytes: u64,
    /// `None` only while a snapshot is being installed (or after one failed to). Shared with
    /// the consumers' runtime on the group's leader, which reads it.
    stream: Arc<Mutex<Option<Stream>>>,
    /// The stream's last sequence after each applied batch (consumers wait on it).
    applied: tokio::sync::watch::Sender<u64>,
    /// The applied consumers' configurations (an interest stream keeps only what one of
    /// them reaches). Changed only by applying and installing, under the stream's lock.
    consumers: Mutex<BTreeMap<String, ConsumerConfig>>,
}

impl StreamGroup {
    /// Opens the stream's store in `dir` (created if new) with the configuration it last
    /// applied, or `config` (from the stream's assignment) if it never applied one.
    pub fn open(
        dir: &Path,
        config: Config,
        created: i64,
        segment_bytes: u64,
    ) -> io::Result<StreamGroup> {
        let stream = Self::open_stream(dir, segment_bytes, config, created)?;
        let last = stream.store().state().last_seq;
        let consumers = Mutex::new(consumer_configs(&stream));
        Ok(StreamGroup {
            dir: dir.to_path_buf(),
            segment_bytes,
            stream: Arc::new(Mutex::new(Some(stream))),
            applied: tokio::sync::watch::channel(last).0,
            consumers,
        })
    }

    fn open_stream(
        dir: &Path,
        segment_bytes: u64,
        config: Config,
        created: i64,
    ) -> io::Result<Stream> {
        let store = StreamStore::open_committed(dir, segment_bytes, APPLIED_KEY)?;
        Self::stream_over(store, config, created)
    }

    /// The stream over `store`, with the configuration the store holds if any. The duplicate
    /// window is rebuilt as of the last stored message, not this replica's clock, so a
    /// replica applying the log again judges duplicates as it did the first time.
    fn stream_over(store: StreamStore, config: Config, created: i64) -> io::Result<Stream> {
        let (config, created) = match store.meta(CONFIG_KEY) {
            Some(bytes) => {
                let saved: Saved = serde_json::from_slice(bytes)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                (saved.config, saved.created)
            }
            None => (config, created),
        };
        let now = store.state().last_time;
        let last_id = store
            .meta(LAST_ID_KEY)
            .map(|v| String::from_utf8_lossy(v).into_owned());
        let dues = store.meta(SCHEDULES_KEY).map(decode_dues);
        let mut stream = Stream::from_store(store, config, created, now)?;
        stream.replicated();
        if let Some(dues) = dues {
            stream.restore_schedule_dues(&dues);
        }
        if last_id.is_some() {
            stream.set_last_msg_id(last_id);
        }
        Ok(stream)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Stream>> {
        self.stream.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the stream (`None` while a snapshot install left it closed).
    pub fn read<R>(&self, f: impl FnOnce(&Stream) -> R) -> Option<R> {
        self.lock().as_ref().map(f)
    }

    /// The stream's last sequence after each applied batch.
    pub fn applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// The stream itself, shared (the leader's consumers read it).
    pub fn shared(&self) -> Arc<Mutex<Option<Stream>>> {
        self.stream.clone()
    }

    /// The consumers' saved states, by name, as applied.
    pub fn consumers(&self) -> Vec<(String, Vec<u8>)> {
        self.read(|s| {
            s.store()
                .metas(CONSUMER_PREFIX)
                .into_iter()
                .map(|(n, v)| (n.to_string(), v.to_vec()))
                .collect()
        })
        .unwrap_or_default()
    }
}

fn closed() -> io::Error {
    io::Error::other("the stream is closed: a snapshot install failed")
}

impl GroupState for StreamGroup {
    fn check(&self, command: &[u8]) -> Result<(), String> {
        Command::decode(command).map(|_| ())
    }

    fn apply(&self, commands: &[&[u8]], meta: (&str, &[u8])) -> Result<Vec<Vec<u8>>, ApplyError> {
        let cmds = commands
            .iter()
            .enumerate()
            .map(|(at, c)| {
                Command::decode(c).map_err(|reason| ApplyError::Undecodable { at, reason })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut guard = self.lock();
        let stream = guard.as_mut().ok_or_else(closed)?;
        let mut results = Vec::with_capacity(cmds.len());
        let mut configured = stream.store().meta(CONFIG_KEY).is_none();
        let last_id = stream.last_msg_id().map(str::to_owned);
        // Consumer states, by metadata key (the last of the batch wins), from leaders no
        // older than the newest heard from.
        let mut consumers: std::collections::BTreeMap<String, &[u8]> = Default::default();
        let old_epoch = stream
            .store()
            .meta(EPOCH_KEY)
            .and_then(|v| v.try_into().ok())
            .map_or(0, u64::from_le_bytes);
        let mut epoch = old_epoch;
        let mut configs = self.consumers.lock().unwrap_or_else(|p| p.into_inner());
        for cmd in &cmds {
            configured |= matches!(cmd, Command::Configure { .. });
            if let Command::Consumers { epoch: e, entries } = cmd {
                if *e < epoch {
                    results.push(
                        Outcome::Refused(ApiError::new(
                            503,
                            10008,
                            "JetStream system temporarily unavailable: the stream has a newer leader",
                        ))
                        .encode(),
                    );
                    continue;
                }
                epoch = *e;
                for (name, state) in entries {
                    consumers.insert(format!("{CONSUMER_PREFIX}{name}"), state);
                    match config_of(name, state) {
                        Some(config) => configs.insert(name.to_string(), config),
                        None => configs.remove(*name),
                    };
                }
            }
            let outcome = stream.apply(cmd)?;
            drop_unwanted(stream, &configs, cmd, &outcome)?;
            results.push(outcome.encode());
        }
        drop(configs);
        let epoch_bytes = epoch.to_le_bytes();
        let saved = configured
            .then(|| {
                serde_json::to_vec(&Saved {
                    config: stream.config().clone(),
                    created: stream.created(),
                })
            })
            .transpose()
            .map_err(io::Error::other)?;
        let mut entries: Vec<(&str, &[u8])> = Vec::with_capacity(2 + consumers.len());
        if let Some(saved) = &saved {
            entries.push((CONFIG_KEY, saved));
        }
        entries.extend(consumers.iter().map(|(k, v)| (k.as_str(), *v)));
        if epoch != old_epoch {
            entries.push((EPOCH_KEY, &epoch_bytes));
        }
        // Repeating schedules' due times, when firing moved them (a schedule just stored is
        // due one period after its time, which a reopen rebuilds by itself).
        let fired = cmds
            .iter()
            .any(|c| matches!(c, Command::FireSchedules { .. }));
        let dues = (fired && stream.config().allow_msg_schedules)
            .then(|| encode_dues(&stream.schedule_dues()))
            .filter(|d| stream.store().meta(SCHEDULES_KEY).unwrap_or_default() != &d[..]);
        if let Some(d) = &dues {
            entries.push((SCHEDULES_KEY, d));
        }
        let new_id = stream.last_msg_id().map(str::to_owned);
        if new_id != last_id {
            if let Some(id) = &new_id {
                entries.push((LAST_ID_KEY, id.as_bytes()));
            }
        }
        entries.push(meta);
        stream.store_mut().set_meta(&entries)?;
        stream.flush()?;
        // Applied means committed on a quorum: consumers may see it all.
        let last = stream.store().state().last_seq;
        stream.mark_synced(last);
        self.applied.send_replace(last);
        Ok(results)
    }

    fn meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        let guard = self.lock();
        let stream = guard.as_ref().ok_or_else(closed)?;
        Ok(stream.store().meta(key).map(<[u8]>::to_vec))
    }

    fn durable_view(&self) -> io::Result<Arc<dyn GroupView>> {
        let mut guard = self.lock();
        let stream = guard.as_mut().ok_or_else(closed)?;
        Ok(Arc::new(StreamView(stream.store_mut().view()?)))
    }

    fn install(&self, snapshot: &mut dyn io::Read) -> io::Result<()> {
        // Received and checked beside the store, without the stream's lock (reads go on);
        // then, under it, the store is swapped.
        StreamStore::receive_install(&self.dir, snapshot, self.segment_bytes, APPLIED_KEY)?;
        let mut guard = self.lock();
        let (config, created) = match guard.as_ref() {
            Some(s) => (s.config().clone(), s.created()),
            None => return Err(closed()),
        };
        if let Some(stream) = guard.take() {
            drop(stream.into_store());
        }
        let installed = StreamStore::finish_install(&self.dir, self.segment_bytes, APPLIED_KEY)
            .and_then(|store| Self::stream_over(store, config.clone(), created));
        let result = match installed {
            Ok(stream) => {
                *guard = Some(stream);
                Ok(())
            }
            Err(e) => {
                // Reopen what is there (the old store if the swap did not happen).
                *guard = Self::open_stream(&self.dir, self.segment_bytes, config, created).ok();
                Err(e)
            }
        };
        if let Some(s) = guard.as_ref() {
            *self.consumers.lock().unwrap_or_else(|p| p.into_inner()) = consumer_configs(s);
            self.applied.send_replace(s.store().state().last_seq);
        }
        result
    }
}

/// An interest stream keeps only the publishes some consumer reaches (the publish is still
/// acknowledged, as nats-server does): those of `cmd` that none of `consumers` reaches are
/// dropped at once, in the same batch, alike on every replica.
fn drop_unwanted(
    stream: &mut Stream,
    consumers: &BTreeMap<String, ConsumerConfig>,
    cmd: &Command<'_>,
    outcome: &Outcome,
) -> io::Result<()> {
    if stream.config().retention != Retention::Interest {
        return Ok(());
    }
    let stored: Vec<(&str, &Outcome)> = match (cmd, outcome) {
        (Command::Publish { subject, .. }, one) => vec![(*subject, one)],
        (Command::Publishes { msgs, .. }, Outcome::Many(all)) => {
            msgs.iter().map(|(s, _, _)| *s).zip(all).collect()
        }
        _ => return Ok(()),
    };
    let unwanted: Vec<u64> = stored
        .into_iter()
        .filter_map(|(subject, o)| match o {
            Outcome::Stored(ack)
                if !ack.duplicate && !consumers.values().any(|c| c.reaches(subject)) =>
            {
                Some(ack.seq)
            }
            _ => None,
        })
        .collect();
    if unwanted.is_empty() {
        return Ok(());
    }
    stream
        .retire(&unwanted)
        .map(|_| ())
        .map_err(|e| io::Error::other(e.description))
}

/// A snapshot of the stream: its segment files as of one batch.
#[derive(Debug)]
struct StreamView(StoreView);

impl GroupView for StreamView {
    fn meta(&self, key: &str) -> io::Result<Option<Vec<u8>>> {
        Ok(self.0.meta(key).map(<[u8]>::to_vec))
    }

    fn write_to(&self, sink: &mut dyn FnMut(&[u8]) -> io::Result<()>) -> io::Result<()> {
        self.0.write_to(sink)
    }
}

#[cfg(test)]
mod tests;
