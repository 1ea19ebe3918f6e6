//! `berth check`: list health checks (`/v1/health/checks/<service>`,
//! `/v1/health/state/<state>`) and report a TTL check's status to the agent
//! (`/v1/agent/check/{pass,warn,fail}/<id>`).

use anyhow::Result;
use serde_json::{json, Value};

use super::http::ApiPath;
use super::{items, text, Done, Listing};
use crate::cli::Ctx;

/// A state `check ls --state` filters on (`any` is every check).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum State {
    /// Every check.
    Any,
    /// Passing checks.
    Passing,
    /// Warning checks.
    Warning,
    /// Critical checks.
    Critical,
}

impl State {
    fn as_str(self) -> &'static str {
        match self {
            State::Any => "any",
            State::Passing => "passing",
            State::Warning => "warning",
            State::Critical => "critical",
        }
    }
}

/// `berth check <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum CheckCommand {
    /// List checks: of one service, or in one state (default: every check).
    Ls {
        /// Only the checks of this service.
        #[arg(long, conflicts_with = "state")]
        service: Option<String>,
        /// Only checks in this state.
        #[arg(long, value_enum, default_value = "any")]
        state: State,
    },
    /// Mark a TTL check passing (and renew its TTL).
    Pass(Report),
    /// Mark a TTL check warning (and renew its TTL).
    Warn(Report),
    /// Mark a TTL check critical.
    Fail(Report),
}

/// A TTL check's report.
#[derive(clap::Args, Debug)]
pub struct Report {
    /// The check's ID (`service:<service ID>` for a check registered with `svc register`).
    pub id: String,
    /// A note stored as the check's output.
    #[arg(long)]
    pub note: Option<String>,
}

/// Runs one `check` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: CheckCommand) -> Result<()> {
    let c = ctx.http.client()?;
    let (verb, status, r) = match cmd {
        CheckCommand::Ls { service, state } => {
            let path = match &service {
                Some(s) => ApiPath::new("/v1/health/checks").seg(s),
                None => ApiPath::new("/v1/health/state").seg(state.as_str()),
            };
            let v = c.get(&path).await?;
            return ctx.out.print(&checks(v));
        }
        CheckCommand::Pass(r) => ("pass", "passing", r),
        CheckCommand::Warn(r) => ("warn", "warning", r),
        CheckCommand::Fail(r) => ("fail", "critical", r),
    };
    let path = ApiPath::new("/v1/agent/check")
        .seg(verb)
        .seg(&r.id)
        .query_opt("note", r.note.as_deref());
    c.put(&path, None).await?;
    ctx.out.print(&Done {
        text: format!("Check {} is {status}", r.id),
        json: json!({"CheckID": r.id, "Status": status}),
    })
}

/// A list of `HealthCheck`s: one row per check.
fn checks(v: Value) -> Listing {
    let rows = items(&v)
        .iter()
        .map(|c| {
            vec![
                text(c, "Node"),
                text(c, "CheckID"),
                text(c, "Name"),
                text(c, "Status"),
                text(c, "ServiceID"),
                text(c, "Type"),
            ]
        })
        .collect();
    Listing::new(
        v,
        &["NODE", "CHECK ID", "NAME", "STATUS", "SERVICE ID", "TYPE"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::{printed, Format};
    use crate::cli::TestCli;
    use clap::Parser;

    #[test]
    fn checks_print_one_row_each() {
        let v = json!([{"Node": "n1", "CheckID": "service:web", "Name": "Service 'web' check",
            "Status": "critical", "ServiceID": "web", "Type": "ttl"}]);
        assert_eq!(
            printed(Format::Simple, &checks(v)),
            "n1, service:web, Service 'web' check, critical, web, ttl\n"
        );
    }

    #[test]
    fn service_and_state_exclude_each_other() {
        let parse = |a: &[&str]| TestCli::try_parse_from(["berth", "check"].iter().chain(a));
        assert!(parse(&["ls", "--service", "web", "--state", "passing"]).is_err());
        assert!(parse(&["ls", "--state", "bogus"]).is_err());
        assert!(parse(&["ls", "--service", "web"]).is_ok());
        assert!(parse(&["pass", "service:web", "--note", "ok"]).is_ok());
    }
}
