//! Active health checks' bookkeeping: what a probe found, the runs of passes and failures it
//! extends, and when a node goes out or comes back under an upstream's `checks.active`
//! ([`crate::model::Active`]). Probing itself is the server's; this is the rule it follows.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::model::Active;

/// A node's state under active checks, shared by every snapshot that names it (so a
/// rebuild keeps what probes found) and set by the node's prober.
#[derive(Debug, Default)]
pub struct Probed {
    down: AtomicBool,
}

impl Probed {
    /// True while probes have the node out.
    pub fn is_down(&self) -> bool {
        self.down.load(Ordering::Relaxed)
    }

    fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::Relaxed);
    }
}

/// What one probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Probe {
    /// An HTTP status (what counts depends on the check's status lists).
    Status(u16),
    /// TCP connected (a `tcp` check's pass), or a gRPC node SERVING.
    Connected,
    /// A gRPC node answered, but not SERVING (counted as an HTTP failure).
    NotServing,
    /// Connecting (or the exchange) failed.
    ConnectFailed,
    /// No answer within the check's timeout.
    TimedOut,
}

/// The runs a prober keeps for one node.
#[derive(Debug, Default)]
pub struct Tally {
    successes: u32,
    http_failures: u32,
    tcp_failures: u32,
    timeouts: u32,
}

/// A change of a node's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Taken out.
    Down,
    /// Back in.
    Up,
}

impl Tally {
    /// Counts `probe` under `check` for the node `state`; the change it makes, if any. A
    /// status in neither list counts for nothing (lua-resty-healthcheck's rule).
    pub fn record(&mut self, probe: Probe, check: &Active, state: &Probed) -> Option<Change> {
        let pass = match probe {
            Probe::Connected => true,
            Probe::Status(s) if check.healthy_statuses.contains(&s) => true,
            Probe::Status(s) if check.unhealthy_statuses.contains(&s) => {
                self.http_failures += 1;
                false
            }
            Probe::Status(_) => return None,
            Probe::NotServing => {
                self.http_failures += 1;
                false
            }
            Probe::ConnectFailed => {
                self.tcp_failures += 1;
                false
            }
            Probe::TimedOut => {
                self.timeouts += 1;
                false
            }
        };
        if pass {
            self.successes += 1;
            (self.http_failures, self.tcp_failures, self.timeouts) = (0, 0, 0);
            if state.is_down() && self.successes >= check.successes {
                state.set_down(false);
                return Some(Change::Up);
            }
            return None;
        }
        self.successes = 0;
        let tripped = self.http_failures >= check.http_failures
            || self.tcp_failures >= check.tcp_failures
            || self.timeouts >= check.timeouts;
        if tripped && !state.is_down() {
            state.set_down(true);
            return Some(Change::Down);
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Upstream;
    use serde_json::json;

    fn check() -> Active {
        Upstream::parse(&json!({"nodes": {"127.0.0.1:1": 1}, "checks": {"active": {
            "healthy": {"successes": 2}, "unhealthy": {"http_failures": 2, "tcp_failures": 1, "timeouts": 3}}}}))
        .expect("upstream")
        .active
        .expect("active")
    }

    #[test]
    fn failures_in_a_row_take_a_node_out_and_passes_bring_it_back() {
        let (c, p, mut t) = (check(), Probed::default(), Tally::default());
        assert_eq!(t.record(Probe::Status(500), &c, &p), None);
        assert_eq!(
            t.record(Probe::Status(200), &c, &p),
            None,
            "the run is broken"
        );
        assert_eq!(t.record(Probe::Status(500), &c, &p), None);
        assert_eq!(
            t.record(Probe::Status(418), &c, &p),
            None,
            "in neither list"
        );
        assert_eq!(t.record(Probe::Status(503), &c, &p), Some(Change::Down));
        assert!(p.is_down());
        assert_eq!(t.record(Probe::Status(500), &c, &p), None, "already out");
        assert_eq!(t.record(Probe::Status(200), &c, &p), None);
        assert_eq!(t.record(Probe::Status(302), &c, &p), Some(Change::Up));
        assert!(!p.is_down());
        assert_eq!(t.record(Probe::ConnectFailed, &c, &p), Some(Change::Down));
        assert_eq!(t.record(Probe::Connected, &c, &p), None);
        assert_eq!(t.record(Probe::Connected, &c, &p), Some(Change::Up));
        for _ in 0..2 {
            assert_eq!(t.record(Probe::TimedOut, &c, &p), None);
        }
        assert_eq!(t.record(Probe::TimedOut, &c, &p), Some(Change::Down));
    }
}
