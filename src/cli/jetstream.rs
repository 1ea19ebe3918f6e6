//! `berth stream …` and `berth consumer …`: JetStream management from the command line, in
//! the style of the `nats` CLI, as `$JS.API` requests through the Rust NATS client to
//! `--nats-url` (berth or a nats-server with JetStream). `-w json` prints the API's answer as
//! it came; `simple` and `table` print the figures a person looks for.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures::StreamExt;
use serde_json::{json, Value};

use super::messaging::Received;
use super::output::{Render, Rows};
use super::Ctx;

/// `stream` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum StreamCommand {
    /// Create a stream.
    Add(StreamAddArgs),
    /// Change a stream's configuration: only the options given change (as `nats stream
    /// edit`), `--replicas` included.
    Edit(StreamEditArgs),
    /// List streams.
    Ls,
    /// Show a stream's configuration and state.
    Info {
        /// The stream.
        name: String,
    },
    /// Delete a stream and its messages.
    Rm {
        /// The stream.
        name: String,
    },
    /// Remove messages from a stream (all, or those of a subject, below a sequence, keeping
    /// the newest).
    Purge(PurgeArgs),
    /// Read one stored message.
    Get(GetArgs),
}

/// Arguments of `stream add`.
#[derive(clap::Args, Debug)]
pub struct StreamAddArgs {
    /// The stream's name.
    pub name: String,
    /// Subjects it stores, comma-separated (wildcards allowed; default: the name).
    #[arg(long, value_delimiter = ',')]
    pub subjects: Vec<String>,
    /// Messages kept at most (-1: no limit).
    #[arg(long, default_value_t = -1)]
    pub max_msgs: i64,
    /// Bytes kept at most (-1: no limit).
    #[arg(long, default_value_t = -1)]
    pub max_bytes: i64,
    /// Oldest message age (e.g. `24h`; 0: no limit).
    #[arg(long, default_value = "0", value_parser = super::parse_duration)]
    pub max_age: Duration,
    /// Messages kept per subject (-1: no limit).
    #[arg(long, default_value_t = -1)]
    pub max_msgs_per_subject: i64,
    /// Largest message (-1: the server's limit).
    #[arg(long, default_value_t = -1)]
    pub max_msg_size: i64,
    /// What a full stream does: drop the oldest (`old`) or refuse the new one (`new`).
    #[arg(long, default_value = "old", value_parser = ["old", "new"])]
    pub discard: String,
    /// The Nats-Msg-Id deduplication window (e.g. `2m`; 0: the server's default).
    #[arg(long, default_value = "0", value_parser = super::parse_duration)]
    pub dupe_window: Duration,
    /// Serve DIRECT.GET.
    #[arg(long)]
    pub allow_direct: bool,
    /// Obey Nats-Rollup headers.
    #[arg(long)]
    pub allow_rollup: bool,
    /// Treat Nats-Schedule headers as delayed or repeated delivery.
    #[arg(long)]
    pub allow_schedules: bool,
    /// Replicas.
    #[arg(long, default_value_t = 1)]
    pub replicas: i64,
}

/// Arguments of `stream edit`: each given option replaces the stream's own.
#[derive(clap::Args, Debug)]
pub struct StreamEditArgs {
    /// The stream's name.
    pub name: String,
    /// Subjects it stores, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub subjects: Option<Vec<String>>,
    /// Messages kept at most (-1: no limit).
    #[arg(long)]
    pub max_msgs: Option<i64>,
    /// Bytes kept at most (-1: no limit).
    #[arg(long)]
    pub max_bytes: Option<i64>,
    /// Oldest message age (e.g. `24h`; 0: no limit).
    #[arg(long, value_parser = super::parse_duration)]
    pub max_age: Option<Duration>,
    /// Messages kept per subject (-1: no limit).
    #[arg(long)]
    pub max_msgs_per_subject: Option<i64>,
    /// Largest message (-1: the server's limit).
    #[arg(long)]
    pub max_msg_size: Option<i64>,
    /// What a full stream does: `old` or `new`.
    #[arg(long, value_parser = ["old", "new"])]
    pub discard: Option<String>,
    /// The Nats-Msg-Id deduplication window.
    #[arg(long, value_parser = super::parse_duration)]
    pub dupe_window: Option<Duration>,
    /// Replicas (1, 3 or 5; a cluster moves the stream's group to match).
    #[arg(long)]
    pub replicas: Option<i64>,
}

/// Arguments of `stream purge`.
#[derive(clap::Args, Debug)]
pub struct PurgeArgs {
    /// The stream.
    pub name: String,
    /// Only messages of this subject (wildcards allowed).
    #[arg(long)]
    pub subject: Option<String>,
    /// Only messages below this sequence.
    #[arg(long)]
    pub seq: Option<u64>,
    /// Keep this many of the newest.
    #[arg(long)]
    pub keep: Option<u64>,
}

/// Arguments of `stream get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The stream.
    pub name: String,
    /// The message's sequence.
    #[arg(long, conflicts_with = "last_for")]
    pub seq: Option<u64>,
    /// The last message of this subject.
    #[arg(long)]
    pub last_for: Option<String>,
}

/// `consumer` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ConsumerCommand {
    /// Create (or update) a durable consumer.
    Add(ConsumerAddArgs),
    /// List a stream's consumers.
    Ls {
        /// The stream.
        stream: String,
    },
    /// Show a consumer's configuration and state.
    Info {
        /// The stream.
        stream: String,
        /// The consumer.
        name: String,
    },
    /// Delete a consumer.
    Rm {
        /// The stream.
        stream: String,
        /// The consumer.
        name: String,
    },
    /// Pull messages from a pull consumer, printing (and acknowledging) each.
    Next(NextArgs),
}

/// Arguments of `consumer add`.
#[derive(clap::Args, Debug)]
pub struct ConsumerAddArgs {
    /// The stream.
    pub stream: String,
    /// The consumer's (durable) name.
    pub name: String,
    /// Only subjects this filter reaches.
    #[arg(long)]
    pub filter: Option<String>,
    /// How deliveries are acknowledged.
    #[arg(long, default_value = "explicit", value_parser = ["explicit", "all", "none"])]
    pub ack: String,
    /// Where delivery starts.
    #[arg(long, default_value = "all", value_parser = ["all", "last", "new", "last_per_subject"])]
    pub deliver: String,
    /// How long a delivery waits for its ack (e.g. `30s`; 0: the server's default).
    #[arg(long, default_value = "0", value_parser = super::parse_duration)]
    pub ack_wait: Duration,
    /// Deliveries of one message at most (-1: no limit).
    #[arg(long, default_value_t = -1)]
    pub max_deliver: i64,
    /// Unacknowledged deliveries at most (0: the server's default).
    #[arg(long, default_value_t = 0)]
    pub max_ack_pending: i64,
    /// A push consumer delivering to this subject (default: a pull consumer).
    #[arg(long)]
    pub push: Option<String>,
    /// berth's dead letters: where messages given up on go.
    #[arg(long)]
    pub dead_letter: Option<String>,
}

/// Arguments of `consumer next`.
#[derive(clap::Args, Debug)]
pub struct NextArgs {
    /// The stream.
    pub stream: String,
    /// The consumer.
    pub name: String,
    /// How many messages.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
    /// Do not acknowledge what arrives.
    #[arg(long)]
    pub no_ack: bool,
    /// How long to wait for messages.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

/// Sends a `$JS.API` request; the answer, or its error as a clear message.
async fn api(client: &async_nats::Client, subject: String, body: Value) -> Result<Value> {
    let reply = client
        .request(subject.clone(), body.to_string().into())
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                anyhow!("JetStream is not available at this server ({subject} has no responders)")
            }
            _ => anyhow!("{subject}: {e}"),
        })?;
    let v: Value = serde_json::from_slice(&reply.payload)
        .with_context(|| format!("{subject}: the answer is not JSON"))?;
    answer_of(v)
}

/// A `$JS.API` answer, or its error object as a clear message.
pub(super) fn answer_of(v: Value) -> Result<Value> {
    if let Some(err) = v.get("error") {
        bail!(
            "{} (code {}, err_code {})",
            err["description"].as_str().unwrap_or("error"),
            err["code"],
            err["err_code"]
        );
    }
    Ok(v)
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// A stream's info, printed.
struct StreamInfo(Value);

impl Render for StreamInfo {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let (c, s) = (&self.0["config"], &self.0["state"]);
        writeln!(
            out,
            "{} subjects={} messages={} bytes={} first_seq={} last_seq={} consumers={}",
            c["name"].as_str().unwrap_or_default(),
            c["subjects"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(","))
                .unwrap_or_default(),
            s["messages"],
            s["bytes"],
            s["first_seq"],
            s["last_seq"],
            s["consumer_count"]
        )
    }

    fn json(&self) -> Value {
        self.0.clone()
    }
}

/// A list of API objects, one row each (`-w json`: the objects as they came).
struct Listing {
    header: &'static [&'static str],
    items: Vec<Value>,
    row: fn(&Value) -> Vec<String>,
}

impl Render for Listing {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        Rows::new(self.header, self.items.iter().map(self.row).collect()).simple(out)
    }

    fn json(&self) -> Value {
        json!(self.items)
    }

    fn table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        Rows::new(self.header, self.items.iter().map(self.row).collect()).table(out)
    }
}

fn subjects_of(config: &Value) -> String {
    config["subjects"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// Streams: name, subjects, messages, bytes, consumers.
fn streams(items: Vec<Value>) -> Listing {
    Listing {
        header: &["NAME", "SUBJECTS", "MESSAGES", "BYTES", "CONSUMERS"],
        items,
        row: |i| {
            vec![
                i["config"]["name"].as_str().unwrap_or_default().to_string(),
                subjects_of(&i["config"]),
                i["state"]["messages"].to_string(),
                i["state"]["bytes"].to_string(),
                i["state"]["consumer_count"].to_string(),
            ]
        },
    }
}

/// Consumers: name, filter, ack pending, pending, redelivered.
fn consumers(items: Vec<Value>) -> Listing {
    Listing {
        header: &["NAME", "FILTER", "ACK PENDING", "PENDING", "REDELIVERED"],
        items,
        row: |i| {
            vec![
                i["name"].as_str().unwrap_or_default().to_string(),
                i["config"]["filter_subject"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
                i["num_ack_pending"].to_string(),
                i["num_pending"].to_string(),
                i["num_redelivered"].to_string(),
            ]
        },
    }
}

/// A consumer's info, printed.
struct ConsumerInfo(Value);

impl Render for ConsumerInfo {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let i = &self.0;
        writeln!(
            out,
            "{} stream={} delivered={} ack_floor={} ack_pending={} redelivered={} waiting={} pending={}",
            i["name"].as_str().unwrap_or_default(),
            i["stream_name"].as_str().unwrap_or_default(),
            i["delivered"]["stream_seq"],
            i["ack_floor"]["stream_seq"],
            i["num_ack_pending"],
            i["num_redelivered"],
            i["num_waiting"],
            i["num_pending"]
        )
    }

    fn json(&self) -> Value {
        self.0.clone()
    }
}

/// A stored message as `STREAM.MSG.GET` returns it.
struct StoredMsg(Value);

impl Render for StoredMsg {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        use base64::Engine as _;
        let m = &self.0["message"];
        let b64 = base64::engine::general_purpose::STANDARD;
        writeln!(
            out,
            "Item: {}#{} received {} on Subject {}",
            self.0["stream"].as_str().unwrap_or_default(),
            m["seq"],
            m["time"].as_str().unwrap_or_default(),
            m["subject"].as_str().unwrap_or_default()
        )?;
        if let Some(h) = m["hdrs"].as_str().and_then(|h| b64.decode(h).ok()) {
            let h = String::from_utf8_lossy(&h);
            for line in h.split("\r\n").skip(1).filter(|l| !l.is_empty()) {
                writeln!(out, "{line}")?;
            }
        }
        writeln!(out)?;
        let data = m["data"]
            .as_str()
            .and_then(|d| b64.decode(d).ok())
            .unwrap_or_default();
        out.write_all(&data)?;
        writeln!(out)
    }

    fn json(&self) -> Value {
        self.0["message"].clone()
    }
}

/// Runs a `stream` subcommand.
pub async fn stream(ctx: &mut Ctx, cmd: StreamCommand) -> Result<()> {
    let client = ctx.nats.connect().await?;
    match cmd {
        StreamCommand::Add(a) => {
            let mut config = json!({
                "name": a.name,
                "subjects": a.subjects,
                "max_msgs": a.max_msgs,
                "max_bytes": a.max_bytes,
                "max_age": nanos(a.max_age),
                "max_msgs_per_subject": a.max_msgs_per_subject,
                "max_msg_size": a.max_msg_size,
                "discard": a.discard,
                "duplicate_window": nanos(a.dupe_window),
                "allow_direct": a.allow_direct,
                "allow_rollup_hdrs": a.allow_rollup,
                "num_replicas": a.replicas,
            });
            if a.allow_schedules {
                config["allow_msg_schedules"] = json!(true);
            }
            let info = api(&client, format!("$JS.API.STREAM.CREATE.{}", a.name), config).await?;
            ctx.out.print(&StreamInfo(info))
        }
        StreamCommand::Edit(a) => {
            let info = api(
                &client,
                format!("$JS.API.STREAM.INFO.{}", a.name),
                json!({}),
            )
            .await?;
            let mut config = info["config"].clone();
            let mut set = |k: &str, v: Option<Value>| {
                if let Some(v) = v {
                    config[k] = v;
                }
            };
            set("subjects", a.subjects.map(|s| json!(s)));
            set("max_msgs", a.max_msgs.map(|v| json!(v)));
            set("max_bytes", a.max_bytes.map(|v| json!(v)));
            set("max_age", a.max_age.map(|d| json!(nanos(d))));
            set(
                "max_msgs_per_subject",
                a.max_msgs_per_subject.map(|v| json!(v)),
            );
            set("max_msg_size", a.max_msg_size.map(|v| json!(v)));
            set("discard", a.discard.map(|v| json!(v)));
            set("duplicate_window", a.dupe_window.map(|d| json!(nanos(d))));
            set("num_replicas", a.replicas.map(|v| json!(v)));
            let info = api(&client, format!("$JS.API.STREAM.UPDATE.{}", a.name), config).await?;
            ctx.out.print(&StreamInfo(info))
        }
        StreamCommand::Ls => {
            let mut all = Vec::new();
            loop {
                let page = api(
                    &client,
                    "$JS.API.STREAM.LIST".into(),
                    json!({"offset": all.len()}),
                )
                .await?;
                let streams = page["streams"].as_array().cloned().unwrap_or_default();
                let total = page["total"].as_u64().unwrap_or(0) as usize;
                let empty = streams.is_empty();
                all.extend(streams);
                if empty || all.len() >= total {
                    break;
                }
            }
            ctx.out.print(&streams(all))
        }
        StreamCommand::Info { name } => {
            let info = api(&client, format!("$JS.API.STREAM.INFO.{name}"), json!({})).await?;
            ctx.out.print(&StreamInfo(info))
        }
        StreamCommand::Rm { name } => {
            api(&client, format!("$JS.API.STREAM.DELETE.{name}"), json!({})).await?;
            ctx.out.line(&format!("Deleted stream {name}"))
        }
        StreamCommand::Purge(a) => {
            let mut body = json!({});
            if let Some(s) = a.subject {
                body["filter"] = json!(s);
            }
            if let Some(s) = a.seq {
                body["seq"] = json!(s);
            }
            if let Some(k) = a.keep {
                body["keep"] = json!(k);
            }
            let r = api(&client, format!("$JS.API.STREAM.PURGE.{}", a.name), body).await?;
            ctx.out
                .line(&format!("Purged {} messages from {}", r["purged"], a.name))
        }
        StreamCommand::Get(a) => {
            let body = match (a.seq, a.last_for) {
                (Some(seq), None) => json!({"seq": seq}),
                (None, Some(s)) => json!({"last_by_subj": s}),
                _ => bail!("give --seq or --last-for"),
            };
            let mut r = api(&client, format!("$JS.API.STREAM.MSG.GET.{}", a.name), body).await?;
            r["stream"] = json!(a.name);
            ctx.out.print(&StoredMsg(r))
        }
    }
}

/// Runs a `consumer` subcommand.
pub async fn consumer(ctx: &mut Ctx, cmd: ConsumerCommand) -> Result<()> {
    let client = ctx.nats.connect().await?;
    match cmd {
        ConsumerCommand::Add(a) => {
            let mut config = json!({
                "durable_name": a.name,
                "ack_policy": a.ack,
                "deliver_policy": a.deliver,
                "max_deliver": a.max_deliver,
            });
            if let Some(f) = a.filter {
                config["filter_subject"] = json!(f);
            }
            if !a.ack_wait.is_zero() {
                config["ack_wait"] = json!(nanos(a.ack_wait));
            }
            if a.max_ack_pending != 0 {
                config["max_ack_pending"] = json!(a.max_ack_pending);
            }
            if let Some(p) = a.push {
                config["deliver_subject"] = json!(p);
            }
            if let Some(d) = a.dead_letter {
                config["dead_letter_subject"] = json!(d);
            }
            let body = json!({"stream_name": a.stream, "config": config});
            let info = api(
                &client,
                format!("$JS.API.CONSUMER.CREATE.{}.{}", a.stream, a.name),
                body,
            )
            .await?;
            ctx.out.print(&ConsumerInfo(info))
        }
        ConsumerCommand::Ls { stream } => {
            let page = api(
                &client,
                format!("$JS.API.CONSUMER.LIST.{stream}"),
                json!({}),
            )
            .await?;
            let list = page["consumers"].as_array().cloned().unwrap_or_default();
            ctx.out.print(&consumers(list))
        }
        ConsumerCommand::Info { stream, name } => {
            let info = api(
                &client,
                format!("$JS.API.CONSUMER.INFO.{stream}.{name}"),
                json!({}),
            )
            .await?;
            ctx.out.print(&ConsumerInfo(info))
        }
        ConsumerCommand::Rm { stream, name } => {
            api(
                &client,
                format!("$JS.API.CONSUMER.DELETE.{stream}.{name}"),
                json!({}),
            )
            .await?;
            ctx.out.line(&format!("Deleted consumer {stream} > {name}"))
        }
        ConsumerCommand::Next(a) => {
            let inbox = client.new_inbox();
            let mut sub = client
                .subscribe(inbox.clone())
                .await
                .context("subscribing")?;
            let body = json!({"batch": a.count, "expires": nanos(a.timeout)});
            client
                .publish_with_reply(
                    format!("$JS.API.CONSUMER.MSG.NEXT.{}.{}", a.stream, a.name),
                    inbox,
                    body.to_string().into(),
                )
                .await
                .context("sending the pull request")?;
            let mut n = 0;
            while n < a.count {
                let next =
                    tokio::time::timeout(a.timeout + Duration::from_secs(1), sub.next()).await;
                let Ok(Some(msg)) = next else {
                    bail!("no message within {:?}", a.timeout);
                };
                if let Some(status) = msg.status {
                    let what = msg.description.clone().unwrap_or_default();
                    if n == 0 {
                        bail!("no message: {} {what}", status.as_u16());
                    }
                    break;
                }
                n += 1;
                ctx.out.print(&Received {
                    n,
                    msg: &msg,
                    rtt: None,
                })?;
                if !a.no_ack {
                    if let Some(reply) = msg.reply.clone() {
                        client
                            .publish(reply, "+ACK".into())
                            .await
                            .context("acknowledging")?;
                    }
                }
            }
            client.flush().await.context("flushing the acks")?;
            Ok(())
        }
    }
}
