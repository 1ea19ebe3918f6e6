//! Watches on the [`Store`]: registration, the hand-off of each committed batch's events to
//! the hub, and the replay of stored history for watchers that start in the past or fell
//! behind. Invariant: a watcher is either in the hub (synced) or replaying, never both, and
//! moves between the two under the hub lock, so it sees no gap and no duplicate.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use berth_proto::mvccpb::{event::EventType, Event};
use redb::ReadableDatabase;

use super::{Store, REPLAY_CHUNK};
use crate::backend::{decode, Change, REVS};
use crate::error::{DbResult, Result, StoreError};
use crate::keyspace::Keyspace;
use crate::revision::Revision;
use crate::sync::LockExt;
use crate::watch::{WatchHandle, WatchSink, WatchSpec, Watcher};

impl Store {
    /// Makes `current` visible and hands the batch's events to watchers, atomically with
    /// respect to watcher registration so no watcher sees a gap or a duplicate.
    pub(super) fn publish(&self, events: Vec<(Keyspace, Event)>, first: i64, current: i64) {
        let behind = {
            let mut hub = self.hub.locked();
            self.current.store(current, Ordering::Release);
            if events.is_empty() {
                return;
            }
            let behind = hub.dispatch(&events, first, current);
            hub.catching_up += behind.len();
            behind
        };
        for (id, w, from) in behind {
            tracing::debug!(
                watch_id = w.watch_id,
                from,
                "watcher fell behind, replaying from history"
            );
            self.spawn_catch_up(id, w, from);
        }
    }

    /// Registers a watcher whose responses go to `tx` tagged with `watch_id`. A start revision
    /// at or below the newest one replays history first, then continues live.
    pub fn watch(&self, spec: WatchSpec, watch_id: i64, sink: WatchSink) -> WatchHandle {
        let cancelled = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut hub = self.hub.locked();
        let id = hub.new_id();
        let current = self.revision();
        let start = spec.start_rev;
        let w = Watcher {
            spec,
            watch_id,
            sink,
            cancelled: cancelled.clone(),
        };
        if start == 0 || start > current {
            hub.add(id, w);
        } else {
            hub.catching_up += 1;
            drop(hub);
            self.spawn_catch_up(id, w, start);
        }
        WatchHandle { id, cancelled }
    }

    /// Stops a watch; no response for it is sent after this returns (except one in flight).
    pub fn cancel_watch(&self, h: &WatchHandle) {
        h.cancelled.store(true, Ordering::Release);
        self.hub.locked().remove(h.id);
    }

    /// The newest revision, read so that every event up to it has already been handed to
    /// synced watchers' channels (what a progress notification may promise).
    pub fn progress_revision(&self) -> i64 {
        let _hub = self.hub.locked();
        self.revision()
    }

    /// True when the watcher is live (not replaying history).
    pub fn watch_synced(&self, h: &WatchHandle) -> bool {
        self.hub.locked().is_synced(h.id)
    }

    pub(super) fn spawn_catch_up(&self, id: u64, w: Watcher, from: i64) {
        let Some(store) = self.me.upgrade() else {
            return;
        };
        // Writes may be applied on a thread outside the runtime: use the one the store was
        // opened on when the current thread has none.
        let handle = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone());
        match handle {
            Some(h) => {
                h.spawn(async move {
                    store.catch_up(id, w, from).await;
                });
            }
            None => {
                tracing::error!(
                    watch_id = w.watch_id,
                    "no async runtime to replay a watch; dropping it"
                );
                self.hub.locked().catching_up -= 1;
            }
        }
    }

    /// Replays history from `next` until the watcher reaches the newest revision, then puts
    /// it back into the hub (under the hub lock, so no live event is missed or repeated).
    async fn catch_up(&self, id: u64, w: Watcher, mut next: i64) {
        loop {
            if w.is_cancelled() {
                break;
            }
            let upto = self.revision();
            if next <= upto {
                match self.history(&w.spec, next, upto, REPLAY_CHUNK) {
                    Ok((events, reached)) => {
                        next = reached + 1;
                        if !events.is_empty() && !w.sink.send(w.delivery(reached, events, 0)).await
                        {
                            break;
                        }
                        continue;
                    }
                    Err(StoreError::Compacted) => {
                        let compacted = self.index.shared().compacted();
                        let notice = w.delivery(self.revision(), Vec::new(), compacted);
                        let _ = w.sink.send(notice).await;
                        break;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "watch replay failed");
                        break;
                    }
                }
            }
            let mut hub = self.hub.locked();
            if self.revision() < next {
                hub.catching_up -= 1;
                if !w.is_cancelled() {
                    let mut w = w;
                    w.spec.start_rev = w.spec.start_rev.max(next);
                    hub.add(id, w);
                }
                return;
            }
        }
        self.hub.locked().catching_up -= 1;
    }

    /// Stored events for `spec` in revisions `from..=to`, at most about `max` of them (whole
    /// revisions only). Returns the events and the last revision covered.
    fn history(
        &self,
        spec: &WatchSpec,
        from: i64,
        to: i64,
        max: usize,
    ) -> Result<(Vec<Event>, i64)> {
        let db = self.db.shared();
        let txn = db.begin_read().db()?;
        if from < self.index.shared().compacted() {
            return Err(StoreError::Compacted);
        }
        let revs = txn.open_table(REVS).db()?;
        let mut events = Vec::new();
        let mut reached = to;
        for item in revs
            .range(Revision::first_key(from)..Revision::first_key(to + 1))
            .db()?
        {
            let (k, v) = item.db()?;
            let rev = Revision::from_key(k.value());
            if events.len() >= max && rev.sub == 0 {
                reached = rev.main - 1;
                break;
            }
            let Change {
                kv,
                tombstone,
                keyspace,
            } = decode(v.value())?;
            if keyspace != spec.keyspace {
                continue;
            }
            let ev = Event {
                r#type: if tombstone {
                    EventType::Delete
                } else {
                    EventType::Put
                } as i32,
                kv: Some(kv),
                prev_kv: None,
            };
            if spec.wants(keyspace, &ev) {
                events.push(ev);
            }
        }
        Ok((events, reached))
    }
}
