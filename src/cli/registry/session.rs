//! `berth session`: create, destroy, renew, show and list Consul sessions (`/v1/session/*`).

use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use serde_json::{json, Map, Value};

use super::http::ApiPath;
use super::{items, strings, text, Done, Listing};
use crate::cli::output::go_duration;
use crate::cli::Ctx;

/// What happens to a session's locks when it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Behavior {
    /// Locks are released (the keys stay).
    Release,
    /// Locked keys are deleted.
    Delete,
}

/// `berth session <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum SessionCommand {
    /// Create a session and print its ID.
    Create {
        /// A name for the session.
        #[arg(long)]
        name: Option<String>,
        /// Time to live (10s to 24h); without one the session lives until destroyed or its
        /// node's health fails.
        #[arg(long, value_parser = duration_text)]
        ttl: Option<String>,
        /// What happens to held locks when the session ends.
        #[arg(long, value_enum)]
        behavior: Option<Behavior>,
        /// How long a released lock cannot be taken again (default 15s).
        #[arg(long, value_parser = duration_text)]
        lock_delay: Option<String>,
        /// The node the session belongs to (default: the agent's).
        #[arg(long)]
        node: Option<String>,
    },
    /// Destroy a session, releasing or deleting its locks.
    Destroy {
        /// The session ID.
        id: String,
    },
    /// Renew a TTL session.
    Renew {
        /// The session ID.
        id: String,
    },
    /// Show one session.
    Info {
        /// The session ID.
        id: String,
    },
    /// List sessions (of one node with --node).
    Ls {
        /// Only the sessions of this node.
        #[arg(long)]
        node: Option<String>,
    },
}

/// Checks a Go duration (`15s`) and keeps it as written, which Consul reads.
fn duration_text(s: &str) -> Result<String, String> {
    crate::cli::parse_duration(s).map(|_| s.trim().to_string())
}

/// Runs one `session` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: SessionCommand) -> Result<()> {
    let c = ctx.http.client()?;
    match cmd {
        SessionCommand::Create {
            name,
            ttl,
            behavior,
            lock_delay,
            node,
        } => {
            let mut body = Map::new();
            let fields = [
                ("Name", name),
                ("TTL", ttl),
                ("LockDelay", lock_delay),
                ("Node", node),
                (
                    "Behavior",
                    behavior.map(|b| {
                        match b {
                            Behavior::Release => "release",
                            Behavior::Delete => "delete",
                        }
                        .to_string()
                    }),
                ),
            ];
            for (key, v) in fields {
                if let Some(v) = v {
                    body.insert(key.into(), json!(v));
                }
            }
            let v = c
                .put_json(
                    &ApiPath::new("/v1/session/create"),
                    Some(&Value::Object(body)),
                )
                .await?;
            let id = text(&v, "ID");
            if id.is_empty() {
                bail!("the server created a session but sent no ID: {v}");
            }
            ctx.out.print(&Done { text: id, json: v })
        }
        SessionCommand::Destroy { id } => {
            let v = c
                .put_json(&ApiPath::new("/v1/session/destroy").seg(&id), None)
                .await?;
            if v != Value::Bool(true) {
                bail!("the server did not destroy session {id}: it answered {v}");
            }
            ctx.out.print(&Done {
                text: format!("Session {id} destroyed"),
                json: v,
            })
        }
        SessionCommand::Renew { id } => {
            let v = c
                .put_json(&ApiPath::new("/v1/session/renew").seg(&id), None)
                .await?;
            let s = items(&v)
                .first()
                .ok_or_else(|| anyhow!("session {id} not found"))?;
            let ttl = match text(s, "TTL").as_str() {
                "" => String::new(),
                t => format!(" (TTL {t})"),
            };
            ctx.out.print(&Done {
                text: format!("Session {id} renewed{ttl}"),
                json: v,
            })
        }
        SessionCommand::Info { id } => {
            let v = c.get(&ApiPath::new("/v1/session/info").seg(&id)).await?;
            if items(&v).is_empty() {
                bail!("session {id} not found");
            }
            ctx.out.print(&sessions(v))
        }
        SessionCommand::Ls { node } => {
            let path = match &node {
                Some(n) => ApiPath::new("/v1/session/node").seg(n),
                None => ApiPath::new("/v1/session/list"),
            };
            let v = c.get(&path).await?;
            ctx.out.print(&sessions(v))
        }
    }
}

/// A list of sessions: one row each, the lock delay (nanoseconds in the API) as a duration.
fn sessions(v: Value) -> Listing {
    let rows = items(&v)
        .iter()
        .map(|s| {
            let delay = s
                .get("LockDelay")
                .and_then(Value::as_u64)
                .map(|ns| go_duration(Duration::from_nanos(ns)))
                .unwrap_or_default();
            vec![
                text(s, "ID"),
                text(s, "Name"),
                text(s, "Node"),
                text(s, "Behavior"),
                text(s, "TTL"),
                delay,
                strings(s, "Checks").join(","),
            ]
        })
        .collect();
    Listing::new(
        v,
        &[
            "ID",
            "NAME",
            "NODE",
            "BEHAVIOR",
            "TTL",
            "LOCK DELAY",
            "CHECKS",
        ],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::{printed, Format};

    #[test]
    fn sessions_show_lock_delay_as_a_duration() {
        let v = json!([{"ID": "abc", "Name": "lock", "Node": "n1", "Behavior": "release",
            "TTL": "15s", "LockDelay": 15_000_000_000u64, "Checks": ["serfHealth"]}]);
        assert_eq!(
            printed(Format::Simple, &sessions(v.clone())),
            "abc, lock, n1, release, 15s, 15s, serfHealth\n"
        );
        assert_eq!(
            printed(Format::Json, &sessions(v.clone())),
            format!("{v}\n")
        );
    }
}
