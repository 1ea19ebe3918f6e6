//! The registry commands: `svc`, `check` and `session`, speaking Consul's HTTP API to
//! `--http-addr` (berth's HTTP listener, or a Consul agent: only endpoints both serve are used).
//!
//! # Layout
//! - [`http`]: the client (hyper, TLS, `X-Consul-Token`, encoded paths, status errors).
//! - [`svc`]: `svc register|deregister|ls|show|health`.
//! - [`check`](mod@check): `check ls|pass|warn|fail`.
//! - [`session`]: `session create|destroy|renew|info|ls`.
//!
//! `-w json` prints the API's JSON as it came. Writes the API answers with an empty body
//! (register, deregister, check updates) print a small object saying what was done.
//! This file holds the two printable results ([`Listing`], [`Done`]) and the helpers for
//! reading the API's JSON without trusting its shape.

pub mod check;
pub mod http;
pub mod session;
pub mod svc;

use std::io::{self, Write};

use serde_json::Value;

use super::output::{Render, Rows};

/// A list answer: the API's JSON for `-w json`, rows under a header for `-w table`, and for
/// `-w simple` either its own lines or the rows joined with `, ` (as etcdctl's lists).
pub struct Listing {
    json: Value,
    header: &'static [&'static str],
    rows: Vec<Vec<String>>,
    lines: Option<Vec<String>>,
}

impl Listing {
    /// The answer `json`, shown as `rows` under `header`.
    pub fn new(json: Value, header: &'static [&'static str], rows: Vec<Vec<String>>) -> Self {
        Self {
            json,
            header,
            rows,
            lines: None,
        }
    }

    /// Prints these lines for `-w simple` instead of the joined rows.
    pub fn with_lines(mut self, lines: Vec<String>) -> Self {
        self.lines = Some(lines);
        self
    }
}

impl Render for Listing {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        match &self.lines {
            Some(lines) => lines.iter().try_for_each(|l| writeln!(out, "{l}")),
            None => Rows::new(self.header, self.rows.clone()).simple(out),
        }
    }

    fn json(&self) -> Value {
        self.json.clone()
    }

    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        Rows::new(self.header, self.rows.clone()).table(out)
    }
}

/// A write's result: a sentence for `-w simple` and `-w table`, and JSON for `-w json` (the
/// API's answer, or what was done when the API answers with nothing).
pub struct Done {
    /// The sentence.
    pub text: String,
    /// The JSON.
    pub json: Value,
}

impl Render for Done {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.text)
    }

    fn json(&self) -> Value {
        self.json.clone()
    }
}

/// `v[key]` as display text: strings as they are, numbers and bools written out, anything
/// missing or null empty.
pub fn text(v: &Value, key: &str) -> String {
    match v.get(key) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(other) => other.to_string(),
    }
}

/// `v[key]` as a list of strings (tags), skipping anything that is not a string.
pub fn strings(v: &Value, key: &str) -> Vec<String> {
    v.get(key)
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The elements of a JSON list (`null`, as Consul sends for nothing, is an empty list).
pub fn items(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or_default()
}

/// `host:port`, or just the host when there is no port (or it is 0).
pub fn host_port(host: &str, port: &str) -> String {
    match port {
        "" | "0" => host.to_string(),
        p if host.contains(':') => format!("[{host}]:{p}"),
        p => format!("{host}:{p}"),
    }
}

/// The health of a set of check statuses as Consul aggregates it: critical (or anything
/// unknown) over warning over passing; no checks is passing.
pub fn aggregate<'a>(statuses: impl IntoIterator<Item = &'a str>) -> &'static str {
    let mut worst = 0;
    for s in statuses {
        let rank = match s {
            "passing" => 0,
            "warning" => 1,
            _ => 2,
        };
        worst = worst.max(rank);
    }
    ["passing", "warning", "critical"][worst]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn aggregated_status_takes_the_worst() {
        assert_eq!(aggregate([]), "passing");
        assert_eq!(aggregate(["passing", "warning"]), "warning");
        assert_eq!(aggregate(["warning", "critical", "passing"]), "critical");
        assert_eq!(aggregate(["maintenance"]), "critical");
    }

    #[test]
    fn json_reads_tolerate_missing_and_odd_types() {
        let v = json!({"A": "x", "N": 5, "Null": null, "T": ["a", 1, "b"]});
        assert_eq!(text(&v, "A"), "x");
        assert_eq!(text(&v, "N"), "5");
        assert_eq!(text(&v, "Null"), "");
        assert_eq!(text(&v, "Missing"), "");
        assert_eq!(strings(&v, "T"), ["a", "b"]);
        assert!(items(&Value::Null).is_empty());
        assert_eq!(host_port("10.0.0.1", "80"), "10.0.0.1:80");
        assert_eq!(host_port("::1", "80"), "[::1]:80");
        assert_eq!(host_port("h", "0"), "h");
    }
}
