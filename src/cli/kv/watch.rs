//! `berth kv watch KEY [RANGE_END]`: opens a watch stream and prints each event as etcdctl
//! does (type, key, value) until interrupted, the server cancels, or `--max-events` is reached.

use anyhow::{anyhow, bail, Result};
use berth_proto::etcdserverpb::{watch_request::RequestUnion, WatchCreateRequest, WatchRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::key_range;
use crate::cli::conn::status_error;
use crate::cli::Ctx;

/// Arguments of `kv watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// Key, or start of the range.
    pub key: String,
    /// End of the range (exclusive).
    pub range_end: Option<String>,
    /// Watch every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Start watching at this revision (0 for now).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Include the previous key-value pair in each event.
    #[arg(long)]
    pub prev_kv: bool,
    /// Ask the server for periodic progress notifications.
    #[arg(long)]
    pub progress_notify: bool,
    /// Exit after printing this many events.
    #[arg(long)]
    pub max_events: Option<u64>,
}

impl WatchArgs {
    /// The create request these arguments describe.
    pub fn to_request(&self) -> Result<WatchCreateRequest> {
        let (key, range_end) = key_range(&self.key, self.range_end.as_deref(), self.prefix, false)?;
        Ok(WatchCreateRequest {
            key,
            range_end,
            start_revision: self.rev,
            progress_notify: self.progress_notify,
            prev_kv: self.prev_kv,
            ..Default::default()
        })
    }
}

/// Runs `kv watch`; Ctrl-C ends it cleanly.
pub async fn run(ctx: &mut Ctx, args: WatchArgs) -> Result<()> {
    let create = args.to_request()?;
    if args.max_events == Some(0) {
        return Ok(());
    }
    let mut client = ctx.conn.watch().await?;
    // The sender must outlive the stream: closing our half would end the watch.
    let (tx, rx) = mpsc::channel(1);
    tx.send(WatchRequest {
        request_union: Some(RequestUnion::CreateRequest(create)),
    })
    .await
    .map_err(|_| anyhow!("watch stream closed"))?;
    let mut stream = ctx.conn.call(client.watch(ReceiverStream::new(rx))).await?;
    let mut left = args.max_events;
    loop {
        let msg = tokio::select! {
            msg = stream.message() => msg,
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let resp = match msg {
            Ok(Some(resp)) => resp,
            Ok(None) => bail!("watch is canceled by the server"),
            Err(status) => return Err(status_error(&status)),
        };
        if resp.canceled {
            let reason = if resp.compact_revision > 0 {
                "etcdserver: mvcc: required revision has been compacted".to_string()
            } else if resp.cancel_reason.is_empty() {
                "canceled by the server".to_string()
            } else {
                resp.cancel_reason.clone()
            };
            bail!("watch was canceled ({reason})");
        }
        if resp.created {
            continue;
        }
        let shown = match left {
            Some(n) => resp
                .events
                .len()
                .min(usize::try_from(n).unwrap_or(usize::MAX)),
            None => resp.events.len(),
        };
        ctx.out.watch(&resp, &resp.events[..shown])?;
        if let Some(n) = left.as_mut() {
            *n -= shown as u64;
            if *n == 0 {
                drop(tx);
                return Ok(());
            }
        }
    }
}
