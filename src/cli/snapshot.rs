//! `berth snapshot save|restore`: streams a member's snapshot into a file (written to
//! `FILE.part`, synced, then renamed), or restores one offline into a new data directory.
//!
//! A saved snapshot is etcd's format (a bbolt file and its SHA-256 trailer, which `etcdctl
//! snapshot status|restore` accept). `restore` reads that, a snapshot saved from etcd 3.4/3.5
//! (`etcdctl snapshot save`, or a member's `member/snap/db`), and berth's older
//! `BERTHSNAP1/2` files.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use berth_proto::etcdserverpb::SnapshotRequest;

use super::conn::status_error;
use super::Ctx;

/// `berth snapshot <verb>`.
#[derive(clap::Subcommand, Debug)]
pub enum SnapshotCommand {
    /// Stream a snapshot from one endpoint into FILE.
    Save {
        /// Where to write the snapshot.
        file: PathBuf,
    },
    /// Restore a snapshot (berth's or etcd's) into a new data directory (offline; no server
    /// needed).
    Restore(RestoreArgs),
}

/// Arguments of `snapshot restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot file written by `berth snapshot save` or `etcdctl snapshot save`.
    pub file: PathBuf,
    /// Data directory of the node to create; its `store` must not exist yet.
    #[arg(long)]
    pub data_dir: PathBuf,
}

/// Runs the online `snapshot` subcommands (`restore` goes through [`restore`]).
pub async fn run(ctx: &mut Ctx, cmd: SnapshotCommand) -> Result<()> {
    match cmd {
        SnapshotCommand::Save { file } => save(ctx, &file).await,
        SnapshotCommand::Restore(args) => restore(ctx, &args),
    }
}

/// The temporary name a snapshot is written under until it is complete.
fn part_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".part");
    PathBuf::from(name)
}

async fn save(ctx: &mut Ctx, file: &Path) -> Result<()> {
    let eps = ctx.conn.endpoints();
    if eps.len() != 1 {
        bail!(
            "snapshot must be requested to one selected node, not multiple [{}]",
            eps.join(" ")
        );
    }
    let ep = eps[0].clone();
    let part = part_path(file);
    let result = stream_to(ctx, &ep, &part).await;
    if result.is_err() {
        // Best effort: never leave a half-written snapshot behind.
        let _ = fs::remove_file(&part);
    }
    result?;
    fs::rename(&part, file)
        .with_context(|| format!("renaming {} to {}", part.display(), file.display()))?;
    ctx.out
        .line(&format!("Snapshot saved at {}", file.display()))
}

async fn stream_to(ctx: &Ctx, ep: &str, part: &Path) -> Result<()> {
    let mut c = ctx.conn.maintenance_to(ep).await?;
    let mut stream = ctx.conn.call(c.snapshot(SnapshotRequest {})).await?;
    let mut out = File::create(part).with_context(|| format!("creating {}", part.display()))?;
    let mut total = 0u64;
    while let Some(chunk) = stream.message().await.map_err(|s| status_error(&s))? {
        out.write_all(&chunk.blob)
            .with_context(|| format!("writing {}", part.display()))?;
        total += chunk.blob.len() as u64;
    }
    if total == 0 {
        bail!("the server sent an empty snapshot");
    }
    out.sync_all()
        .with_context(|| format!("syncing {}", part.display()))?;
    Ok(())
}

/// Runs `snapshot restore`: refuses an existing `DIR/store`, then rebuilds it from the file.
pub fn restore(ctx: &mut Ctx, args: &RestoreArgs) -> Result<()> {
    let store = args.data_dir.join("store");
    if store.exists() {
        bail!("data-dir {:?} exists", store.display().to_string());
    }
    let input =
        File::open(&args.file).with_context(|| format!("opening {}", args.file.display()))?;
    let records = berth_store::snapshot::restore_data_only(std::io::BufReader::new(input), &store)
        .with_context(|| format!("restoring {}", args.file.display()))?;
    ctx.out.line(&format!(
        "Restored snapshot {} into {} ({records} records)",
        args.file.display(),
        args.data_dir.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn part_file_sits_next_to_the_target() {
        assert_eq!(
            part_path(Path::new("/tmp/snap.db")),
            PathBuf::from("/tmp/snap.db.part")
        );
    }
}
