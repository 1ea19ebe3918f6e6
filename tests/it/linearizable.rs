//! Linearizability under faults: six clients run puts (with `prev_kv`), linearizable gets and
//! compare-and-swap txns on four keys of a three-member cluster while the leader is SIGKILLed
//! and started again (once the others failed over, or in a second test quickly, before any
//! election), then whoever leads is frozen (SIGSTOP) for 1.5 s; each key's recorded history is
//! then checked as a register.
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
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use todc_utils::{Action, History, Specification, WGLChecker};

use crate::harness::{bounded, Cluster};

/// Keys the clients share: few, so that operations conflict.
const KEYS: usize = 4;
/// Concurrent clients.
const CLIENTS: usize = 6;
/// How long the clients go on after the faults are over.
const SETTLE: Duration = Duration::from_millis(1500);
/// How long a member stays frozen.
const FREEZE: Duration = Duration::from_millis(1500);
/// Longest wait for the cluster to agree on a leader.
const LEADER_WAIT: Duration = Duration::from_secs(15);
/// Per-operation deadline on top of the bounded client options.
const OP_TIMEOUT: Duration = Duration::from_secs(2);
/// How long all per-key checks together may take before the test gives up.
const CHECK_BUDGET: Duration = Duration::from_secs(20);

/// Register values: unique across the run (from one counter), written as decimal strings.
type Value = u64;

/// An operation on one key, with what it observed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
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
struct Register;

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
struct Record {
    client: usize,
    /// Index of the member the request went to.
    member: usize,
    /// Revision in the response header (0 when there was no response).
    rev: i64,
    key: usize,
    op: Op,
    invoke: u64,
    /// `None`: the outcome is unknown (the operation may still take effect at any time).
    ret: Option<u64>,
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
fn check_key(records: &[Record]) -> bool {
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
fn prefix(records: &[Record], cut: u64) -> Vec<Record> {
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
fn shortest_failing_prefix(records: &[Record]) -> Vec<Record> {
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

fn key_name(key: usize) -> String {
    format!("lin/{key}")
}

fn parse(raw: &[u8]) -> Value {
    std::str::from_utf8(raw)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("a value this test never wrote: {raw:?}"))
}

/// What a client is about to do.
#[derive(Clone, Copy)]
enum Attempt {
    Get,
    Put(Value),
    Cas { expect: Value, new: Value },
}

/// Runs one attempt; returns what it observed and the revision of the response header.
async fn perform(
    c: &mut Client,
    key: &str,
    attempt: Attempt,
) -> Result<(Op, i64), etcd_client::Error> {
    let rev = |h: Option<&etcd_client::ResponseHeader>| h.map_or(0, |h| h.revision());
    Ok(match attempt {
        Attempt::Get => {
            let r = c.get(key, None).await?;
            let v = r.kvs().first().map(|kv| parse(kv.value()));
            (Op::Get(v), rev(r.header()))
        }
        Attempt::Put(value) => {
            let opts = PutOptions::new().with_prev_key();
            let r = c.put(key, value.to_string(), Some(opts)).await?;
            let prev = r.prev_key().map(|kv| parse(kv.value()));
            (Op::Put { value, prev }, rev(r.header()))
        }
        Attempt::Cas { expect, new } => {
            let txn = Txn::new()
                .when([Compare::value(key, CompareOp::Equal, expect.to_string())])
                .and_then([TxnOp::put(key, new.to_string(), None)])
                .or_else([TxnOp::get(key, None)]);
            let r = c.txn(txn).await?;
            let op = if r.succeeded() {
                Op::CasOk { expect, new }
            } else {
                let seen = match r.op_responses().first() {
                    Some(TxnOpResponse::Get(g)) => g.kvs().first().map(|kv| parse(kv.value())),
                    other => panic!("a failed txn must answer its else-branch get: {other:?}"),
                };
                Op::CasFailed { expect, new, seen }
            };
            (op, rev(r.header()))
        }
    })
}

/// One client: random operations on random keys until `stop` is set, on one member at a time,
/// moving to the next member after any error.
async fn client_loop(
    id: usize,
    endpoints: Vec<String>,
    stop: Arc<AtomicBool>,
    clock: Arc<AtomicU64>,
    values: Arc<AtomicU64>,
) -> Vec<Record> {
    let mut rng = StdRng::seed_from_u64(0x6c69_6e00 + id as u64);
    let mut target = id % endpoints.len();
    let mut conn: Option<Client> = None;
    // The last value this client saw per key: what its compare-and-swaps expect.
    let mut last = [None::<Value>; KEYS];
    let mut out = Vec::new();
    while !stop.load(Ordering::SeqCst) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match Client::connect([endpoints[target].clone()], Some(bounded())).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    target = (target + 1) % endpoints.len();
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let key = rng.random_range(0..KEYS);
        let attempt = match rng.random_range(0..10) {
            0..=3 => Attempt::Get,
            4..=6 => Attempt::Put(values.fetch_add(1, Ordering::SeqCst)),
            // Values start at 1: expecting 0 fails and reads the current value instead.
            _ => Attempt::Cas {
                expect: last[key].unwrap_or(0),
                new: values.fetch_add(1, Ordering::SeqCst),
            },
        };
        let name = key_name(key);
        let invoke = clock.fetch_add(1, Ordering::SeqCst);
        let outcome = tokio::time::timeout(OP_TIMEOUT, perform(c, &name, attempt)).await;
        let ret = clock.fetch_add(1, Ordering::SeqCst);
        let member = target;
        let (op, ret, rev) = match outcome {
            Ok(Ok((op, rev))) => (op, Some(ret), rev),
            // An error or timeout: the outcome is unknown; try another member next.
            _ => {
                conn = None;
                target = (target + 1) % endpoints.len();
                let op = match attempt {
                    Attempt::Get => continue,
                    Attempt::Put(value) => Op::PutUnknown(value),
                    Attempt::Cas { expect, new } => Op::CasUnknown { expect, new },
                };
                (op, None, 0)
            }
        };
        match op {
            Op::Get(v) | Op::CasFailed { seen: v, .. } => last[key] = v,
            Op::Put { value, .. } => last[key] = Some(value),
            Op::CasOk { new, .. } => last[key] = Some(new),
            Op::PutUnknown(_) | Op::CasUnknown { .. } => {}
        }
        out.push(Record {
            client: id,
            member,
            rev,
            key,
            op,
            invoke,
            ret,
        });
    }
    out
}

/// Checks every key's history on its own thread; returns the keys that are not linearizable.
fn check_all(by_key: &BTreeMap<usize, Vec<Record>>) -> Vec<usize> {
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

/// The member a majority of the cluster follows at the highest term any member reports,
/// skipping `except`. A restarted member may still claim the leadership of an old term, so
/// one member's claim is not enough. Waits up to [`LEADER_WAIT`].
async fn agreed_leader(cluster: &Cluster, except: Option<usize>) -> usize {
    let deadline = Instant::now() + LEADER_WAIT;
    loop {
        // (member index, own ID, leader ID, term) of every member that answers.
        let mut seen = Vec::new();
        for (i, m) in cluster.members.iter().enumerate() {
            let Ok(mut c) = Client::connect([m.client_addr.clone()], Some(bounded())).await else {
                continue;
            };
            let status = tokio::time::timeout(Duration::from_millis(500), c.status()).await;
            if let Ok(Ok(st)) = status {
                let me = st.header().map_or(0, |h| h.member_id());
                seen.push((i, me, st.leader(), st.raft_term()));
            }
        }
        let top = seen.iter().map(|s| s.3).max().unwrap_or(0);
        let at_top: Vec<u64> = seen.iter().filter(|s| s.3 == top).map(|s| s.2).collect();
        let majority = cluster.members.len() / 2 + 1;
        let leader = at_top
            .iter()
            .find(|l| **l != 0 && at_top.iter().filter(|x| x == l).count() >= majority)
            .and_then(|l| seen.iter().find(|s| s.1 == *l))
            .map(|s| s.0)
            .filter(|i| Some(*i) != except);
        if let Some(i) = leader {
            return i;
        }
        assert!(
            Instant::now() < deadline,
            "no agreed leader within {LEADER_WAIT:?}: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// When the SIGKILLed leader is started again.
#[derive(Clone, Copy, Debug)]
enum Restart {
    /// Once the other two have elected a new leader (a few election timeouts, ~3 s here) and
    /// served a little: a real failover, then a stale member rejoining.
    AfterFailover,
    /// After 1.5 s, before any election: it resumes leading in its old term while writes that
    /// followers forwarded to it just before the kill are still in doubt. (This is how
    /// re-proposing such writes, fixed in abc66ee, showed up: values applied twice.)
    Quick,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_across_leader_failover_and_freeze() {
    run_with_faults(Restart::AfterFailover).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn linearizable_across_quick_leader_restart_and_freeze() {
    run_with_faults(Restart::Quick).await;
}

/// Runs the clients against a fresh cluster through both faults, then checks every key.
async fn run_with_faults(restart: Restart) {
    let mut cluster = Cluster::start(3);
    let endpoints = cluster.endpoints();
    let first_leader = agreed_leader(&cluster, None).await;
    let clock = Arc::new(AtomicU64::new(0));
    let values = Arc::new(AtomicU64::new(1));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            tokio::spawn(client_loop(
                id,
                endpoints.clone(),
                stop.clone(),
                clock.clone(),
                values.clone(),
            ))
        })
        .collect();
    // Timeline, with the shared counter so faults can be placed in a printed history.
    let mark = |what: String| {
        let seq = clock.load(Ordering::SeqCst);
        println!("{:>9.3?} seq {seq:>6}: {what}", started.elapsed());
        seq
    };

    // Fault 1: SIGKILL the leader, then start it again on its data.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    cluster.members[first_leader].kill9();
    let killed_at = mark(format!("killed leader m{first_leader} ({restart:?})"));
    match restart {
        Restart::AfterFailover => {
            let second = agreed_leader(&cluster, Some(first_leader)).await;
            mark(format!("m{second} leads"));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        Restart::Quick => tokio::time::sleep(Duration::from_millis(1500)).await,
    }
    tokio::task::block_in_place(|| cluster.members[first_leader].start_again());
    mark(format!("m{first_leader} answers again"));

    // Fault 2: freeze whoever leads now (a partition of one), then thaw it.
    let frozen = agreed_leader(&cluster, None).await;
    cluster.members[frozen].signal("STOP");
    mark(format!("froze leader m{frozen}"));
    tokio::time::sleep(FREEZE).await;
    cluster.members[frozen].signal("CONT");
    mark(format!("thawed m{frozen}"));
    tokio::time::sleep(SETTLE).await;
    stop.store(true, Ordering::SeqCst);

    let mut records = Vec::new();
    for c in clients {
        // A client stops after its current operation, bounded by the operation timeout.
        let done = tokio::time::timeout(OP_TIMEOUT * 3, c)
            .await
            .expect("a client hung past its operation deadline");
        records.extend(done.expect("client task"));
    }
    mark("clients stopped".to_string());

    let unknown = records.iter().filter(|r| r.ret.is_none()).count();
    let after_kill = records
        .iter()
        .filter(|r| r.ret.is_some() && r.invoke > killed_at)
        .count();
    println!(
        "{} operations recorded ({unknown} with unknown outcome), {after_kill} completed after the kill",
        records.len()
    );
    assert!(
        after_kill > 0,
        "no operation completed after the leader was killed"
    );
    let mut by_key: BTreeMap<usize, Vec<Record>> = BTreeMap::new();
    for r in records {
        by_key.entry(r.key).or_default().push(r);
    }
    assert_eq!(by_key.len(), KEYS, "every key saw operations");

    let bad = check_all(&by_key);
    let applied = if bad.is_empty() {
        Vec::new()
    } else {
        applied_writes(&cluster).await
    };
    for key in &bad {
        let mut failing = shortest_failing_prefix(&by_key[key]);
        failing.sort_by_key(|r| r.invoke);
        eprintln!(
            "key {} ({}): shortest non-linearizable prefix has {} operations; its last ones \
             ([invoke .. return or ? if none yet] client@member operation @answer-revision):",
            key,
            key_name(*key),
            failing.len()
        );
        let tail: Vec<&Record> = failing.iter().rev().take(60).rev().collect();
        for r in &tail {
            eprintln!("  {r}");
        }
        // What the cluster itself applied to this key, around those operations.
        let writes: Vec<(i64, Value)> = applied
            .iter()
            .filter(|(_, k, _)| k == key)
            .map(|(rev, _, v)| (*rev, *v))
            .collect();
        let mut at: BTreeMap<Value, Vec<i64>> = BTreeMap::new();
        for (rev, v) in &writes {
            at.entry(*v).or_default().push(*rev);
        }
        for (v, revs) in at.iter().filter(|(_, revs)| revs.len() > 1) {
            eprintln!("  value {v} was applied more than once: at revisions {revs:?}");
        }
        let revs = tail.iter().map(|r| r.rev).filter(|r| *r > 0);
        if let (Some(lo), Some(hi)) = (revs.clone().min(), revs.max()) {
            let around: Vec<String> = writes
                .iter()
                .filter(|(rev, _)| (lo - 5..=hi + 5).contains(rev))
                .map(|(rev, v)| format!("r{rev}={v}"))
                .collect();
            eprintln!(
                "  applied writes r{}..=r{}: {}",
                lo - 5,
                hi + 5,
                around.join(" ")
            );
        }
    }
    assert!(
        bad.is_empty(),
        "histories of keys {bad:?} are not linearizable"
    );
}

/// Every write the cluster applied to the test's keys, as (revision, key, value), read back
/// from a running member with a watch from revision 1. Best effort: for failure reports.
async fn applied_writes(cluster: &Cluster) -> Vec<(i64, usize, Value)> {
    let mut out = Vec::new();
    for m in &cluster.members {
        let Ok(mut c) = Client::connect([m.client_addr.clone()], Some(bounded())).await else {
            continue;
        };
        let Ok(head) = c.get("lin/", Some(GetOptions::new().with_prefix())).await else {
            continue;
        };
        let head = head.header().map_or(0, |h| h.revision());
        let opts = WatchOptions::new().with_prefix().with_start_revision(1);
        let Ok(mut w) = c.watch("lin/", Some(opts)).await else {
            continue;
        };
        while out.last().is_none_or(|(rev, _, _)| *rev < head) {
            let Ok(Ok(Some(msg))) = tokio::time::timeout(Duration::from_secs(2), w.message()).await
            else {
                break;
            };
            for kv in msg.events().iter().filter_map(|e| e.kv()) {
                let key = std::str::from_utf8(kv.key())
                    .ok()
                    .and_then(|k| k.strip_prefix("lin/"))
                    .and_then(|k| k.parse().ok())
                    .unwrap_or(usize::MAX);
                out.push((kv.mod_revision(), key, parse(kv.value())));
            }
        }
        return out;
    }
    out
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
