//! Delayed and repeated delivery, in nats-server 2.12's header form: a message published to
//! a stream that allows schedules (`allow_msg_schedules`) with `Nats-Schedule: @at <RFC
//! 3339>` (or `@every <duration>`, at least a second) and `Nats-Schedule-Target: <subject>`
//! is kept as the schedule; at the time, the stream stores a copy of it under the target
//! subject (headers less the schedule's own, plus `Nats-Scheduler: <schedule subject>`), and
//! an `@at` schedule is removed. A newer schedule on the same subject replaces the older.
//!
//! This file holds the rules: parsing a schedule and the table of pending ones.

use std::collections::{BTreeMap, HashMap};

use super::{headers, ApiError};
use crate::subject;

/// When a schedule fires.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Once, at this time (UNIX ns).
    At(i64),
    /// Every this many nanoseconds, from when it was stored.
    Every(i64),
}

/// A schedule as its headers state it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// When.
    pub when: When,
    /// The subject the produced message is stored under.
    pub target: String,
}

/// The schedule a publish's headers carry: `None` without `Nats-Schedule`, an error when
/// it is malformed (JetStream's codes) or not allowed.
pub fn parse(
    hdrs: &[u8],
    subject: &str,
    stream_subjects: &[String],
    allowed: bool,
) -> Result<Option<Schedule>, ApiError> {
    let Some(pattern) = headers::get(hdrs, "Nats-Schedule") else {
        return Ok(None);
    };
    if !allowed {
        return Err(ApiError::new(400, 10188, "message schedules is disabled"));
    }
    let bad_pattern = || ApiError::new(400, 10189, "message schedules pattern is invalid");
    let when = if let Some(at) = pattern.strip_prefix("@at ") {
        let t = humantime::parse_rfc3339_weak(at.trim()).map_err(|_| bad_pattern())?;
        let ns = t
            .duration_since(std::time::UNIX_EPOCH)
            .map_err(|_| bad_pattern())?
            .as_nanos();
        When::At(i64::try_from(ns).map_err(|_| bad_pattern())?)
    } else if let Some(every) = pattern.strip_prefix("@every ") {
        let d = humantime::parse_duration(every.trim()).map_err(|_| bad_pattern())?;
        if d < std::time::Duration::from_secs(1) {
            return Err(bad_pattern());
        }
        When::Every(i64::try_from(d.as_nanos()).map_err(|_| bad_pattern())?)
    } else {
        return Err(bad_pattern());
    };
    let target = headers::get(hdrs, "Nats-Schedule-Target").unwrap_or_default();
    let in_stream = stream_subjects.iter().any(|s| subject::matches(s, target));
    if subject::check_literal(target).is_err() || target == subject || !in_stream {
        return Err(ApiError::new(
            400,
            10190,
            "message schedules target is invalid",
        ));
    }
    Ok(Some(Schedule {
        when,
        target: target.to_string(),
    }))
}

/// The headers of a produced message: the schedule's, less its `Nats-Schedule*` ones and
/// those that would act on a publish, plus `Nats-Scheduler`.
pub fn produced_headers(hdrs: &[u8], schedule_subject: &str) -> Vec<u8> {
    let text = String::from_utf8_lossy(hdrs);
    let mut out = String::from("NATS/1.0\r\n");
    for line in text.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
        let name = line.split(':').next().unwrap_or_default();
        let dropped = name.starts_with("Nats-Schedule")
            || name.starts_with("Nats-Expected-")
            || name == "Nats-Msg-Id"
            || name == "Nats-Rollup";
        if !dropped {
            out.push_str(line);
            out.push_str("\r\n");
        }
    }
    out.push_str("Nats-Scheduler: ");
    out.push_str(schedule_subject);
    out.push_str("\r\n\r\n");
    out.into_bytes()
}

/// Pending schedules: by due time, and the one of each schedule subject.
#[derive(Debug, Default)]
pub struct Table {
    due: BTreeMap<(i64, u64), (When, String)>,
    by_subject: HashMap<String, (i64, u64)>,
}

impl Table {
    /// Adds the schedule stored as `seq` under `subject` (at `stored`); returns the sequence
    /// of the schedule it replaces on that subject, if any.
    pub fn add(&mut self, subject: &str, seq: u64, stored: i64, s: Schedule) -> Option<u64> {
        let due = match s.when {
            When::At(t) => t,
            When::Every(every) => stored.saturating_add(every),
        };
        let old = self.by_subject.insert(subject.to_string(), (due, seq));
        if let Some(key) = old {
            self.due.remove(&key);
        }
        self.due.insert((due, seq), (s.when, s.target));
        old.map(|(_, s)| s)
    }

    /// When the next schedule is due.
    pub fn next_due(&self) -> Option<i64> {
        self.due.keys().next().map(|(t, _)| *t)
    }

    /// Takes the schedules due at `now`: (sequence, due time, when, target).
    pub fn take_due(&mut self, now: i64) -> Vec<(u64, i64, When, String)> {
        let mut out = Vec::new();
        while let Some((&(t, seq), _)) = self.due.first_key_value() {
            if t > now {
                break;
            }
            if let Some((when, target)) = self.due.remove(&(t, seq)) {
                out.push((seq, t, when, target));
            }
        }
        out
    }

    /// The repeating schedules' sequences and due times (what a restart could not rebuild
    /// from the schedules alone once they have fired).
    pub fn repeating_dues(&self) -> Vec<(u64, i64)> {
        self.due
            .iter()
            .filter(|(_, (when, _))| matches!(when, When::Every(_)))
            .map(|((due, seq), _)| (*seq, *due))
            .collect()
    }

    /// Makes the repeating schedule stored as `seq` due at `due` (nothing if there is none).
    pub fn set_due(&mut self, seq: u64, due: i64) {
        let Some(key) = self
            .due
            .iter()
            .find(|((_, s), (when, _))| *s == seq && matches!(when, When::Every(_)))
            .map(|(k, _)| *k)
        else {
            return;
        };
        let Some(entry) = self.due.remove(&key) else {
            return;
        };
        if let Some(slot) = self.by_subject.values_mut().find(|k| **k == key) {
            *slot = (due, seq);
        }
        self.due.insert((due, seq), entry);
    }

    /// Puts a repeating schedule back, due at `next`.
    pub fn again(&mut self, subject: &str, seq: u64, next: i64, every: i64, target: String) {
        self.by_subject.insert(subject.to_string(), (next, seq));
        self.due.insert((next, seq), (When::Every(every), target));
    }

    /// Forgets the schedule of `subject` if it is `seq`.
    pub fn forget(&mut self, subject: &str, seq: u64) {
        if self.by_subject.get(subject).is_some_and(|(_, s)| *s == seq) {
            if let Some(key) = self.by_subject.remove(subject) {
                self.due.remove(&key);
            }
        }
    }

    /// How many schedules are pending.
    pub fn len(&self) -> usize {
        self.due.len()
    }

    /// True when none is.
    pub fn is_empty(&self) -> bool {
        self.due.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> Vec<u8> {
        headers::block(None, pairs)
    }

    #[test]
    fn schedules_parse_as_nats_server_checks_them() {
        let subjects = vec!["orders.>".to_string()];
        let at = h(&[
            ("Nats-Schedule", "@at 2030-01-01T00:00:00Z"),
            ("Nats-Schedule-Target", "orders.due"),
        ]);
        let s = parse(&at, "orders.sched.1", &subjects, true)
            .expect("ok")
            .expect("some");
        assert_eq!(s.target, "orders.due");
        assert!(matches!(s.when, When::At(t) if t == 1_893_456_000_000_000_000));
        let every = h(&[
            ("Nats-Schedule", "@every 5s"),
            ("Nats-Schedule-Target", "orders.tick"),
        ]);
        let s = parse(&every, "orders.sched.2", &subjects, true)
            .expect("ok")
            .expect("some");
        assert_eq!(s.when, When::Every(5_000_000_000));
        let code = |hdrs: &[u8], subject: &str, allowed: bool| {
            parse(hdrs, subject, &subjects, allowed)
                .err()
                .map(|e| e.err_code)
        };
        assert_eq!(code(&at, "orders.s", false), Some(10188));
        assert_eq!(
            code(&h(&[("Nats-Schedule", "@at soon")]), "orders.s", true),
            Some(10189)
        );
        assert_eq!(
            code(
                &h(&[
                    ("Nats-Schedule", "@every 10ms"),
                    ("Nats-Schedule-Target", "orders.t")
                ]),
                "orders.s",
                true
            ),
            Some(10189)
        );
        assert_eq!(
            code(
                &h(&[
                    ("Nats-Schedule", "@every 1s"),
                    ("Nats-Schedule-Target", "other.t")
                ]),
                "orders.s",
                true
            ),
            Some(10190)
        );
        assert_eq!(
            code(
                &h(&[
                    ("Nats-Schedule", "@every 1s"),
                    ("Nats-Schedule-Target", "orders.s")
                ]),
                "orders.s",
                true
            ),
            Some(10190)
        );
        assert_eq!(
            parse(&h(&[("A", "1")]), "orders.s", &subjects, false),
            Ok(None)
        );
    }

    #[test]
    fn the_table_orders_replaces_and_repeats() {
        let mut t = Table::default();
        let s = |when, target: &str| Schedule {
            when,
            target: target.into(),
        };
        assert_eq!(t.add("a", 1, 0, s(When::At(50), "x")), None);
        assert_eq!(t.add("b", 2, 0, s(When::Every(10), "y")), None);
        assert_eq!(t.next_due(), Some(10));
        // A newer schedule on "a" replaces the older.
        assert_eq!(t.add("a", 3, 0, s(When::At(40), "x")), Some(1));
        assert_eq!(t.len(), 2);
        let due = t.take_due(45);
        assert_eq!(due.iter().map(|d| d.0).collect::<Vec<_>>(), [2, 3]);
        t.again("b", 2, 55, 10, "y".into());
        assert_eq!(t.next_due(), Some(55));
        t.forget("b", 2);
        assert!(t.is_empty());
        let produced = produced_headers(
            &h(&[
                ("Nats-Schedule", "@every 1s"),
                ("Trace", "7"),
                ("Nats-Msg-Id", "m"),
            ]),
            "orders.sched",
        );
        assert_eq!(
            produced,
            b"NATS/1.0\r\nTrace: 7\r\nNats-Scheduler: orders.sched\r\n\r\n"
        );
    }
}
