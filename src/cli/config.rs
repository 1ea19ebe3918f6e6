//! `berth config`: the configuration center through berth's own API (`/api/v1/config` on
//! `--http-addr`): read, publish, delete, list, history, diff, rollback, betas, listen,
//! export, import, clone and namespaces. `-w json` prints the API's JSON as it came.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};

use crate::cli::registry::http::{ApiPath, Client};
use crate::cli::registry::{items, strings, text, Done, Listing};
use crate::cli::Ctx;

/// Where an item is: `--namespace` and `--group` beside its data ID.
#[derive(clap::Args, Debug, Clone)]
pub struct Where {
    /// The data ID.
    pub data_id: String,
    /// The namespace (default: public).
    #[arg(long, short = 'n', default_value = "public")]
    pub namespace: String,
    /// The group.
    #[arg(long, short = 'g', default_value = "DEFAULT_GROUP")]
    pub group: String,
}

impl Where {
    fn path(&self) -> ApiPath {
        ApiPath::new("/api/v1/config/items")
            .seg(&self.namespace)
            .seg(&self.group)
            .seg(&self.data_id)
    }

    fn sub(&self, tail: &str) -> ApiPath {
        let mut p = self.path();
        for s in tail.split('/') {
            p = p.seg(s);
        }
        p
    }
}

/// Content from the argument, or from `--file` (`-` reads standard input).
#[derive(clap::Args, Debug)]
pub struct Content {
    /// The content.
    #[arg(conflicts_with = "file", required_unless_present = "file")]
    pub content: Option<String>,
    /// Read the content from this file (`-`: standard input).
    #[arg(long, short = 'f')]
    pub file: Option<String>,
}

impl Content {
    fn read(&self) -> Result<String> {
        match (&self.content, self.file.as_deref()) {
            (Some(c), _) => Ok(c.clone()),
            (None, Some("-")) => {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")
            }
            (None, Some(f)) => std::fs::read_to_string(f).with_context(|| format!("reading {f}")),
            (None, None) => bail!("give the content, or --file"),
        }
    }
}

/// `berth config <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print an item's content (what a client outside any beta reads).
    Get(Where),
    /// Publish an item (a new version).
    Put {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        content: Content,
        /// The content's type: text, json, yaml, properties, xml, html, toml.
        #[arg(long = "type", short = 't')]
        kind: Option<String>,
        /// A description.
        #[arg(long, default_value = "")]
        desc: String,
        /// Tags, comma-separated.
        #[arg(long, default_value = "")]
        tags: String,
        /// The application.
        #[arg(long, default_value = "")]
        app: String,
        /// Publish only if the item's MD5 is this one (`""`: only if it does not exist).
        #[arg(long)]
        cas_md5: Option<String>,
    },
    /// Delete an item (its content stays as a version).
    Delete(Where),
    /// List items.
    Ls {
        /// The namespace.
        #[arg(long, short = 'n', default_value = "public")]
        namespace: String,
        /// Only this group.
        #[arg(long, short = 'g', default_value = "")]
        group: String,
        /// Only data IDs matching this pattern (`*` matches anything).
        #[arg(long, default_value = "")]
        search: String,
    },
    /// List an item's kept versions, newest first.
    History(Where),
    /// Show what changed between two versions (`to` absent: the current one).
    Diff {
        #[command(flatten)]
        at: Where,
        /// The older version.
        from: u64,
        /// The newer version.
        to: Option<u64>,
    },
    /// Publish a kept version again.
    Rollback {
        #[command(flatten)]
        at: Where,
        /// The version to bring back.
        version: u64,
    },
    /// Gray release: content seen only by the listed client addresses.
    #[command(subcommand)]
    Beta(BetaCommand),
    /// Print the item now and after each change (Ctrl-C stops).
    Listen {
        #[command(flatten)]
        at: Where,
        /// Stop after the first change.
        #[arg(long)]
        once: bool,
    },
    /// Write a namespace's items to a .tar.gz.
    Export {
        /// The namespace.
        #[arg(long, short = 'n', default_value = "public")]
        namespace: String,
        /// The file to write.
        #[arg(long, short = 'o')]
        output: String,
    },
    /// Publish the items of a .tar.gz (as `export` writes it) into a namespace.
    Import {
        /// The archive.
        file: String,
        /// The namespace.
        #[arg(long, short = 'n', default_value = "public")]
        namespace: String,
        /// What to do with items that exist: abort (import nothing), skip, overwrite.
        #[arg(long, default_value = "abort")]
        policy: String,
    },
    /// Publish every item of one namespace into another.
    Clone {
        /// The source namespace.
        #[arg(long)]
        from: String,
        /// The target namespace.
        #[arg(long)]
        to: String,
        /// What to do with items that exist: abort, skip, overwrite.
        #[arg(long, default_value = "abort")]
        policy: String,
    },
    /// Namespaces.
    #[command(subcommand)]
    Ns(NsCommand),
}

/// `berth config beta <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum BetaCommand {
    /// Show the running beta.
    Get(Where),
    /// Start (or replace) a beta.
    Put {
        #[command(flatten)]
        at: Where,
        #[command(flatten)]
        content: Content,
        /// Client addresses that see it, comma-separated.
        #[arg(long, required_unless_present = "labels", default_value = "")]
        ips: String,
        /// Client labels that see it, `key=value` comma-separated (Nacos 2.x/3.x clients
        /// declare labels on their connection).
        #[arg(long, default_value = "")]
        labels: String,
        /// The content's type.
        #[arg(long = "type", short = 't')]
        kind: Option<String>,
    },
    /// Publish the beta to everyone and end it.
    Promote(Where),
    /// End the beta without publishing it.
    Withdraw(Where),
}

/// `berth config ns <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum NsCommand {
    /// List namespaces.
    Ls,
    /// Create a namespace.
    Create {
        /// Its ID.
        id: String,
        /// Its display name (default: the ID).
        #[arg(long, default_value = "")]
        name: String,
        /// A description.
        #[arg(long, default_value = "")]
        desc: String,
    },
    /// Delete an empty namespace.
    Delete {
        /// Its ID.
        id: String,
    },
}

/// A time in ms since the UNIX epoch as RFC 3339 (UTC, seconds); empty when absent.
fn when(v: &Value, key: &str) -> String {
    match v.get(key).and_then(Value::as_u64) {
        Some(ms) => {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        }
        None => String::new(),
    }
}

fn done(text: String, json: Value) -> Done {
    Done { text, json }
}

fn item_rows(v: &Value) -> Vec<Vec<String>> {
    [
        "namespace",
        "group",
        "dataId",
        "version",
        "md5",
        "type",
        "desc",
        "appName",
        "author",
        "authorIp",
    ]
    .iter()
    .map(|k| vec![k.to_string(), text(v, k)])
    .chain(std::iter::once(vec![
        "tags".to_string(),
        strings(v, "tags").join(","),
    ]))
    .collect()
}

/// Runs one `config` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: ConfigCommand) -> Result<()> {
    let c = ctx.http.client()?;
    match cmd {
        ConfigCommand::Get(at) => {
            let v = c.get(&at.path()).await?;
            let content = text(&v, "content");
            let listing = Listing::new(v.clone(), &["FIELD", "VALUE"], item_rows(&v))
                .with_lines(vec![content.trim_end_matches('\n').to_string()]);
            ctx.out.print(&listing)
        }
        ConfigCommand::Put {
            at,
            content,
            kind,
            desc,
            tags,
            app,
            cas_md5,
        } => {
            let tags: Vec<&str> = tags
                .split(',')
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .collect();
            let mut body = json!({
                "content": content.read()?, "desc": desc, "tags": tags, "appName": app,
            });
            if let Some(k) = kind {
                body["type"] = json!(k);
            }
            if let Some(m) = cas_md5 {
                body["casMd5"] = json!(m);
            }
            let v = c.call(Method::PUT, &at.path(), Some(&body)).await?;
            let said = format!(
                "published {}/{}/{} version {} (md5 {})",
                at.namespace,
                at.group,
                at.data_id,
                text(&v, "version"),
                text(&v, "md5")
            );
            ctx.out.print(&done(said, v))
        }
        ConfigCommand::Delete(at) => {
            let v = c.call(Method::DELETE, &at.path(), None).await?;
            let said = if v["deleted"] == json!(true) {
                format!("deleted {}/{}/{}", at.namespace, at.group, at.data_id)
            } else {
                format!("{}/{}/{} did not exist", at.namespace, at.group, at.data_id)
            };
            ctx.out.print(&done(said, v))
        }
        ConfigCommand::Ls {
            namespace,
            group,
            search,
        } => {
            let path = ApiPath::new("/api/v1/config/items")
                .query("namespace", &namespace)
                .query("group", &group)
                .query("search", &search)
                .query("size", "1000");
            let v = c.get(&path).await?;
            let rows = items(&v["items"])
                .iter()
                .map(|i| {
                    let mut row: Vec<String> = ["group", "dataId", "type", "version", "md5"]
                        .iter()
                        .map(|k| text(i, k))
                        .collect();
                    row.push(when(i, "modified"));
                    row
                })
                .collect();
            let listing = Listing::new(
                v.clone(),
                &["GROUP", "DATA ID", "TYPE", "VERSION", "MD5", "MODIFIED"],
                rows,
            );
            ctx.out.print(&listing)
        }
        ConfigCommand::History(at) => {
            let v = c.get(&at.sub("versions").query("size", "1000")).await?;
            let rows = items(&v["versions"])
                .iter()
                .map(|i| {
                    let mut row: Vec<String> = ["version", "op", "md5"]
                        .iter()
                        .map(|k| text(i, k))
                        .collect();
                    row.push(when(i, "at"));
                    row.extend(["author", "authorIp"].iter().map(|k| text(i, k)));
                    row
                })
                .collect();
            let listing = Listing::new(
                v.clone(),
                &["VERSION", "OP", "MD5", "AT", "AUTHOR", "FROM"],
                rows,
            );
            ctx.out.print(&listing)
        }
        ConfigCommand::Diff { at, from, to } => {
            let mut path = at.sub("diff").query("from", &from.to_string());
            if let Some(t) = to {
                path = path.query("to", &t.to_string());
            }
            let v = c.get(&path).await?;
            let diff = text(&v, "diff");
            let said = if diff.is_empty() {
                "no difference".to_string()
            } else {
                diff.trim_end_matches('\n').to_string()
            };
            ctx.out.print(&done(said, v))
        }
        ConfigCommand::Rollback { at, version } => {
            let v = c
                .call(
                    Method::POST,
                    &at.sub("rollback"),
                    Some(&json!({"version": version})),
                )
                .await?;
            let said = format!(
                "{}/{}/{} is version {} again, as version {}",
                at.namespace,
                at.group,
                at.data_id,
                version,
                text(&v, "version")
            );
            ctx.out.print(&done(said, v))
        }
        ConfigCommand::Beta(b) => beta(ctx, &c, b).await,
        ConfigCommand::Listen { at, once } => listen(ctx, c, at, once).await,
        ConfigCommand::Export { namespace, output } => {
            let path = ApiPath::new("/api/v1/config/export").query("namespace", &namespace);
            let (_, data) = c.poll(&path).await?;
            std::fs::write(&output, &data).with_context(|| format!("writing {output}"))?;
            let said = format!(
                "wrote namespace {namespace} to {output} ({} bytes)",
                data.len()
            );
            ctx.out.print(&done(
                said,
                json!({"namespace": namespace, "file": output, "bytes": data.len()}),
            ))
        }
        ConfigCommand::Import {
            file,
            namespace,
            policy,
        } => {
            let data = std::fs::read(&file).with_context(|| format!("reading {file}"))?;
            let path = ApiPath::new("/api/v1/config/import")
                .query("namespace", &namespace)
                .query("policy", &policy);
            let answer = c
                .call_raw(Method::POST, &path, Bytes::from(data), "application/gzip")
                .await?;
            let v: Value = serde_json::from_slice(&answer).context("the import's answer")?;
            let said = format!(
                "imported {} items into {namespace}, skipped {}",
                text(&v, "imported"),
                items(&v["skipped"]).len()
            );
            ctx.out.print(&done(said, v))
        }
        ConfigCommand::Clone { from, to, policy } => {
            let body = json!({"from": from, "to": to, "policy": policy});
            let v = c
                .call(
                    Method::POST,
                    &ApiPath::new("/api/v1/config/clone"),
                    Some(&body),
                )
                .await?;
            let said = format!(
                "cloned {} items from {from} into {to}, skipped {}",
                text(&v, "imported"),
                items(&v["skipped"]).len()
            );
            ctx.out.print(&done(said, v))
        }
        ConfigCommand::Ns(n) => namespaces(ctx, &c, n).await,
    }
}

async fn beta(ctx: &mut Ctx, c: &Client, cmd: BetaCommand) -> Result<()> {
    match cmd {
        BetaCommand::Get(at) => {
            let v = c.get(&at.sub("beta")).await?;
            let labels: Vec<String> = v["labels"]
                .as_object()
                .into_iter()
                .flatten()
                .flat_map(|(k, vs)| {
                    vs.as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|x| x.as_str().map(|x| format!("{k}={x}")))
                        .collect::<Vec<_>>()
                })
                .collect();
            let rows = vec![
                vec!["ips".to_string(), strings(&v, "ips").join(",")],
                vec!["labels".to_string(), labels.join(",")],
                vec!["md5".to_string(), text(&v, "md5")],
                vec!["content".to_string(), text(&v, "content")],
            ];
            ctx.out
                .print(&Listing::new(v.clone(), &["FIELD", "VALUE"], rows))
        }
        BetaCommand::Put {
            at,
            content,
            ips,
            labels,
            kind,
        } => {
            let ips = berth_config::rules::split_tags(&ips);
            let parsed = berth_config::rules::beta_labels(&labels)?;
            let mut body = json!({"content": content.read()?, "ips": ips, "labels": parsed});
            if let Some(k) = kind {
                body["type"] = json!(k);
            }
            let v = c.call(Method::PUT, &at.sub("beta"), Some(&body)).await?;
            let mut whom = ips;
            whom.extend(
                labels
                    .split(',')
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_string),
            );
            let said = format!("beta of {} for {}", at.data_id, whom.join(","));
            ctx.out.print(&done(said, v))
        }
        BetaCommand::Promote(at) => {
            let v = c.call(Method::POST, &at.sub("beta/promote"), None).await?;
            let said = format!(
                "beta of {} published as version {}",
                at.data_id,
                text(&v, "version")
            );
            ctx.out.print(&done(said, v))
        }
        BetaCommand::Withdraw(at) => {
            let v = c.call(Method::DELETE, &at.sub("beta"), None).await?;
            let said = if v["withdrawn"] == json!(true) {
                format!("beta of {} withdrawn", at.data_id)
            } else {
                format!("{} had no beta", at.data_id)
            };
            ctx.out.print(&done(said, v))
        }
    }
}

/// Prints the item, then waits for each change (a 30 s long poll, repeated) and prints it.
async fn listen(ctx: &mut Ctx, c: Client, at: Where, once: bool) -> Result<()> {
    let c = c.with_command_timeout(Duration::from_secs(45));
    let mut md5 = String::new();
    let mut first = true;
    loop {
        let path = at.sub("watch").query("md5", &md5).query("wait", "30s");
        let (status, body) = c.poll(&path).await?;
        if status == http::StatusCode::NOT_MODIFIED {
            continue;
        }
        let v: Value = serde_json::from_slice(&body).context("the watch's answer")?;
        md5 = text(&v, "md5");
        let said = if v["deleted"] == json!(true) {
            format!("{} deleted", at.data_id)
        } else {
            text(&v, "content").trim_end_matches('\n').to_string()
        };
        ctx.out.print(&done(said, v))?;
        if once && !first {
            return Ok(());
        }
        first = false;
    }
}

async fn namespaces(ctx: &mut Ctx, c: &Client, cmd: NsCommand) -> Result<()> {
    let base = ApiPath::new("/api/v1/config/namespaces");
    match cmd {
        NsCommand::Ls => {
            let v = c.get(&base).await?;
            let rows = items(&v["namespaces"])
                .iter()
                .map(|n| {
                    ["id", "name", "items", "desc"]
                        .iter()
                        .map(|k| text(n, k))
                        .collect()
                })
                .collect();
            ctx.out.print(&Listing::new(
                v.clone(),
                &["ID", "NAME", "ITEMS", "DESC"],
                rows,
            ))
        }
        NsCommand::Create { id, name, desc } => {
            let body = json!({"id": id, "name": name, "desc": desc});
            let v = c.call(Method::POST, &base, Some(&body)).await?;
            ctx.out.print(&done(format!("namespace {id} created"), v))
        }
        NsCommand::Delete { id } => {
            let v = c.call(Method::DELETE, &base.seg(&id), None).await?;
            let said = if v["deleted"] == json!(true) {
                format!("namespace {id} deleted")
            } else {
                format!("namespace {id} did not exist")
            };
            ctx.out.print(&done(said, v))
        }
    }
}
