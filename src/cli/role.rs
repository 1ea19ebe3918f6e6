//! `berth role`: a role's permissions in every keyspace, through berth's API (`/api/v1/auth`
//! on `--http-addr`): `show`, `grant`, `revoke`. etcd's role commands (`etcdctl role …`)
//! grant keys of the user keyspace only; these name the keyspace too (`messaging` for NATS
//! subjects, `config` for configuration items, `gateway`, `registry`, `user`).

use anyhow::Result;
use http::Method;
use serde_json::{json, Value};

use crate::cli::registry::http::ApiPath;
use crate::cli::registry::{items, text, Done, Listing};
use crate::cli::Ctx;

/// What a grant or revoke names: a key, a range or a prefix, in a keyspace.
#[derive(clap::Args, Debug)]
pub struct Range {
    /// The key (a subject, an item key, ...).
    pub key: String,
    /// The end of the range (exclusive).
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    pub range_end: Option<String>,
    /// Every key that starts with KEY (`orders.` covers `orders.>` and `orders.*.eu`).
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,
    /// Every key from KEY on (etcd's `--from-key`).
    #[arg(long)]
    pub from_key: bool,
    /// The keyspace: user, registry, config, gateway or messaging.
    #[arg(long, default_value = "user")]
    pub keyspace: String,
}

impl Range {
    fn body(&self) -> Value {
        let mut b = json!({"keyspace": self.keyspace, "key": self.key, "prefix": self.prefix});
        if let Some(e) = &self.range_end {
            b["range_end"] = json!(e);
        }
        if self.from_key {
            b["range_end"] = json!("\0");
        }
        b
    }
}

/// `berth role <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum RoleCommand {
    /// Show a role's permissions with their keyspaces.
    Show {
        /// The role.
        role: String,
    },
    /// Grant (or change) a permission: `berth role grant app readwrite orders. --prefix
    /// --keyspace messaging`.
    Grant {
        /// The role.
        role: String,
        /// read, write or readwrite.
        #[arg(value_parser = ["read", "write", "readwrite"])]
        permission: String,
        #[command(flatten)]
        range: Range,
    },
    /// Revoke exactly one grant (the same key, range end or prefix, and keyspace).
    Revoke {
        /// The role.
        role: String,
        #[command(flatten)]
        range: Range,
    },
}

fn path(role: &str) -> ApiPath {
    ApiPath::new("/api/v1/auth/roles").seg(role)
}

/// Runs a `role` command.
pub async fn run(ctx: &mut Ctx, cmd: RoleCommand) -> Result<()> {
    let c = ctx.http.client()?;
    match cmd {
        RoleCommand::Show { role } => {
            let v = c.get(&path(&role)).await?;
            let rows = v
                .get("permissions")
                .map(items)
                .unwrap_or_default()
                .iter()
                .map(|p| {
                    ["keyspace", "permission", "key", "range_end"]
                        .iter()
                        .map(|k| match text(p, k) {
                            // "Every key from KEY on", as etcdctl prints it.
                            t if t == "\0" => "\\0".to_string(),
                            t => t,
                        })
                        .collect()
                })
                .collect();
            ctx.out.print(&Listing::new(
                v,
                &["KEYSPACE", "PERMISSION", "KEY", "RANGE END"],
                rows,
            ))
        }
        RoleCommand::Grant {
            role,
            permission,
            range,
        } => {
            let mut body = range.body();
            body["permission"] = json!(permission);
            let v = c
                .call(Method::POST, &path(&role).seg("permissions"), Some(&body))
                .await?;
            ctx.out.print(&Done {
                text: format!("Role {role} updated"),
                json: v,
            })
        }
        RoleCommand::Revoke { role, range } => {
            let v = c
                .call(
                    Method::DELETE,
                    &path(&role).seg("permissions"),
                    Some(&range.body()),
                )
                .await?;
            ctx.out.print(&Done {
                text: format!("Permission of role {role} revoked"),
                json: v,
            })
        }
    }
}
