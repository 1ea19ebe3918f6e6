//! Password hashing with bcrypt, as etcd (`--bcrypt-cost`, default 10). Both functions take
//! tens of milliseconds by design: callers run them off the async runtime (the server uses
//! `spawn_blocking`) and never on the apply path: a hash is computed before its change is
//! proposed.

use crate::error::AuthError;

/// etcd's default `--bcrypt-cost`.
pub const DEFAULT_COST: u32 = 10;

/// bcrypt's accepted cost range (etcd refuses others at start-up too).
pub const COSTS: std::ops::RangeInclusive<u32> = 4..=31;

/// Hashes `password` with `cost`.
pub fn hash(password: &str, cost: u32) -> Result<String, AuthError> {
    bcrypt::hash(password, cost).map_err(|e| AuthError::Internal(format!("bcrypt: {e}")))
}

/// True when `password` matches `hash` (a malformed hash matches nothing).
pub fn verify(password: &str, hash: &str) -> bool {
    bcrypt::verify(password, hash).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let h = hash("pw", 4).unwrap_or_default();
        assert!(h.starts_with("$2"));
        assert!(verify("pw", &h));
        assert!(!verify("pW", &h));
        assert!(!verify("pw", "not a hash"));
        assert_ne!(hash("pw", 4).unwrap_or_default(), h, "salted");
        // A hash in the $2a$ form etcd (Go's bcrypt) writes verifies too.
        let go = bcrypt::hash_with_result("pw", 4)
            .map(|h| h.format_for_version(bcrypt::Version::TwoA))
            .unwrap_or_default();
        assert!(go.starts_with("$2a$04$") && verify("pw", &go) && !verify("px", &go));
    }
}
