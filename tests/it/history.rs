//! Histories of register operations (get, put with `prev_kv`, compare-and-swap) on a few keys,
//! and their linearizability check, shared by the process-level test (`linearizable`) and the
//! deterministic simulation (`sim`).
//!
//! Checker: `todc-utils` (`WGLChecker`, Wing–Gong/Lowe search). It has no dependencies at all and
//! builds in a fraction of a second on Rust 1.95; `stateright` builds too but pulls in 44 crates
//! (dashmap, tiny_http, serde_json, ...) for a model checker and explorer we do not use.
//!
//! Unknown outcomes: a put or txn that errors or times out may have taken effect, now or at any
//! later moment, or never. todc's histories must be complete, so (as Jepsen does with `:info`)
//! such an operation gets its return placed after every other event of its key: the checker may
//! linearize it anywhere after its invocation, including after everything else, which is the
//! same as never. Every operation has its own process ID, so a client that goes on after an
//! unknown outcome does not have its later returns matched to the pending call. A get that fails
//! is dropped: it has no effect. See [`check_key`] for the one pruning step done before checking.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use todc_utils::{Action, History, Specification, WGLChecker};

/// How long all per-key checks together may take before the test gives up.
const CHECK_BUDGET: Duration = Duration::from_secs(20);

/// Register values: unique across the run (from one counter), written as decimal strings.
pub(crate) type Value = u64;

/// An operation on one key, with what it observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    /// A linearizable get; `None` when the key was absent.
    Get(Option<Value>),
    /// An acknowledged put, with the previous value it returned (`prev_kv`).
    Put { value: Value, prev: Option<Value> },
    /// A put with an unknown outcome.
    PutUnknown(Value),
    /// A txn whose compare (value == `expect`) held: it put `new`.
    CasOk { expect: Value, new: Value },
    /// A txn whose compare failed; its else branch read `seen`.
    CasFailed {
        expect: Value,
        new: Value,
        seen: Option<Value>,
    },
    /// A txn with an unknown outcome.
    CasUnknown { expect: Value, new: Value },
}

impl Op {
    /// The value this operation writes when it takes effect (unique per operation).
    fn written(&self) -> Option<Value> {
        match *self {
            Op::Get(_) | Op::CasFailed { .. } => None,
            Op::Put { value, .. } | Op::PutUnknown(value) => Some(value),
            Op::CasOk { new, .. } | Op::CasUnknown { new, .. } => Some(new),
        }
    }

    /// Values this operation reads or compares against: evidence that a write was seen.
    fn mentioned(&self) -> Vec<Value> {
        match *self {
            Op::Get(v) | Op::Put { prev: v, .. } => v.into_iter().collect(),
            Op::PutUnknown(_) => Vec::new(),
            Op::CasOk { expect, .. } | Op::CasUnknown { expect, .. } => vec![expect],
            Op::CasFailed { expect, seen, .. } => std::iter::once(expect).chain(seen).collect(),
        }
    }

    fn is_unknown(&self) -> bool {
        matches!(self, Op::PutUnknown(_) | Op::CasUnknown { .. })
    }

    /// The same operation as one whose answer never arrived; `None` for a read (dropped).
    fn as_unknown(&self) -> Option<Op> {
        match *self {
            Op::Get(_) => None,
            Op::Put { value, .. } | Op::PutUnknown(value) => Some(Op::PutUnknown(value)),
            Op::CasOk { expect, new }
            | Op::CasFailed { expect, new, .. }
            | Op::CasUnknown { expect, new } => Some(Op::CasUnknown { expect, new }),
        }
    }
}

fn show(v: Option<Value>) -> String {
    v.map_or_else(|| "nil".to_string(), |v| v.to_string())
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Get(v) => write!(f, "get -> {}", show(v)),
            Op::Put { value, prev } => write!(f, "put {value} (prev {})", show(prev)),
            Op::PutUnknown(value) => write!(f, "put {value} ?"),
            Op::CasOk { expect, new } => write!(f, "cas {expect}->{new} ok"),
            Op::CasFailed { expect, new, seen } => {
                write!(f, "cas {expect}->{new} failed (saw {})", show(seen))
            }
            Op::CasUnknown { expect, new } => write!(f, "cas {expect}->{new} ?"),
        }
    }
}

/// Sequential specification: one register, absent (`None`) at first.
pub(crate) struct Register;

impl Specification for Register {
    type State = Option<Value>;
    type Operation = Op;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &Op, state: &Self::State) -> (bool, Self::State) {
        match *op {
            Op::Get(v) => (v == *state, *state),
            Op::Put { value, prev } => (prev == *state, Some(value)),
            Op::PutUnknown(value) => (true, Some(value)),
            Op::CasOk { expect, new } => (*state == Some(expect), Some(new)),
            Op::CasFailed { expect, seen, .. } => {
                (*state == seen && *state != Some(expect), *state)
            }
            // Linearized here it takes effect exactly as the compare says; "never" is the
            // linearization after everything else.
            Op::CasUnknown { expect, new } if *state == Some(expect) => (true, Some(new)),
            Op::CasUnknown { .. } => (true, *state),
        }
    }
}

/// One operation of the history. `invoke` and `ret` come from one atomic counter, taken just
/// before the request is sent and just after its answer arrived, so they order real time.
#[derive(Clone, Debug)]
pub(crate) struct Record {
    pub(crate) client: usize,
    /// Index of the member the request went to.
    pub(crate) member: usize,
    /// Revision in the response header (0 when there was no response).
    pub(crate) rev: i64,
    pub(crate) key: usize,
    pub(crate) op: Op,
    pub(crate) invoke: u64,
    /// `None`: the outcome is unknown (the operation may still take effect at any time).
    pub(crate) ret: Option<u64>,
}

impl fmt::Display for Record {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ret = self.ret.map_or_else(|| "?".to_string(), |r| r.to_string());
        write!(
            f,
            "[{:>6} .. {:>6}] c{}@m{} {} @r{}",
            self.invoke, ret, self.client, self.member, self.op, self.rev
        )
    }
}

/// Whether one key's history is linearizable as a register.
///
/// Before the search, unknown writes whose value no other operation ever read or compared
/// against are removed (to a fixpoint). That keeps the result: put them last in any
/// linearization and they are unseen; conversely, in a linearization of the full history the
/// state such a write leaves is only ever met by other unknown writes, which can be moved last
/// too. It matters for speed: each pending unknown write doubles what the search may try.
pub(crate) fn check_key(records: &[Record]) -> bool {
    let mut kept: Vec<&Record> = records.iter().collect();
    loop {
        let mentioned: HashSet<Value> = kept.iter().flat_map(|r| r.op.mentioned()).collect();
        let before = kept.len();
        kept.retain(|r| {
            !r.op.is_unknown() || r.op.written().is_some_and(|v| mentioned.contains(&v))
        });
        if kept.len() == before {
            break;
        }
    }
    if kept.is_empty() {
        return true;
    }
    let mut events: Vec<(u64, usize, Action<Op>)> = Vec::with_capacity(kept.len() * 2);
    for (pid, r) in kept.iter().enumerate() {
        events.push((r.invoke, pid, Action::Call(r.op)));
        // An unknown outcome returns after everything else of this key.
        events.push((r.ret.unwrap_or(u64::MAX), pid, Action::Response(r.op)));
    }
    events.sort_by_key(|e| e.0);
    let actions = events.into_iter().map(|(_, pid, a)| (pid, a)).collect();
    WGLChecker::<Register>::is_linearizable(History::from_actions(actions))
}

/// The history as it stood at `cut` on the shared counter: operations that had not returned by
/// then have unknown outcomes (reads among them are dropped).
pub(crate) fn prefix(records: &[Record], cut: u64) -> Vec<Record> {
    records
        .iter()
        .filter(|r| r.invoke < cut)
        .filter_map(|r| match r.ret {
            Some(ret) if ret < cut => Some(r.clone()),
            _ => r.op.as_unknown().map(|op| Record {
                op,
                ret: None,
                ..r.clone()
            }),
        })
        .collect()
}

/// The shortest prefix (by return) of a non-linearizable history that is already not
/// linearizable: its last operations are where the anomaly shows.
pub(crate) fn shortest_failing_prefix(records: &[Record]) -> Vec<Record> {
    let mut cuts: Vec<u64> = records
        .iter()
        .filter_map(|r| r.ret)
        .map(|r| r + 1)
        .collect();
    cuts.sort_unstable();
    // A prefix of a linearizable history is linearizable, so failure is monotone in the cut.
    let (mut lo, mut hi) = (0, cuts.len());
    while lo < hi {
        let mid = (lo + hi) / 2;
        if check_key(&prefix(records, cuts[mid])) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    match cuts.get(lo) {
        Some(cut) => prefix(records, *cut),
        None => records.to_vec(),
    }
}

/// What a client is about to do.
#[derive(Clone, Copy)]
pub(crate) enum Attempt {
    Get,
    Put(Value),
    Cas { expect: Value, new: Value },
}

impl Attempt {
    /// A random attempt on a key whose value the client last saw as `last`: 40% gets, 30%
    /// puts, 30% compare-and-swaps. `next` hands out unique values (from 1: a swap expecting 0,
    /// when nothing was seen, fails and reads the current value instead).
    pub(crate) fn draw(
        rng: &mut impl rand::Rng,
        last: Option<Value>,
        mut next: impl FnMut() -> Value,
    ) -> Attempt {
        match rng.random_range(0..10) {
            0..=3 => Attempt::Get,
            4..=6 => Attempt::Put(next()),
            _ => Attempt::Cas {
                expect: last.unwrap_or(0),
                new: next(),
            },
        }
    }

    /// The operation to record when this attempt's outcome is unknown; `None` for a get,
    /// which has no effect.
    pub(crate) fn unknown(self) -> Option<Op> {
        match self {
            Attempt::Get => None,
            Attempt::Put(value) => Some(Op::PutUnknown(value)),
            Attempt::Cas { expect, new } => Some(Op::CasUnknown { expect, new }),
        }
    }
}

impl Op {
    /// The key's value as this operation observed or left it, when known.
    pub(crate) fn observed(&self) -> Option<Option<Value>> {
        match *self {
            Op::Get(v) | Op::CasFailed { seen: v, .. } => Some(v),
            Op::Put { value, .. } => Some(Some(value)),
            Op::CasOk { new, .. } => Some(Some(new)),
            Op::PutUnknown(_) | Op::CasUnknown { .. } => None,
        }
    }
}

/// A value as the clients write it (decimal); panics on anything else.
pub(crate) fn parse_value(raw: &[u8]) -> Value {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a value the test never wrote: {raw:?}"))
}

/// Checks every key's history on its own thread; returns the keys that are not linearizable.
pub(crate) fn check_all(by_key: &BTreeMap<usize, Vec<Record>>) -> Vec<usize> {
    let (tx, rx) = std::sync::mpsc::channel();
    for (key, records) in by_key {
        let (tx, key, records) = (tx.clone(), *key, records.clone());
        std::thread::spawn(move || {
            let started = Instant::now();
            let ok = check_key(&records);
            let _ = tx.send((key, ok, started.elapsed()));
        });
    }
    drop(tx);
    let deadline = Instant::now() + CHECK_BUDGET;
    let mut bad = Vec::new();
    for _ in 0..by_key.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let (key, ok, took) = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("the linearizability check took over {CHECK_BUDGET:?}"));
        println!(
            "key {key}: {} operations, checked in {took:?}: {}",
            by_key[&key].len(),
            if ok {
                "linearizable"
            } else {
                "NOT linearizable"
            }
        );
        if !ok {
            bad.push(key);
        }
    }
    bad.sort_unstable();
    bad
}

/// A record for the hand-written histories below (client = key = 0).
fn rec(op: Op, invoke: u64, ret: Option<u64>) -> Record {
    Record {
        client: 0,
        member: 0,
        rev: 0,
        key: 0,
        op,
        invoke,
        ret,
    }
}

#[test]
fn linearizable_checker_rejects_a_read_before_the_write() {
    let put = Op::Put {
        value: 1,
        prev: None,
    };
    // The read returned 1 before the put of 1 was even invoked.
    let bad = [rec(Op::Get(Some(1)), 0, Some(1)), rec(put, 2, Some(3))];
    assert!(!check_key(&bad));
    // The read alone already is the anomaly: nothing wrote 1 before it returned.
    let shortest = shortest_failing_prefix(&bad);
    assert_eq!(shortest.len(), 1);
    assert_eq!(shortest[0].op, Op::Get(Some(1)));
    // Overlapping in time, the same two operations are fine.
    let good = [rec(Op::Get(Some(1)), 0, Some(3)), rec(put, 1, Some(2))];
    assert!(check_key(&good));
    // A stale read after an acknowledged write, and a compare-and-swap that succeeded on a
    // value that was already overwritten, are rejected too.
    let stale = [rec(put, 0, Some(1)), rec(Op::Get(None), 2, Some(3))];
    assert!(!check_key(&stale));
    let lost_update = [
        rec(put, 0, Some(1)),
        rec(
            Op::Put {
                value: 2,
                prev: Some(1),
            },
            2,
            Some(3),
        ),
        rec(Op::CasOk { expect: 1, new: 3 }, 4, Some(5)),
    ];
    assert!(!check_key(&lost_update));
}

#[test]
fn linearizable_checker_models_unknown_outcomes_as_maybe_later() {
    let unknown = rec(Op::PutUnknown(1), 0, None);
    // Not yet visible, then visible: it took effect late.
    let late = [
        unknown.clone(),
        rec(Op::Get(None), 1, Some(2)),
        rec(Op::Get(Some(1)), 3, Some(4)),
    ];
    assert!(check_key(&late));
    // Never visible: it never took effect (or was never seen).
    let never = [unknown.clone(), rec(Op::Get(None), 5, Some(6))];
    assert!(check_key(&never));
    // Once seen it cannot be undone.
    let undone = [
        unknown.clone(),
        rec(Op::Get(Some(1)), 1, Some(2)),
        rec(Op::Get(None), 3, Some(4)),
    ];
    assert!(!check_key(&undone));
    // And it cannot be seen before it was invoked.
    let early = [
        rec(Op::Get(Some(1)), 0, Some(1)),
        rec(Op::PutUnknown(1), 2, None),
    ];
    assert!(!check_key(&early));
    // An unknown compare-and-swap takes effect only where its compare holds.
    let cas = [
        rec(
            Op::Put {
                value: 1,
                prev: None,
            },
            0,
            Some(1),
        ),
        rec(Op::CasUnknown { expect: 7, new: 2 }, 2, None),
        rec(Op::Get(Some(2)), 3, Some(4)),
    ];
    assert!(!check_key(&cas));
}
