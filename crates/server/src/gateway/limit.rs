//! `limit-count`'s counters on this member: a fixed window per counter key (APISIX's
//! `local` policy), started by the key's first request. Counters live outside routing
//! snapshots, so a route change does not hand out a fresh quota; keys whose window ended are
//! dropped when a shard grows, so memory follows the active keys.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 16;
/// A shard past this many keys drops the ones whose window ended.
const PRUNE_AT: usize = 4096;

struct Window {
    started: Instant,
    length: Duration,
    count: u64,
}

/// What a counted request may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Pass; `remaining` more fit in the window, which ends in `reset`.
    Allowed {
        /// Requests left in the window.
        remaining: u64,
        /// Until the window ends.
        reset: Duration,
    },
    /// Refused until the window ends in `reset`.
    Refused {
        /// Until the window ends.
        reset: Duration,
    },
}

/// The counters. See the module docs.
pub struct Counters {
    shards: [Mutex<Shard>; SHARDS],
}

/// One shard: its windows, and the size at which it is pruned next (twice what a prune
/// left, so pruning costs O(1) per new key however many keys are live).
struct Shard {
    windows: HashMap<String, Window>,
    prune_at: usize,
}

impl Default for Counters {
    fn default() -> Counters {
        Counters {
            shards: std::array::from_fn(|_| {
                Mutex::new(Shard {
                    windows: HashMap::new(),
                    prune_at: PRUNE_AT,
                })
            }),
        }
    }
}

impl Counters {
    /// Counts a request under `key`, allowed `limit` per `window`.
    pub fn hit(&self, key: &str, limit: u64, window: Duration) -> Verdict {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if shard.windows.len() >= shard.prune_at && !shard.windows.contains_key(key) {
            shard
                .windows
                .retain(|_, w| now.duration_since(w.started) < w.length);
            shard.prune_at = (shard.windows.len() * 2).max(PRUNE_AT);
        }
        // Looked up first: the key is copied only when it is new.
        if !shard.windows.contains_key(key) {
            shard.windows.insert(
                key.to_string(),
                Window {
                    started: now,
                    length: window,
                    count: 0,
                },
            );
        }
        let Some(w) = shard.windows.get_mut(key) else {
            return Verdict::Refused { reset: window };
        };
        if now.duration_since(w.started) >= w.length || w.length != window {
            *w = Window {
                started: now,
                length: window,
                count: 0,
            };
        }
        let reset = w.length.saturating_sub(now.duration_since(w.started));
        if w.count >= limit {
            return Verdict::Refused { reset };
        }
        w.count += 1;
        Verdict::Allowed {
            remaining: limit - w.count,
            reset,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_counts_then_refuses() {
        let c = Counters::default();
        let w = Duration::from_secs(60);
        assert!(matches!(
            c.hit("k", 2, w),
            Verdict::Allowed { remaining: 1, .. }
        ));
        assert!(matches!(
            c.hit("k", 2, w),
            Verdict::Allowed { remaining: 0, .. }
        ));
        assert!(matches!(c.hit("k", 2, w), Verdict::Refused { .. }));
        assert!(
            matches!(c.hit("other", 2, w), Verdict::Allowed { .. }),
            "keys are apart"
        );
        let short = Duration::from_millis(20);
        assert!(matches!(c.hit("s", 1, short), Verdict::Allowed { .. }));
        assert!(matches!(c.hit("s", 1, short), Verdict::Refused { .. }));
        std::thread::sleep(Duration::from_millis(30));
        assert!(
            matches!(c.hit("s", 1, short), Verdict::Allowed { .. }),
            "a new window"
        );
    }
}

/// `limit-req`'s buckets: per key, the theoretical arrival time of the next request that
/// conforms to the rate (GCRA, which is nginx's leaky bucket). Kept outside snapshots like
/// the windows; keys whose time has passed are dropped when a shard grows.
pub struct Buckets {
    shards: [Mutex<BucketShard>; SHARDS],
}

struct BucketShard {
    tat: HashMap<String, Instant>,
    prune_at: usize,
}

impl Default for Buckets {
    fn default() -> Buckets {
        Buckets {
            shards: std::array::from_fn(|_| {
                Mutex::new(BucketShard {
                    tat: HashMap::new(),
                    prune_at: PRUNE_AT,
                })
            }),
        }
    }
}

/// What `limit-req` does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pace {
    /// Pass after this delay (zero: at once).
    Pass(Duration),
    /// Refuse: more than `burst` ahead of the rate.
    Refuse,
}

impl Buckets {
    /// Counts a request under `key` at `rate` a second with `burst` allowed ahead of it.
    pub fn take(&self, key: &str, rate: f64, burst: f64, nodelay: bool) -> Pace {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        let shard = &self.shards[(h.finish() as usize) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if shard.tat.len() >= shard.prune_at && !shard.tat.contains_key(key) {
            shard.tat.retain(|_, t| *t > now);
            shard.prune_at = (shard.tat.len() * 2).max(PRUNE_AT);
        }
        let interval = Duration::from_secs_f64(1.0 / rate);
        let tat = shard.tat.get(key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        // A little slack for the clock's granularity.
        if ahead.as_secs_f64() > burst * interval.as_secs_f64() + 1e-6 {
            return Pace::Refuse;
        }
        match shard.tat.get_mut(key) {
            Some(t) => *t = tat + interval,
            None => {
                shard.tat.insert(key.to_string(), tat + interval);
            }
        }
        Pace::Pass(if nodelay { Duration::ZERO } else { ahead })
    }
}

#[cfg(test)]
mod bucket_tests {
    use super::*;

    #[test]
    fn rate_burst_delay_and_refusal() {
        let b = Buckets::default();
        // 10 a second, burst 2: one at once, two delayed by 100 ms and 200 ms, then refused.
        assert_eq!(b.take("k", 10.0, 2.0, false), Pace::Pass(Duration::ZERO));
        let Pace::Pass(d1) = b.take("k", 10.0, 2.0, false) else {
            panic!("passes")
        };
        let Pace::Pass(d2) = b.take("k", 10.0, 2.0, false) else {
            panic!("passes")
        };
        assert!(
            d1 > Duration::from_millis(90) && d1 <= Duration::from_millis(100),
            "{d1:?}"
        );
        assert!(
            d2 > Duration::from_millis(190) && d2 <= Duration::from_millis(200),
            "{d2:?}"
        );
        assert_eq!(b.take("k", 10.0, 2.0, false), Pace::Refuse);
        assert_eq!(b.take("other", 10.0, 2.0, true), Pace::Pass(Duration::ZERO));
        assert_eq!(
            b.take("other", 10.0, 0.0, true),
            Pace::Refuse,
            "no burst: one per interval"
        );
        std::thread::sleep(Duration::from_millis(110));
        assert!(
            matches!(b.take("other", 10.0, 0.0, true), Pace::Pass(_)),
            "the rate refills"
        );
    }
}
