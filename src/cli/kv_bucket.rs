//! `berth kv-bucket …`: JetStream key-value buckets from the command line, in the style of
//! `nats kv`, through the Rust NATS client's bucket API (`async_nats::jetstream::kv`) to
//! `--nats-url`, so it works against berth and against a nats-server with JetStream. A
//! bucket is the stream `KV_<bucket>`; its keys are the subjects `$KV.<bucket>.<key>`.
//!
//! `-w json` prints entries with their value in base64 (as `kv get -w json` prints etcd's),
//! `simple` prints them as `nats kv` does, `table` lists buckets, keys and histories.

use std::io::Write;
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::jetstream::{self, kv};
use base64::Engine as _;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde_json::{json, Value};

use super::output::{human_bytes, lossy, Render, Rows};
use super::Ctx;

/// `kv-bucket` subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum KvBucketCommand {
    /// Create a bucket.
    Add(AddArgs),
    /// List buckets.
    Ls,
    /// Show a bucket's settings and size.
    Info {
        /// The bucket.
        bucket: String,
    },
    /// Delete a bucket and everything in it.
    Rm {
        /// The bucket.
        bucket: String,
    },
    /// Set a key's value.
    Put {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Set a key's value only if it has none (never set, deleted or purged).
    Create {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
    },
    /// Set a key's value only if its latest revision is `revision`.
    Update {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// The revision the key must be at.
        revision: u64,
    },
    /// Read a key (its latest value, or the value at a revision).
    Get(GetArgs),
    /// Delete a key (its history is kept).
    Del {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Delete a key and its history.
    Purge {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// List the keys that have a value.
    Keys {
        /// The bucket.
        bucket: String,
    },
    /// A key's kept values, deletes and purges, oldest first.
    History {
        /// The bucket.
        bucket: String,
        /// The key.
        key: String,
    },
    /// Print changes as they happen (the current values first).
    Watch(WatchArgs),
}

/// Arguments of `kv-bucket add`.
#[derive(clap::Args, Debug)]
pub struct AddArgs {
    /// The bucket's name.
    pub bucket: String,
    /// Values kept per key (1–64).
    #[arg(long, default_value_t = 1)]
    pub history: i64,
    /// How long a value lives (e.g. `1h`; 0: forever).
    #[arg(long, default_value = "0", value_parser = super::parse_duration)]
    pub ttl: Duration,
    /// Bytes the bucket keeps at most (-1: no limit).
    #[arg(long, default_value_t = -1)]
    pub max_bytes: i64,
    /// Largest value (-1: the server's limit).
    #[arg(long, default_value_t = -1)]
    pub max_value_size: i32,
    /// Replicas.
    #[arg(long, default_value_t = 1)]
    pub replicas: usize,
    /// A description.
    #[arg(long, default_value = "")]
    pub description: String,
}

/// Arguments of `kv-bucket get`.
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// The bucket.
    pub bucket: String,
    /// The key.
    pub key: String,
    /// The value at this revision instead of the latest.
    #[arg(long)]
    pub revision: Option<u64>,
    /// Print only the value, as stored.
    #[arg(long)]
    pub raw: bool,
}

/// Arguments of `kv-bucket watch`.
#[derive(clap::Args, Debug)]
pub struct WatchArgs {
    /// The bucket.
    pub bucket: String,
    /// Keys to watch (wildcards `*` and `>` allowed; default: every key).
    #[arg(default_value = ">")]
    pub key: String,
    /// Stop after this many changes (0: never).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
}

/// A key's entry (a value, a delete or a purge).
struct Entry(kv::Entry);

fn operation(op: &kv::Operation) -> &'static str {
    match op {
        kv::Operation::Put => "PUT",
        kv::Operation::Delete => "DEL",
        kv::Operation::Purge => "PURGE",
    }
}

fn created(e: &kv::Entry) -> String {
    let ns = u64::try_from(e.created.unix_timestamp_nanos()).unwrap_or(0);
    humantime::format_rfc3339_millis(SystemTime::UNIX_EPOCH + Duration::from_nanos(ns)).to_string()
}

impl Entry {
    fn row(&self) -> Vec<String> {
        let e = &self.0;
        vec![
            e.key.clone(),
            e.revision.to_string(),
            operation(&e.operation).to_string(),
            created(e),
            e.value.len().to_string(),
            lossy(&e.value),
        ]
    }
}

impl Render for Entry {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let e = &self.0;
        match e.operation {
            kv::Operation::Put => {
                writeln!(
                    out,
                    "{} > {} revision: {} created @ {}",
                    e.bucket,
                    e.key,
                    e.revision,
                    created(e)
                )?;
                writeln!(out)?;
                out.write_all(&e.value)?;
                writeln!(out)
            }
            _ => writeln!(
                out,
                "{} > {} revision: {} {} @ {}",
                e.bucket,
                e.key,
                e.revision,
                operation(&e.operation),
                created(e)
            ),
        }
    }

    fn json(&self) -> Value {
        let e = &self.0;
        json!({
            "bucket": e.bucket,
            "key": e.key,
            "value": base64::engine::general_purpose::STANDARD.encode(&e.value),
            "revision": e.revision,
            "delta": e.delta,
            "created": created(e),
            "operation": operation(&e.operation),
        })
    }
}

/// A key's history, oldest first.
struct History(Vec<Entry>);

const HISTORY_HEADER: &[&str] = &["KEY", "REVISION", "OP", "CREATED", "LENGTH", "VALUE"];

impl Render for History {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        Rows::new(HISTORY_HEADER, self.0.iter().map(Entry::row).collect()).simple(out)
    }

    fn json(&self) -> Value {
        Value::Array(self.0.iter().map(Entry::json).collect())
    }

    fn table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        Rows::new(HISTORY_HEADER, self.0.iter().map(Entry::row).collect()).table(out)
    }
}

/// A bucket's settings and size, from its stream's info.
struct BucketInfo(Value);

impl BucketInfo {
    fn row(&self) -> Vec<String> {
        let (c, s) = (&self.0["config"], &self.0["state"]);
        vec![
            bucket_of(c["name"].as_str().unwrap_or_default()).to_string(),
            c["description"].as_str().unwrap_or_default().to_string(),
            c["max_msgs_per_subject"].to_string(),
            s["messages"].to_string(),
            human_bytes(s["bytes"].as_u64().unwrap_or(0)),
        ]
    }
}

fn bucket_of(stream: &str) -> &str {
    stream.strip_prefix("KV_").unwrap_or(stream)
}

impl Render for BucketInfo {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let (c, s) = (&self.0["config"], &self.0["state"]);
        let ttl = c["max_age"].as_u64().unwrap_or(0);
        writeln!(
            out,
            "{} history={} ttl={} values={} bytes={} replicas={} storage={}",
            bucket_of(c["name"].as_str().unwrap_or_default()),
            c["max_msgs_per_subject"],
            super::output::go_duration(Duration::from_nanos(ttl)),
            s["messages"],
            s["bytes"],
            c["num_replicas"],
            c["storage"].as_str().unwrap_or_default()
        )
    }

    fn json(&self) -> Value {
        self.0.clone()
    }
}

/// Buckets, one row each.
struct Buckets(Vec<BucketInfo>);

const BUCKETS_HEADER: &[&str] = &["BUCKET", "DESCRIPTION", "HISTORY", "VALUES", "SIZE"];

impl Render for Buckets {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        Rows::new(BUCKETS_HEADER, self.0.iter().map(BucketInfo::row).collect()).simple(out)
    }

    fn json(&self) -> Value {
        Value::Array(self.0.iter().map(|b| b.0.clone()).collect())
    }

    fn table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        Rows::new(BUCKETS_HEADER, self.0.iter().map(BucketInfo::row).collect()).table(out)
    }
}

/// Keys, one per line.
struct Keys(Vec<String>);

impl Render for Keys {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        for k in &self.0 {
            writeln!(out, "{k}")?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        json!(self.0)
    }

    fn table(&self, out: &mut dyn Write) -> std::io::Result<()> {
        Rows::new(&["KEY"], self.0.iter().map(|k| vec![k.clone()]).collect()).table(out)
    }
}

/// The stream info of bucket `bucket` (as the API answered it).
async fn stream_info(js: &jetstream::Context, bucket: &str) -> Result<Value> {
    let subject = format!("STREAM.INFO.KV_{bucket}");
    let v: Value = js
        .request(subject, &json!({}))
        .await
        .with_context(|| format!("reading bucket {bucket}"))?;
    if v["error"]["err_code"] == 10059 {
        bail!("bucket {bucket} not found");
    }
    super::jetstream::answer_of(v)
}

async fn store(js: &jetstream::Context, bucket: &str) -> Result<kv::Store> {
    js.get_key_value(bucket)
        .await
        .map_err(|e| anyhow!("bucket {bucket}: {e}"))
}

/// Prints the revision a write of `key` made, or says which write failed and why.
fn wrote<E: std::fmt::Display>(
    ctx: &mut Ctx,
    doing: &str,
    key: &str,
    rev: Result<u64, E>,
) -> Result<()> {
    let rev = rev.map_err(|e| anyhow!("{doing} {key}: {e}"))?;
    ctx.out.line(&format!("{key} revision {rev}"))
}

/// Runs a `kv-bucket` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: KvBucketCommand) -> Result<()> {
    let client = ctx.nats.connect().await?;
    let js = jetstream::new(client.clone());
    match cmd {
        KvBucketCommand::Add(a) => {
            js.create_key_value(kv::Config {
                bucket: a.bucket.clone(),
                description: a.description,
                history: a.history,
                max_age: a.ttl,
                max_bytes: a.max_bytes,
                max_value_size: a.max_value_size,
                num_replicas: a.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| anyhow!("creating bucket {}: {e}", a.bucket))?;
            let info = stream_info(&js, &a.bucket).await?;
            ctx.out.print(&BucketInfo(info))
        }
        KvBucketCommand::Ls => {
            let names: Vec<String> = js
                .stream_names()
                .try_collect()
                .await
                .map_err(|e| anyhow!("listing streams: {e}"))?;
            let mut buckets = Vec::new();
            for n in names.iter().filter_map(|n| n.strip_prefix("KV_")) {
                buckets.push(BucketInfo(stream_info(&js, n).await?));
            }
            ctx.out.print(&Buckets(buckets))
        }
        KvBucketCommand::Info { bucket } => {
            let info = stream_info(&js, &bucket).await?;
            ctx.out.print(&BucketInfo(info))
        }
        KvBucketCommand::Rm { bucket } => {
            js.delete_key_value(&bucket)
                .await
                .map_err(|e| anyhow!("deleting bucket {bucket}: {e}"))?;
            ctx.out.line(&format!("Deleted bucket {bucket}"))
        }
        KvBucketCommand::Put { bucket, key, value } => {
            let s = store(&js, &bucket).await?;
            let rev = s.put(&key, Bytes::from(value)).await;
            wrote(ctx, "putting", &key, rev)
        }
        KvBucketCommand::Create { bucket, key, value } => {
            let s = store(&js, &bucket).await?;
            let rev = s.create(&key, Bytes::from(value)).await;
            wrote(ctx, "creating", &key, rev)
        }
        KvBucketCommand::Update {
            bucket,
            key,
            value,
            revision,
        } => {
            let s = store(&js, &bucket).await?;
            let rev = s.update(&key, Bytes::from(value), revision).await;
            wrote(ctx, "updating", &key, rev)
        }
        KvBucketCommand::Get(a) => {
            let s = store(&js, &a.bucket).await?;
            let entry = match a.revision {
                Some(r) => s.entry_for_revision(&a.key, r).await,
                None => s.entry(&a.key).await,
            }
            .map_err(|e| anyhow!("reading {}: {e}", a.key))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
                bail!("{}: key not found", a.key);
            };
            if a.raw {
                let mut out = std::io::stdout().lock();
                out.write_all(&entry.value)?;
                return out.flush().context("writing the value");
            }
            ctx.out.print(&Entry(entry))
        }
        KvBucketCommand::Del { bucket, key } => {
            store(&js, &bucket)
                .await?
                .delete(&key)
                .await
                .map_err(|e| anyhow!("deleting {key}: {e}"))?;
            ctx.out.line(&format!("Deleted {key}"))
        }
        KvBucketCommand::Purge { bucket, key } => {
            store(&js, &bucket)
                .await?
                .purge(&key)
                .await
                .map_err(|e| anyhow!("purging {key}: {e}"))?;
            ctx.out.line(&format!("Purged {key}"))
        }
        KvBucketCommand::Keys { bucket } => {
            let mut keys: Vec<String> = store(&js, &bucket)
                .await?
                .keys()
                .await
                .map_err(|e| anyhow!("listing keys: {e}"))?
                .try_collect()
                .await
                .map_err(|e| anyhow!("listing keys: {e}"))?;
            keys.sort();
            ctx.out.print(&Keys(keys))
        }
        KvBucketCommand::History { bucket, key } => {
            let entries: Vec<kv::Entry> = store(&js, &bucket)
                .await?
                .history(&key)
                .await
                .map_err(|e| anyhow!("reading {key}'s history: {e}"))?
                .try_collect()
                .await
                .map_err(|e| anyhow!("reading {key}'s history: {e}"))?;
            if entries.is_empty() {
                bail!("{key}: key not found");
            }
            ctx.out
                .print(&History(entries.into_iter().map(Entry).collect()))
        }
        KvBucketCommand::Watch(a) => {
            let mut watch = store(&js, &a.bucket)
                .await?
                .watch_with_history(&a.key)
                .await
                .map_err(|e| anyhow!("watching {}: {e}", a.key))?;
            let mut n = 0;
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| anyhow!("watching {}: {e}", a.key))?;
                ctx.out.print(&Entry(entry))?;
                n += 1;
                if a.count > 0 && n >= a.count {
                    break;
                }
            }
            Ok(())
        }
    }
}
