//! The closed-loop client: each client keeps one request in flight, asks the shared [`Plan`]
//! whether to send another (warmup, measured, or stop) and records its latency or error.
//!
//! A request that fails as `Unavailable` (endpoint down: tonic fails at once on a refused
//! connection) makes its client pause [`RETRY_MIN`] doubling to [`RETRY_MAX`] before the next
//! one, and a client that has seen nothing else for [`Config::give_up_after`] fails the run.
//! Without the pause a dead endpoint was dialed ~40,000 times a second per client.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::{Config, Stop};
use crate::pace::Pacer;
use crate::report::{status_label, Recorder};
use crate::BenchError;

/// One client's operation: `measured` says whether it falls in the measured phase.
/// Returns the kind of operation done (`"put"`, `"read"`, `"conflict"`, …) for the report.
pub trait Worker: Send + 'static {
    /// Sends one operation and awaits its result.
    fn op(
        &mut self,
        measured: bool,
    ) -> impl Future<Output = Result<&'static str, tonic::Status>> + Send;
}

/// A client's first pause after an `Unavailable` failure.
pub const RETRY_MIN: Duration = Duration::from_millis(10);
/// A client's longest pause between requests while they keep failing as `Unavailable`.
pub const RETRY_MAX: Duration = Duration::from_secs(1);

/// What a client does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ticket {
    /// Send, but do not record (warmup).
    Warmup,
    /// Send and record.
    Measured,
    /// The run is over.
    Stop,
}

/// The phases of a run, shared by its clients: warmup until `measure_start`, then measuring
/// until the deadline or the total is reached; every send is paced by the `--rate` schedule.
#[derive(Debug)]
pub struct Plan {
    measure_start: Instant,
    deadline: Option<Instant>,
    total: Option<u64>,
    taken: AtomicU64,
    pacer: Pacer,
}

impl Plan {
    /// A plan starting at `start`.
    pub fn new(cfg: &Config, start: Instant) -> Self {
        let measure_start = start + cfg.warmup;
        let (deadline, total) = match cfg.stop {
            Stop::After(d) => (Some(measure_start + d), None),
            Stop::Total(n) => (None, Some(n)),
        };
        Self {
            measure_start,
            deadline,
            total,
            taken: AtomicU64::new(0),
            pacer: Pacer::new(start, cfg.rate),
        }
    }

    /// When measuring starts.
    pub fn measure_start(&self) -> Instant {
        self.measure_start
    }

    /// Waits for the next slot in the schedule and says what to do with it.
    pub async fn next(&self) -> Ticket {
        if let Some(due) = self.pacer.claim() {
            // A slot past the deadline would only delay the end of the run.
            if self.deadline.is_some_and(|d| due >= d) {
                return Ticket::Stop;
            }
            tokio::time::sleep_until(due).await;
        }
        self.ticket_at(Instant::now())
    }

    /// Sleeps for `d`, or until the measured phase ends if that is sooner (a client pausing
    /// after a failure must not stretch the run).
    pub async fn pause(&self, d: Duration) {
        let until = Instant::now() + d;
        tokio::time::sleep_until(self.deadline.map_or(until, |end| end.min(until))).await;
    }

    /// The ticket for a send at `now` (the pacing-free part of [`Plan::next`]).
    pub fn ticket_at(&self, now: Instant) -> Ticket {
        if now < self.measure_start {
            return Ticket::Warmup;
        }
        if self.deadline.is_some_and(|d| now >= d) {
            return Ticket::Stop;
        }
        if let Some(total) = self.total {
            if self.taken.fetch_add(1, Ordering::Relaxed) >= total {
                return Ticket::Stop;
            }
        }
        Ticket::Measured
    }
}

/// Runs one client until the plan stops it; each request is bounded by `timeout`. Fails when
/// every request for `give_up_after` was `Unavailable` (see the module docs).
pub async fn drive<W: Worker>(
    plan: Arc<Plan>,
    mut worker: W,
    timeout: Duration,
    give_up_after: Duration,
) -> Result<Recorder, BenchError> {
    let mut rec = Recorder::new()?;
    // The pause taken after the last failure, and when the failures began.
    let mut retry = Duration::ZERO;
    let mut down_since = None;
    loop {
        let measured = match plan.next().await {
            Ticket::Stop => break,
            Ticket::Warmup => false,
            Ticket::Measured => true,
        };
        let t0 = Instant::now();
        let result = tokio::time::timeout(timeout, worker.op(measured)).await;
        let latency = t0.elapsed();
        let unavailable = match &result {
            Ok(Err(status)) if status.code() == tonic::Code::Unavailable => {
                Some(status_label(status))
            }
            _ => None,
        };
        if measured {
            match result {
                Ok(Ok(kind)) => rec.record(kind, latency),
                Ok(Err(status)) => rec.error(status_label(&status)),
                Err(_) => rec.error(format!("timeout after {timeout:?}")),
            }
        }
        let Some(last) = unavailable else {
            retry = Duration::ZERO;
            down_since = None;
            continue;
        };
        let since: Instant = *down_since.get_or_insert(t0);
        let after = Instant::now().saturating_duration_since(since);
        if after >= give_up_after {
            return Err(BenchError::Unreachable { after, last });
        }
        retry = (retry * 2).clamp(RETRY_MIN, RETRY_MAX);
        plan.pause(retry).await;
    }
    Ok(rec)
}

/// Runs every worker as one client until the plan stops them and merges what they measured.
/// Returns the merged recorder and how long the measured phase lasted. The first client to fail
/// fails the run at once (the others are stopped).
pub async fn run_clients<W: Worker>(
    cfg: &Config,
    workers: Vec<W>,
) -> Result<(Recorder, Duration), BenchError> {
    let plan = Arc::new(Plan::new(cfg, Instant::now()));
    let mut tasks = JoinSet::new();
    for w in workers {
        tasks.spawn(drive(plan.clone(), w, cfg.timeout, cfg.give_up_after));
    }
    let mut rec = Recorder::new()?;
    while let Some(t) = tasks.join_next().await {
        match t {
            Ok(Ok(r)) => rec.merge(r),
            Ok(Err(e)) => return Err(e),
            Err(e) => rec.error(format!("client task failed: {e}")),
        }
    }
    let elapsed = Instant::now().saturating_duration_since(plan.measure_start());
    Ok((rec, elapsed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(stop: Stop, warmup: Duration, rate: u64) -> Config {
        Config {
            stop,
            warmup,
            rate,
            ..Config::default()
        }
    }

    #[test]
    fn phases_follow_warmup_and_deadline() {
        let t0 = Instant::now();
        let plan = Plan::new(
            &cfg(
                Stop::After(Duration::from_secs(10)),
                Duration::from_secs(2),
                0,
            ),
            t0,
        );
        assert_eq!(plan.ticket_at(t0), Ticket::Warmup);
        assert_eq!(
            plan.ticket_at(t0 + Duration::from_secs(2)),
            Ticket::Measured
        );
        assert_eq!(
            plan.ticket_at(t0 + Duration::from_secs(11)),
            Ticket::Measured
        );
        assert_eq!(plan.ticket_at(t0 + Duration::from_secs(12)), Ticket::Stop);
    }

    #[test]
    fn total_counts_only_measured_sends() {
        let t0 = Instant::now();
        let plan = Plan::new(&cfg(Stop::Total(3), Duration::from_secs(1), 0), t0);
        assert_eq!(plan.ticket_at(t0), Ticket::Warmup);
        let later = t0 + Duration::from_secs(1);
        let tickets: Vec<Ticket> = (0..5).map(|_| plan.ticket_at(later)).collect();
        assert_eq!(
            tickets,
            vec![
                Ticket::Measured,
                Ticket::Measured,
                Ticket::Measured,
                Ticket::Stop,
                Ticket::Stop
            ]
        );
    }

    struct Counter(u64);

    impl Worker for Counter {
        async fn op(&mut self, _measured: bool) -> Result<&'static str, tonic::Status> {
            self.0 += 1;
            if self.0.is_multiple_of(4) {
                Err(tonic::Status::unavailable("down"))
            } else {
                Ok("put")
            }
        }
    }

    #[tokio::test]
    async fn clients_share_the_total_and_count_errors() {
        let c = Config {
            clients: 3,
            ..cfg(Stop::Total(40), Duration::ZERO, 0)
        };
        let (rec, _) = run_clients(&c, vec![Counter(0), Counter(0), Counter(0)])
            .await
            .expect("run");
        assert_eq!(rec.ops() + rec.errors(), 40);
        // Each client fails every 4th send: at least (40 - 3 * 3) / 4 failures in all.
        assert!(rec.errors() >= 8, "{}", rec.errors());
    }

    /// A KV client on a port nothing listens on: every request fails at once as `Unavailable`
    /// (tonic redials for each), counting its attempts.
    struct Dead {
        kv: berth_proto::etcdserverpb::kv_client::KvClient<tonic::transport::Channel>,
        attempts: Arc<AtomicU64>,
    }

    impl Dead {
        fn new(attempts: Arc<AtomicU64>) -> Self {
            // Bind then drop: nothing listens on the port any more.
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let channel =
                tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                    .expect("endpoint")
                    .connect_lazy();
            Dead {
                kv: berth_proto::etcdserverpb::kv_client::KvClient::new(channel),
                attempts,
            }
        }
    }

    impl Worker for Dead {
        async fn op(&mut self, _measured: bool) -> Result<&'static str, tonic::Status> {
            self.attempts.fetch_add(1, Ordering::Relaxed);
            self.kv
                .range(berth_proto::etcdserverpb::RangeRequest::default())
                .await?;
            Ok("read")
        }
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_retried_with_backoff_not_in_a_spin() {
        let attempts = Arc::new(AtomicU64::new(0));
        let c = Config {
            give_up_after: Duration::from_secs(60),
            ..cfg(Stop::After(Duration::from_secs(1)), Duration::ZERO, 0)
        };
        let started = Instant::now();
        let (rec, _) = run_clients(&c, vec![Dead::new(attempts.clone())])
            .await
            .expect("run");
        let n = attempts.load(Ordering::Relaxed);
        // Pauses of 10, 20, 40, ... 640 ms: 7 or 8 attempts in the second.
        assert!((5..=12).contains(&n), "{n} attempts in 1 s");
        assert_eq!(rec.errors(), n);
        // The last pause is cut short at the end of the run.
        assert!(started.elapsed() < Duration::from_millis(1500));
    }

    #[tokio::test]
    async fn a_dead_endpoint_fails_the_run_once_it_stayed_down_long_enough() {
        let attempts = Arc::new(AtomicU64::new(0));
        let c = Config {
            clients: 2,
            give_up_after: Duration::from_millis(300),
            ..cfg(Stop::After(Duration::from_secs(60)), Duration::ZERO, 0)
        };
        let workers = vec![Dead::new(attempts.clone()), Dead::new(attempts.clone())];
        let run = tokio::time::timeout(Duration::from_secs(5), run_clients(&c, workers)).await;
        match run.expect("the run ends long before its 60 s") {
            Err(BenchError::Unreachable { after, last }) => {
                assert!(after >= Duration::from_millis(300), "{after:?}");
                assert!(last.starts_with("Unavailable"), "{last}");
            }
            other => panic!("expected the run to fail as unreachable: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limits_the_whole_run() {
        // 50 ops/s for 1 s across 4 clients: 50 sends, whatever the client count.
        let c = Config {
            clients: 4,
            ..cfg(Stop::After(Duration::from_secs(1)), Duration::ZERO, 50)
        };
        let workers = (0..4).map(|_| Counter(1)).collect();
        let (rec, elapsed) = run_clients(&c, workers).await.expect("run");
        assert_eq!(rec.ops() + rec.errors(), 50);
        // The last slot (49) is due at 980 ms of virtual time.
        assert!(
            (Duration::from_millis(980)..Duration::from_secs(1)).contains(&elapsed),
            "{elapsed:?}"
        );
    }
}
