//! The client half of the `berth` binary: etcdctl-style commands speaking the etcd v3 gRPC API
//! to `--endpoints`, so they work against berth and against etcd itself, and registry commands
//! speaking Consul's HTTP API to `--http-addr`, so they work against berth and Consul.
//!
//! # Layout
//! - [`conn`]: endpoints, dialing, per-request timeouts and gRPC error mapping.
//! - [`output`]: the one printer (`simple|json|table`) every command writes through, and the
//!   [`Render`](output::Render) trait results implement to be printed.
//! - [`kv`]: `kv put|get|del|txn|watch`; [`compact`]: `compact`.
//! - [`lease`], [`member`], [`endpoint`], [`alarm`], [`defrag`], [`snapshot`]: one file per noun.
//! - [`bench`](mod@bench): `bench <workload>`, the load generator (the engine is the
//!   `berth-bench` crate).
//! - [`registry`]: `svc`, `check` and `session` over Consul's HTTP API.
//! - [`messaging`]: `pub`, `sub` and `req` over NATS's protocol; [`jetstream`]: `stream` and
//!   `consumer` over JetStream's API; [`kv_bucket`]: `kv-bucket` over the NATS client's
//!   key-value bucket API.
//! - [`gateway`]: `route`, `upstream`, `ssl`, `api-service` and `api-consumer` over APISIX's
//!   Admin API.
//! - [`role`]: `role show|grant|revoke`, roles' permissions in every keyspace, over berth's
//!   API.
//!
//! Each command file owns its clap arguments, an `async fn run(&mut Ctx, ..)` and the
//! [`Render`](output::Render) impls of what it prints; adding a command touches that file, its
//! `mod` line, and its variant of [`Command`] with the matching arm in `dispatch`.

pub mod alarm;
pub mod bench;
pub mod compact;
pub mod config;
pub mod conn;
pub mod defrag;
pub mod endpoint;
pub mod gateway;
pub mod jetstream;
pub mod kv;
pub mod kv_bucket;
pub mod lease;
pub mod member;
pub mod messaging;
pub mod output;
pub mod registry;
pub mod role;
pub mod snapshot;

use std::time::Duration;

use anyhow::Context as _;

use self::conn::Conn;
use self::output::{Format, Printer};

/// Options shared by every client command (etcdctl's global flags).
#[derive(clap::Args, Debug, Clone)]
pub struct GlobalOpts {
    /// gRPC endpoints, comma-separated, as `host:port` or `http://host:port`.
    #[arg(
        long,
        global = true,
        env = "BERTH_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: Vec<String>,
    /// Output format (table falls back to simple where a command has no table).
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        env = "BERTH_WRITE_OUT",
        value_enum,
        default_value = "simple"
    )]
    pub write_out: Format,
    /// Timeout for connecting to an endpoint (e.g. `2s`, `500ms`).
    #[arg(long, global = true, env = "BERTH_DIAL_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub dial_timeout: Duration,
    /// Timeout for one short request, dialing excluded (e.g. `5s`).
    #[arg(long, global = true, env = "BERTH_COMMAND_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub command_timeout: Duration,
    /// Verify TLS servers with this CA bundle (PEM).
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        env = "BERTH_CACERT"
    )]
    pub cacert: Option<std::path::PathBuf>,
    /// Present this client certificate (PEM) to TLS servers.
    #[arg(long = "cert", id = "tls_cert", global = true, env = "BERTH_CERT")]
    pub cert: Option<std::path::PathBuf>,
    /// The private key (PEM) of `--cert`.
    #[arg(long = "key", id = "tls_key", global = true, env = "BERTH_KEY")]
    pub key: Option<std::path::PathBuf>,
    /// Accept any TLS server certificate (no verification; for testing only).
    #[arg(long, global = true, env = "BERTH_INSECURE_SKIP_TLS_VERIFY")]
    pub insecure_skip_tls_verify: bool,
    /// Log in as `name:password` (or `name` with `--password`), as etcdctl's `--user`.
    #[arg(long, global = true, env = "BERTH_USER")]
    pub user: Option<String>,
    /// The password of `--user`.
    #[arg(long, global = true, env = "BERTH_PASSWORD")]
    pub password: Option<String>,
    /// Consul HTTP API address for `svc`, `check` and `session` (berth's HTTP listener or a
    /// Consul agent): `host:port`, `http://host:port` or `https://host:port`.
    #[arg(
        long,
        global = true,
        env = "CONSUL_HTTP_ADDR",
        default_value = "http://127.0.0.1:8500"
    )]
    pub http_addr: String,
    /// ACL token sent as `X-Consul-Token` by `svc`, `check` and `session`.
    #[arg(long, global = true, env = "CONSUL_HTTP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// NATS server for `pub`, `sub` and `req` (berth's NATS listener or a nats-server);
    /// several, comma-separated, to fail over.
    #[arg(
        long,
        global = true,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub nats_url: String,
}

impl GlobalOpts {
    /// The TLS settings the flags give, if any: `https://` endpoints use them, and so do
    /// endpoints written without a scheme when any is given.
    fn tls(&self) -> Option<berth_net::tls::TlsSettings> {
        let any = self.cacert.is_some()
            || self.cert.is_some()
            || self.key.is_some()
            || self.insecure_skip_tls_verify;
        any.then(|| berth_net::tls::TlsSettings {
            cert_file: self.cert.clone(),
            key_file: self.key.clone(),
            trusted_ca_file: self.cacert.clone(),
            insecure_skip_verify: self.insecure_skip_tls_verify,
            ..Default::default()
        })
    }
}

/// Client commands, flattened next to `berth server`.
#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Read and write keys: put, get, del, txn, watch.
    #[command(subcommand)]
    Kv(kv::KvCommand),
    /// Grant, revoke, keep alive and inspect leases.
    #[command(subcommand)]
    Lease(lease::LeaseCommand),
    /// Inspect cluster membership.
    #[command(subcommand)]
    Member(member::MemberCommand),
    /// Check the health, status and hashes of endpoints.
    #[command(subcommand)]
    Endpoint(endpoint::EndpointCommand),
    /// Discard the key-value history before a revision.
    Compact(compact::CompactArgs),
    /// Save a snapshot from a member, or restore one into a data directory.
    #[command(subcommand)]
    Snapshot(snapshot::SnapshotCommand),
    /// List or disarm alarms.
    #[command(subcommand)]
    Alarm(alarm::AlarmCommand),
    /// Defragment the storage of each endpoint.
    Defrag,
    /// Generate load against the endpoints and report throughput and latency.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Register, list and inspect services (Consul HTTP API at --http-addr).
    #[command(subcommand)]
    Svc(registry::svc::SvcCommand),
    /// List health checks and report TTL checks (Consul HTTP API at --http-addr).
    #[command(subcommand)]
    Check(registry::check::CheckCommand),
    /// Create, renew, inspect and destroy sessions (Consul HTTP API at --http-addr).
    #[command(subcommand)]
    Session(registry::session::SessionCommand),
    /// Configuration items: read, publish, history, diff, rollback, betas, listen, export,
    /// import (berth's API at --http-addr).
    #[command(subcommand)]
    Config(config::ConfigCommand),
    /// Gateway routes: put, get, ls, rm (APISIX's Admin API at --http-addr).
    #[command(subcommand)]
    Route(gateway::RouteCommand),
    /// Gateway upstreams: static nodes or a registry service (APISIX's Admin API at
    /// --http-addr).
    #[command(subcommand)]
    Upstream(gateway::UpstreamCommand),
    /// Gateway services: plugins and an upstream shared by routes (APISIX's Admin API).
    #[command(subcommand, name = "api-service")]
    ApiService(gateway::ServiceCommand),
    /// Gateway consumers: callers' credentials and plugins (APISIX's Admin API).
    #[command(subcommand, name = "api-consumer")]
    ApiConsumer(gateway::ConsumerCommand),
    /// Gateway certificates, served by SNI (APISIX's Admin API at --http-addr).
    #[command(subcommand)]
    Ssl(gateway::SslCommand),
    /// Gateway plugin configs: plugins routes take by plugin_config_id (APISIX's Admin API).
    #[command(subcommand, name = "plugin-config")]
    PluginConfig(gateway::PluginSetCommand),
    /// Gateway global rules: plugins run on every request (APISIX's Admin API).
    #[command(subcommand, name = "global-rule")]
    GlobalRule(gateway::PluginSetCommand),
    /// Gateway consumer groups: plugins consumers take by group_id (APISIX's Admin API).
    #[command(subcommand, name = "consumer-group")]
    ConsumerGroup(gateway::PluginSetCommand),
    /// Roles' permissions in every keyspace: show, grant, revoke (berth's API at
    /// --http-addr; etcdctl's role commands grant the user keyspace only).
    #[command(subcommand)]
    Role(role::RoleCommand),
    /// Publish a NATS message (at --nats-url).
    Pub(messaging::PubArgs),
    /// Subscribe to a NATS subject and print what arrives (at --nats-url).
    Sub(messaging::SubArgs),
    /// Send a NATS request and print the reply (at --nats-url).
    Req(messaging::ReqArgs),
    /// Manage JetStream streams: add, ls, info, rm, purge, get (at --nats-url).
    #[command(subcommand)]
    Stream(jetstream::StreamCommand),
    /// Manage JetStream consumers: add, ls, info, rm, next (at --nats-url).
    #[command(subcommand)]
    Consumer(jetstream::ConsumerCommand),
    /// JetStream key-value buckets: add, ls, info, rm, put, create, update, get, del, purge,
    /// keys, history, watch (at --nats-url).
    #[command(subcommand, name = "kv-bucket")]
    KvBucket(kv_bucket::KvBucketCommand),
}

/// What every command runs with: the connection settings and the printer.
pub struct Ctx {
    /// Endpoints and timeouts.
    pub conn: Conn,
    /// Where results go, in the chosen format.
    pub out: Printer,
    /// The Consul HTTP API the registry commands talk to.
    pub http: registry::http::Target,
    /// The NATS server the messaging commands talk to.
    pub nats: messaging::NatsTarget,
}

/// Runs one client command to completion on its own runtime (single-threaded, except for
/// `bench`).
pub fn run(global: GlobalOpts, cmd: Command) -> anyhow::Result<()> {
    let tls = global.tls();
    let tls_settings = tls.clone();
    let http = registry::http::Target {
        addr: global.http_addr,
        token: global.token,
        tls: tls.clone(),
        dial_timeout: global.dial_timeout,
        command_timeout: global.command_timeout,
    };
    let conn = Conn::new(
        global.endpoints,
        global.dial_timeout,
        global.command_timeout,
    )?
    .with_tls(tls)?
    .with_user(global.user, global.password)?;
    let nats = messaging::NatsTarget {
        url: global.nats_url,
        user: conn.user().cloned(),
        dial_timeout: global.dial_timeout,
        tls: tls_settings,
    };
    let mut ctx = Ctx {
        conn,
        nats,
        out: Printer::new(global.write_out, std::io::stdout()),
        http,
    };
    // Restore is offline: it must work with no server and needs no runtime.
    if let Command::Snapshot(snapshot::SnapshotCommand::Restore(args)) = &cmd {
        return snapshot::restore(&mut ctx, args);
    }
    // Commands send one request at a time; load generation needs every core.
    let mut builder = match cmd {
        Command::Bench(_) => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let rt = builder
        .enable_all()
        .build()
        .context("starting the client runtime")?;
    rt.block_on(dispatch(&mut ctx, cmd))
}

/// Runs one online command: each arm hands its arguments to the command's file.
async fn dispatch(ctx: &mut Ctx, cmd: Command) -> anyhow::Result<()> {
    // The commands that speak berth's HTTP APIs take a token: with `--user` and no `--token`,
    // they log in over the etcd API first, as the etcd commands do.
    let over_http = matches!(
        cmd,
        Command::Svc(_)
            | Command::Check(_)
            | Command::Session(_)
            | Command::Config(_)
            | Command::Route(_)
            | Command::Upstream(_)
            | Command::ApiService(_)
            | Command::ApiConsumer(_)
            | Command::Ssl(_)
            | Command::PluginConfig(_)
            | Command::GlobalRule(_)
            | Command::ConsumerGroup(_)
            | Command::Role(_)
    );
    if over_http && ctx.http.token.is_none() {
        ctx.http.token = ctx
            .conn
            .login()
            .await
            .context("logging in as --user (for a token the HTTP API takes)")?;
    }
    match cmd {
        Command::Kv(c) => kv::run(ctx, c).await,
        Command::Lease(c) => lease::run(ctx, c).await,
        Command::Member(c) => member::run(ctx, c).await,
        Command::Endpoint(c) => endpoint::run(ctx, c).await,
        Command::Compact(a) => compact::run(ctx, a).await,
        Command::Snapshot(c) => snapshot::run(ctx, c).await,
        Command::Alarm(c) => alarm::run(ctx, c).await,
        Command::Defrag => defrag::run(ctx).await,
        Command::Bench(c) => bench::run(ctx, c).await,
        Command::Svc(c) => registry::svc::run(ctx, c).await,
        Command::Check(c) => registry::check::run(ctx, c).await,
        Command::Session(c) => registry::session::run(ctx, c).await,
        Command::Config(c) => config::run(ctx, c).await,
        Command::Route(c) => gateway::route(ctx, c).await,
        Command::Upstream(c) => gateway::upstream(ctx, c).await,
        Command::ApiService(c) => gateway::service(ctx, c).await,
        Command::ApiConsumer(c) => gateway::consumer(ctx, c).await,
        Command::Ssl(c) => gateway::ssl(ctx, c).await,
        Command::PluginConfig(c) => gateway::plugin_set(ctx, "plugin_configs", c).await,
        Command::GlobalRule(c) => gateway::plugin_set(ctx, "global_rules", c).await,
        Command::ConsumerGroup(c) => gateway::plugin_set(ctx, "consumer_groups", c).await,
        Command::Role(c) => role::run(ctx, c).await,
        Command::Pub(a) => messaging::publish(ctx, a).await,
        Command::Sub(a) => messaging::subscribe(ctx, a).await,
        Command::Req(a) => messaging::request(ctx, a).await,
        Command::Stream(c) => jetstream::stream(ctx, c).await,
        Command::Consumer(c) => jetstream::consumer(ctx, c).await,
        Command::KvBucket(c) => kv_bucket::run(ctx, c).await,
    }
}

/// Parses a Go-style duration as etcdctl accepts it: `5s`, `1.5s`, `300ms`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("invalid duration {s:?} (use e.g. 5s, 500ms, 1m30s)");
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let num: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += num * scale;
    }
    Duration::try_from_secs_f64(total).map_err(|_| bad())
}

/// The command line as the binary parses it, for tests of argument parsing.
#[cfg(test)]
#[derive(clap::Parser)]
pub(crate) struct TestCli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub cmd: Command,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[test]
    fn cli_definition_is_consistent() {
        TestCli::command().debug_assert();
    }

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = TestCli::try_parse_from([
            "berth",
            "kv",
            "get",
            "foo",
            "-w",
            "json",
            "--endpoints",
            "a:1,http://b:2",
            "--command-timeout",
            "250ms",
        ]);
        let cli = cli.ok();
        assert_eq!(
            cli.as_ref().map(|c| c.global.endpoints.clone()),
            Some(vec!["a:1".to_string(), "http://b:2".to_string()])
        );
        assert_eq!(cli.as_ref().map(|c| c.global.write_out), Some(Format::Json));
        assert_eq!(
            cli.as_ref().map(|c| c.global.command_timeout),
            Some(Duration::from_millis(250))
        );
        assert!(matches!(cli.map(|c| c.cmd), Some(Command::Kv(_))));
        assert!(TestCli::try_parse_from(["berth", "lease", "timetolive", "1"]).is_ok());
    }

    #[test]
    fn parses_go_durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("5").is_err());
        assert!(parse_duration("5x").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
    }
}
