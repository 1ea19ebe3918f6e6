//! Running out of space without losing anything: writes that would grow the database are
//! refused (etcd's NOSPACE alarm) once the database passes `--quota-backend-bytes` or the data
//! directory's disk has less than `--min-free-disk-bytes` free. The alarm goes through Raft
//! like etcd's, so it holds on every member and across restarts until `alarm disarm`; refusing
//! at a reserve, before the disk is full, keeps the log and the database from ever failing a
//! write for lack of space (a member that still gets ENOSPC stops, see `node`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use berth_proto::etcdserverpb::alarm_request::AlarmAction;
use berth_proto::etcdserverpb::{AlarmRequest, AlarmType};
use berth_store::Command;

use crate::consensus::Consensus;

/// How often the disk's free space is read (a `statvfs` per write would cost more).
const DISK_CHECK_EVERY: Duration = Duration::from_millis(100);

/// Watches the quota and the disk, and raises the NOSPACE alarm.
pub struct SpaceGuard {
    data_dir: PathBuf,
    quota_bytes: u64,
    min_free_bytes: u64,
    /// When the disk is to be read next, in milliseconds since `started` (0: at once). An
    /// atomic, not a lock: every write request looks at it.
    next_check_ms: AtomicU64,
    started: Instant,
    /// Free bytes at the last reading.
    free_bytes: AtomicU64,
    /// True while an alarm proposal is in flight (one at a time); requests that find a
    /// shortage wait on it.
    raising: std::sync::Arc<tokio::sync::watch::Sender<bool>>,
}

/// Why writes are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shortage {
    /// The database passed the quota.
    Quota,
    /// The disk has less free space than the reserve.
    Disk,
}

impl SpaceGuard {
    /// A guard for the database and disk of `data_dir`.
    pub fn new(data_dir: PathBuf, quota_bytes: u64, min_free_bytes: u64) -> SpaceGuard {
        SpaceGuard {
            data_dir,
            quota_bytes,
            min_free_bytes,
            next_check_ms: AtomicU64::new(0),
            started: Instant::now(),
            free_bytes: AtomicU64::new(u64::MAX),
            raising: std::sync::Arc::new(tokio::sync::watch::Sender::new(false)),
        }
    }

    /// Free bytes on the data directory's file system, read at most every
    /// [`DISK_CHECK_EVERY`].
    pub fn free_bytes(&self) -> u64 {
        let now = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let due = self.next_check_ms.load(Ordering::Relaxed);
        let next = now.saturating_add(DISK_CHECK_EVERY.as_millis() as u64);
        // One caller per period reads the disk; the others take the last reading.
        if now >= due
            && self
                .next_check_ms
                .compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            match rustix::fs::statvfs(&self.data_dir) {
                Ok(st) => self
                    .free_bytes
                    .store(st.f_bavail.saturating_mul(st.f_frsize), Ordering::Relaxed),
                Err(e) => {
                    tracing::warn!(error = %e, dir = %self.data_dir.display(), "reading free disk space")
                }
            }
        }
        self.free_bytes.load(Ordering::Relaxed)
    }

    /// What, if anything, is short now.
    pub fn shortage(&self, db_size: u64) -> Option<Shortage> {
        if db_size > self.quota_bytes {
            Some(Shortage::Quota)
        } else if self.min_free_bytes > 0 && self.free_bytes() < self.min_free_bytes {
            Some(Shortage::Disk)
        } else {
            None
        }
    }

    /// Proposes this member's NOSPACE alarm, unless a proposal is in flight already; either
    /// way, returns once none is (the alarm is applied, or raising it failed). The proposal
    /// runs on a task of its own, so a request that gives up waiting (a client's deadline)
    /// does not cancel it.
    pub async fn raise(&self, why: Shortage, member_id: u64, consensus: &Consensus) {
        let started = self
            .raising
            .send_if_modified(|r| !std::mem::replace(r, true));
        if started {
            self.propose(why, member_id, consensus);
        }
        // Every request that found the shortage waits for the alarm, not only the first: a
        // client told "space exceeded" then finds it listed.
        let _ = self.raising.subscribe().wait_for(|r| !*r).await;
    }

    fn propose(&self, why: Shortage, member_id: u64, consensus: &Consensus) {
        match why {
            Shortage::Quota => tracing::warn!(
                quota_bytes = self.quota_bytes,
                "the database passed --quota-backend-bytes: raising NOSPACE, writes are refused"
            ),
            Shortage::Disk => tracing::warn!(
                free_bytes = self.free_bytes.load(Ordering::Relaxed),
                min_free_bytes = self.min_free_bytes,
                dir = %self.data_dir.display(),
                "the disk is nearly full: raising NOSPACE, writes are refused"
            ),
        }
        let alarm = Command::Alarm(AlarmRequest {
            action: AlarmAction::Activate as i32,
            member_id,
            alarm: AlarmType::Nospace as i32,
        });
        let consensus = consensus.clone();
        let raising = self.raising.clone();
        tokio::spawn(async move {
            if let Err(e) = consensus.propose(alarm).await {
                tracing::warn!(error = %e, "raising the NOSPACE alarm failed; will retry");
            }
            raising.send_replace(false);
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quota_then_disk_reserve() {
        let dir = tempfile::tempdir().expect("tempdir");
        let g = SpaceGuard::new(dir.path().to_path_buf(), 100, 0);
        assert_eq!(g.shortage(100), None);
        assert_eq!(g.shortage(101), Some(Shortage::Quota));
        let free = g.free_bytes();
        assert!(free > 0 && free < u64::MAX, "read from the file system");
        let g = SpaceGuard::new(dir.path().to_path_buf(), u64::MAX, free.saturating_mul(2));
        assert_eq!(g.shortage(0), Some(Shortage::Disk));
    }
}
