//! `berth route|upstream|ssl|api-service|api-consumer|plugin-config|global-rule|consumer-group`:
//! the gateway's resources through
//! APISIX's Admin API v3 on `--http-addr` (berth's HTTP listener; an APISIX admin port works
//! too). APISIX's services and consumers are `api-service` and `api-consumer` here: `svc`
//! and `consumer` name the registry's services and JetStream's consumers.
//! Each takes `put`, `get`, `ls` and `rm`; `put` builds the resource from flags, from
//! `--json` (or `--file`), or both (flags win). `-w json` prints the API's JSON as it came.

use anyhow::{bail, Context as _, Result};
use http::Method;
use serde_json::{json, Map, Value};

use crate::cli::registry::http::ApiPath;
use crate::cli::registry::{items, strings, text, Done, Listing};
use crate::cli::Ctx;

/// A resource's JSON from `--json` or `--file` (`-`: standard input).
#[derive(clap::Args, Debug, Default)]
pub struct Body {
    /// The resource as JSON (APISIX's shape); flags given beside it win.
    #[arg(long, conflicts_with = "file")]
    pub json: Option<String>,
    /// Read the resource's JSON from this file (`-`: standard input).
    #[arg(long, short = 'f')]
    pub file: Option<String>,
}

impl Body {
    fn read(&self) -> Result<Map<String, Value>> {
        let text = match (&self.json, self.file.as_deref()) {
            (Some(j), _) => j.clone(),
            (None, Some("-")) => {
                std::io::read_to_string(std::io::stdin()).context("reading standard input")?
            }
            (None, Some(f)) => {
                std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?
            }
            (None, None) => return Ok(Map::new()),
        };
        match serde_json::from_str(&text).context("the resource is not JSON")? {
            Value::Object(m) => Ok(m),
            _ => bail!("the resource must be a JSON object"),
        }
    }
}

/// Where an upstream's nodes come from, as flags.
#[derive(clap::Args, Debug, Default)]
pub struct Nodes {
    /// A node as host:port or host:port=weight (repeatable).
    #[arg(long = "node", value_name = "HOST:PORT[=WEIGHT]")]
    pub nodes: Vec<String>,
    /// A registry service whose healthy instances are the nodes.
    #[arg(long, conflicts_with = "nodes")]
    pub service_name: Option<String>,
    /// How --service-name is read: consul (its catalog name) or nacos.
    #[arg(long, default_value = "consul", requires = "service_name")]
    pub discovery: String,
    /// Load balancing: roundrobin, chash, ewma or least_conn.
    #[arg(long = "type")]
    pub kind: Option<String>,
}

impl Nodes {
    /// The upstream these flags describe, if any flag was given.
    fn upstream(&self) -> Result<Option<Map<String, Value>>> {
        let mut u = Map::new();
        if !self.nodes.is_empty() {
            let mut nodes = Map::new();
            for n in &self.nodes {
                let (addr, weight) = match n.rsplit_once('=') {
                    Some((a, w)) => (
                        a,
                        w.parse::<u32>()
                            .with_context(|| format!("--node {n}: the weight is not a number"))?,
                    ),
                    None => (n.as_str(), 1),
                };
                nodes.insert(addr.to_string(), json!(weight));
            }
            u.insert("nodes".into(), Value::Object(nodes));
        }
        if let Some(s) = &self.service_name {
            u.insert("service_name".into(), json!(s));
            u.insert("discovery_type".into(), json!(self.discovery));
        }
        if let Some(k) = &self.kind {
            u.insert("type".into(), json!(k));
        }
        Ok((!u.is_empty()).then_some(u))
    }
}

/// `route put`.
#[derive(clap::Args, Debug)]
pub struct RoutePut {
    /// The route's ID.
    pub id: String,
    /// A path: exact (`/a`) or a prefix (`/a/*`) (repeatable).
    #[arg(long = "uri", value_name = "PATH")]
    pub uris: Vec<String>,
    /// A host: exact or `*.example.com` (repeatable).
    #[arg(long = "host", value_name = "HOST")]
    pub hosts: Vec<String>,
    /// A method (repeatable; default: any).
    #[arg(long = "method", value_name = "METHOD")]
    pub methods: Vec<String>,
    /// A stored upstream to send to.
    #[arg(long)]
    pub upstream_id: Option<String>,
    /// A stored service whose upstream and plugins apply.
    #[arg(long)]
    pub service_id: Option<String>,
    /// Among routes of one host and path, the higher goes first.
    #[arg(long)]
    pub priority: Option<i64>,
    /// Pass WebSocket upgrades.
    #[arg(long)]
    pub websocket: bool,
    /// A name (metrics and lists show it).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub nodes: Nodes,
    #[command(flatten)]
    pub body: Body,
}

/// `upstream put`.
#[derive(clap::Args, Debug)]
pub struct UpstreamPut {
    /// The upstream's ID.
    pub id: String,
    #[command(flatten)]
    pub nodes: Nodes,
    #[command(flatten)]
    pub body: Body,
}

/// `service put`.
#[derive(clap::Args, Debug)]
pub struct ServicePut {
    /// The service's ID.
    pub id: String,
    /// A stored upstream to send to.
    #[arg(long)]
    pub upstream_id: Option<String>,
    #[command(flatten)]
    pub nodes: Nodes,
    #[command(flatten)]
    pub body: Body,
}

/// `consumer put`.
#[derive(clap::Args, Debug)]
pub struct ConsumerPut {
    /// The consumer's user name.
    pub username: String,
    /// Its key-auth key.
    #[arg(long = "key-auth", value_name = "KEY")]
    pub key: Option<String>,
    /// Its basic-auth credentials, user:password.
    #[arg(long = "basic-auth", value_name = "USER:PASSWORD")]
    pub basic: Option<String>,
    #[command(flatten)]
    pub body: Body,
}

/// `ssl put`.
#[derive(clap::Args, Debug)]
pub struct SslPut {
    /// The certificate's ID.
    pub id: String,
    /// The PEM certificate chain file (`--cert` is the CLI's own TLS certificate).
    #[arg(long = "ssl-cert", value_name = "FILE")]
    pub cert: Option<String>,
    /// The PEM private key file.
    #[arg(long = "ssl-key", value_name = "FILE")]
    pub key: Option<String>,
    /// A name it serves: exact or `*.example.com` (repeatable).
    #[arg(long = "sni", value_name = "NAME")]
    pub snis: Vec<String>,
    #[command(flatten)]
    pub body: Body,
}

/// `plugin-config put`, `global-rule put`, `consumer-group put`.
#[derive(clap::Args, Debug)]
pub struct PluginSetPut {
    /// The ID.
    pub id: String,
    /// The plugins, as a JSON object (APISIX's shape: `{"limit-count": {...}}`).
    #[arg(long)]
    pub plugins: Option<String>,
    /// A description.
    #[arg(long)]
    pub desc: Option<String>,
    #[command(flatten)]
    pub body: Body,
}

/// An ID argument.
#[derive(clap::Args, Debug)]
pub struct Id {
    /// The ID (a consumer's user name).
    pub id: String,
}

/// `rm`.
#[derive(clap::Args, Debug)]
pub struct Rm {
    /// The ID (a consumer's user name).
    pub id: String,
    /// Delete even when a route or service still uses it.
    #[arg(long)]
    pub force: bool,
}

macro_rules! verbs {
    ($name:ident, $put:ty, $what:literal) => {
        #[doc = concat!("`berth ", $what, " <verb>`.")]
        #[derive(clap::Subcommand, Debug)]
        pub enum $name {
            #[doc = concat!("Create or replace a ", $what, ".")]
            Put(Box<$put>),
            #[doc = concat!("Show a ", $what, ".")]
            Get(Id),
            #[doc = concat!("List the ", $what, "s.")]
            Ls,
            #[doc = concat!("Delete a ", $what, ".")]
            Rm(Rm),
        }
    };
}

verbs!(RouteCommand, RoutePut, "route");
verbs!(UpstreamCommand, UpstreamPut, "upstream");
verbs!(ServiceCommand, ServicePut, "service");
verbs!(ConsumerCommand, ConsumerPut, "consumer");
verbs!(SslCommand, SslPut, "ssl");
/// `berth plugin-config|global-rule|consumer-group <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum PluginSetCommand {
    /// Create or replace one.
    Put(Box<PluginSetPut>),
    /// Show one.
    Get(Id),
    /// List them.
    Ls,
    /// Delete one.
    Rm(Rm),
}

/// The verbs every kind shares, with the kind's put body built.
enum Verb {
    Put(String, Map<String, Value>),
    Get(String),
    Ls,
    Rm(String, bool),
}

fn set(m: &mut Map<String, Value>, key: &str, v: Option<Value>) {
    if let Some(v) = v {
        m.insert(key.to_string(), v);
    }
}

fn list(v: &[String]) -> Option<Value> {
    (!v.is_empty()).then(|| json!(v))
}

/// Runs `berth route ...`.
pub async fn route(ctx: &mut Ctx, c: RouteCommand) -> Result<()> {
    let verb = match c {
        RouteCommand::Put(p) => {
            let mut m = p.body.read()?;
            match p.uris.as_slice() {
                [] => {}
                [one] => {
                    m.remove("uris");
                    m.insert("uri".into(), json!(one));
                }
                many => {
                    m.remove("uri");
                    m.insert("uris".into(), json!(many));
                }
            }
            if !p.hosts.is_empty() {
                m.remove("host");
            }
            set(&mut m, "hosts", list(&p.hosts));
            set(&mut m, "methods", list(&p.methods));
            set(&mut m, "upstream_id", p.upstream_id.map(Value::from));
            set(&mut m, "service_id", p.service_id.map(Value::from));
            set(&mut m, "priority", p.priority.map(Value::from));
            set(&mut m, "name", p.name.map(Value::from));
            if p.websocket {
                m.insert("enable_websocket".into(), json!(true));
            }
            set(&mut m, "upstream", p.nodes.upstream()?.map(Value::Object));
            Verb::Put(p.id, m)
        }
        RouteCommand::Get(i) => Verb::Get(i.id),
        RouteCommand::Ls => Verb::Ls,
        RouteCommand::Rm(r) => Verb::Rm(r.id, r.force),
    };
    run(ctx, "routes", verb).await
}

/// Runs `berth upstream ...`.
pub async fn upstream(ctx: &mut Ctx, c: UpstreamCommand) -> Result<()> {
    let verb = match c {
        UpstreamCommand::Put(p) => {
            let mut m = p.body.read()?;
            if let Some(u) = p.nodes.upstream()? {
                if u.contains_key("nodes") {
                    m.remove("service_name");
                    m.remove("discovery_type");
                }
                if u.contains_key("service_name") {
                    m.remove("nodes");
                }
                m.extend(u);
            }
            Verb::Put(p.id, m)
        }
        UpstreamCommand::Get(i) => Verb::Get(i.id),
        UpstreamCommand::Ls => Verb::Ls,
        UpstreamCommand::Rm(r) => Verb::Rm(r.id, r.force),
    };
    run(ctx, "upstreams", verb).await
}

/// Runs `berth service ...`.
pub async fn service(ctx: &mut Ctx, c: ServiceCommand) -> Result<()> {
    let verb = match c {
        ServiceCommand::Put(p) => {
            let mut m = p.body.read()?;
            set(&mut m, "upstream_id", p.upstream_id.map(Value::from));
            set(&mut m, "upstream", p.nodes.upstream()?.map(Value::Object));
            Verb::Put(p.id, m)
        }
        ServiceCommand::Get(i) => Verb::Get(i.id),
        ServiceCommand::Ls => Verb::Ls,
        ServiceCommand::Rm(r) => Verb::Rm(r.id, r.force),
    };
    run(ctx, "services", verb).await
}

/// Runs `berth consumer ...`.
pub async fn consumer(ctx: &mut Ctx, c: ConsumerCommand) -> Result<()> {
    let verb = match c {
        ConsumerCommand::Put(p) => {
            let mut m = p.body.read()?;
            m.insert("username".into(), json!(p.username));
            let plugins = m
                .entry("plugins")
                .or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(plugins) = plugins else {
                bail!("\"plugins\" must be an object");
            };
            if let Some(k) = p.key {
                plugins.insert("key-auth".into(), json!({ "key": k }));
            }
            if let Some(b) = p.basic {
                let Some((user, password)) = b.split_once(':') else {
                    bail!("--basic-auth takes user:password");
                };
                plugins.insert(
                    "basic-auth".into(),
                    json!({ "username": user, "password": password }),
                );
            }
            Verb::Put(p.username, m)
        }
        ConsumerCommand::Get(i) => Verb::Get(i.id),
        ConsumerCommand::Ls => Verb::Ls,
        ConsumerCommand::Rm(r) => Verb::Rm(r.id, r.force),
    };
    run(ctx, "consumers", verb).await
}

/// Runs `berth ssl ...`.
pub async fn ssl(ctx: &mut Ctx, c: SslCommand) -> Result<()> {
    let verb = match c {
        SslCommand::Put(p) => {
            let mut m = p.body.read()?;
            for (field, file) in [("cert", &p.cert), ("key", &p.key)] {
                if let Some(f) = file {
                    let pem = std::fs::read_to_string(f).with_context(|| format!("reading {f}"))?;
                    m.insert(field.into(), json!(pem));
                }
            }
            if !p.snis.is_empty() {
                m.remove("sni");
            }
            set(&mut m, "snis", list(&p.snis));
            Verb::Put(p.id, m)
        }
        SslCommand::Get(i) => Verb::Get(i.id),
        SslCommand::Ls => Verb::Ls,
        SslCommand::Rm(r) => Verb::Rm(r.id, r.force),
    };
    run(ctx, "ssls", verb).await
}

/// Runs `berth plugin-config|global-rule|consumer-group ...` on `kind`.
pub async fn plugin_set(ctx: &mut Ctx, kind: &'static str, c: PluginSetCommand) -> Result<()> {
    let verb = match c {
        PluginSetCommand::Put(p) => {
            let mut m = p.body.read()?;
            if let Some(plugins) = &p.plugins {
                let v: Value = serde_json::from_str(plugins).context("--plugins is not JSON")?;
                if !v.is_object() {
                    bail!("--plugins must be a JSON object");
                }
                m.insert("plugins".into(), v);
            }
            set(&mut m, "desc", p.desc.map(Value::from));
            Verb::Put(p.id, m)
        }
        PluginSetCommand::Get(i) => Verb::Get(i.id),
        PluginSetCommand::Ls => Verb::Ls,
        PluginSetCommand::Rm(r) => Verb::Rm(r.id, r.force),
    };
    run(ctx, kind, verb).await
}

/// What a list shows of each resource: its ID, name and what it matches or holds.
fn row(kind: &str, v: &Value) -> Vec<String> {
    let id = match kind {
        "consumers" => text(v, "username"),
        _ => text(v, "id"),
    };
    let what = match kind {
        "routes" => {
            let mut uris = strings(v, "uris");
            if let Some(u) = v.get("uri").and_then(Value::as_str) {
                uris.push(u.to_string());
            }
            let hosts = strings(v, "hosts").join(",");
            let to = ["upstream_id", "service_id"]
                .iter()
                .map(|k| text(v, k))
                .find(|t| !t.is_empty())
                .unwrap_or_else(|| {
                    if v.get("upstream").is_some() {
                        "inline".into()
                    } else {
                        String::new()
                    }
                });
            format!("{} {hosts} -> {to}", uris.join(","))
                .trim()
                .to_string()
        }
        "upstreams" => match v.get("nodes") {
            Some(Value::Object(n)) => n.keys().cloned().collect::<Vec<_>>().join(","),
            Some(Value::Array(n)) => n
                .iter()
                .map(|n| format!("{}:{}", text(n, "host"), text(n, "port")))
                .collect::<Vec<_>>()
                .join(","),
            _ => format!(
                "{} ({})",
                text(v, "service_name"),
                text(v, "discovery_type")
            ),
        },
        "ssls" => strings(v, "snis").join(","),
        _ => v
            .get("plugins")
            .and_then(Value::as_object)
            .map(|p| p.keys().cloned().collect::<Vec<_>>().join(","))
            .unwrap_or_default(),
    };
    vec![id, text(v, "name"), what]
}

async fn run(ctx: &mut Ctx, kind: &'static str, verb: Verb) -> Result<()> {
    let c = ctx.http.client()?;
    let singular = kind.trim_end_matches('s').replace('_', " ");
    let path = |id: &str| ApiPath::new("/apisix/admin").seg(kind).seg(id);
    match verb {
        Verb::Put(id, m) => {
            let v = c
                .call(Method::PUT, &path(&id), Some(&Value::Object(m)))
                .await?;
            let said = format!("{singular} {id} stored");
            ctx.out.print(&Done {
                text: said,
                json: v,
            })
        }
        Verb::Get(id) => {
            let v = c.get(&path(&id)).await?;
            let pretty = serde_json::to_string_pretty(&v["value"]).unwrap_or_default();
            let listing = Listing::new(
                v.clone(),
                &["ID", "NAME", "WHAT"],
                vec![row(kind, &v["value"])],
            )
            .with_lines(pretty.lines().map(str::to_string).collect());
            ctx.out.print(&listing)
        }
        Verb::Ls => {
            let v = c.get(&ApiPath::new("/apisix/admin").seg(kind)).await?;
            let rows: Vec<Vec<String>> = items(&v["list"])
                .iter()
                .map(|i| row(kind, &i["value"]))
                .collect();
            let lines = rows
                .iter()
                .map(|r| r.join(" ").trim().to_string())
                .collect();
            ctx.out
                .print(&Listing::new(v, &["ID", "NAME", "WHAT"], rows).with_lines(lines))
        }
        Verb::Rm(id, force) => {
            let target = if force {
                path(&id).query("force", "true")
            } else {
                path(&id)
            };
            let v = c.call(Method::DELETE, &target, None).await?;
            ctx.out.print(&Done {
                text: format!("{singular} {id} deleted"),
                json: v,
            })
        }
    }
}
