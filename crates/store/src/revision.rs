//! A store revision: the cluster-wide `main` counter plus a `sub` index for writes
//! made in the same transaction. Encoded as one `u128` so storage keys sort by revision.

/// A point in the store's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Revision {
    /// The revision every client sees (one per write request).
    pub main: i64,
    /// The position of the change inside its request.
    pub sub: i64,
}

impl Revision {
    /// Builds a revision.
    pub const fn new(main: i64, sub: i64) -> Self {
        Self { main, sub }
    }

    /// Storage key: sorts the same way revisions do (both parts are never negative).
    pub fn to_key(self) -> u128 {
        ((self.main as u64 as u128) << 64) | (self.sub as u64 as u128)
    }

    /// Inverse of [`Revision::to_key`].
    pub fn from_key(k: u128) -> Self {
        Self {
            main: (k >> 64) as u64 as i64,
            sub: (k & u64::MAX as u128) as u64 as i64,
        }
    }

    /// The first storage key of `main` (for range scans over whole revisions).
    pub fn first_key(main: i64) -> u128 {
        Self::new(main, 0).to_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_order_matches_revision_order() {
        let revs = [
            Revision::new(1, 0),
            Revision::new(1, 1),
            Revision::new(2, 0),
            Revision::new(300, 7),
        ];
        for w in revs.windows(2) {
            assert!(w[0].to_key() < w[1].to_key());
            assert_eq!(Revision::from_key(w[1].to_key()), w[1]);
        }
    }
}
