//! Small shared helpers for this crate's shared state: a poison-tolerant lock, a guard that
//! runs a repair when its owner unwinds, and the one conversion of other errors to I/O errors
//! (openraft's storage traits speak `io::Error`).

use std::io;
use std::sync::{Mutex, MutexGuard};

/// Locks that recover from poisoning. A panic while holding one of these locks leaves state
/// that is still consistent (every critical section here either completes its update or
/// changes nothing the others read), so the next user takes the lock instead of panicking in
/// turn.
pub(crate) trait LockExt<T> {
    /// The guard, even if a holder panicked.
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> LockExt<T> for Mutex<T> {
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs its repair if dropped while the thread unwinds (a panic in the work it guards), so
/// that work queued behind a panicked driver is not left waiting forever.
pub(crate) struct OnUnwind<F: FnMut()>(pub F);

impl<F: FnMut()> Drop for OnUnwind<F> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            (self.0)();
        }
    }
}

/// Any error as an I/O error (its text kept).
pub(crate) fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}
