//! The `--rate` schedule: operation `n` of the whole run is due `n / rate` seconds after the
//! start, whichever client takes it, so the total rate holds however many clients share it.
//!
//! A client that falls behind finds its slot already due and sends at once (open-loop pacing):
//! the schedule, not the server's speed, sets the offered load.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long after the start slot `n` is due at `rate` operations per second (`rate > 0`).
pub fn slot_offset(n: u64, rate: u64) -> Duration {
    if rate == 0 {
        return Duration::ZERO;
    }
    let nanos = u128::from(n) * 1_000_000_000 / u128::from(rate);
    Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
}

/// Hands out due times for a total rate shared by all clients.
#[derive(Debug)]
pub struct Pacer {
    start: Instant,
    rate: u64,
    next: AtomicU64,
}

impl Pacer {
    /// A schedule starting at `start`; `rate == 0` means unlimited.
    pub fn new(start: Instant, rate: u64) -> Self {
        Self {
            start,
            rate,
            next: AtomicU64::new(0),
        }
    }

    /// Claims the next slot: when it is due, or `None` when there is no limit.
    pub fn claim(&self) -> Option<Instant> {
        if self.rate == 0 {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        Some(self.start + slot_offset(n, self.rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_evenly_spaced() {
        assert_eq!(slot_offset(0, 1000), Duration::ZERO);
        assert_eq!(slot_offset(1, 1000), Duration::from_millis(1));
        assert_eq!(slot_offset(1000, 1000), Duration::from_secs(1));
        assert_eq!(slot_offset(1, 3), Duration::from_nanos(333_333_333));
        assert_eq!(slot_offset(3, 3), Duration::from_secs(1));
        // No drift accumulates: slot n is computed from n, not by adding intervals.
        assert_eq!(slot_offset(3_000_000, 3), Duration::from_secs(1_000_000));
        assert_eq!(slot_offset(u64::MAX, 1), Duration::from_nanos(u64::MAX));
        assert_eq!(slot_offset(5, 0), Duration::ZERO);
    }

    #[test]
    fn pacer_shares_one_schedule() {
        let start = Instant::now();
        let p = Pacer::new(start, 100);
        let due: Vec<Duration> = (0..4)
            .filter_map(|_| p.claim())
            .map(|t| t - start)
            .collect();
        assert_eq!(
            due,
            vec![
                Duration::ZERO,
                Duration::from_millis(10),
                Duration::from_millis(20),
                Duration::from_millis(30)
            ]
        );
        assert_eq!(Pacer::new(start, 0).claim(), None);
    }
}
