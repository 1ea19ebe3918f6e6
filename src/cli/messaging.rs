//! `berth pub|sub|req`: core NATS from the command line, in the style of the `nats` CLI,
//! through the Rust NATS client to `--nats-url` (berth's NATS listener or a nats-server).
//! `--user name:password` logs in as a berth user.
//!
//! Bodies may carry `{{Count}}` (the message's number, from 1) and `{{Time}}` (RFC 3339), as
//! the `nats` CLI's templates do. A received message prints as the `nats` CLI prints it
//! (`[#n] Received on "subject"`, headers, a blank line, the body), or as one JSON object per
//! line with `-w json`.

use std::io::Write;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use async_nats::{HeaderMap, Message};
use futures::StreamExt;
use serde_json::json;

use super::output::{go_duration, lossy, Render};
use super::Ctx;

/// Where and as whom the messaging commands connect.
#[derive(Debug, Clone)]
pub struct NatsTarget {
    /// `nats://host:port` (several, comma-separated: the client picks one and fails over).
    pub url: String,
    /// `--user` and `--password`, when given.
    pub user: Option<(String, String)>,
    /// How long connecting may take.
    pub dial_timeout: Duration,
    /// `--cacert`, `--cert` and `--key`, when given: TLS for `tls://` URLs (the CA to trust,
    /// and a client certificate for servers that ask for one).
    pub tls: Option<berth_net::tls::TlsSettings>,
}

impl NatsTarget {
    pub(crate) async fn connect(&self) -> Result<async_nats::Client> {
        let mut opts = async_nats::ConnectOptions::new()
            .name("berth")
            .connection_timeout(self.dial_timeout);
        if let Some((user, password)) = &self.user {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        if let Some(tls) = &self.tls {
            if let Some(ca) = &tls.trusted_ca_file {
                opts = opts.add_root_certificates(ca.clone());
            }
            if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
                opts = opts.add_client_certificate(cert.clone(), key.clone());
            }
        }
        let urls: Vec<&str> = self.url.split(',').map(str::trim).collect();
        let addrs = urls
            .iter()
            .map(|u| u.parse::<async_nats::ServerAddr>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| anyhow!("bad --nats-url {:?}: {e}", self.url))?;
        opts.connect(addrs)
            .await
            .with_context(|| format!("connecting to NATS at {}", self.url))
    }
}

/// `-H name:value` headers.
fn headers(pairs: &[String]) -> Result<Option<HeaderMap>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut map = HeaderMap::new();
    for p in pairs {
        let (name, value) = p
            .split_once(':')
            .ok_or_else(|| anyhow!("bad header {p:?}: use -H name:value"))?;
        let name = name.trim();
        if name.is_empty() {
            bail!("bad header {p:?}: the name is empty");
        }
        map.append(name, value.trim());
    }
    Ok(Some(map))
}

/// A body with its templates filled in for message `n`.
fn body(template: &str, n: u64) -> String {
    let mut b = template.replace("{{Count}}", &n.to_string());
    if b.contains("{{Time}}") {
        b = b.replace(
            "{{Time}}",
            &humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
        );
    }
    b
}

/// Arguments of `pub`.
#[derive(clap::Args, Debug)]
pub struct PubArgs {
    /// The subject to publish to.
    pub subject: String,
    /// The message body (`{{Count}}` and `{{Time}}` are filled in).
    #[arg(default_value = "")]
    pub body: String,
    /// A header, `name:value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub header: Vec<String>,
    /// The reply subject to send with the message.
    #[arg(long)]
    pub reply: Option<String>,
    /// How many messages to publish.
    #[arg(long, default_value_t = 1)]
    pub count: u64,
}

/// Arguments of `sub`.
#[derive(clap::Args, Debug)]
pub struct SubArgs {
    /// The subject (wildcards `*` and `>` allowed) to subscribe to.
    pub subject: String,
    /// Join this queue group (each message goes to one member of the group).
    #[arg(long)]
    pub queue: Option<String>,
    /// Exit after this many messages (0: run until interrupted).
    #[arg(long, default_value_t = 0)]
    pub count: u64,
    /// Exit after this long without a message (e.g. `5s`; default: wait forever).
    #[arg(long, value_parser = super::parse_duration)]
    pub timeout: Option<Duration>,
}

/// Arguments of `req`.
#[derive(clap::Args, Debug)]
pub struct ReqArgs {
    /// The subject to send the request to.
    pub subject: String,
    /// The request body (`{{Count}}` and `{{Time}}` are filled in).
    #[arg(default_value = "")]
    pub body: String,
    /// A header, `name:value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub header: Vec<String>,
    /// How long to wait for the reply.
    #[arg(long, default_value = "5s", value_parser = super::parse_duration)]
    pub timeout: Duration,
}

/// Runs `pub`: publishes and waits until the server has taken every message.
pub async fn publish(ctx: &mut Ctx, args: PubArgs) -> Result<()> {
    let client = ctx.nats.connect().await?;
    let headers = headers(&args.header)?;
    let mut bytes = 0;
    for n in 1..=args.count {
        let payload = body(&args.body, n);
        bytes += payload.len();
        let subject = args.subject.clone();
        let sent = match (&args.reply, &headers) {
            (Some(r), Some(h)) => {
                client
                    .publish_with_reply_and_headers(subject, r.clone(), h.clone(), payload.into())
                    .await
            }
            (Some(r), None) => {
                client
                    .publish_with_reply(subject, r.clone(), payload.into())
                    .await
            }
            (None, Some(h)) => {
                client
                    .publish_with_headers(subject, h.clone(), payload.into())
                    .await
            }
            (None, None) => client.publish(subject, payload.into()).await,
        };
        sent.with_context(|| format!("publishing to {:?}", args.subject))?;
    }
    client.flush().await.context("flushing to the server")?;
    let what = if args.count == 1 {
        format!("{bytes} bytes")
    } else {
        format!("{} messages ({bytes} bytes)", args.count)
    };
    ctx.out
        .line(&format!("Published {what} to {:?}", args.subject))
}

/// Runs `sub`: prints each message as it comes.
pub async fn subscribe(ctx: &mut Ctx, args: SubArgs) -> Result<()> {
    let client = ctx.nats.connect().await?;
    let mut sub = match &args.queue {
        Some(q) => client
            .queue_subscribe(args.subject.clone(), q.clone())
            .await
            .context("subscribing")?,
        None => client
            .subscribe(args.subject.clone())
            .await
            .context("subscribing")?,
    };
    client.flush().await.context("flushing to the server")?;
    let group = args
        .queue
        .as_deref()
        .map_or(String::new(), |q| format!(" in queue group {q:?}"));
    eprintln!("Subscribing on {:?}{group}", args.subject);
    let mut n = 0;
    loop {
        let next = match args.timeout {
            Some(t) => match tokio::time::timeout(t, sub.next()).await {
                Ok(m) => m,
                Err(_) => bail!("no message on {:?} within {t:?}", args.subject),
            },
            None => sub.next().await,
        };
        let Some(msg) = next else {
            bail!("the subscription ended (connection closed)");
        };
        n += 1;
        ctx.out.print(&Received {
            n,
            msg: &msg,
            rtt: None,
        })?;
        if args.count != 0 && n >= args.count {
            return Ok(());
        }
    }
}

/// Runs `req`: sends one request and prints its reply.
pub async fn request(ctx: &mut Ctx, args: ReqArgs) -> Result<()> {
    let client = ctx.nats.connect().await?;
    let mut req = async_nats::Request::new()
        .payload(body(&args.body, 1).into())
        .timeout(Some(args.timeout));
    if let Some(h) = headers(&args.header)? {
        req = req.headers(h);
    }
    let started = std::time::Instant::now();
    let reply = client
        .send_request(args.subject.clone(), req)
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => {
                anyhow!("no responders are available for {:?}", args.subject)
            }
            async_nats::RequestErrorKind::TimedOut => {
                anyhow!("no reply to {:?} within {:?}", args.subject, args.timeout)
            }
            _ => anyhow!("request to {:?}: {e}", args.subject),
        })?;
    ctx.out.print(&Received {
        n: 1,
        msg: &reply,
        rtt: Some(started.elapsed()),
    })
}

/// One received message, numbered.
pub struct Received<'a> {
    /// Its number since the command started.
    pub n: u64,
    /// The message.
    pub msg: &'a Message,
    /// For a reply: how long after the request it came.
    pub rtt: Option<Duration>,
}

impl Render for Received<'_> {
    fn simple(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let m = self.msg;
        match (&m.reply, self.rtt) {
            (_, Some(rtt)) => writeln!(out, "Received with rtt {}", go_duration(rtt))?,
            (Some(r), None) => writeln!(
                out,
                "[#{}] Received on {:?} with reply {:?}",
                self.n,
                m.subject.as_str(),
                r.as_str()
            )?,
            (None, None) => writeln!(out, "[#{}] Received on {:?}", self.n, m.subject.as_str())?,
        }
        if let Some(h) = m.headers.as_ref().filter(|h| !h.is_empty()) {
            for (name, values) in h.iter() {
                for v in values {
                    writeln!(out, "{name}: {}", v.as_str())?;
                }
            }
            writeln!(out)?;
        }
        out.write_all(&m.payload)?;
        writeln!(out)?;
        writeln!(out)
    }

    fn json(&self) -> serde_json::Value {
        let m = self.msg;
        let headers: serde_json::Map<String, serde_json::Value> = m
            .headers
            .iter()
            .flat_map(|h| h.iter())
            .map(|(name, values)| {
                let values: Vec<&str> = values.iter().map(|v| v.as_str()).collect();
                (name.to_string(), json!(values))
            })
            .collect();
        json!({
            "n": self.n,
            "subject": m.subject.as_str(),
            "reply": m.reply.as_ref().map(|r| r.as_str()),
            "headers": headers,
            "status": m.status.map(|s| s.as_u16()),
            "data": lossy(&m.payload),
            "size": m.payload.len(),
            "rtt_ns": self.rtt.map(|d| d.as_nanos() as u64),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::{printed, Format};

    fn message(headers: Option<HeaderMap>, reply: Option<&str>) -> Message {
        Message {
            subject: "orders.new".into(),
            reply: reply.map(Into::into),
            payload: "hello".into(),
            headers,
            status: None,
            description: None,
            length: 5,
        }
    }

    #[test]
    fn messages_print_as_the_nats_cli_prints_them() {
        let m = message(None, None);
        assert_eq!(
            printed(
                Format::Simple,
                &Received {
                    n: 3,
                    msg: &m,
                    rtt: None
                }
            ),
            "[#3] Received on \"orders.new\"\nhello\n\n"
        );
        let mut h = HeaderMap::new();
        h.append("Trace-Id", "abc");
        let m = message(Some(h), Some("_INBOX.1"));
        assert_eq!(
            printed(
                Format::Simple,
                &Received {
                    n: 1,
                    msg: &m,
                    rtt: None
                }
            ),
            "[#1] Received on \"orders.new\" with reply \"_INBOX.1\"\nTrace-Id: abc\n\nhello\n\n"
        );
        let j: serde_json::Value = serde_json::from_str(&printed(
            Format::Json,
            &Received {
                n: 1,
                msg: &m,
                rtt: None,
            },
        ))
        .expect("json");
        assert_eq!(j["headers"]["Trace-Id"], json!(["abc"]));
        assert_eq!(
            (j["data"].as_str(), j["size"].as_u64()),
            (Some("hello"), Some(5))
        );
    }

    #[test]
    fn headers_and_templates_are_read_as_the_nats_cli_reads_them() {
        let h = headers(&["A: 1".into(), "A:2".into(), "B:x:y".into()])
            .expect("headers")
            .expect("some");
        let a: Vec<&str> = h.get_all("A").map(|v| v.as_str()).collect();
        assert_eq!(a, ["1", "2"]);
        assert_eq!(h.get("B").map(|v| v.as_str()), Some("x:y"));
        assert!(headers(&["novalue".into()]).is_err());
        assert!(headers(&[":v".into()]).is_err());
        assert!(headers(&[]).expect("none").is_none());
        assert_eq!(body("msg {{Count}}", 7), "msg 7");
        assert!(body("{{Time}}", 1).starts_with("20"));
    }
}
