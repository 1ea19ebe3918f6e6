//! `berth kv get KEY [RANGE_END]`: reads a key or range with etcdctl's flags (prefix, limit,
//! revision, sorting, consistency) and prints key and value lines like `etcdctl get`.

use anyhow::{bail, Result};
use berth_proto::etcdserverpb::{
    range_request::{SortOrder, SortTarget},
    RangeRequest,
};

use super::key_range;
use crate::cli::Ctx;

/// Arguments of `kv get` (also accepted as a `get` line inside `kv txn`).
#[derive(clap::Args, Debug)]
pub struct GetArgs {
    /// Key, or start of the range.
    pub key: String,
    /// End of the range (exclusive).
    pub range_end: Option<String>,
    /// Get every key starting with KEY.
    #[arg(long)]
    pub prefix: bool,
    /// Get every key greater than or equal to KEY.
    #[arg(long)]
    pub from_key: bool,
    /// Maximum number of results (0 for no limit).
    #[arg(long, default_value_t = 0)]
    pub limit: i64,
    /// Read at this revision (0 for the latest).
    #[arg(long, default_value_t = 0)]
    pub rev: i64,
    /// Sort target: CREATE, KEY, MODIFY, VALUE or VERSION.
    #[arg(long, default_value = "")]
    pub sort_by: String,
    /// Sort order: ASCEND or DESCEND (ASCEND when only --sort-by is given).
    #[arg(long, default_value = "")]
    pub order: String,
    /// Return keys only.
    #[arg(long)]
    pub keys_only: bool,
    /// Return only the number of keys.
    #[arg(long)]
    pub count_only: bool,
    /// Print only values (simple format).
    #[arg(long)]
    pub print_value_only: bool,
    /// Linearizable (l) or serializable (s) read.
    #[arg(long, default_value = "l")]
    pub consistency: String,
    /// Only keys modified at or after this revision.
    #[arg(long, default_value_t = 0)]
    pub min_mod_rev: i64,
    /// Only keys modified at or before this revision.
    #[arg(long, default_value_t = 0)]
    pub max_mod_rev: i64,
    /// Only keys created at or after this revision.
    #[arg(long, default_value_t = 0)]
    pub min_create_rev: i64,
    /// Only keys created at or before this revision.
    #[arg(long, default_value_t = 0)]
    pub max_create_rev: i64,
}

impl GetArgs {
    /// The request these arguments describe.
    pub fn to_request(&self) -> Result<RangeRequest> {
        let (key, range_end) = key_range(
            &self.key,
            self.range_end.as_deref(),
            self.prefix,
            self.from_key,
        )?;
        let serializable = match self.consistency.as_str() {
            "l" => false,
            "s" => true,
            other => bail!("unknown consistency flag {other:?}"),
        };
        let order = match self.order.to_ascii_uppercase().as_str() {
            "" => SortOrder::None,
            "ASCEND" => SortOrder::Ascend,
            "DESCEND" => SortOrder::Descend,
            _ => bail!("bad sort order {}", self.order),
        };
        let target = match self.sort_by.to_ascii_uppercase().as_str() {
            "" | "KEY" => SortTarget::Key,
            "CREATE" => SortTarget::Create,
            "MODIFY" => SortTarget::Mod,
            "VALUE" => SortTarget::Value,
            "VERSION" => SortTarget::Version,
            _ => bail!("bad sort target {}", self.sort_by),
        };
        // As clientv3's WithSort: keys already come back ascending, so ascending-by-key is no
        // sort at all (and lets the server stop at the limit).
        let order = match (target, order) {
            (SortTarget::Key, SortOrder::Ascend) => SortOrder::None,
            (SortTarget::Key, o) => o,
            (_, SortOrder::None) if !self.sort_by.is_empty() => SortOrder::Ascend,
            (_, o) => o,
        };
        Ok(RangeRequest {
            key,
            range_end,
            limit: self.limit,
            revision: self.rev,
            sort_order: order as i32,
            sort_target: target as i32,
            serializable,
            keys_only: self.keys_only,
            count_only: self.count_only,
            min_mod_revision: self.min_mod_rev,
            max_mod_revision: self.max_mod_rev,
            min_create_revision: self.min_create_rev,
            max_create_revision: self.max_create_rev,
        })
    }
}

/// Runs `kv get`.
pub async fn run(ctx: &mut Ctx, args: GetArgs) -> Result<()> {
    let req = args.to_request()?;
    let mut kv = ctx.conn.kv().await?;
    let resp = ctx.conn.call(kv.range(req)).await?;
    if args.count_only {
        ctx.out.count(&resp)
    } else {
        ctx.out.get(&resp, args.print_value_only)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    #[command(no_binary_name = true)]
    struct P {
        #[command(flatten)]
        get: GetArgs,
    }

    fn req(args: &[&str]) -> Result<RangeRequest> {
        P::try_parse_from(args)?.get.to_request()
    }

    #[test]
    fn flags_map_to_the_request() {
        let r = req(&[
            "k",
            "--prefix",
            "--limit",
            "2",
            "--rev",
            "7",
            "--consistency",
            "s",
        ]);
        let r = r.ok();
        assert_eq!(r.as_ref().map(|r| r.range_end.clone()), Some(b"l".to_vec()));
        assert_eq!(
            r.as_ref().map(|r| (r.limit, r.revision, r.serializable)),
            Some((2, 7, true))
        );
    }

    #[test]
    fn sorting_follows_clientv3() {
        let sort = |a: &[&str]| req(a).map(|r| (r.sort_target, r.sort_order)).ok();
        assert_eq!(
            sort(&["k"]),
            Some((SortTarget::Key as i32, SortOrder::None as i32))
        );
        assert_eq!(
            sort(&["k", "--order", "ascend"]),
            Some((SortTarget::Key as i32, SortOrder::None as i32))
        );
        assert_eq!(
            sort(&["k", "--order", "DESCEND"]),
            Some((SortTarget::Key as i32, SortOrder::Descend as i32))
        );
        assert_eq!(
            sort(&["k", "--sort-by", "MODIFY"]),
            Some((SortTarget::Mod as i32, SortOrder::Ascend as i32))
        );
        assert!(req(&["k", "--sort-by", "nope"]).is_err());
        assert!(req(&["k", "--order", "up"]).is_err());
        assert!(req(&["k", "--consistency", "x"]).is_err());
    }
}
