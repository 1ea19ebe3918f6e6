//! The watch hub: which watchers want which keys, and fan-out of committed events to them.
//! Watchers that fall behind leave the hub and catch up from stored history (see
//! `store/watch.rs`). A watcher watches one keyspace: the hub indexes watchers per keyspace
//! and hands each only events of keys of its keyspace.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use berth_proto::mvccpb::{event::EventType, Event};
use tokio::sync::mpsc;

use crate::index::KeySpan;
use crate::keyspace::Keyspace;

/// What a watcher wants to see.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// The keyspace watched (the etcd face always watches [`Keyspace::User`]).
    pub keyspace: Keyspace,
    /// Keys watched, within `keyspace`.
    pub span: KeySpan,
    /// First revision to deliver (0 = from the next write).
    pub start_rev: i64,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
}

impl WatchSpec {
    /// True when the watcher should receive `ev`, an event of a key of `ks`.
    pub fn wants(&self, ks: Keyspace, ev: &Event) -> bool {
        ks == self.keyspace && self.wants_here(ev)
    }

    /// [`WatchSpec::wants`] for an event known to be of this spec's keyspace.
    fn wants_here(&self, ev: &Event) -> bool {
        let Some(kv) = &ev.kv else { return false };
        let is_put = ev.r#type == EventType::Put as i32;
        kv.mod_revision >= self.start_rev
            && !(is_put && self.no_put || !is_put && self.no_delete)
            && self.span.contains(&kv.key)
    }
}

/// Handle the caller keeps to cancel a watch.
#[derive(Debug, Clone)]
pub struct WatchHandle {
    pub(crate) id: u64,
    pub(crate) cancelled: Arc<AtomicBool>,
}

/// Events for one watch within a [`Delivery`].
#[derive(Debug, Clone)]
pub struct DeliveryItem {
    /// The watch, as its stream numbered it.
    pub watch_id: i64,
    /// Its events, oldest first; watchers wanting the same events share one list.
    pub events: Arc<[Event]>,
    /// Non-zero when the watch cannot continue: history it needs was compacted up to here.
    pub compact_revision: i64,
}

/// What the store hands a watch stream at once: every item is one watch response with the
/// header revision `revision`. One committed batch makes at most one delivery per stream, so
/// the cost of fan-out grows with the streams, not with the watchers on them.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Revision for the responses' headers.
    pub revision: i64,
    /// One response per watch.
    pub items: Vec<DeliveryItem>,
}

/// Where a watch stream receives its deliveries. Clones share the stream's identity: the
/// watchers registered with clones of one sink are delivered to together.
#[derive(Debug, Clone)]
pub struct WatchSink {
    id: u64,
    tx: mpsc::Sender<Delivery>,
}

impl WatchSink {
    /// A sink for a new stream sending into `tx` (whose capacity counts deliveries).
    pub fn new(tx: mpsc::Sender<Delivery>) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        Self {
            id: NEXT.fetch_add(1, Ordering::Relaxed),
            tx,
        }
    }

    /// Sends a delivery, waiting for room (history replay does this; live fan-out never waits).
    pub(crate) async fn send(&self, d: Delivery) -> bool {
        self.tx.send(d).await.is_ok()
    }
}

/// A registered watcher.
#[derive(Debug)]
pub(crate) struct Watcher {
    pub spec: WatchSpec,
    pub watch_id: i64,
    pub sink: WatchSink,
    pub cancelled: Arc<AtomicBool>,
}

impl Watcher {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) || self.sink.tx.is_closed()
    }

    /// A delivery of `events` (or of a compaction notice) for this watcher alone.
    pub fn delivery(&self, revision: i64, events: Vec<Event>, compact_revision: i64) -> Delivery {
        Delivery {
            revision,
            items: vec![DeliveryItem {
                watch_id: self.watch_id,
                events: events.into(),
                compact_revision,
            }],
        }
    }

    /// The events of `candidates` this watcher wants, sharing `all` when it wants every one.
    fn select(&self, candidates: &[&Event], all: &Arc<[Event]>) -> Option<Arc<[Event]>> {
        let wanted = candidates
            .iter()
            .filter(|ev| self.spec.wants_here(ev))
            .count();
        if wanted == 0 {
            None
        } else if wanted == all.len() {
            Some(all.clone())
        } else {
            let evs: Vec<Event> = candidates
                .iter()
                .filter(|ev| self.spec.wants_here(ev))
                .map(|ev| (*ev).clone())
                .collect();
            Some(evs.into())
        }
    }
}

/// Watchers that are up to date with the store, indexed per keyspace for fan-out.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    next_id: u64,
    synced: HashMap<u64, Watcher>,
    /// Single-key watchers, by keyspace then key.
    by_key: [HashMap<Vec<u8>, BTreeSet<u64>>; Keyspace::COUNT],
    /// Watchers of a span of keys, by keyspace.
    ranged: [BTreeSet<u64>; Keyspace::COUNT],
    /// Watchers currently replaying history outside the hub.
    pub catching_up: usize,
}

impl Hub {
    pub fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Number of watchers, synced or catching up.
    pub fn len(&self) -> usize {
        self.synced.len() + self.catching_up
    }

    pub fn is_synced(&self, id: u64) -> bool {
        self.synced.contains_key(&id)
    }

    pub fn add(&mut self, id: u64, w: Watcher) {
        let ks = w.spec.keyspace.index();
        match &w.spec.span {
            KeySpan::Single(k) => {
                self.by_key[ks].entry(k.clone()).or_default().insert(id);
            }
            _ => {
                self.ranged[ks].insert(id);
            }
        }
        self.synced.insert(id, w);
    }

    pub fn remove(&mut self, id: u64) -> Option<Watcher> {
        let w = self.synced.remove(&id)?;
        let ks = w.spec.keyspace.index();
        match &w.spec.span {
            KeySpan::Single(k) => {
                if let Some(set) = self.by_key[ks].get_mut(k) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_key[ks].remove(k);
                    }
                }
            }
            _ => {
                self.ranged[ks].remove(&id);
            }
        }
        Some(w)
    }

    /// Removes every synced watcher (their state is about to be replaced wholesale).
    pub fn drain_all(&mut self) -> Vec<(u64, Watcher)> {
        self.by_key.iter_mut().for_each(HashMap::clear);
        self.ranged.iter_mut().for_each(BTreeSet::clear);
        self.synced.drain().collect()
    }

    /// Sends the events of a committed batch (revisions `first..=revision`) to every synced
    /// watcher that wants them, one delivery per stream. Returns watchers whose stream's
    /// queue was full, removed from the hub, each with the revision they must replay from.
    pub fn dispatch(
        &mut self,
        events: &[(Keyspace, Event)],
        first: i64,
        revision: i64,
    ) -> Vec<(u64, Watcher, i64)> {
        // Group the batch by key once; a single-key watcher then looks only at its key's
        // events, so fan-out to many watchers of one key costs no per-watcher bookkeeping.
        let mut by_key: HashMap<(Keyspace, &[u8]), Vec<&Event>> = HashMap::new();
        for (ks, ev) in events {
            if let Some(kv) = &ev.kv {
                by_key.entry((*ks, kv.key.as_slice())).or_default().push(ev);
            }
        }
        // Per stream: its sink and the watchers (hub id, response) it gets this time.
        let mut streams: HashMap<u64, (WatchSink, Vec<u64>, Vec<DeliveryItem>)> = HashMap::new();
        let mut gone = Vec::new();
        let mut deliver = |id: u64, w: &Watcher, candidates: &[&Event], all: &Arc<[Event]>| {
            if w.is_cancelled() {
                gone.push(id);
                return;
            }
            let Some(events) = w.select(candidates, all) else {
                return;
            };
            let (_, ids, items) = streams
                .entry(w.sink.id)
                .or_insert_with(|| (w.sink.clone(), Vec::new(), Vec::new()));
            ids.push(id);
            items.push(DeliveryItem {
                watch_id: w.watch_id,
                events,
                compact_revision: 0,
            });
        };
        for ((ks, key), evs) in &by_key {
            let Some(ids) = self.by_key[ks.index()].get(*key) else {
                continue;
            };
            let all: Arc<[Event]> = evs.iter().map(|ev| (*ev).clone()).collect();
            for id in ids {
                if let Some(w) = self.synced.get(id) {
                    deliver(*id, w, evs, &all);
                }
            }
        }
        for ks in Keyspace::ALL {
            let ranged = &self.ranged[ks.index()];
            if ranged.is_empty() {
                continue;
            }
            let every: Vec<&Event> = events
                .iter()
                .filter(|(k, _)| *k == ks)
                .map(|(_, ev)| ev)
                .collect();
            if every.is_empty() {
                continue;
            }
            let all: Arc<[Event]> = every.iter().map(|ev| (*ev).clone()).collect();
            for id in ranged {
                if let Some(w) = self.synced.get(id) {
                    deliver(*id, w, &every, &all);
                }
            }
        }
        let mut behind = Vec::new();
        for (sink, ids, items) in streams.into_values() {
            match sink.tx.try_send(Delivery { revision, items }) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => behind.extend(ids),
                Err(mpsc::error::TrySendError::Closed(_)) => gone.extend(ids),
            }
        }
        for id in gone {
            self.remove(id);
        }
        behind
            .into_iter()
            .filter_map(|id| self.remove(id).map(|w| (id, w, first)))
            .collect()
    }
}
