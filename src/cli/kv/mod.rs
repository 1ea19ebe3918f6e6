//! `berth kv`: etcdctl's key-value commands (put, get, del, txn, watch), one file per verb,
//! plus what they share: the key-range rules (`--prefix`, `--from-key`) and how one key-value
//! pair prints ([`write_kv`], [`kv_json`]). Each verb's file renders its own response.

pub mod del;
pub mod get;
pub mod put;
pub mod txn;
pub mod watch;

use std::io::{self, Write};

use anyhow::{bail, Result};
use berth_proto::mvccpb::KeyValue;
use serde_json::Value;

use super::output::json::Obj;
use super::Ctx;

/// `berth kv <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum KvCommand {
    /// Put a key (the value is read from stdin when omitted).
    Put(put::PutArgs),
    /// Get a key or a range of keys.
    Get(get::GetArgs),
    /// Delete a key or a range of keys.
    Del(del::DelArgs),
    /// Run a transaction read from stdin in etcdctl's txn syntax
    ///
    /// Three sections, each ended by a blank line: compares, then the requests to run if all
    /// compares hold, then the requests to run otherwise. For example:
    ///
    ///     mod("key1") > "0"
    ///
    ///     put key1 "overwrote-key1"
    ///
    ///     put key1 "created-key1"
    ///     put key2 "some extra key"
    ///
    /// Compare targets: ver|version, c|create, m|mod, val|value, lease (hex); operators
    /// =, !=, <, >. Requests: put, get and del with the same flags as the commands.
    #[command(verbatim_doc_comment)]
    Txn(txn::TxnArgs),
    /// Watch a key or range and print events as they happen.
    Watch(watch::WatchArgs),
}

/// Runs one `kv` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: KvCommand) -> Result<()> {
    match cmd {
        KvCommand::Put(a) => put::run(ctx, a).await,
        KvCommand::Get(a) => get::run(ctx, a).await,
        KvCommand::Del(a) => del::run(ctx, a).await,
        KvCommand::Txn(a) => txn::run(ctx, a).await,
        KvCommand::Watch(a) => watch::run(ctx, a).await,
    }
}

/// The `[key, range_end)` a command addresses, by etcdctl's rules: `--prefix` covers every key
/// starting with `key`, `--from-key` every key `>= key`, and an empty key with either means all.
pub fn key_range(
    key: &str,
    range_end: Option<&str>,
    prefix: bool,
    from_key: bool,
) -> Result<(Vec<u8>, Vec<u8>)> {
    if prefix && from_key {
        bail!("`--prefix` and `--from-key` cannot be set at the same time, choose one");
    }
    if range_end.is_some() && (prefix || from_key) {
        bail!(
            "too many arguments, only accept one argument when `--prefix` or `--from-key` is set"
        );
    }
    let key = key.as_bytes().to_vec();
    if (prefix || from_key) && key.is_empty() {
        return Ok((vec![0], vec![0]));
    }
    if prefix {
        let end = prefix_range_end(&key);
        return Ok((key, end));
    }
    if from_key {
        return Ok((key, vec![0]));
    }
    Ok((
        key,
        range_end.map(|e| e.as_bytes().to_vec()).unwrap_or_default(),
    ))
}

/// The smallest key greater than every key starting with `prefix`.
pub use berth_proto::keys::prefix_end as prefix_range_end;

/// etcdctl's `printKV`: the key on one line (unless `value_only`), the value on the next.
/// Bytes are written raw, as etcdctl does.
pub fn write_kv(out: &mut dyn Write, kv: &KeyValue, value_only: bool) -> io::Result<()> {
    if !value_only {
        out.write_all(&kv.key)?;
        out.write_all(b"\n")?;
    }
    out.write_all(&kv.value)?;
    out.write_all(b"\n")
}

/// One key-value pair as JSON: bytes base64, zero revisions omitted.
pub fn kv_json(kv: &KeyValue) -> Value {
    Obj::new()
        .bytes("key", &kv.key)
        .num("create_revision", kv.create_revision)
        .num("mod_revision", kv.mod_revision)
        .num("version", kv.version)
        .bytes("value", &kv.value)
        .num("lease", kv.lease)
        .build()
}

/// A pair with just a key and a value (for the rendering tests).
#[cfg(test)]
pub fn pair(k: &str, v: &str) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_last_byte() {
        assert_eq!(prefix_range_end(b"foo"), b"fop".to_vec());
        assert_eq!(prefix_range_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_range_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_range_end(b""), vec![0]);
    }

    #[test]
    fn ranges_follow_etcdctl() {
        let r = |k, e, p, f| key_range(k, e, p, f).ok();
        assert_eq!(r("k", None, false, false), Some((b"k".to_vec(), vec![])));
        assert_eq!(
            r("a", Some("c"), false, false),
            Some((b"a".to_vec(), b"c".to_vec()))
        );
        assert_eq!(
            r("k", None, true, false),
            Some((b"k".to_vec(), b"l".to_vec()))
        );
        assert_eq!(r("", None, true, false), Some((vec![0], vec![0])));
        assert_eq!(r("k", None, false, true), Some((b"k".to_vec(), vec![0])));
        assert_eq!(r("", None, false, true), Some((vec![0], vec![0])));
        assert!(key_range("k", Some("z"), true, false).is_err());
        assert!(key_range("k", None, true, true).is_err());
    }
}
