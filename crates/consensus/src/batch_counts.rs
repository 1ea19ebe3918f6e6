//! How well concurrent requests share work: rounds made and the requests they served, counted
//! lock-free by the read-index and write batchers and read by `/metrics`.

use std::sync::atomic::{AtomicU64, Ordering};

/// Rounds (requests to the leader, Raft calls) and the items (reads, writes) they served,
/// since start: `items / rounds` items share one round.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BatchCounts {
    /// Rounds made.
    pub rounds: u64,
    /// Items those rounds served.
    pub items: u64,
}

/// The live counters behind [`BatchCounts`].
#[derive(Debug, Default)]
pub(crate) struct Tally {
    rounds: AtomicU64,
    items: AtomicU64,
}

impl Tally {
    /// Counts one round serving `items`.
    pub fn add(&self, items: usize) {
        self.rounds.fetch_add(1, Ordering::Relaxed);
        self.items.fetch_add(items as u64, Ordering::Relaxed);
    }

    /// The counts so far.
    pub fn get(&self) -> BatchCounts {
        BatchCounts {
            rounds: self.rounds.load(Ordering::Relaxed),
            items: self.items.load(Ordering::Relaxed),
        }
    }
}
