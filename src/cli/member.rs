//! `berth member list`: prints the cluster's members (ID, status, name, peer and client
//! addresses, learner flag) as etcdctl's `member list` does.

use anyhow::Result;

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
            ctx.out.member_list(&resp)
        }
    }
}
