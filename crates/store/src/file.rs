//! The database file as redb's storage backend, with a switch that cuts it off: once severed,
//! nothing more is written, as when the process is killed, so crash simulations lose what a kill -9 would.
//!
//! A dropped `Database` closes cleanly, and a clean close makes pending non-durable commits
//! durable. In-process crash simulations drop the store when a member "dies"; without the
//! switch that close would keep state a real kill -9 loses (everything since the last durable
//! commit), and hide bugs that depend on losing it.

use std::fs::{File, OpenOptions};
use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use redb::backends::FileBackend;
use redb::{BackendError, DatabaseError, StorageBackend};

/// What redb's byte operations fail with (without its `experimental-api-5` feature).
type BackendIoError = std::io::Error;

/// The database file, writable until its switch is thrown.
#[derive(Debug)]
pub(crate) struct SeverableFile {
    file: FileBackend,
    severed: Arc<AtomicBool>,
}

impl SeverableFile {
    /// Opens (creating if needed) the file at `path`; `severed` is the switch.
    pub fn open(path: &Path, severed: Arc<AtomicBool>) -> Result<SeverableFile, DatabaseError> {
        let file: File = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        Ok(SeverableFile {
            file: FileBackend::new(file)?,
            severed,
        })
    }

    fn severed(&self) -> bool {
        self.severed.load(Ordering::Acquire)
    }
}

impl StorageBackend for SeverableFile {
    fn len(&self) -> Result<u64, BackendIoError> {
        self.file.len()
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), BackendIoError> {
        self.file.read(offset, out)
    }

    fn set_len(&self, len: u64) -> Result<(), BackendIoError> {
        if self.severed() {
            return Ok(());
        }
        self.file.set_len(len)
    }

    fn sync_data(&self) -> Result<(), BackendIoError> {
        if self.severed() {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), BackendIoError> {
        if self.severed() {
            return Ok(());
        }
        self.file.write(offset, data)
    }

    // Locks and close go through even when severed: the kernel releases a dead process's
    // locks, and a restarted member must be able to open the file again.
    fn close(&self) -> Result<(), BackendIoError> {
        self.file.close()
    }

    fn try_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.try_lock_range(start, end)
    }

    fn try_lock_shared_range(
        &self,
        start: Bound<u64>,
        end: Bound<u64>,
    ) -> Result<bool, BackendError> {
        self.file.try_lock_shared_range(start, end)
    }

    fn lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_range(start, end)
    }

    fn lock_shared_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.lock_shared_range(start, end)
    }

    fn unlock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<(), BackendError> {
        self.file.unlock_range(start, end)
    }

    fn query_lock_range(&self, start: Bound<u64>, end: Bound<u64>) -> Result<bool, BackendError> {
        self.file.query_lock_range(start, end)
    }
}
