//! The building blocks of etcdctl's `-w json` (Go's encoding/json over the gogoproto structs):
//! an object builder that omits zero fields as Go's `omitempty` does, base64 bytes, and the
//! response header every answer carries. Each command's [`Render::json`](super::Render::json)
//! builds its response's shape from these, beside the command.

use base64::Engine as _;
use berth_proto::etcdserverpb::ResponseHeader;
use serde_json::{Map, Value};

/// An object builder that drops zero values, like Go's `omitempty`.
#[derive(Default)]
pub struct Obj(Map<String, Value>);

impl Obj {
    /// An empty object.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a number unless it is zero.
    pub fn num<T: Into<Value> + Default + PartialEq>(mut self, key: &str, v: T) -> Self {
        if v != T::default() {
            self.0.insert(key.to_string(), v.into());
        }
        self
    }

    /// Adds a byte string, base64-encoded as Go does, unless it is empty.
    pub fn bytes(mut self, key: &str, v: &[u8]) -> Self {
        if !v.is_empty() {
            self.0.insert(key.to_string(), b64(v).into());
        }
        self
    }

    /// Adds a string unless it is empty.
    pub fn str(mut self, key: &str, v: &str) -> Self {
        if !v.is_empty() {
            self.0.insert(key.to_string(), v.into());
        }
        self
    }

    /// Adds a bool unless it is false.
    pub fn flag(self, key: &str, v: bool) -> Self {
        if v {
            self.always(key, true)
        } else {
            self
        }
    }

    /// Adds a list unless it is empty.
    pub fn list(self, key: &str, v: Vec<Value>) -> Self {
        if v.is_empty() {
            self
        } else {
            self.always(key, Value::Array(v))
        }
    }

    /// Adds a value when present.
    pub fn opt(self, key: &str, v: Option<Value>) -> Self {
        match v {
            Some(v) => self.always(key, v),
            None => self,
        }
    }

    /// Adds a value unconditionally (fields without `omitempty`).
    pub fn always(mut self, key: &str, v: impl Into<Value>) -> Self {
        self.0.insert(key.to_string(), v.into());
        self
    }

    /// Adds a response header's fields inline, as clientv3's lease responses embed it.
    pub fn header_fields(self, h: Option<&ResponseHeader>) -> Self {
        match h {
            Some(h) => self
                .num("cluster_id", h.cluster_id)
                .num("member_id", h.member_id)
                .num("revision", h.revision)
                .num("raft_term", h.raft_term),
            None => self,
        }
    }

    /// The finished object.
    pub fn build(self) -> Value {
        Value::Object(self.0)
    }
}

/// Bytes as Go's encoding/json writes a `[]byte`: standard base64.
pub fn b64(v: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(v)
}

/// `{"cluster_id":..,"member_id":..,"revision":..,"raft_term":..}` with zeros omitted.
pub fn header(h: &ResponseHeader) -> Value {
    Obj::new().header_fields(Some(h)).build()
}

/// [`header`] when there is one (for [`Obj::opt`]).
pub fn opt_header(h: Option<&ResponseHeader>) -> Option<Value> {
    h.map(header)
}

/// The header etcd 3.4 answered with in the captured etcdctl outputs the tests compare against.
#[cfg(test)]
pub fn test_header(rev: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: 14841639068965178418,
        member_id: 10276657743932975437,
        revision: rev,
        raft_term: 2,
    })
}
