//! Picking an upstream node: smooth weighted round robin, consistent hashing (a ketama ring
//! whose size does not grow with the weights), least requests in flight per weight, and the
//! power of two choices over peak-EWMA latency × requests in flight (`ewma`).
//!
//! A [`Picker`] is built with a routing snapshot and is immutable but for its round-robin
//! cursor; each node's live figures ([`NodeStats`]) are shared by every snapshot that has the
//! node, so a route change neither resets latencies nor forgets requests in flight.

use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::model::Balance;

/// Most entries of a round-robin schedule (weights are scaled down past it).
const SCHEDULE_MAX: u64 = 4096;
/// Ring points of the heaviest node of a consistent-hash upstream.
const RING_POINTS: u64 = 160;
/// How fast latency estimates forget (peak-EWMA's decay time).
const EWMA_DECAY_NS: f64 = 10e9;

/// First ejection of a node by passive checks; each next one doubles, up to [`EJECT_MAX`].
pub const EJECT_BASE: std::time::Duration = std::time::Duration::from_secs(30);
/// Longest ejection.
pub const EJECT_MAX: std::time::Duration = std::time::Duration::from_secs(300);

/// What a request to a node came to, for passive checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A response with a status that counts as healthy.
    Healthy,
    /// A response with a status that counts as a failure.
    BadStatus,
    /// Connecting failed.
    ConnectFailed,
    /// No response in time.
    TimedOut,
}

/// A node's live figures, shared across snapshots.
#[derive(Debug)]
pub struct NodeStats {
    /// Failures of each kind in a row (responses, connections, timeouts).
    failures: [std::sync::atomic::AtomicU32; 3],
    /// Ejected until this many ms after `epoch` (0: not ejected).
    ejected_until_ms: AtomicU64,
    /// Ejections so far (each doubles the next one's length); reset by a healthy answer.
    ejections: std::sync::atomic::AtomicU32,
    in_flight: AtomicU64,
    /// Latency estimate in nanoseconds (f64 bits).
    ewma_ns: AtomicU64,
    /// When the estimate was last updated, ns since `epoch`.
    stamp_ns: AtomicU64,
    epoch: Instant,
}

impl Default for NodeStats {
    fn default() -> NodeStats {
        NodeStats {
            failures: Default::default(),
            ejected_until_ms: AtomicU64::new(0),
            ejections: Default::default(),
            in_flight: AtomicU64::new(0),
            ewma_ns: AtomicU64::new(0f64.to_bits()),
            stamp_ns: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

/// A request in flight to a node: counted until dropped.
#[derive(Debug)]
pub struct InFlight {
    stats: Arc<NodeStats>,
    started: Instant,
}

impl NodeStats {
    /// Counts a request to the node until the returned guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight {
            stats: self.clone(),
            started: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// True while passive checks keep the node out.
    pub fn ejected(&self) -> bool {
        self.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    /// Records what a request came to under `passive`; returns true when this ejected the
    /// node.
    pub fn record(&self, outcome: Outcome, passive: &crate::model::Passive) -> bool {
        use std::sync::atomic::AtomicU32;
        let bump = |c: &AtomicU32, limit: u32| c.fetch_add(1, Ordering::Relaxed) + 1 >= limit;
        let tripped = match outcome {
            Outcome::Healthy => {
                for f in &self.failures {
                    f.store(0, Ordering::Relaxed);
                }
                if !self.ejected() {
                    self.ejections.store(0, Ordering::Relaxed);
                }
                return false;
            }
            Outcome::BadStatus => bump(&self.failures[0], passive.http_failures),
            Outcome::ConnectFailed => bump(&self.failures[1], passive.tcp_failures),
            Outcome::TimedOut => bump(&self.failures[2], passive.timeouts),
        };
        if !tripped || self.ejected() {
            return false;
        }
        for f in &self.failures {
            f.store(0, Ordering::Relaxed);
        }
        let n = self.ejections.fetch_add(1, Ordering::Relaxed).min(8);
        let length = EJECT_BASE.saturating_mul(1 << n).min(EJECT_MAX);
        self.ejected_until_ms
            .store(self.now_ms() + length.as_millis() as u64, Ordering::Relaxed);
        true
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// The latency estimate, in nanoseconds (0 before any response).
    pub fn latency_ns(&self) -> f64 {
        f64::from_bits(self.ewma_ns.load(Ordering::Relaxed))
    }

    fn observe(&self, sample_ns: f64) {
        let now = self.epoch.elapsed().as_nanos() as f64;
        let last = self.stamp_ns.swap(now as u64, Ordering::Relaxed) as f64;
        let old = self.latency_ns();
        // Peak: a slower response is believed at once; faster ones pull it down slowly.
        let new = if sample_ns > old || old == 0.0 {
            sample_ns
        } else {
            let w = (-(now - last).max(0.0) / EWMA_DECAY_NS).exp();
            old * w + sample_ns * (1.0 - w)
        };
        self.ewma_ns.store(new.to_bits(), Ordering::Relaxed);
    }
}

impl InFlight {
    /// The response's head arrived: feeds the latency estimate.
    pub fn answered(&self) {
        self.stats.observe(self.started.elapsed().as_nanos() as f64);
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.stats.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A node a picker chooses among.
#[derive(Debug, Clone)]
pub struct Choice {
    /// `host:port` (`[v6]:port`).
    pub authority: String,
    /// Weight (0: never picked).
    pub weight: u32,
    /// Live figures.
    pub stats: Arc<NodeStats>,
    /// What active checks found (`None`: the upstream has none).
    pub probed: Option<Arc<crate::health::Probed>>,
}

#[derive(Debug)]
enum Kind {
    RoundRobin {
        schedule: Vec<u32>,
        cursor: AtomicUsize,
    },
    Chash {
        ring: Vec<(u64, u32)>,
    },
    LeastConn {
        cursor: AtomicUsize,
    },
    Ewma {
        seed: AtomicU64,
    },
}

/// Picks nodes of one upstream. See the module docs.
#[derive(Debug)]
pub struct Picker {
    nodes: Vec<Choice>,
    kind: Kind,
}

fn hash64(v: impl Hash) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    v.hash(&mut h);
    h.finish()
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

/// nginx's smooth weighted round robin, unrolled into one period.
fn schedule(weights: &[u64]) -> Vec<u32> {
    let g = weights
        .iter()
        .copied()
        .filter(|w| *w > 0)
        .fold(0, gcd)
        .max(1);
    let mut w: Vec<u64> = weights.iter().map(|w| w / g).collect();
    let total: u64 = w.iter().sum();
    if total > SCHEDULE_MAX {
        for x in w.iter_mut().filter(|x| **x > 0) {
            *x = (*x * SCHEDULE_MAX / total).max(1);
        }
    }
    let total: i64 = w.iter().map(|x| *x as i64).sum();
    let mut current = vec![0i64; w.len()];
    let mut out = Vec::with_capacity(total as usize);
    for _ in 0..total {
        let mut best = 0;
        for i in 0..w.len() {
            current[i] += w[i] as i64;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        out.push(best as u32);
    }
    out
}

impl Picker {
    /// A picker over `nodes` by `balance`.
    pub fn new(balance: &Balance, nodes: Vec<Choice>) -> Picker {
        let kind = match balance {
            Balance::RoundRobin => Kind::RoundRobin {
                schedule: schedule(
                    &nodes
                        .iter()
                        .map(|n| u64::from(n.weight))
                        .collect::<Vec<_>>(),
                ),
                cursor: AtomicUsize::new(0),
            },
            Balance::Chash { .. } => {
                let max = nodes.iter().map(|n| n.weight).max().unwrap_or(0).max(1);
                let mut ring = Vec::new();
                for (i, n) in nodes.iter().enumerate() {
                    if n.weight == 0 {
                        continue;
                    }
                    let points = (RING_POINTS * u64::from(n.weight) / u64::from(max)).max(1);
                    for p in 0..points {
                        ring.push((hash64((&n.authority, p)), i as u32));
                    }
                }
                ring.sort_unstable();
                Kind::Chash { ring }
            }
            Balance::LeastConn => Kind::LeastConn {
                cursor: AtomicUsize::new(0),
            },
            Balance::Ewma => Kind::Ewma {
                seed: AtomicU64::new(hash64(Instant::now()) | 1),
            },
        };
        Picker { nodes, kind }
    }

    /// The nodes.
    pub fn nodes(&self) -> &[Choice] {
        &self.nodes
    }

    /// Picks a node not in `tried` (`key`: what a consistent-hash upstream hashes). `None`
    /// when no node is left. Nodes passive checks ejected are passed over, unless more than
    /// half of the nodes are out: then every node is tried (as Envoy's panic threshold).
    pub fn pick(&self, key: &str, tried: &[usize]) -> Option<usize> {
        let weighted = self.nodes.iter().filter(|n| n.weight > 0).count();
        let out = self
            .nodes
            .iter()
            .filter(|n| n.weight > 0 && n.stats.ejected())
            .count();
        let honour = out > 0 && out * 2 <= weighted;
        let probed_down = |n: &Choice| n.probed.as_ref().is_some_and(|p| p.is_down());
        // Nodes active checks have out are passed over, unless every node is out (APISIX
        // then sends to them all).
        let all_down = self.nodes.iter().filter(|n| n.weight > 0).all(probed_down);
        let usable = |i: usize| {
            let n = &self.nodes[i];
            n.weight > 0
                && !tried.contains(&i)
                && !(honour && n.stats.ejected())
                && (all_down || !probed_down(n))
        };
        match &self.kind {
            Kind::RoundRobin { schedule, cursor } => {
                if schedule.is_empty() {
                    return None;
                }
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..schedule.len())
                    .map(|k| schedule[(start + k) % schedule.len()] as usize)
                    .find(|i| usable(*i))
            }
            Kind::Chash { ring } => {
                if ring.is_empty() {
                    return None;
                }
                let h = hash64(key);
                let start = ring.partition_point(|(p, _)| *p < h);
                (0..ring.len())
                    .map(|k| ring[(start + k) % ring.len()].1 as usize)
                    .find(|i| usable(*i))
            }
            Kind::LeastConn { cursor } => {
                let n = self.nodes.len();
                let start = cursor.fetch_add(1, Ordering::Relaxed);
                (0..n)
                    .map(|k| (start + k) % n)
                    .filter(|i| usable(*i))
                    .min_by(|a, b| {
                        let cost = |i: usize| {
                            (self.nodes[i].stats.in_flight() + 1) as f64
                                / f64::from(self.nodes[i].weight)
                        };
                        cost(*a).total_cmp(&cost(*b))
                    })
            }
            Kind::Ewma { seed } => {
                let usable: Vec<usize> = (0..self.nodes.len()).filter(|i| usable(*i)).collect();
                match usable.len() {
                    0 => None,
                    1 => Some(usable[0]),
                    n => {
                        let r = next_random(seed);
                        let a = usable[(r % n as u64) as usize];
                        let mut b = usable[((r >> 32) % (n as u64 - 1)) as usize];
                        if b == a {
                            b = usable[n - 1];
                        }
                        let cost = |i: usize| {
                            let s = &self.nodes[i].stats;
                            // An unmeasured node costs like the cheapest: it gets tried.
                            (s.latency_ns().max(1.0) * (s.in_flight() + 1) as f64)
                                / f64::from(self.nodes[i].weight)
                        };
                        Some(if cost(b) < cost(a) { b } else { a })
                    }
                }
            }
        }
    }
}

/// xorshift64*: cheap, lock-free randomness for two choices.
fn next_random(seed: &AtomicU64) -> u64 {
    let mut x = seed.load(Ordering::Relaxed);
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    seed.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::HashOn;

    fn nodes(weights: &[u32]) -> Vec<Choice> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| Choice {
                authority: format!("10.0.0.{i}:80"),
                weight: *w,
                stats: Arc::default(),
                probed: None,
            })
            .collect()
    }

    #[test]
    fn round_robin_is_smooth_and_weighted() {
        let p = Picker::new(&Balance::RoundRobin, nodes(&[5, 1, 1]));
        let picks: Vec<usize> = (0..7).filter_map(|_| p.pick("", &[])).collect();
        assert_eq!(picks, vec![0, 0, 1, 0, 2, 0, 0], "nginx's smooth sequence");
        assert_eq!(p.pick("", &[0, 1]), Some(2), "tried nodes are skipped");
        let none = Picker::new(&Balance::RoundRobin, nodes(&[0, 0]));
        assert_eq!(none.pick("", &[]), None);
        let big = Picker::new(&Balance::RoundRobin, nodes(&[1_000_000, 3_000_000]));
        let n = (0..4000).filter(|_| big.pick("", &[]) == Some(1)).count();
        assert!(
            (2900..=3100).contains(&n),
            "large weights keep their ratio: {n}"
        );
    }

    #[test]
    fn nodes_active_checks_have_out_are_passed_over_unless_all_are() {
        let check = crate::model::Upstream::parse(&serde_json::json!({
            "nodes": {"10.0.0.1:80": 1},
            "checks": {"active": {"unhealthy": {"tcp_failures": 1}}}}))
        .expect("upstream")
        .active
        .expect("active");
        let take_out = |p: &Arc<crate::health::Probed>| {
            crate::health::Tally::default().record(crate::health::Probe::ConnectFailed, &check, p)
        };
        let mut ns = nodes(&[1, 1, 1]);
        let probed: Vec<Arc<crate::health::Probed>> = (0..3).map(|_| Arc::default()).collect();
        for (n, p) in ns.iter_mut().zip(&probed) {
            n.probed = Some(p.clone());
        }
        let p = Picker::new(&Balance::RoundRobin, ns);
        take_out(&probed[0]);
        take_out(&probed[2]);
        assert!(
            (0..6).all(|_| p.pick("", &[]) == Some(1)),
            "two of three out"
        );
        take_out(&probed[1]);
        let picks: std::collections::HashSet<usize> =
            (0..6).filter_map(|_| p.pick("", &[])).collect();
        assert_eq!(picks.len(), 3, "all out: all are used");
    }

    #[test]
    fn chash_is_stable_and_moves_little() {
        let balance = Balance::Chash {
            hash_on: HashOn::Vars,
            key: "remote_addr".into(),
        };
        let four = Picker::new(&balance, nodes(&[1, 1, 1, 1]));
        let keys: Vec<String> = (0..2000).map(|i| format!("client-{i}")).collect();
        let before: Vec<usize> = keys.iter().filter_map(|k| four.pick(k, &[])).collect();
        let again: Vec<usize> = keys.iter().filter_map(|k| four.pick(k, &[])).collect();
        assert_eq!(before, again);
        let mut five_nodes = nodes(&[1, 1, 1, 1]);
        five_nodes.push(Choice {
            authority: "10.0.0.9:80".into(),
            weight: 1,
            stats: Arc::default(),
            probed: None,
        });
        let five = Picker::new(&balance, five_nodes);
        let moved = keys
            .iter()
            .zip(&before)
            .filter(|(k, b)| five.pick(k, &[]) != Some(**b))
            .count();
        assert!(
            moved < 2000 * 35 / 100,
            "about a fifth of the keys move: {moved}"
        );
    }

    #[test]
    fn passive_checks_eject_and_cap_the_share() {
        let passive = crate::model::Passive {
            unhealthy_statuses: vec![500],
            http_failures: 3,
            tcp_failures: 1,
            timeouts: 2,
        };
        let ns = nodes(&[1, 1, 1, 1]);
        let p = Picker::new(&Balance::RoundRobin, ns.clone());
        assert!(!ns[0].stats.record(Outcome::BadStatus, &passive));
        assert!(!ns[0].stats.record(Outcome::BadStatus, &passive));
        assert!(
            !ns[0].stats.record(Outcome::Healthy, &passive),
            "a success resets the count"
        );
        assert!(!ns[0].stats.record(Outcome::BadStatus, &passive));
        assert!(!ns[0].stats.record(Outcome::BadStatus, &passive));
        assert!(
            ns[0].stats.record(Outcome::BadStatus, &passive),
            "three in a row eject"
        );
        assert!(
            (0..8).all(|_| p.pick("", &[]) != Some(0)),
            "an ejected node is passed over"
        );
        assert!(ns[1].stats.record(Outcome::ConnectFailed, &passive));
        assert!(
            (0..8).all(|_| !matches!(p.pick("", &[]), Some(0 | 1))),
            "half may be out"
        );
        assert!(ns[2].stats.record(Outcome::ConnectFailed, &passive));
        let picked: std::collections::BTreeSet<usize> =
            (0..8).filter_map(|_| p.pick("", &[])).collect();
        assert_eq!(picked.len(), 4, "past half out, every node is tried again");
    }

    #[test]
    fn least_conn_and_ewma_avoid_the_busy_node() {
        let ns = nodes(&[1, 1]);
        let _busy: Vec<InFlight> = (0..5).map(|_| ns[0].stats.begin()).collect();
        let p = Picker::new(&Balance::LeastConn, ns.clone());
        assert!((0..10).all(|_| p.pick("", &[]) == Some(1)));
        let e = Picker::new(&Balance::Ewma, ns);
        assert!((0..10).all(|_| e.pick("", &[]) == Some(1)));
    }
}
