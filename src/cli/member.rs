//! `berth member list`: prints the cluster's members (ID, status, name, peer and client
//! addresses, learner flag) as etcdctl's `member list` does.

use std::io::{self, Write};

use anyhow::Result;
use berth_proto::etcdserverpb::{Member, MemberListResponse};
use serde_json::Value;

use super::output::json::{opt_header, Obj};
use super::output::{Render, Rows};
use super::Ctx;

/// `berth member <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum MemberCommand {
    /// List the cluster's members.
    List,
}

/// Runs one `member` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: MemberCommand) -> Result<()> {
    match cmd {
        MemberCommand::List => {
            let resp = ctx.conn.member_list().await?;
            ctx.out.print(&resp)
        }
    }
}

/// `member list`: one row per member.
impl Render for MemberListResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        rows(self).simple(out)
    }

    fn json(&self) -> Value {
        Obj::new()
            .opt("header", opt_header(self.header.as_ref()))
            .list("members", self.members.iter().map(member_json).collect())
            .build()
    }

    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        rows(self).table(out)
    }
}

fn rows(r: &MemberListResponse) -> Rows<'static> {
    const HEADER: &[&str] = &[
        "ID",
        "STATUS",
        "NAME",
        "PEER ADDRS",
        "CLIENT ADDRS",
        "IS LEARNER",
    ];
    Rows::new(HEADER, r.members.iter().map(member_row).collect())
}

fn member_row(m: &Member) -> Vec<String> {
    let status = if m.name.is_empty() {
        "unstarted"
    } else {
        "started"
    };
    vec![
        format!("{:x}", m.id),
        status.to_string(),
        m.name.clone(),
        m.peer_ur_ls.join(","),
        m.client_ur_ls.join(","),
        m.is_learner.to_string(),
    ]
}

fn member_json(m: &Member) -> Value {
    let urls = |v: &[String]| v.iter().map(|s| Value::from(s.as_str())).collect();
    Obj::new()
        .num("ID", m.id)
        .str("name", &m.name)
        .list("peerURLs", urls(&m.peer_ur_ls))
        .list("clientURLs", urls(&m.client_ur_ls))
        .flag("isLearner", m.is_learner)
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::output::json::test_header;
    use berth_proto::etcdserverpb::ResponseHeader;

    // Expected string captured from etcdctl 3.4 against etcd 3.4.
    #[test]
    fn member_list_matches_etcdctl() {
        let r = MemberListResponse {
            header: Some(ResponseHeader {
                revision: 0,
                ..test_header(0).unwrap_or_default()
            }),
            members: vec![Member {
                id: 10276657743932975437,
                name: "default".into(),
                peer_ur_ls: vec!["http://localhost:2380".into()],
                client_ur_ls: vec!["http://127.0.0.1:23791".into()],
                is_learner: false,
            }],
        };
        assert_eq!(
            r.json().to_string(),
            r#"{"header":{"cluster_id":14841639068965178418,"member_id":10276657743932975437,"raft_term":2},"members":[{"ID":10276657743932975437,"name":"default","peerURLs":["http://localhost:2380"],"clientURLs":["http://127.0.0.1:23791"]}]}"#
        );
    }
}
