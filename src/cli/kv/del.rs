//! `berth kv del KEY [RANGE_END]`: deletes a key or range and prints the number deleted (and
//! the deleted pairs with `--prev-kv`) like `etcdctl del`.

use anyhow::Result;
use berth_proto::etcdserverpb::DeleteRangeRequest;

use super::key_range;
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
    ctx.out.del(&resp)
}
