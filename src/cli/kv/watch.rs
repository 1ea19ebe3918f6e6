//! `berth kv watch KEY [RANGE_END]`: opens a watch stream and prints each event as etcdctl
//! does (type, key, value) until interrupted, the server cancels, or `--max-events` is reached.

use std::io::{self, Write};

use anyhow::{anyhow, bail, Result};
use berth_proto::etcdserverpb::{
    watch_request::RequestUnion, WatchCreateRequest, WatchRequest, WatchResponse,
};
use berth_proto::mvccpb::{event::EventType, Event};
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{key_range, kv_json, write_kv};
use crate::cli::conn::status_error;
use crate::cli::output::json::{header, Obj};
use crate::cli::output::Render;
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
        ctx.out.print(&WatchEvents {
            resp: &resp,
            events: &resp.events[..shown],
        })?;
        if let Some(n) = left.as_mut() {
            *n -= shown as u64;
            if *n == 0 {
                drop(tx);
                return Ok(());
            }
        }
    }
}

/// One watch response as `kv watch` prints it, showing only `events` (the response's events,
/// cut short when `--max-events` runs out).
pub struct WatchEvents<'a> {
    /// The response the events came in.
    pub resp: &'a WatchResponse,
    /// The events to show.
    pub events: &'a [Event],
}

/// For each event its type, the previous pair if any, then the pair (no table: simple text).
impl Render for WatchEvents<'_> {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        for e in self.events {
            let kind = EventType::try_from(e.r#type)
                .map(|t| t.as_str_name().to_string())
                .unwrap_or_else(|_| e.r#type.to_string());
            writeln!(out, "{kind}")?;
            if let Some(prev) = &e.prev_kv {
                write_kv(out, prev, false)?;
            }
            if let Some(kv) = &e.kv {
                write_kv(out, kv, false)?;
            }
        }
        Ok(())
    }

    /// clientv3's `WatchResponse` struct, hence the capitalised field names.
    fn json(&self) -> Value {
        let events = if self.events.is_empty() {
            Value::Null
        } else {
            Value::Array(self.events.iter().map(event_json).collect())
        };
        Obj::new()
            .always(
                "Header",
                self.resp
                    .header
                    .as_ref()
                    .map_or_else(|| Obj::new().build(), header),
            )
            .always("Events", events)
            .always("CompactRevision", self.resp.compact_revision)
            .always("Canceled", self.resp.canceled)
            .always("Created", self.resp.created)
            .build()
    }
}

/// One watch event; `type` is omitted for PUT (zero), as Go does.
fn event_json(e: &Event) -> Value {
    Obj::new()
        .num("type", e.r#type)
        .opt("kv", e.kv.as_ref().map(kv_json))
        .opt("prev_kv", e.prev_kv.as_ref().map(kv_json))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::kv::pair;
    use crate::cli::output::json::test_header;
    use crate::cli::output::{printed, Format};
    use berth_proto::mvccpb::KeyValue;

    #[test]
    fn watch_simple_prints_type_prev_and_kv() {
        let e = Event {
            r#type: EventType::Delete as i32,
            kv: Some(pair("w1", "")),
            prev_kv: Some(pair("w1", "b")),
        };
        let r = WatchResponse::default();
        let shown = WatchEvents {
            resp: &r,
            events: std::slice::from_ref(&e),
        };
        assert_eq!(printed(Format::Simple, &shown), "DELETE\nw1\nb\nw1\n\n");
    }

    // Expected string captured from etcdctl 3.4 against etcd 3.4.
    #[test]
    fn watch_uses_clientv3_names() {
        let del = Event {
            r#type: 1,
            kv: Some(KeyValue {
                key: b"w1".to_vec(),
                mod_revision: 17,
                ..Default::default()
            }),
            prev_kv: None,
        };
        let r = WatchResponse {
            header: test_header(17),
            ..Default::default()
        };
        let shown = WatchEvents {
            resp: &r,
            events: &[del],
        };
        assert_eq!(
            shown.json().to_string(),
            r#"{"Header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"revision":17,"raft_term":2},"Events":[{"type":1,"kv":{"key":"dzE=","mod_revision":17}}],"CompactRevision":0,"Canceled":false,"Created":false}"#
        );
    }
}
