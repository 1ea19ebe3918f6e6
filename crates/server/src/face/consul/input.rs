//! Consul's input conventions: JSON keys in any case, in PascalCase or snake_case, and nulls
//! for absent fields (Spring sends every field, py-consul lower-case keys); durations as Go
//! strings (`"10s"`, `"120000ms"`, `"1m30s"`) or integer nanoseconds.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// Objects whose keys are the user's (metadata, headers): kept as given.
const FREE_MAPS: &[&str] = &["meta", "nodemeta", "servicemeta", "header"];
/// Objects keyed by the user whose values are Consul objects.
const KEYED_OBJECTS: &[&str] = &["taggedaddresses"];

/// Consul's key folding: lower case, underscores dropped (`DeregisterCriticalServiceAfter`,
/// `deregister_critical_service_after` and `deregistercriticalserviceafter` are one key).
pub fn fold(key: &str) -> String {
    key.chars()
        .filter(|c| *c != '_' && *c != '-')
        .flat_map(char::to_lowercase)
        .collect()
}

/// Folds every struct key of `v` (not the keys of free maps), and drops nulls so that
/// absent and null read alike.
pub fn normalize(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = Map::new();
            for (k, v) in m {
                if v.is_null() {
                    continue;
                }
                let k = fold(&k);
                let v = if FREE_MAPS.contains(&k.as_str()) {
                    v
                } else if KEYED_OBJECTS.contains(&k.as_str()) {
                    match v {
                        Value::Object(inner) => Value::Object(
                            inner
                                .into_iter()
                                .map(|(ik, iv)| (ik, normalize(iv)))
                                .collect(),
                        ),
                        other => other,
                    }
                } else {
                    normalize(v)
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(a) => Value::Array(a.into_iter().map(normalize).collect()),
        other => other,
    }
}

/// Decodes a request body into `T` (whose fields are named in folded form). An empty body
/// is an empty object. A value of the wrong shape is named by its path (`check.interval`).
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, String> {
    let v: Value = if body.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Map::new())
    } else {
        serde_json::from_slice(body).map_err(|e| format!("Request decode failed: {e}"))?
    };
    serde_path_to_error::deserialize(normalize(v)).map_err(|e| {
        let path = e.path().to_string();
        match path.as_str() {
            "." => format!("Request decode failed: {}", e.inner()),
            _ => format!("Request decode failed: {path}: {}", e.inner()),
        }
    })
}

/// Parses a Go duration (`"300ms"`, `"1.5h"`, `"2h45m"`, `"0"`); negative ones are refused.
pub fn go_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.starts_with('-') {
        return Err(format!("duration {s:?} must not be negative"));
    }
    let s = s.strip_prefix('+').unwrap_or(s);
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return Err(format!("invalid duration {s:?}"));
        }
        let n: f64 = rest[..num_len]
            .parse()
            .map_err(|_| format!("invalid duration {s:?}"))?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            "" => return Err(format!("missing unit in duration {s:?}")),
            u => return Err(format!("unknown unit {u:?} in duration {s:?}")),
        };
        total += n * scale;
        rest = &rest[unit_len..];
    }
    Duration::try_from_secs_f64(total).map_err(|_| format!("invalid duration {s:?}"))
}

/// A duration field: a Go duration string or integer nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GoDuration(pub Duration);

impl<'de> serde::Deserialize<'de> for GoDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<GoDuration, D::Error> {
        use serde::de::Error;
        match Value::deserialize(d)? {
            Value::String(s) if s.is_empty() => Ok(GoDuration(Duration::ZERO)),
            Value::String(s) => go_duration(&s).map(GoDuration).map_err(D::Error::custom),
            Value::Number(n) => match n.as_i64() {
                Some(ns) if ns >= 0 => Ok(GoDuration(Duration::from_nanos(ns as u64))),
                _ => Err(D::Error::custom(format!(
                    "duration {n} must be a non-negative number of nanoseconds"
                ))),
            },
            other => Err(D::Error::custom(format!(
                "a duration must be a string like \"10s\" or nanoseconds, not {other}"
            ))),
        }
    }
}

/// Formats a duration as Go prints it (`10s`, `1m30s`, `1.5s`, `0s`).
pub fn go_format(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let frac = d.subsec_millis();
    let h = secs / 3600;
    secs %= 3600;
    let m = secs / 60;
    secs %= 60;
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if frac > 0 {
        let f = format!("{:03}", frac);
        out.push_str(&format!("{secs}.{}s", f.trim_end_matches('0')));
    } else {
        out.push_str(&format!("{secs}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_parse_and_print_as_go_does() {
        assert_eq!(go_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(go_duration("120000ms"), Ok(Duration::from_secs(120)));
        assert_eq!(go_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(go_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(go_duration("0"), Ok(Duration::ZERO));
        assert!(go_duration("-1s")
            .expect_err("negative")
            .contains("negative"));
        assert!(go_duration("10").is_err());
        assert!(go_duration("10x").is_err());
        assert_eq!(go_format(Duration::from_secs(90)), "1m30s");
        assert_eq!(go_format(Duration::from_secs(10)), "10s");
        assert_eq!(go_format(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_format(Duration::from_secs(3600)), "1h0m0s");
    }

    #[test]
    fn keys_fold_but_free_maps_keep_theirs() {
        let v = serde_json::json!({
            "Name": "web", "check": {"DeregisterCriticalServiceAfter": "1m", "TTL": null},
            "Meta": {"Version": "1"}, "tagged_addresses": {"LAN": {"Address": "a", "Port": 1}}
        });
        let n = normalize(v);
        assert_eq!(
            n,
            serde_json::json!({
                "name": "web", "check": {"deregistercriticalserviceafter": "1m"},
                "meta": {"Version": "1"}, "taggedaddresses": {"LAN": {"address": "a", "port": 1}}
            })
        );
    }
}
