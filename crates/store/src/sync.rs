//! The crate's one poison-tolerant lock helper. Every lock in the store guards data that each
//! mutation changes in a single step, so a panic while holding one leaves the data consistent:
//! the guard is recovered instead of the poison being propagated.

use std::sync::{Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Locking a `Mutex` or an `RwLock`, ignoring poisoning (see the module doc for why that is
/// sound here).
pub(crate) trait LockExt {
    /// The exclusive guard (a `Mutex`'s, or an `RwLock`'s write guard).
    type Exclusive<'a>
    where
        Self: 'a;
    /// The shared guard (an `RwLock`'s read guard; a `Mutex` has only the exclusive one).
    type Shared<'a>
    where
        Self: 'a;
    /// Takes the lock exclusively.
    fn locked(&self) -> Self::Exclusive<'_>;
    /// Takes the lock shared.
    fn shared(&self) -> Self::Shared<'_>;
}

impl<T> LockExt for Mutex<T> {
    type Exclusive<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    type Shared<'a>
        = MutexGuard<'a, T>
    where
        T: 'a;
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn shared(&self) -> MutexGuard<'_, T> {
        self.locked()
    }
}

impl<T> LockExt for RwLock<T> {
    type Exclusive<'a>
        = RwLockWriteGuard<'a, T>
    where
        T: 'a;
    type Shared<'a>
        = RwLockReadGuard<'a, T>
    where
        T: 'a;
    fn locked(&self) -> RwLockWriteGuard<'_, T> {
        self.write().unwrap_or_else(|p| p.into_inner())
    }
    fn shared(&self) -> RwLockReadGuard<'_, T> {
        self.read().unwrap_or_else(|p| p.into_inner())
    }
}
