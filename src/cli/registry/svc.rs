//! `berth svc`: register and deregister services on the agent (`/v1/agent/service/*`), list
//! and show them from the catalog (`/v1/catalog/*`), and show their health
//! (`/v1/health/service/<name>`).

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use serde_json::{json, Map, Value};

use super::http::ApiPath;
use super::{aggregate, host_port, items, strings, text, Done, Listing};
use crate::cli::Ctx;

/// `berth svc <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum SvcCommand {
    /// Register a service instance (with at most one check) on the agent.
    Register(Box<RegisterArgs>),
    /// Deregister a service instance from the agent by its ID.
    Deregister {
        /// The instance's ID (its name when registered without --id).
        id: String,
    },
    /// List the catalog's services and their tags.
    Ls,
    /// Show the instances of a service.
    Show {
        /// The service name.
        name: String,
    },
    /// Show the health of a service's instances.
    Health {
        /// The service name.
        name: String,
        /// Only instances whose checks all pass.
        #[arg(long)]
        passing: bool,
        /// Only instances with this tag (repeatable: all must match).
        #[arg(long = "tag", value_name = "TAG")]
        tags: Vec<String>,
    },
}

/// `svc register`: the service and its optional check.
#[derive(clap::Args, Debug)]
#[command(group(
    clap::ArgGroup::new("check").args(["ttl", "http", "tcp", "grpc"]).multiple(false)
))]
#[command(group(
    clap::ArgGroup::new("active").args(["http", "tcp", "grpc"]).multiple(false)
))]
pub struct RegisterArgs {
    /// The service name.
    pub name: String,
    /// The instance ID (default: the name).
    #[arg(long)]
    pub id: Option<String>,
    /// The instance's address (default: the node's).
    #[arg(long)]
    pub address: Option<String>,
    /// The instance's port.
    #[arg(long)]
    pub port: Option<u16>,
    /// A tag (repeatable).
    #[arg(long = "tag", value_name = "TAG")]
    pub tags: Vec<String>,
    /// Metadata as key=value (repeatable).
    #[arg(long = "meta", value_name = "KEY=VALUE", value_parser = parse_meta)]
    pub meta: Vec<(String, String)>,
    /// A TTL check: the service reports with `check pass|warn|fail` within this period.
    #[arg(long, value_parser = duration_text)]
    pub ttl: Option<String>,
    /// An HTTP check: GET this URL every --interval (2xx passes, 429 warns).
    #[arg(long, value_name = "URL", requires = "interval")]
    pub http: Option<String>,
    /// A TCP check: connect to host:port every --interval.
    #[arg(long, value_name = "HOST:PORT", requires = "interval")]
    pub tcp: Option<String>,
    /// A gRPC health check: call host:port[/service] every --interval.
    #[arg(long, value_name = "HOST:PORT[/SERVICE]", requires = "interval")]
    pub grpc: Option<String>,
    /// How often an HTTP, TCP or gRPC check runs.
    #[arg(long, value_parser = duration_text, requires = "active")]
    pub interval: Option<String>,
    /// How long one run of an HTTP, TCP or gRPC check may take.
    #[arg(long, value_parser = duration_text, requires = "active")]
    pub timeout: Option<String>,
    /// Deregister the service after its check has been critical this long.
    #[arg(long, value_parser = duration_text, requires = "check")]
    pub deregister_after: Option<String>,
}

/// Checks a Go duration (`30s`, `1m30s`) and keeps it as written, which Consul reads.
fn duration_text(s: &str) -> Result<String, String> {
    crate::cli::parse_duration(s).map(|_| s.trim().to_string())
}

/// `key=value` for `--meta`.
fn parse_meta(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected key=value, got {s:?}")),
    }
}

impl RegisterArgs {
    /// The instance ID the agent will use.
    fn instance_id(&self) -> &str {
        self.id.as_deref().unwrap_or(&self.name)
    }

    /// The registration body (`PUT /v1/agent/service/register`).
    pub fn body(&self) -> Value {
        let mut svc = Map::new();
        svc.insert("Name".into(), json!(self.name));
        if let Some(id) = &self.id {
            svc.insert("ID".into(), json!(id));
        }
        if let Some(a) = &self.address {
            svc.insert("Address".into(), json!(a));
        }
        if let Some(p) = self.port {
            svc.insert("Port".into(), json!(p));
        }
        if !self.tags.is_empty() {
            svc.insert("Tags".into(), json!(self.tags));
        }
        if !self.meta.is_empty() {
            let meta: BTreeMap<&str, &str> = self
                .meta
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            svc.insert("Meta".into(), json!(meta));
        }
        let mut check = Map::new();
        let kinds = [
            ("TTL", &self.ttl),
            ("HTTP", &self.http),
            ("TCP", &self.tcp),
            ("GRPC", &self.grpc),
            ("Interval", &self.interval),
            ("Timeout", &self.timeout),
            ("DeregisterCriticalServiceAfter", &self.deregister_after),
        ];
        for (key, v) in kinds {
            if let Some(v) = v {
                check.insert(key.into(), json!(v));
            }
        }
        if !check.is_empty() {
            svc.insert("Check".into(), Value::Object(check));
        }
        Value::Object(svc)
    }

    fn has_check(&self) -> bool {
        self.ttl.is_some() || self.http.is_some() || self.tcp.is_some() || self.grpc.is_some()
    }
}

/// Runs one `svc` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: SvcCommand) -> Result<()> {
    let c = ctx.http.client()?;
    match cmd {
        SvcCommand::Register(args) => {
            if args.name.is_empty() {
                bail!("the service name is empty");
            }
            c.put(
                &ApiPath::new("/v1/agent/service/register"),
                Some(&args.body()),
            )
            .await?;
            let id = args.instance_id();
            // Consul names a service's only check `service:<id>`.
            let check = args.has_check().then(|| format!("service:{id}"));
            let text = match &check {
                Some(cid) => format!("Registered service: {} (ID {id}, check {cid})", args.name),
                None => format!("Registered service: {} (ID {id})", args.name),
            };
            let mut j = json!({"ID": id, "Service": args.name});
            if let (Some(cid), Some(o)) = (check, j.as_object_mut()) {
                o.insert("CheckID".into(), json!(cid));
            }
            ctx.out.print(&Done { text, json: j })
        }
        SvcCommand::Deregister { id } => {
            c.put(&ApiPath::new("/v1/agent/service/deregister").seg(&id), None)
                .await?;
            ctx.out.print(&Done {
                text: format!("Deregistered service: {id}"),
                json: json!({"ID": id}),
            })
        }
        SvcCommand::Ls => {
            let v = c.get(&ApiPath::new("/v1/catalog/services")).await?;
            ctx.out.print(&services(v))
        }
        SvcCommand::Show { name } => {
            let v = c
                .get(&ApiPath::new("/v1/catalog/service").seg(&name))
                .await?;
            ctx.out.print(&instances(v))
        }
        SvcCommand::Health {
            name,
            passing,
            tags,
        } => {
            let mut path = ApiPath::new("/v1/health/service")
                .seg(&name)
                .flag("passing", passing);
            for t in &tags {
                path = path.query("tag", t);
            }
            let v = c.get(&path).await?;
            ctx.out.print(&health(v))
        }
    }
}

/// `/v1/catalog/services` (`{"name": ["tag", ..]}`): `name tag1,tag2` per line.
fn services(v: Value) -> Listing {
    let rows: Vec<Vec<String>> = v
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(name, tags)| {
                    let tags: Vec<&str> = items(tags).iter().filter_map(Value::as_str).collect();
                    vec![name.clone(), tags.join(",")]
                })
                .collect()
        })
        .unwrap_or_default();
    let lines = rows
        .iter()
        .map(|r| r.join(" ").trim_end().to_string())
        .collect();
    Listing::new(v, &["NAME", "TAGS"], rows).with_lines(lines)
}

/// `/v1/catalog/service/<name>`: one row per instance.
fn instances(v: Value) -> Listing {
    let rows = items(&v)
        .iter()
        .map(|i| {
            let mut host = text(i, "ServiceAddress");
            if host.is_empty() {
                host = text(i, "Address");
            }
            vec![
                text(i, "Node"),
                text(i, "ServiceID"),
                host_port(&host, &text(i, "ServicePort")),
                strings(i, "ServiceTags").join(","),
            ]
        })
        .collect();
    Listing::new(v, &["NODE", "ID", "ADDRESS", "TAGS"], rows)
}

/// `/v1/health/service/<name>`: one row per instance with its aggregated status.
fn health(v: Value) -> Listing {
    let rows = items(&v)
        .iter()
        .map(|e| {
            let null = Value::Null;
            let node = e.get("Node").unwrap_or(&null);
            let svc = e.get("Service").unwrap_or(&null);
            let checks = e.get("Checks").map(items).unwrap_or_default();
            let mut host = text(svc, "Address");
            if host.is_empty() {
                host = text(node, "Address");
            }
            let statuses: Vec<String> = checks.iter().map(|c| text(c, "Status")).collect();
            vec![
                text(node, "Node"),
                text(svc, "ID"),
                host_port(&host, &text(svc, "Port")),
                aggregate(statuses.iter().map(String::as_str)).to_string(),
                checks.len().to_string(),
            ]
        })
        .collect();
    Listing::new(v, &["NODE", "ID", "ADDRESS", "STATUS", "CHECKS"], rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::{printed, Format};
    use crate::cli::{Command, TestCli};
    use clap::Parser;

    fn register(args: &[&str]) -> Result<RegisterArgs, clap::Error> {
        let argv = ["berth", "svc", "register"].iter().chain(args);
        match TestCli::try_parse_from(argv)?.cmd {
            Command::Svc(SvcCommand::Register(a)) => Ok(*a),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn register_body_carries_service_and_check() {
        let a = register(&[
            "web",
            "--id",
            "web1",
            "--port",
            "8080",
            "--tag",
            "a",
            "--tag",
            "b",
            "--meta",
            "v=1=2",
            "--http",
            "http://x/h",
            "--interval",
            "10s",
            "--timeout",
            "2s",
            "--deregister-after",
            "1m",
        ]);
        let body = a.map(|a| a.body()).ok();
        assert_eq!(
            body,
            Some(json!({
                "Name": "web", "ID": "web1", "Port": 8080, "Tags": ["a", "b"],
                "Meta": {"v": "1=2"},
                "Check": {"HTTP": "http://x/h", "Interval": "10s", "Timeout": "2s",
                          "DeregisterCriticalServiceAfter": "1m"},
            }))
        );
        let ttl = register(&["db", "--ttl", "30s"]).map(|a| a.body()).ok();
        assert_eq!(ttl, Some(json!({"Name": "db", "Check": {"TTL": "30s"}})));
    }

    #[test]
    fn register_refuses_mixed_or_incomplete_checks() {
        for bad in [
            &[
                "web",
                "--ttl",
                "30s",
                "--http",
                "http://x",
                "--interval",
                "1s",
            ][..],
            &["web", "--http", "http://x"],
            &["web", "--tcp", "a:1", "--grpc", "a:2", "--interval", "1s"],
            &["web", "--ttl", "30s", "--interval", "1s"],
            &["web", "--deregister-after", "1m"],
            &["web", "--ttl", "30"],
            &["web", "--meta", "novalue"],
            &["web", "--port", "70000"],
        ] {
            assert!(register(bad).is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn lists_print_in_every_format() {
        let v = json!({"consul": [], "web": ["primary", "v1"]});
        assert_eq!(
            printed(Format::Simple, &services(v.clone())),
            "consul\nweb primary,v1\n"
        );
        assert_eq!(
            printed(Format::Json, &services(v.clone())),
            format!("{v}\n")
        );
        let table = printed(Format::Table, &services(v));
        assert!(table.contains("|    web | primary,v1 |"), "{table}");

        let entries = json!([{
            "Node": {"Node": "n1", "Address": "10.0.0.1"},
            "Service": {"ID": "web1", "Address": "", "Port": 80},
            "Checks": [{"Status": "passing"}, {"Status": "warning"}],
        }]);
        assert_eq!(
            printed(Format::Simple, &health(entries)),
            "n1, web1, 10.0.0.1:80, warning, 2\n"
        );
        let inst = json!([{"Node": "n1", "Address": "10.0.0.1", "ServiceID": "web1",
            "ServiceAddress": "10.0.0.9", "ServicePort": 81, "ServiceTags": ["a", "b"]}]);
        assert_eq!(
            printed(Format::Simple, &instances(inst)),
            "n1, web1, 10.0.0.9:81, a,b\n"
        );
    }
}
