//! The watch hub: which watchers want which keys, and fan-out of committed events to them.
//! Watchers that fall behind leave the hub and catch up from stored history (see `store`).

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use berth_proto::etcdserverpb::{ResponseHeader, WatchResponse};
use berth_proto::mvccpb::{event::EventType, Event};
use tokio::sync::mpsc;

use crate::index::KeySpan;

/// What a watcher wants to see.
#[derive(Debug, Clone)]
pub struct WatchSpec {
    /// Keys watched.
    pub span: KeySpan,
    /// First revision to deliver (0 = from the next write).
    pub start_rev: i64,
    /// Drop put events.
    pub no_put: bool,
    /// Drop delete events.
    pub no_delete: bool,
}

impl WatchSpec {
    /// True when the watcher should receive `ev`.
    pub fn wants(&self, ev: &Event) -> bool {
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

/// A registered watcher.
#[derive(Debug)]
pub(crate) struct Watcher {
    pub spec: WatchSpec,
    pub watch_id: i64,
    pub tx: mpsc::Sender<WatchResponse>,
    pub cancelled: Arc<AtomicBool>,
}

impl Watcher {
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Acquire) || self.tx.is_closed()
    }

    pub fn response(&self, revision: i64, events: Vec<Event>) -> WatchResponse {
        WatchResponse {
            header: Some(ResponseHeader {
                revision,
                ..Default::default()
            }),
            watch_id: self.watch_id,
            events,
            ..Default::default()
        }
    }
}

/// Watchers that are up to date with the store, indexed for fan-out.
#[derive(Debug, Default)]
pub(crate) struct Hub {
    next_id: u64,
    synced: HashMap<u64, Watcher>,
    by_key: HashMap<Vec<u8>, BTreeSet<u64>>,
    ranged: BTreeSet<u64>,
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
        match &w.spec.span {
            KeySpan::Single(k) => {
                self.by_key.entry(k.clone()).or_default().insert(id);
            }
            _ => {
                self.ranged.insert(id);
            }
        }
        self.synced.insert(id, w);
    }

    pub fn remove(&mut self, id: u64) -> Option<Watcher> {
        let w = self.synced.remove(&id)?;
        match &w.spec.span {
            KeySpan::Single(k) => {
                if let Some(set) = self.by_key.get_mut(k) {
                    set.remove(&id);
                    if set.is_empty() {
                        self.by_key.remove(k);
                    }
                }
            }
            _ => {
                self.ranged.remove(&id);
            }
        }
        Some(w)
    }

    /// Removes every synced watcher (their state is about to be replaced wholesale).
    pub fn drain_all(&mut self) -> Vec<(u64, Watcher)> {
        self.by_key.clear();
        self.ranged.clear();
        self.synced.drain().collect()
    }

    /// Sends the events of a committed batch (revisions `first..=revision`) to every synced
    /// watcher that wants them. Returns watchers whose channel was full, removed from the hub,
    /// each with the revision they must replay from.
    pub fn dispatch(
        &mut self,
        events: &[Event],
        first: i64,
        revision: i64,
    ) -> Vec<(u64, Watcher, i64)> {
        // Group the batch by key once; a single-key watcher then looks only at its key's
        // events, so fan-out to many watchers of one key costs no per-watcher bookkeeping.
        let mut by_key: HashMap<&[u8], Vec<&Event>> = HashMap::new();
        for ev in events {
            if let Some(kv) = &ev.kv {
                by_key.entry(kv.key.as_slice()).or_default().push(ev);
            }
        }
        let mut behind = Vec::new();
        let mut gone = Vec::new();
        let mut deliver = |id: u64, w: &Watcher, candidates: &mut dyn Iterator<Item = &Event>| {
            if w.is_cancelled() {
                gone.push(id);
                return;
            }
            let evs: Vec<Event> = candidates.filter(|ev| w.spec.wants(ev)).cloned().collect();
            if evs.is_empty() {
                return;
            }
            match w.tx.try_send(w.response(revision, evs)) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(_)) => behind.push(id),
                Err(mpsc::error::TrySendError::Closed(_)) => gone.push(id),
            }
        };
        for (key, evs) in &by_key {
            let Some(ids) = self.by_key.get(*key) else {
                continue;
            };
            for id in ids {
                if let Some(w) = self.synced.get(id) {
                    deliver(*id, w, &mut evs.iter().copied());
                }
            }
        }
        for id in &self.ranged {
            if let Some(w) = self.synced.get(id) {
                deliver(*id, w, &mut events.iter());
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
