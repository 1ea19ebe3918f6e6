//! `berth kv del KEY [RANGE_END]`: deletes a key or range and prints the number deleted (and
//! the deleted pairs with `--prev-kv`) like `etcdctl del`.

use std::io::{self, Write};

use anyhow::Result;
use berth_proto::etcdserverpb::{DeleteRangeRequest, DeleteRangeResponse};
use serde_json::Value;

use super::{key_range, kv_json, write_kv};
use crate::cli::output::json::{opt_header, Obj};
use crate::cli::output::Render;
use crate::cli::Ctx;

/// Arguments of `kv del` (also accepted as a `del` line inside `kv txn`).
#[derive(clap::Args, Debug)]
pub struct DelArgs {
    /// Key, or start of the range.
    pub key: String,
    /// End of the range (exclusive).
    pub range_end: Option<String>,
    /// Delete every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Delete every key greater than or equal to KEY.
    #[arg(long)]
    pub from_key: bool,
    /// Return the deleted key-value pairs.
    #[arg(long)]
    pub prev_kv: bool,
}

impl DelArgs {
    /// The request these arguments describe.
    pub fn to_request(&self) -> Result<DeleteRangeRequest> {
        let (key, range_end) = key_range(
            &self.key,
            self.range_end.as_deref(),
            self.prefix,
            self.from_key,
        )?;
        Ok(DeleteRangeRequest {
            key,
            range_end,
            prev_kv: self.prev_kv,
        })
    }
}

/// Runs `kv del`.
pub async fn run(ctx: &mut Ctx, args: DelArgs) -> Result<()> {
    let req = args.to_request()?;
    let mut kv = ctx.conn.kv().await?;
    let resp = ctx.conn.call(kv.delete_range(req)).await?;
    ctx.out.print(&resp)
}

/// `kv del`: the number deleted, then any previous pairs (no table: simple text).
impl Render for DeleteRangeResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        writeln!(out, "{}", self.deleted)?;
        for kv in &self.prev_kvs {
            write_kv(out, kv, false)?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        Obj::new()
            .opt("header", opt_header(self.header.as_ref()))
            .num("deleted", self.deleted)
            .list("prev_kvs", self.prev_kvs.iter().map(kv_json).collect())
            .build()
    }
}
