//! A consumer's configuration with JetStream's field names, defaults and rules (what
//! `CONSUMER.CREATE` carries and what the server echoes back).

use serde::{Deserialize, Serialize};

use crate::stream::config::valid_name;
use crate::stream::ApiError;
use crate::subject;

/// Where delivery starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliverPolicy {
    /// From the first message.
    #[default]
    All,
    /// From the last message.
    Last,
    /// Only messages stored after the consumer.
    New,
    /// From `opt_start_seq`.
    ByStartSequence,
    /// From the first message at or after `opt_start_time`.
    ByStartTime,
    /// The last message of each subject, then new ones.
    LastPerSubject,
}

/// How deliveries are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckPolicy {
    /// Not at all: delivered is done.
    #[default]
    None,
    /// An ack covers every earlier delivery.
    All,
    /// Each delivery on its own.
    Explicit,
}

/// How fast messages are delivered (only `instant` is served; `original` is accepted and
/// delivers instantly too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplayPolicy {
    /// As fast as possible.
    #[default]
    Instant,
    /// At the pace they were stored.
    Original,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// A consumer's configuration (JetStream's `ConsumerConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default)]
pub struct ConsumerConfig {
    /// Its name (a durable's equals `durable_name`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Set for a durable consumer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub durable_name: Option<String>,
    /// What it is for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Where delivery starts.
    pub deliver_policy: DeliverPolicy,
    /// With `by_start_sequence`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_start_seq: Option<u64>,
    /// With `by_start_time` (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub opt_start_time: Option<String>,
    /// How deliveries are acknowledged.
    pub ack_policy: AckPolicy,
    /// How long a delivery waits for its ack before it is redelivered (ns; default 30 s).
    pub ack_wait: i64,
    /// Deliveries of one message at most (-1: no limit).
    pub max_deliver: i64,
    /// Redelivery delays by delivery count (ns), the last repeating.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backoff: Vec<i64>,
    /// Only subjects this filter reaches.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter_subject: Option<String>,
    /// Only subjects one of these reaches (2.10).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filter_subjects: Vec<String>,
    /// Delivery pace.
    pub replay_policy: ReplayPolicy,
    /// Outstanding pull requests at most (pull; default 512).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_waiting: i64,
    /// Unacknowledged deliveries at most (default 1000 with acks).
    pub max_ack_pending: i64,
    /// Deliver headers and the size, not the payload.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub headers_only: bool,
    /// Caps on pull requests.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_batch: i64,
    /// Caps on pull requests' expiry (ns).
    #[serde(skip_serializing_if = "is_zero")]
    pub max_expires: i64,
    /// Caps on pull requests' bytes.
    #[serde(skip_serializing_if = "is_zero")]
    pub max_bytes: i64,
    /// Push: where messages go.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_subject: Option<String>,
    /// Push: the queue group subscribed there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_group: Option<String>,
    /// Push: flow control.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub flow_control: bool,
    /// Push: heartbeat when idle (ns).
    #[serde(skip_serializing_if = "is_zero")]
    pub idle_heartbeat: i64,
    /// An ephemeral is deleted after this long without interest (ns).
    #[serde(skip_serializing_if = "is_zero")]
    pub inactive_threshold: i64,
    /// Replicas (0: the stream's).
    pub num_replicas: i64,
    /// Kept in memory (berth keeps consumer state on disk regardless).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub mem_storage: bool,
    /// Free-form metadata.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// Sampling of ack advisories (accepted, not used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_freq: Option<String>,
    /// Push rate limit (accepted, not applied).
    #[serde(skip_serializing_if = "is_zero")]
    pub rate_limit_bps: i64,
    /// berth's extension: where a message goes when the consumer gives up on it (max_deliver
    /// reached, or `+TERM`), with its headers plus `Nats-DLQ-*` ones saying why and from
    /// where. A stream taking this subject stores it; unchanged clients never set it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dead_letter_subject: Option<String>,
}

/// Nanoseconds in the default ack wait (30 s).
pub const DEFAULT_ACK_WAIT: i64 = 30_000_000_000;
/// Nanoseconds an ephemeral consumer lives without interest by default (5 s).
pub const DEFAULT_INACTIVE: i64 = 5_000_000_000;

fn invalid(text: impl Into<String>) -> ApiError {
    ApiError::new(400, 10084, text)
}

impl ConsumerConfig {
    /// Whether it is a push consumer.
    pub fn is_push(&self) -> bool {
        self.deliver_subject.is_some()
    }

    /// Whether it outlives its subscribers.
    pub fn is_durable(&self) -> bool {
        self.durable_name.is_some()
    }

    /// Its filters (none: every subject).
    pub fn filters(&self) -> Vec<String> {
        match &self.filter_subject {
            Some(f) if !f.is_empty() => vec![f.clone()],
            _ => self.filter_subjects.clone(),
        }
    }

    /// The wait before delivery `dc` (1 = first) is redelivered.
    pub fn redelivery_wait(&self, dc: u64) -> i64 {
        if self.backoff.is_empty() {
            return self.ack_wait;
        }
        let i = (dc.max(1) - 1) as usize;
        self.backoff[i.min(self.backoff.len() - 1)]
    }

    /// Checks the configuration against its stream's subjects and fills in the defaults.
    pub fn check(&mut self, stream_subjects: &[String]) -> Result<(), ApiError> {
        if let Some(d) = &self.durable_name {
            if !valid_name(d) {
                return Err(ApiError::new(
                    400,
                    10103,
                    "durable name can not contain '.', '*', '>'",
                ));
            }
            match &self.name {
                Some(n) if n != d => {
                    return Err(ApiError::new(
                        400,
                        10017,
                        "consumer name in subject does not match durable name in request",
                    ))
                }
                _ => self.name = Some(d.clone()),
            }
        }
        if let Some(n) = &self.name {
            if !valid_name(n) {
                return Err(ApiError::new(
                    400,
                    10103,
                    "consumer name can not contain '.', '*', '>'",
                ));
            }
        }
        if self.filter_subject.as_deref() == Some("") {
            self.filter_subject = None;
        }
        if self.filter_subject.is_some() && !self.filter_subjects.is_empty() {
            return Err(ApiError::new(
                400,
                10136,
                "consumer can not have both filter subject and filter subjects specified",
            ));
        }
        let filters = self.filters();
        for (i, f) in filters.iter().enumerate() {
            if subject::check_filter(f).is_err() {
                return Err(invalid(format!(
                    "consumer filter subject is not a valid subset of the interest subjects: {f}"
                )));
            }
            if !stream_subjects.iter().any(|s| subject::overlaps(s, f)) {
                return Err(ApiError::new(
                    400,
                    10093,
                    "consumer filter subject is not a valid subset of the interest subjects",
                ));
            }
            if filters[..i].iter().any(|o| subject::overlaps(o, f)) {
                return Err(ApiError::new(
                    400,
                    10138,
                    "consumer subject filters cannot overlap",
                ));
            }
        }
        match self.deliver_policy {
            DeliverPolicy::ByStartSequence if self.opt_start_seq.unwrap_or(0) == 0 => {
                return Err(invalid(
                    "consumer deliver policy by start sequence requires a start sequence",
                ));
            }
            DeliverPolicy::ByStartTime if self.opt_start_time.is_none() => {
                return Err(invalid(
                    "consumer deliver policy by start time requires a time",
                ));
            }
            DeliverPolicy::ByStartSequence | DeliverPolicy::ByStartTime => {}
            _ if self.opt_start_seq.is_some() || self.opt_start_time.is_some() => {
                return Err(invalid(
                    "consumer deliver policy and start options do not agree",
                ));
            }
            _ => {}
        }
        if let Some(d) = &self.dead_letter_subject {
            if subject::check_literal(d).is_err() {
                return Err(invalid(format!("invalid dead letter subject {d:?}")));
            }
            if self.ack_policy == AckPolicy::None {
                return Err(invalid(
                    "a dead letter subject needs acks (ack policy explicit or all)",
                ));
            }
            if stream_subjects.iter().any(|s| subject::matches(s, d)) {
                return Err(invalid(
                    "the dead letter subject may not be one of the stream's own subjects",
                ));
            }
        }
        if self.ack_wait < 0 || self.backoff.iter().any(|b| *b <= 0) {
            return Err(invalid("consumer ack wait and backoff must be positive"));
        }
        if !self.backoff.is_empty() {
            if self.max_deliver != -1 && self.max_deliver <= self.backoff.len() as i64 {
                return Err(ApiError::new(
                    400,
                    10116,
                    "max deliver is required to be > length of backoff values",
                ));
            }
            self.ack_wait = self.backoff[0];
        }
        if self.ack_wait == 0 {
            self.ack_wait = DEFAULT_ACK_WAIT;
        }
        if self.max_deliver == 0 {
            self.max_deliver = -1;
        }
        if self.is_push() {
            let d = self.deliver_subject.as_deref().unwrap_or_default();
            if subject::check_literal(d).is_err() {
                return Err(ApiError::new(
                    400,
                    10079,
                    "consumer deliver subject has wildcards",
                ));
            }
            if self.max_waiting != 0 {
                return Err(ApiError::new(
                    400,
                    10080,
                    "consumer in push mode can not set max waiting",
                ));
            }
            if self.flow_control && self.idle_heartbeat == 0 {
                return Err(invalid("consumer with flow control also needs heartbeats"));
            }
        } else {
            if self.flow_control {
                return Err(invalid(
                    "consumer flow control requires a push based consumer",
                ));
            }
            if self.max_waiting == 0 {
                self.max_waiting = 512;
            }
        }
        if self.ack_policy == AckPolicy::None {
            self.max_ack_pending = if self.max_ack_pending == 0 {
                -1
            } else {
                self.max_ack_pending
            };
        } else if self.max_ack_pending == 0 {
            self.max_ack_pending = 1000;
        }
        if !self.is_durable() && self.inactive_threshold == 0 {
            self.inactive_threshold = DEFAULT_INACTIVE;
        }
        if self.inactive_threshold < 0 || self.idle_heartbeat < 0 {
            return Err(invalid("negative durations are not allowed"));
        }
        Ok(())
    }

    /// Checks a new consumer of a work-queue stream against the stream's other consumers:
    /// explicit acks, and no two consumers reaching the same subject.
    pub fn check_work_queue(&self, others: &[&ConsumerConfig]) -> Result<(), ApiError> {
        if self.ack_policy != AckPolicy::Explicit {
            return Err(ApiError::new(
                400,
                10098,
                "workqueue stream requires explicit ack",
            ));
        }
        // A consumer starting later would count what it skipped as done with (and a work
        // queue drops what is done with).
        if self.deliver_policy != DeliverPolicy::All {
            return Err(ApiError::new(
                400,
                10101,
                "consumer must be deliver all on workqueue stream",
            ));
        }
        let mine = self.filters();
        for o in others {
            let theirs = o.filters();
            if mine.is_empty() && theirs.is_empty() {
                return Err(ApiError::new(
                    400,
                    10099,
                    "multiple non-filtered consumers not allowed on workqueue stream",
                ));
            }
            let overlap = mine.is_empty()
                || theirs.is_empty()
                || mine
                    .iter()
                    .any(|a| theirs.iter().any(|b| subject::overlaps(a, b)));
            if overlap {
                return Err(ApiError::new(
                    400,
                    10100,
                    "filtered consumer not unique on workqueue stream",
                ));
            }
        }
        Ok(())
    }

    /// Whether this consumer's filters reach `subject` (no filter reaches everything).
    pub fn reaches(&self, s: &str) -> bool {
        let f = self.filters();
        f.is_empty() || f.iter().any(|f| subject::matches(f, s))
    }

    /// Checks an update of `self` to `new` (both checked): what JetStream lets change.
    pub fn check_update(&self, new: &ConsumerConfig) -> Result<(), ApiError> {
        let fixed = |what: &str| ApiError::new(500, 10012, format!("{what} can not be updated"));
        if new.deliver_policy != self.deliver_policy
            || new.opt_start_seq != self.opt_start_seq
            || new.opt_start_time != self.opt_start_time
        {
            return Err(fixed("deliver policy"));
        }
        if new.ack_policy != self.ack_policy {
            return Err(fixed("ack policy"));
        }
        if new.replay_policy != self.replay_policy {
            return Err(fixed("replay policy"));
        }
        if new.is_push() != self.is_push() {
            return Err(fixed("consumer type"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> ConsumerConfig {
        serde_json::from_str(json).expect("parse")
    }

    #[test]
    fn defaults_are_filled_in_as_jetstream_echoes_them() {
        let subjects = vec!["orders.>".to_string()];
        let mut c = parse(
            r#"{"name":"worker","durable_name":"worker","deliver_policy":"all","ack_policy":"explicit","ack_wait":2000000000,"max_deliver":3,"filter_subject":"orders.>","replay_policy":"instant","idle_heartbeat":0,"inactive_threshold":0}"#,
        );
        c.check(&subjects).expect("valid");
        assert_eq!(
            (c.max_waiting, c.max_ack_pending, c.ack_wait),
            (512, 1000, 2_000_000_000)
        );
        let mut e = parse(r#"{"ack_policy":"explicit"}"#);
        e.check(&subjects).expect("valid");
        assert_eq!(
            (e.inactive_threshold, e.ack_wait, e.max_deliver),
            (DEFAULT_INACTIVE, DEFAULT_ACK_WAIT, -1)
        );
        let mut b = parse(
            r#"{"durable_name":"b","ack_policy":"explicit","backoff":[1000,5000],"max_deliver":5}"#,
        );
        b.check(&subjects).expect("valid");
        assert_eq!(
            (
                b.ack_wait,
                b.redelivery_wait(1),
                b.redelivery_wait(2),
                b.redelivery_wait(9)
            ),
            (1000, 1000, 5000, 5000)
        );
    }

    #[test]
    fn bad_configurations_get_jetstream_errors() {
        let subjects = vec!["orders.>".to_string()];
        let code = |json: &str| parse(json).check(&subjects).err().map(|e| e.err_code);
        assert_eq!(code(r#"{"durable_name":"a.b"}"#), Some(10103));
        assert_eq!(code(r#"{"filter_subject":"other.x"}"#), Some(10093));
        assert_eq!(code(r#"{"backoff":[1,2],"max_deliver":2}"#), Some(10116));
        assert_eq!(code(r#"{"deliver_subject":"a.*"}"#), Some(10079));
        assert_eq!(
            code(r#"{"deliver_subject":"a","max_waiting":5}"#),
            Some(10080)
        );
        assert_eq!(
            code(r#"{"filter_subjects":["orders.a","orders.*"]}"#),
            Some(10138)
        );
        let mut old = parse(r#"{"durable_name":"d","ack_policy":"explicit"}"#);
        old.check(&subjects).expect("valid");
        let mut new = old.clone();
        new.ack_policy = AckPolicy::All;
        assert_eq!(old.check_update(&new).map_err(|e| e.err_code), Err(10012));
        // Work queues: explicit acks, every message from the first, no overlap.
        let wq = |json: &str, others: &[&ConsumerConfig]| {
            parse(json)
                .check_work_queue(others)
                .err()
                .map(|e| e.err_code)
        };
        assert_eq!(wq(r#"{"ack_policy":"none"}"#, &[]), Some(10098));
        assert_eq!(
            wq(r#"{"ack_policy":"explicit","deliver_policy":"new"}"#, &[]),
            Some(10101)
        );
        assert_eq!(wq(r#"{"ack_policy":"explicit"}"#, &[]), None);
        assert_eq!(wq(r#"{"ack_policy":"explicit"}"#, &[&old]), Some(10099));
    }
}
