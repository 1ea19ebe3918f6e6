//! The revision a view of the store (the registry's catalog, the configuration center's
//! items) has applied, and the writers waiting until it shows their write.
//!
//! A writer waits for the revision of its own write, so each waiter is woken once, when that
//! revision is reached. (A watch channel wakes every waiter at every advance: with hundreds of
//! registrations in flight, each applied batch woke all of them to re-check, and throughput
//! fell as clients were added.)

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

/// An applied revision and its waiters.
#[derive(Debug, Default)]
pub struct AppliedMark {
    current: AtomicI64,
    /// Waiters by the revision they wait for.
    waiters: Mutex<BTreeMap<i64, Vec<oneshot::Sender<()>>>>,
}

impl AppliedMark {
    /// A mark at revision 0 with no waiters.
    pub fn new() -> AppliedMark {
        AppliedMark::default()
    }

    /// The revision applied so far.
    pub fn get(&self) -> i64 {
        self.current.load(Ordering::SeqCst)
    }

    /// Moves the mark up to `rev` (never down) and wakes the waiters it reaches.
    pub fn advance(&self, rev: i64) {
        if self.current.fetch_max(rev, Ordering::SeqCst) >= rev {
            return;
        }
        let ready = {
            let mut waiters = lock(&self.waiters);
            let later = waiters.split_off(&(rev + 1));
            std::mem::replace(&mut *waiters, later)
        };
        for tx in ready.into_values().flatten() {
            let _ = tx.send(());
        }
    }

    /// Waits until the mark reaches `rev`, or `patience` passes.
    pub async fn wait(&self, rev: i64, patience: Duration) {
        let rx = {
            let mut waiters = lock(&self.waiters);
            // Checked under the lock: an advance stores the mark before it takes the lock,
            // so it either is seen here or finds this waiter.
            if self.get() >= rev {
                return;
            }
            let (tx, rx) = oneshot::channel();
            waiters.entry(rev).or_default().push(tx);
            rx
        };
        let _ = tokio::time::timeout(patience, rx).await;
    }
}

/// How long a caller waits for a view to catch up before giving up (the view may be
/// reloading).
const BARRIER_PATIENCE: Duration = Duration::from_secs(5);

/// A request that a view catch up with the store; answered once the view has taken every
/// change the store had handed its watch.
pub type Barrier = oneshot::Sender<()>;

/// How a caller brings a view (the registry's catalog, the configuration center's items,
/// the gateway's snapshot) up to date with the store: the view's task takes the requests,
/// drains its watch's channel (everything up to [`berth_store::Store::progress_revision`] is
/// in it) and answers. Waiting for the store's revision instead would wait for a revision the
/// view never sees when the last writes were in another keyspace.
pub struct Barriers {
    tx: tokio::sync::mpsc::Sender<Barrier>,
    rx: Mutex<Option<tokio::sync::mpsc::Receiver<Barrier>>>,
}

impl Default for Barriers {
    fn default() -> Barriers {
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        Barriers {
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }
}

impl Barriers {
    /// Asks the view's task to catch up, and waits until it has (`view` names it in errors).
    pub async fn request(&self, view: &str) -> Result<(), crate::consensus::WriteError> {
        let stopped = || crate::consensus::WriteError::Stopped(format!("{view} stopped"));
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).await.map_err(|_| stopped())?;
        match tokio::time::timeout(BARRIER_PATIENCE, rx).await {
            Ok(answer) => answer.map_err(|_| stopped()),
            Err(_) => Err(crate::consensus::WriteError::Stopped(format!(
                "{view} did not catch up with the store within {BARRIER_PATIENCE:?}"
            ))),
        }
    }

    /// The requests, for the view's task (once).
    pub fn take(&self) -> Option<tokio::sync::mpsc::Receiver<Barrier>> {
        lock(&self.rx).take()
    }
}

/// Where a view's parked catch-up requests stand (see [`catch_up`]).
pub enum CatchUp {
    /// None parked, or the watch is still replaying history: keep them parked.
    Wait,
    /// A delivery could not be applied: the watch must be reloaded.
    Broken,
    /// Every change up to this revision is in the view: advance the mark, then [`answer`].
    UpTo(i64),
}

/// For a view with `parked` catch-up requests whose watch `handle` is live: hands `deliver`
/// every delivery already in `rx` (all up to the store's progress revision are there).
pub fn catch_up(
    store: &berth_store::Store,
    handle: &berth_store::WatchHandle,
    parked: &[Barrier],
    rx: &mut tokio::sync::mpsc::Receiver<berth_store::Delivery>,
    deliver: impl FnMut(berth_store::Delivery) -> bool,
) -> CatchUp {
    if parked.is_empty() || !store.watch_synced(handle) {
        return CatchUp::Wait;
    }
    let upto = store.progress_revision();
    if drain(rx, deliver) {
        CatchUp::UpTo(upto)
    } else {
        CatchUp::Broken
    }
}

/// Answers the parked requests.
pub fn answer(parked: &mut Vec<Barrier>) {
    for b in parked.drain(..) {
        let _ = b.send(());
    }
}

/// Hands `deliver` every delivery already in `rx`; false when one could not be applied
/// (the watch cannot continue).
pub fn drain(
    rx: &mut tokio::sync::mpsc::Receiver<berth_store::Delivery>,
    mut deliver: impl FnMut(berth_store::Delivery) -> bool,
) -> bool {
    while let Ok(d) = rx.try_recv() {
        if !deliver(d) {
            return false;
        }
    }
    true
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiters_wake_when_their_revision_is_reached_and_not_before() {
        let mark = std::sync::Arc::new(AppliedMark::new());
        mark.advance(3);
        // Already reached: no wait.
        tokio::time::timeout(
            Duration::from_millis(100),
            mark.wait(2, Duration::from_secs(5)),
        )
        .await
        .expect("a reached revision returns at once");
        let waiting = |rev| {
            let mark = mark.clone();
            tokio::spawn(async move { mark.wait(rev, Duration::from_secs(5)).await })
        };
        let (five, seven) = (waiting(5), waiting(7));
        tokio::time::sleep(Duration::from_millis(20)).await;
        mark.advance(5);
        tokio::time::timeout(Duration::from_millis(500), five)
            .await
            .expect("5 woken")
            .expect("task");
        assert!(!seven.is_finished(), "7 woken at 5");
        // Never backwards.
        mark.advance(4);
        assert_eq!(mark.get(), 5);
        mark.advance(9);
        tokio::time::timeout(Duration::from_millis(500), seven)
            .await
            .expect("7 woken")
            .expect("task");
        assert!(lock(&mark.waiters).is_empty());
    }

    #[tokio::test]
    async fn a_wait_gives_up_after_its_patience() {
        let mark = AppliedMark::new();
        let t = std::time::Instant::now();
        mark.wait(1, Duration::from_millis(50)).await;
        assert!(t.elapsed() >= Duration::from_millis(50));
    }
}
