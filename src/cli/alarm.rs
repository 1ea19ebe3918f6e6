//! `berth alarm list|disarm`: shows the cluster's raised alarms (NOSPACE, CORRUPT) or clears
//! them all, printing each as etcdctl does.

use std::io::{self, Write};

use anyhow::Result;
use berth_proto::etcdserverpb::{
    alarm_request::AlarmAction, AlarmRequest, AlarmResponse, AlarmType,
};
use serde_json::Value;

use super::output::json::{opt_header, Obj};
use super::output::table::Table;
use super::output::Render;
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
        AlarmCommand::List => ctx.out.print(&listed),
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
            ctx.out.print(&cleared)
        }
    }
}

/// `alarm list` / `alarm disarm`: one `memberID:<id> alarm:<TYPE>` line per alarm.
impl Render for AlarmResponse {
    fn simple(&self, out: &mut dyn Write) -> io::Result<()> {
        for a in &self.alarms {
            writeln!(
                out,
                "memberID:{} alarm:{}",
                a.member_id,
                alarm_name(a.alarm)
            )?;
        }
        Ok(())
    }

    fn json(&self) -> Value {
        let alarms = self
            .alarms
            .iter()
            .map(|a| {
                Obj::new()
                    .num("memberID", a.member_id)
                    .num("alarm", a.alarm)
                    .build()
            })
            .collect();
        Obj::new()
            .opt("header", opt_header(self.header.as_ref()))
            .list("alarms", alarms)
            .build()
    }

    fn table(&self, out: &mut dyn Write) -> io::Result<()> {
        let mut t = Table::new(&["MEMBER ID", "ALARM"]);
        for a in &self.alarms {
            t.row(vec![format!("{:x}", a.member_id), alarm_name(a.alarm)]);
        }
        t.write_to(out)
    }
}

fn alarm_name(alarm: i32) -> String {
    AlarmType::try_from(alarm)
        .map(|a| a.as_str_name().to_string())
        .unwrap_or_else(|_| alarm.to_string())
}
