//! `berth kv put KEY [VALUE]`: writes one key, optionally attached to a lease, printing `OK`
//! (and the previous pair with `--prev-kv`) like `etcdctl put`.

use std::io::{self, Read, Write};

use anyhow::{bail, Context, Result};
use berth_proto::etcdserverpb::{PutRequest, PutResponse};
use serde_json::Value;

use super::{kv_json, write_kv};
use crate::cli::lease::parse_lease_id;
use crate::cli::output::json::{opt_header, Obj};
use crate::cli::output::Render;
use crate::cli::Ctx;

/// Arguments of `kv put` (also accepted as a `put` line inside `kv txn`).
#[derive(clap::Args, Debug)]
pub struct PutArgs {
    /// Key to write.
    pub key: String,
    /// Value to write; read from stdin when omitted (put `--` before values starting with `-`).
    pub value: Option<String>,
    /// Lease ID (hex) to attach the key to.
    #[arg(long)]
    pub lease: Option<String>,
    /// Return the previous key-value pair.
    #[arg(long)]
    pub prev_kv: bool,
    /// Keep the current value (update the lease only).
    #[arg(long)]
    pub ignore_value: bool,
    /// Keep the current lease (update the value only).
    #[arg(long)]
    pub ignore_lease: bool,
}

impl PutArgs {
    /// The request these arguments describe; `stdin` supplies the value when none was given.
    pub fn to_request(&self, stdin: impl FnOnce() -> Result<Vec<u8>>) -> Result<PutRequest> {
        if self.ignore_value && self.value.is_some() {
            bail!("put command needs only 1 argument when 'ignore-value' is set");
        }
        let value = match (&self.value, self.ignore_value) {
            (Some(v), _) => v.as_bytes().to_vec(),
            (None, true) => Vec::new(),
            (None, false) => {
                let v = stdin()?;
                if v.is_empty() {
                    bail!("put command needs 1 argument and input from stdin or 2 arguments");
                }
                v
            }
        };
        let lease = match &self.lease {
            Some(id) => parse_lease_id(id)?,
            None => 0,
        };
        Ok(PutRequest {
            key: self.key.as_bytes().to_vec(),
            value,
            lease,
            prev_kv: self.prev_kv,
            ignore_value: self.ignore_value,
            ignore_lease: self.ignore_lease,
        })
    }
}

/// Reads all of stdin as a value.
fn read_stdin() -> Result<Vec<u8>> {
    let mut v = Vec::new();
    std::io::stdin()
        .read_to_end(&mut v)
        .context("reading the value from stdin")?;
    Ok(v)
}

/// Runs `kv put`.
pub async fn run(ctx: &mut Ctx, args: PutArgs) -> Result<()> {
    let req = args.to_request(read_stdin)?;
    let mut kv = ctx.conn.kv().await?;
    let resp = ctx.conn.call(kv.put(req)).await?;
    ctx.out.print(&resp)
}

/// `kv put`: `OK`, then the previous pair when asked for (no table: simple text).
impl Render for PutResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "OK")?;
        if let Some(kv) = &self.prev_kv {
            write_kv(out, kv, false)?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        Obj::new()
            .opt("header", opt_header(self.header.as_ref()))
            .opt("prev_kv", self.prev_kv.as_ref().map(kv_json))
            .build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(value: Option<&str>) -> PutArgs {
        PutArgs {
            key: "k".into(),
            value: value.map(String::from),
            lease: None,
            prev_kv: false,
            ignore_value: false,
            ignore_lease: false,
        }
    }

    #[test]
    fn value_from_arg_or_stdin() {
        let r = args(Some("v")).to_request(|| bail!("stdin not expected"));
        assert_eq!(r.map(|r| r.value).ok(), Some(b"v".to_vec()));
        let r = args(None).to_request(|| Ok(b"from stdin\n".to_vec()));
        assert_eq!(r.map(|r| r.value).ok(), Some(b"from stdin\n".to_vec()));
        assert!(args(None).to_request(|| Ok(Vec::new())).is_err());
    }

    #[test]
    fn lease_is_hex_and_ignore_value_takes_no_value() {
        let mut a = args(Some("v"));
        a.lease = Some("694d71ddacfda227".into());
        assert_eq!(
            a.to_request(|| Ok(vec![])).map(|r| r.lease).ok(),
            Some(0x694d71ddacfda227)
        );
        let mut a = args(Some("v"));
        a.ignore_value = true;
        assert!(a.to_request(|| Ok(vec![])).is_err());
        a.value = None;
        assert!(a.to_request(|| bail!("no stdin")).is_ok());
    }
}
