//! Coalesces a follower's read-index requests: reads that arrive while one request to the
//! leader is in flight share the next one, so a burst of linearizable reads costs one round.
//!
//! Sharing is safe because each request starts after every read it answers arrived: the index
//! the leader confirms then covers every write acknowledged before any of those reads began.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use crate::batch_counts::{BatchCounts, Tally};

/// One request to the leader for a read index (`None`: the leader could not be asked).
type Fetch = Box<dyn FnOnce() -> Pin<Box<dyn Future<Output = Option<u64>> + Send>> + Send>;

#[derive(Default)]
struct Batch {
    /// True while a task is asking the leader.
    running: bool,
    /// Readers waiting for the next read index, each with its own way to ask (a reader that
    /// arrived later knows the leader at least as recently, so a round asks the newest one's).
    waiting: Vec<(oneshot::Sender<Option<u64>>, Fetch)>,
}

/// The read-index batcher of one member.
#[derive(Default)]
pub(crate) struct ReadBatcher {
    batch: Arc<Mutex<Batch>>,
    /// Rounds started and the reads they answered.
    counts: Arc<Tally>,
}

impl ReadBatcher {
    /// The leader's read index for a read starting now, or `None` when the leader could not
    /// be asked. `fetch` asks the leader once; rounds run on a task of their own, so a reader
    /// that gives up does not strand the others.
    pub async fn index<F, Fut>(&self, fetch: F) -> Option<u64>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Option<u64>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let fetch: Fetch = Box::new(move || Box::pin(fetch()));
        let start = {
            let mut b = lock(&self.batch);
            b.waiting.push((tx, fetch));
            !std::mem::replace(&mut b.running, true)
        };
        if start {
            tokio::spawn(drive(self.batch.clone(), self.counts.clone()));
        }
        rx.await.ok().flatten()
    }

    /// Rounds and reads since start.
    pub fn counts(&self) -> BatchCounts {
        self.counts.get()
    }
}

fn lock(b: &Mutex<Batch>) -> std::sync::MutexGuard<'_, Batch> {
    crate::sync::LockExt::locked(b)
}

/// Asks the leader for everyone waiting, again and again while new readers arrived meanwhile.
async fn drive(batch: Arc<Mutex<Batch>>, counts: Arc<Tally>) {
    // Marks the batch idle when the driver unwinds (a panic in a request): the next reader
    // then starts a new driver instead of waiting forever. A driver that ends normally marks
    // it idle itself, under the lock that decided there was nothing left.
    let unwinding = batch.clone();
    let _guard = crate::sync::OnUnwind(move || lock(&unwinding).running = false);
    loop {
        let mut waiting = {
            let mut b = lock(&batch);
            if b.waiting.is_empty() {
                // Under the lock: a reader arriving after this starts a new driver.
                b.running = false;
                return;
            }
            counts.add(b.waiting.len());
            std::mem::take(&mut b.waiting)
        };
        let Some((newest_tx, fetch)) = waiting.pop() else {
            continue;
        };
        let index = fetch().await;
        let _ = newest_tx.send(index);
        for (tx, _) in waiting {
            let _ = tx.send(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    #[tokio::test]
    async fn readers_arriving_during_a_request_share_the_next_one() {
        let batcher = Arc::new(ReadBatcher::default());
        let asked = Arc::new(AtomicU64::new(0));
        let fetch = {
            let asked = asked.clone();
            move || {
                let asked = asked.clone();
                async move {
                    // The index is the number of the request: later requests, higher index.
                    let n = asked.fetch_add(1, Ordering::SeqCst) + 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some(n)
                }
            }
        };
        let first = {
            let (b, f) = (batcher.clone(), fetch.clone());
            tokio::spawn(async move { b.index(f).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        // These arrive while the first request is in flight: one more request serves them all.
        let later: Vec<_> = (0..20)
            .map(|_| {
                let (b, f) = (batcher.clone(), fetch.clone());
                tokio::spawn(async move { b.index(f).await })
            })
            .collect();
        assert_eq!(first.await.expect("join"), Some(1));
        for r in later {
            assert_eq!(r.await.expect("join"), Some(2), "not the in-flight answer");
        }
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        assert_eq!(
            batcher.counts(),
            BatchCounts {
                rounds: 2,
                items: 21
            }
        );
        // Idle again: the next reader starts a new request.
        assert_eq!(batcher.index(fetch).await, Some(3));
    }

    #[tokio::test]
    async fn a_round_asks_the_way_its_newest_reader_knows() {
        // A reader that resolved the leader later (e.g. after a leader change) decides how the
        // next round asks: a long-running batch never keeps asking a former leader.
        let batcher = Arc::new(ReadBatcher::default());
        let slow = {
            let b = batcher.clone();
            tokio::spawn(async move {
                b.index(|| async {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    Some(1)
                })
                .await
            })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let stale = {
            let b = batcher.clone();
            tokio::spawn(async move { b.index(|| async { None }).await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        let fresh = batcher.index(|| async { Some(9) }).await;
        assert_eq!(slow.await.expect("join"), Some(1));
        assert_eq!(fresh, Some(9));
        assert_eq!(stale.await.expect("join"), Some(9));
    }

    #[tokio::test]
    async fn a_failed_request_fails_its_readers_only() {
        let batcher = ReadBatcher::default();
        assert_eq!(batcher.index(|| async { None }).await, None);
        assert_eq!(batcher.index(|| async { Some(7) }).await, Some(7));
    }
}
