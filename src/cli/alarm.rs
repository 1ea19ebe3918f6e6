//! `berth alarm list|disarm`: shows the cluster's raised alarms (NOSPACE, CORRUPT) or clears
//! them all, printing each as etcdctl does.

use anyhow::Result;
use berth_proto::etcdserverpb::{alarm_request::AlarmAction, AlarmRequest, AlarmResponse};

use super::Ctx;

/// `berth alarm <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum AlarmCommand {
    /// List all raised alarms.
    List,
    /// Clear every raised alarm.
    Disarm,
}

/// Runs one `alarm` subcommand.
pub async fn run(ctx: &mut Ctx, cmd: AlarmCommand) -> Result<()> {
    let mut c = ctx.conn.maintenance().await?;
    let get = AlarmRequest {
        action: AlarmAction::Get as i32,
        member_id: 0,
        alarm: 0,
    };
    let listed = ctx.conn.call(c.alarm(get)).await?;
    match cmd {
        AlarmCommand::List => ctx.out.alarms(&listed),
        AlarmCommand::Disarm => {
            // As clientv3's AlarmDisarm with no member: deactivate each listed alarm.
            let mut cleared = AlarmResponse {
                header: listed.header,
                alarms: Vec::new(),
            };
            for a in &listed.alarms {
                let resp = ctx
                    .conn
                    .call(c.alarm(AlarmRequest {
                        action: AlarmAction::Deactivate as i32,
                        member_id: a.member_id,
                        alarm: a.alarm,
                    }))
                    .await?;
                cleared.header = resp.header;
                cleared.alarms.extend(resp.alarms);
            }
            ctx.out.alarms(&cleared)
        }
    }
}
