//! Auto-compaction, as etcd's `--auto-compaction-mode` / `--auto-compaction-retention`: the
//! leader compacts the store's history through the log, so every member compacts at the same
//! revision and history stays bounded under endless churn.
//!
//! - `periodic` (etcd's default mode): keep about `retention` of history. The current revision
//!   is sampled every `retention / 10` (at most every hour), and each sample compacts to the
//!   newest revision that is at least `retention` old. A plain number is hours, as in etcd.
//! - `revision`: keep the last `retention` revisions, checked every five minutes as etcd
//!   does. A fast writer can pile up far more than `retention` revisions in five minutes
//!   (measured: at ~9,000 puts/s, 2.7 million revisions outgrew the 2 GiB quota before the
//!   first check), so the current revision is also looked at every second (one atomic
//!   load), and once it is more than twice `retention` past the last compaction the
//!   compactor compacts at once, without waiting for the five-minute check. History stays
//!   under about twice `retention` revisions however fast the writes come.
//!
//! Only the leader compacts; a member that starts leading begins sampling afresh (as etcd's
//! compactor resumes), so a leader change never compacts history younger than `retention`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use berth_proto::etcdserverpb::CompactionRequest;
use berth_store::{Command, StoreError};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::consensus::WriteError;
use crate::core::Core;

/// How often revision mode checks (etcd's).
const REVISION_CHECK: Duration = Duration::from_secs(300);
/// How often revision mode looks at the current revision for history past twice the
/// retention, between its checks.
const REVISION_LOOK: Duration = Duration::from_secs(1);
/// The longest periodic sampling interval (etcd's).
const MAX_SAMPLE_INTERVAL: Duration = Duration::from_secs(3600);

/// How much history auto-compaction keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Keep about this long of history.
    Periodic(Duration),
    /// Keep this many revisions.
    Revision(i64),
}

impl Retention {
    /// Parses etcd's flags: `mode` is `periodic` or `revision`; `retention` is a duration
    /// (`30m`, `1h`, `90s`) or a plain number of hours in periodic mode, a revision count in
    /// revision mode. `None` when retention is zero (auto-compaction off, etcd's default).
    pub fn parse(mode: &str, retention: &str) -> Result<Option<Retention>, String> {
        let retention = retention.trim();
        match mode {
            "periodic" => {
                let d = match retention.parse::<u64>() {
                    Ok(hours) => Duration::from_secs(hours.saturating_mul(3600)),
                    Err(_) => humantime::parse_duration(retention)
                        .map_err(|e| format!("--auto-compaction-retention {retention:?}: {e}"))?,
                };
                Ok((!d.is_zero()).then_some(Retention::Periodic(d)))
            }
            "revision" => {
                let n: i64 = retention.parse().map_err(|_| {
                    format!(
                        "--auto-compaction-retention {retention:?}: revision mode takes a number of revisions"
                    )
                })?;
                if n < 0 {
                    return Err(format!(
                        "--auto-compaction-retention {n}: must not be negative"
                    ));
                }
                Ok((n > 0).then_some(Retention::Revision(n)))
            }
            other => Err(format!(
                "--auto-compaction-mode {other:?}: expected periodic or revision"
            )),
        }
    }

    /// How often the compactor looks ([`Compactor::tick`]).
    pub fn interval(self) -> Duration {
        match self {
            Retention::Periodic(d) => {
                (d / 10).clamp(Duration::from_millis(10), MAX_SAMPLE_INTERVAL)
            }
            Retention::Revision(_) => REVISION_LOOK,
        }
    }
}

/// The compactor's decisions, kept apart from time and the store so they can be tested.
#[derive(Debug)]
pub struct Compactor {
    retention: Retention,
    /// Revisions sampled (periodic mode), oldest first.
    samples: VecDeque<(Instant, i64)>,
    /// The revision history is compacted to, as far as this compactor knows.
    compacted: i64,
    /// When revision mode last made its five-minute check (`None`: not yet).
    checked: Option<Instant>,
}

impl Compactor {
    /// A compactor starting afresh, history compacted to `compacted`.
    pub fn new(retention: Retention, compacted: i64) -> Compactor {
        Compactor {
            retention,
            samples: VecDeque::new(),
            compacted,
            checked: None,
        }
    }

    /// Called every [`Retention::interval`] with the time and the current revision: the
    /// revision to compact to now, if any. Revision mode checks at the first tick and then
    /// every five minutes, and at any tick where more than twice `retention` revisions lie
    /// past the last compaction.
    pub fn tick(&mut self, now: Instant, current: i64) -> Option<i64> {
        let target = match self.retention {
            Retention::Revision(keep) => {
                let due = self
                    .checked
                    .is_none_or(|t| now.checked_duration_since(t) >= Some(REVISION_CHECK));
                let piled_up = current.saturating_sub(self.compacted) > keep.saturating_mul(2);
                if due {
                    self.checked = Some(now);
                } else if !piled_up {
                    return None;
                }
                current - keep
            }
            Retention::Periodic(keep) => {
                self.samples.push_back((now, current));
                // The newest sample at least `keep` old; older ones are no longer needed.
                let old_enough =
                    |t: Instant| now.checked_duration_since(t).is_some_and(|a| a >= keep);
                let mut newest_old = None;
                while let Some(&(t, rev)) = self.samples.front() {
                    if !old_enough(t) {
                        break;
                    }
                    newest_old = Some((t, rev));
                    self.samples.pop_front();
                }
                // The newest old-enough sample stays: it is the target until a younger one
                // ages past `keep`.
                let (t, rev) = newest_old?;
                self.samples.push_front((t, rev));
                rev
            }
        };
        (target > self.compacted).then_some(target)
    }

    /// Records that history is compacted to `revision`.
    pub fn compacted(&mut self, revision: i64) {
        self.compacted = self.compacted.max(revision);
    }
}

/// Runs auto-compaction until `stop` changes: idle while this member follows.
pub async fn run(core: Arc<Core>, retention: Retention, stop: watch::Receiver<bool>) {
    let mut leadership = core.consensus.leadership(stop);
    'terms: while let Some(role) = leadership.leading().await {
        tracing::info!(
            ?retention,
            term = role.term,
            "leading; auto-compaction runs"
        );
        let mut compactor = Compactor::new(retention, core.store.stats().compacted);
        let mut tick = tokio::time::interval(retention.interval());
        // A tick missed while a compaction was proposed is not made up in a burst.
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                ended = leadership.ended(role.term) => match ended {
                    Some(_) => continue 'terms,
                    None => return,
                },
            }
            let Some(revision) = compactor.tick(Instant::now(), core.store.revision()) else {
                continue;
            };
            let cmd = Command::Compaction(CompactionRequest {
                revision,
                physical: false,
            });
            match core.consensus.propose(cmd).await {
                Ok(_) => {
                    compactor.compacted(revision);
                    core.metrics.auto_compactions.inc();
                    tracing::info!(revision, "auto-compacted");
                }
                // Someone compacted further meanwhile: nothing to do up to there.
                Err(WriteError::Refused(StoreError::Compacted)) => compactor.compacted(revision),
                Err(e) => tracing::warn!(revision, error = %e, "auto-compaction"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_parse_as_etcd_reads_them() {
        let p = |m: &str, r: &str| Retention::parse(m, r);
        assert_eq!(p("periodic", "0"), Ok(None));
        assert_eq!(p("revision", "0"), Ok(None));
        assert_eq!(
            p("periodic", "1"),
            Ok(Some(Retention::Periodic(Duration::from_secs(3600))))
        );
        assert_eq!(
            p("periodic", "30m"),
            Ok(Some(Retention::Periodic(Duration::from_secs(1800))))
        );
        assert_eq!(p("revision", "1000"), Ok(Some(Retention::Revision(1000))));
        assert!(p("revision", "1h").is_err());
        assert!(p("revision", "-5").is_err());
        assert!(p("periodic", "soon").is_err());
        assert!(p("hourly", "1").is_err());
    }

    #[test]
    fn intervals_follow_etcd() {
        assert_eq!(
            Retention::Periodic(Duration::from_secs(3600)).interval(),
            Duration::from_secs(360)
        );
        assert_eq!(
            Retention::Periodic(Duration::from_secs(72 * 3600)).interval(),
            MAX_SAMPLE_INTERVAL
        );
        // Revision mode looks every second; the five-minute check is the compactor's.
        assert_eq!(Retention::Revision(5).interval(), REVISION_LOOK);
    }

    #[test]
    fn revision_mode_keeps_the_last_n_revisions() {
        let mut c = Compactor::new(Retention::Revision(100), 0);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(c.tick(at(0), 50), None, "not yet 100 revisions");
        assert_eq!(c.tick(at(300), 250), Some(150));
        c.compacted(150);
        assert_eq!(c.tick(at(600), 250), None, "already there");
        assert_eq!(c.tick(at(900), 300), Some(200));
    }

    #[test]
    fn revision_mode_checks_every_five_minutes_and_early_past_twice_the_retention() {
        let mut c = Compactor::new(Retention::Revision(100), 0);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // The first tick checks.
        assert_eq!(c.tick(at(0), 150), Some(50));
        c.compacted(50);
        // Up to twice the retention past the last compaction: wait for the five minutes.
        for s in 1..300 {
            assert_eq!(
                c.tick(at(s), 250),
                None,
                "at {s} s, 200 past the compaction"
            );
        }
        assert_eq!(c.tick(at(300), 250), Some(150), "the five-minute check");
        c.compacted(150);
        // More than twice the retention past it: at once, well before the next check.
        assert_eq!(c.tick(at(301), 350), None, "exactly twice the retention");
        assert_eq!(c.tick(at(302), 351), Some(251), "past twice the retention");
        c.compacted(251);
        assert_eq!(c.tick(at(303), 400), None);
        // A writer far faster than the checks: history never exceeds twice the retention
        // for longer than a tick.
        let mut current = 400;
        for s in 304..600 {
            current += 1_000;
            let target = c.tick(at(s), current).expect("compacts every tick");
            assert_eq!(target, current - 100);
            c.compacted(target);
        }
        // The five-minute check still comes on time (600 s), with little to do.
        assert_eq!(c.tick(at(600), current + 10), Some(current - 90));
    }

    #[test]
    fn periodic_mode_compacts_to_the_revision_retention_ago() {
        let keep = Duration::from_secs(100);
        let mut c = Compactor::new(Retention::Periodic(keep), 0);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        // Sampled every 10 s; revisions grow by 10 per tick.
        for i in 0..10 {
            assert_eq!(
                c.tick(at(i * 10), 1 + i as i64 * 10),
                None,
                "younger than 100 s"
            );
        }
        // At 100 s, the sample of 0 s (revision 1) is 100 s old.
        assert_eq!(c.tick(at(100), 101), Some(1));
        c.compacted(1);
        assert_eq!(c.tick(at(110), 111), Some(11));
        c.compacted(11);
        // Nothing written for a while: the target stops moving, and nothing is compacted twice.
        assert_eq!(c.tick(at(120), 111), Some(21));
        c.compacted(21);
        assert_eq!(c.tick(at(300), 111), Some(111));
        c.compacted(111);
        assert_eq!(c.tick(at(310), 111), None);
    }
}
