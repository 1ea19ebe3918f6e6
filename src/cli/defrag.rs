//! `berth defrag`: asks each endpoint in turn to defragment its storage, reporting success or
//! failure per endpoint as etcdctl does.

use anyhow::{bail, Result};
use berth_proto::etcdserverpb::DefragmentRequest;

use super::Ctx;

/// Runs `defrag` against every `--endpoints` entry.
pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let mut failed = 0;
    for ep in ctx.conn.endpoints().to_vec() {
        let result = async {
            let mut c = ctx.conn.maintenance_to(&ep).await?;
            ctx.conn.call(c.defragment(DefragmentRequest {})).await
        }
        .await;
        match result {
            Ok(_) => ctx
                .out
                .line(&format!("Finished defragmenting etcd member[{ep}]"))?,
            Err(e) => {
                failed += 1;
                eprintln!("Failed to defragment etcd member[{ep}] ({e:#})");
            }
        }
    }
    if failed > 0 {
        bail!("defragmentation failed on {failed} endpoint(s)");
    }
    Ok(())
}
