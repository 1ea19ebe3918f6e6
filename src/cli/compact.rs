//! `berth compact REV`: discards key-value history before a revision and prints
//! `compacted revision REV`, as etcdctl does in every output format.

use anyhow::{anyhow, Result};
use berth_proto::etcdserverpb::CompactionRequest;

use super::Ctx;

/// Arguments of `compact`.
#[derive(clap::Args, Debug)]
pub struct CompactArgs {
    /// Revision to compact up to.
    pub rev: String,
    /// Wait until the compacted data is physically removed from storage.
    #[arg(long)]
    pub physical: bool,
}

/// Runs `compact`.
pub async fn run(ctx: &mut Ctx, args: CompactArgs) -> Result<()> {
    let revision: i64 = args
        .rev
        .parse()
        .map_err(|e| anyhow!("bad revision ({e})"))?;
    let mut kv = ctx.conn.kv().await?;
    ctx.conn
        .call(kv.compact(CompactionRequest {
            revision,
            physical: args.physical,
        }))
        .await?;
    ctx.out.line(&format!("compacted revision {revision}"))
}
