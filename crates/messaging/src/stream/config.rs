//! A stream's configuration with JetStream's field names, defaults and rules: what clients
//! send in `STREAM.CREATE`/`UPDATE` (unknown fields ignored, zeros meaning "default") and what
//! the server echoes back with every default filled in.

use serde::{Deserialize, Serialize};

use super::ApiError;
use crate::subject;

/// Nanoseconds in the default duplicate window (two minutes).
pub const DEFAULT_DUPLICATE_WINDOW: i64 = 120_000_000_000;

/// When messages leave the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Retention {
    /// By the limits only.
    #[default]
    Limits,
    /// Once every interested consumer acknowledged them.
    Interest,
    /// Once one consumer acknowledged them.
    #[serde(rename = "workqueue")]
    WorkQueue,
}

/// What a full stream does with a new message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discard {
    /// Drops the oldest.
    #[default]
    Old,
    /// Refuses the new one.
    New,
}

/// Where the messages are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Storage {
    /// On disk.
    #[default]
    File,
    /// In memory (berth keeps these on disk too: see [`Config::check`]).
    Memory,
}

fn minus_one() -> i64 {
    -1
}

fn minus_one_i32() -> i32 {
    -1
}

fn one() -> i32 {
    1
}

/// A stream's configuration (JetStream's `StreamConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// The stream's name.
    #[serde(default)]
    pub name: String,
    /// What it is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The subjects it stores (the name alone when none are given).
    #[serde(default)]
    pub subjects: Vec<String>,
    /// When messages leave.
    #[serde(default)]
    pub retention: Retention,
    /// Consumers allowed (-1: any number).
    #[serde(default = "minus_one")]
    pub max_consumers: i64,
    /// Messages kept at most (-1: no limit).
    #[serde(default = "minus_one")]
    pub max_msgs: i64,
    /// Bytes kept at most (-1: no limit).
    #[serde(default = "minus_one")]
    pub max_bytes: i64,
    /// Oldest message age in nanoseconds (0: no limit).
    #[serde(default)]
    pub max_age: i64,
    /// Messages kept per subject (-1: no limit).
    #[serde(default = "minus_one")]
    pub max_msgs_per_subject: i64,
    /// Largest message, headers and payload (-1: the server's limit).
    #[serde(default = "minus_one_i32")]
    pub max_msg_size: i32,
    /// What a full stream does.
    #[serde(default)]
    pub discard: Discard,
    /// Where messages are kept.
    #[serde(default)]
    pub storage: Storage,
    /// Replicas (1 on a single member).
    #[serde(default = "one")]
    pub num_replicas: i32,
    /// No publish acknowledgements.
    #[serde(default)]
    pub no_ack: bool,
    /// The `Nats-Msg-Id` deduplication window in nanoseconds (0: two minutes, or max_age
    /// when that is shorter).
    #[serde(default)]
    pub duplicate_window: i64,
    /// `DIRECT.GET` is served.
    #[serde(default)]
    pub allow_direct: bool,
    /// Mirrors serve direct gets (accepted and echoed; mirrors are not built).
    #[serde(default)]
    pub mirror_direct: bool,
    /// No more messages, deletes or purges.
    #[serde(default)]
    pub sealed: bool,
    /// `MSG.DELETE` is refused.
    #[serde(default)]
    pub deny_delete: bool,
    /// `STREAM.PURGE` is refused.
    #[serde(default)]
    pub deny_purge: bool,
    /// `Nats-Rollup` headers are obeyed.
    #[serde(default)]
    pub allow_rollup_hdrs: bool,
    /// With discard new, max_msgs_per_subject refuses instead of dropping.
    #[serde(default)]
    pub discard_new_per_subject: bool,
    /// Messages with `Nats-Schedule` headers are schedules (nats-server 2.12's delayed and
    /// repeated delivery).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_msg_schedules: bool,
}

fn invalid(text: impl Into<String>) -> ApiError {
    ApiError::new(400, 10052, text)
}

impl Config {
    /// A configuration with every default.
    pub fn named(name: &str, subjects: Vec<String>) -> Config {
        let mut c: Config = serde_json::from_value(serde_json::json!({}))
            .unwrap_or_else(|_| unreachable!("every field has a default"));
        c.name = name.to_string();
        c.subjects = subjects;
        c
    }

    /// The duplicate window in nanoseconds, as it applies.
    pub fn duplicate_window_ns(&self) -> i64 {
        self.duplicate_window
    }

    /// Refuses replicas on a member that is alone (nats-server's answer outside a cluster).
    pub fn check_single(&self) -> Result<(), ApiError> {
        if self.num_replicas > 1 {
            return Err(ApiError::new(
                500,
                10074,
                "replicas > 1 not supported in non-clustered mode",
            ));
        }
        Ok(())
    }

    /// Checks the configuration and fills in JetStream's defaults (what the server echoes).
    pub fn check(&mut self) -> Result<(), ApiError> {
        if !valid_name(&self.name) {
            return Err(invalid(format!("invalid stream name {:?}", self.name)));
        }
        if self.subjects.is_empty() {
            self.subjects = vec![self.name.clone()];
        }
        for (i, s) in self.subjects.iter().enumerate() {
            if subject::check_filter(s).is_err() {
                return Err(invalid(format!("invalid subject {s:?}")));
            }
            if s.starts_with("$JS.API") || s == ">" {
                return Err(invalid(format!(
                    "subjects that overlap with jetstream api require no-ack to be true: {s:?}"
                )));
            }
            if self.subjects[..i].iter().any(|o| subject::overlaps(o, s)) {
                return Err(invalid(format!("duplicate or overlapping subjects: {s:?}")));
            }
        }
        if self.num_replicas == 0 {
            self.num_replicas = 1;
        }
        if self.num_replicas > 5 {
            return Err(invalid("maximum replicas is 5"));
        }
        if self.num_replicas < 0 || self.max_age < 0 || self.duplicate_window < 0 {
            return Err(invalid("negative values are not allowed"));
        }
        for v in [
            &mut self.max_msgs,
            &mut self.max_bytes,
            &mut self.max_msgs_per_subject,
            &mut self.max_consumers,
        ] {
            if *v == 0 {
                *v = -1;
            }
        }
        if self.max_msg_size == 0 {
            self.max_msg_size = -1;
        }
        if self.duplicate_window == 0 {
            self.duplicate_window = DEFAULT_DUPLICATE_WINDOW;
            if self.max_age > 0 && self.max_age < self.duplicate_window {
                self.duplicate_window = self.max_age;
            }
        }
        if self.max_age > 0 && self.duplicate_window > self.max_age {
            return Err(invalid("duplicates window can not be larger then max age"));
        }
        Ok(())
    }

    /// Checks an update of `self` to `new` (both checked): storage and retention stay.
    pub fn check_update(&self, new: &Config) -> Result<(), ApiError> {
        if new.storage != self.storage {
            return Err(ApiError::new(
                500,
                10052,
                "stream configuration update can not change storage type",
            ));
        }
        if new.retention != self.retention {
            return Err(ApiError::new(
                500,
                10052,
                "stream configuration update can not change retention policy",
            ));
        }
        if self.sealed && !new.sealed {
            return Err(ApiError::new(
                500,
                10052,
                "stream configuration update can not unseal a sealed stream",
            ));
        }
        if self.deny_delete && !new.deny_delete {
            return Err(ApiError::new(
                500,
                10052,
                "stream configuration update can not cancel deny message deletes",
            ));
        }
        if self.deny_purge && !new.deny_purge {
            return Err(ApiError::new(
                500,
                10052,
                "stream configuration update can not cancel deny purge",
            ));
        }
        Ok(())
    }
}

/// A stream or consumer name: not empty, at most 255 bytes, without `.`, `*`, `>`, path
/// separators, quotes, control characters or whitespace (it names a directory and a subject
/// token, and is written into JSON and headers as it is).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name.bytes().any(|b| {
            matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\' | b'"')
                || b.is_ascii_whitespace()
                || b < 0x20
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_filled_in_as_jetstream_echoes_them() {
        let mut c: Config = serde_json::from_str(
            r#"{"name":"ORDERS","subjects":["orders.>"],"max_msgs":1000,"duplicate_window":0,"max_age":0,"allow_msg_ttl":true}"#,
        )
        .expect("parse");
        c.check().expect("valid");
        let v = serde_json::to_value(&c).expect("json");
        assert_eq!(v["retention"], "limits");
        assert_eq!(v["storage"], "file");
        assert_eq!(v["discard"], "old");
        assert_eq!(
            (
                v["max_bytes"].as_i64(),
                v["max_msgs_per_subject"].as_i64(),
                v["max_msg_size"].as_i64()
            ),
            (Some(-1), Some(-1), Some(-1))
        );
        assert_eq!(v["duplicate_window"], 120_000_000_000i64);
        assert_eq!(v["num_replicas"], 1);
        assert_eq!(v["allow_direct"], false);
        // A KV bucket with a TTL: the window is the TTL.
        let mut kv = Config::named("KV_b", vec!["$KV.b.>".into()]);
        kv.max_age = 60_000_000_000;
        kv.check().expect("valid");
        assert_eq!(kv.duplicate_window, 60_000_000_000);
        // No subjects: the name.
        let mut bare = Config::named("JS1", vec![]);
        bare.check().expect("valid");
        assert_eq!(bare.subjects, ["JS1"]);
    }

    #[test]
    fn bad_configurations_get_jetstream_errors() {
        for name in ["", "a.b", "a*", "a>", "a b", "a/b", "a\"b", "a\rb"] {
            let mut c = Config::named(name, vec!["x".into()]);
            assert_eq!(c.check().map_err(|e| e.err_code), Err(10052), "{name:?}");
        }
        let mut c = Config::named("S", vec!["a.*".into(), "a.b".into()]);
        assert!(c.check().is_err(), "overlapping subjects");
        let mut c = Config::named("S", vec!["a..b".into()]);
        assert!(c.check().is_err());
        let mut c = Config::named("S", vec![]);
        c.num_replicas = 3;
        c.check().expect("three replicas are fine in a cluster");
        assert_eq!(
            c.check_single().map_err(|e| (e.code, e.err_code)),
            Err((500, 10074))
        );
        c.num_replicas = 6;
        assert!(c.check().is_err());
        let mut c = Config::named("S", vec![]);
        c.max_age = 1_000;
        c.duplicate_window = 2_000;
        assert!(c.check().is_err());
        let mut old = Config::named("S", vec![]);
        old.check().expect("valid");
        let mut new = old.clone();
        new.storage = Storage::Memory;
        assert!(old.check_update(&new).is_err());
    }
}
