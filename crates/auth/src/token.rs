//! Auth tokens, as `--auth-token` chooses:
//!
//! - `simple` (the default): berth signs `user:epoch:issued:nonce` with the cluster's secret
//!   (HMAC-SHA256; the secret is replicated auth state, new at each enable), so a token issued
//!   by any member is checked by every member with no log write per login. As etcd's simple
//!   tokens, a token lapses after `--auth-token-ttl` without use *on the member checking it*
//!   (each member keeps its own last-use times), and a user's tokens die when its password
//!   changes or it is deleted (the epoch no longer matches).
//! - `jwt,pub-key=F,priv-key=F,sign-method=M[,ttl=D]`: etcd's JWT tokens (claims `username`,
//!   `revision`, `exp`), verified with the public key; a member given only `pub-key` verifies
//!   but cannot issue. As in etcd, a JWT carries the auth revision it was issued at, and any
//!   later auth change makes it "old" (clients log in again).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rand::RngCore as _;
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// etcd's default JWT lifetime.
const DEFAULT_JWT_TTL: Duration = Duration::from_secs(300);
/// Last-use entries kept per member before stale ones are swept.
const SWEEP_AT: usize = 4096;

/// What a valid token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// A simple token: the user and its credential epoch at issue.
    Simple {
        /// The user.
        user: String,
        /// Must still match the user's epoch.
        epoch: u64,
    },
    /// A JWT: the user and the auth revision it was issued at.
    Jwt {
        /// The user.
        user: String,
        /// The auth revision at issue.
        revision: i64,
    },
}

/// The configured token kind.
pub enum Tokens {
    /// Signed simple tokens with a per-member idle TTL.
    Simple(SimpleTokens),
    /// JWTs.
    Jwt(Box<JwtTokens>),
}

impl Tokens {
    /// Parses `--auth-token` (`simple`, or `jwt,` and options); `ttl` is `--auth-token-ttl`.
    pub fn parse(option: &str, ttl: Duration) -> Result<Tokens, AuthError> {
        let mut parts = option.split(',');
        let kind = parts.next().unwrap_or_default();
        let mut opts = HashMap::new();
        for part in parts {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| AuthError::Options(format!("{part:?} is not key=value")))?;
            if opts.insert(k, v).is_some() {
                return Err(AuthError::Options(format!("{k} given twice")));
            }
        }
        match kind {
            "simple" if opts.is_empty() => Ok(Tokens::Simple(SimpleTokens::new(ttl))),
            "simple" => Err(AuthError::Options("simple tokens take no options".into())),
            "jwt" => Ok(Tokens::Jwt(Box::new(JwtTokens::from_options(&opts)?))),
            other => Err(AuthError::Options(format!(
                "unknown token type {other:?} (simple or jwt)"
            ))),
        }
    }

    /// Issues a token for `user`, whose epoch is `epoch`, at auth revision `revision`.
    pub fn issue(
        &self,
        secret: &[u8],
        user: &str,
        epoch: u64,
        revision: i64,
    ) -> Result<String, AuthError> {
        match self {
            Tokens::Simple(s) => Ok(s.issue(secret, user, epoch)),
            Tokens::Jwt(j) => j.issue(user, revision),
        }
    }

    /// Checks a token's signature and lifetime.
    pub fn check(&self, secret: &[u8], token: &str) -> Option<Identity> {
        match self {
            Tokens::Simple(s) => s.check(secret, token),
            Tokens::Jwt(j) => j.check(token),
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Simple tokens and this member's last-use times.
pub struct SimpleTokens {
    ttl: Duration,
    last_use: Mutex<HashMap<String, Instant>>,
}

impl SimpleTokens {
    /// Tokens that lapse after `ttl` without use.
    pub fn new(ttl: Duration) -> SimpleTokens {
        SimpleTokens {
            ttl,
            last_use: Mutex::new(HashMap::new()),
        }
    }

    fn sign(secret: &[u8], payload: &[u8]) -> hmac::Tag {
        hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), payload)
    }

    fn issue(&self, secret: &[u8], user: &str, epoch: u64) -> String {
        let nonce = rand::rng().next_u64();
        let payload = format!("{}:{epoch}:{}:{nonce:016x}", B64.encode(user), now_secs());
        let tag = Self::sign(secret, payload.as_bytes());
        let token = format!("{}.{}", B64.encode(&payload), B64.encode(tag.as_ref()));
        self.touch(&token);
        token
    }

    fn touch(&self, token: &str) {
        let Ok(mut seen) = self.last_use.lock() else {
            return;
        };
        if seen.len() >= SWEEP_AT {
            let ttl = self.ttl;
            seen.retain(|_, at| at.elapsed() < ttl);
        }
        seen.insert(token.to_string(), Instant::now());
    }

    fn check(&self, secret: &[u8], token: &str) -> Option<Identity> {
        if secret.is_empty() {
            return None;
        }
        let (payload, tag) = token.split_once('.')?;
        let payload = B64.decode(payload).ok()?;
        let tag = B64.decode(tag).ok()?;
        hmac::verify(&hmac::Key::new(hmac::HMAC_SHA256, secret), &payload, &tag).ok()?;
        let text = String::from_utf8(payload).ok()?;
        let mut fields = text.split(':');
        let user = String::from_utf8(B64.decode(fields.next()?).ok()?).ok()?;
        let epoch = fields.next()?.parse().ok()?;
        let issued: u64 = fields.next()?.parse().ok()?;
        // Alive if used on this member within the TTL, or (first seen here) issued within it.
        let fresh = {
            let seen = self.last_use.lock().ok()?;
            match seen.get(token) {
                Some(at) => at.elapsed() < self.ttl,
                None => now_secs().saturating_sub(issued) < self.ttl.as_secs().max(1),
            }
        };
        if !fresh {
            return None;
        }
        self.touch(token);
        Some(Identity::Simple { user, epoch })
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: i64,
    exp: u64,
}

/// etcd's JWT tokens.
pub struct JwtTokens {
    algorithm: Algorithm,
    sign: Option<EncodingKey>,
    verify: DecodingKey,
    ttl: Duration,
}

fn read_key(what: &str, path: &str) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Options(format!("{what} {path}: {e}")))
}

impl JwtTokens {
    fn from_options(opts: &HashMap<&str, &str>) -> Result<JwtTokens, AuthError> {
        for k in opts.keys() {
            if !["pub-key", "priv-key", "sign-method", "ttl"].contains(k) {
                return Err(AuthError::Options(format!("unknown jwt option {k:?}")));
            }
        }
        let method = opts
            .get("sign-method")
            .ok_or_else(|| AuthError::Options("jwt needs sign-method".into()))?;
        let algorithm: Algorithm = method
            .parse()
            .map_err(|_| AuthError::Options(format!("unknown sign-method {method:?}")))?;
        let ttl = match opts.get("ttl") {
            Some(t) => humantime::parse_duration(t)
                .map_err(|e| AuthError::Options(format!("jwt ttl {t:?}: {e}")))?,
            None => DEFAULT_JWT_TTL,
        };
        let bad = |what: &str, path: &str, e: jsonwebtoken::errors::Error| {
            AuthError::Options(format!("{what} {path}: {e}"))
        };
        let (sign, verify) = match algorithm {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let path = opts
                    .get("priv-key")
                    .ok_or_else(|| AuthError::Options("HMAC jwt needs priv-key".into()))?;
                let secret = read_key("priv-key", path)?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            _ => {
                let public = opts
                    .get("pub-key")
                    .ok_or_else(|| AuthError::Options("jwt needs pub-key".into()))?;
                let pem = read_key("pub-key", public)?;
                let verify = match algorithm {
                    Algorithm::ES256 | Algorithm::ES384 => DecodingKey::from_ec_pem(&pem),
                    Algorithm::EdDSA => DecodingKey::from_ed_pem(&pem),
                    _ => DecodingKey::from_rsa_pem(&pem),
                }
                .map_err(|e| bad("pub-key", public, e))?;
                let sign = match opts.get("priv-key") {
                    None => None,
                    Some(private) => {
                        let pem = read_key("priv-key", private)?;
                        Some(
                            match algorithm {
                                Algorithm::ES256 | Algorithm::ES384 => {
                                    EncodingKey::from_ec_pem(&pem)
                                }
                                Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
                                _ => EncodingKey::from_rsa_pem(&pem),
                            }
                            .map_err(|e| bad("priv-key", private, e))?,
                        )
                    }
                };
                (sign, verify)
            }
        };
        let tokens = JwtTokens {
            algorithm,
            sign,
            verify,
            ttl,
        };
        // A key pair that does not match fails here, not at the first login.
        if tokens.sign.is_some() {
            let probe = tokens.issue("probe", 0)?;
            if tokens.check(&probe).is_none() {
                return Err(AuthError::Options(
                    "jwt priv-key and pub-key do not match".into(),
                ));
            }
        }
        Ok(tokens)
    }

    fn issue(&self, user: &str, revision: i64) -> Result<String, AuthError> {
        let key = self.sign.as_ref().ok_or_else(|| {
            AuthError::Internal("this member verifies JWTs only (no priv-key)".into())
        })?;
        let claims = Claims {
            username: user.into(),
            revision,
            exp: now_secs() + self.ttl.as_secs(),
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| AuthError::Internal(format!("jwt: {e}")))
    }

    fn check(&self, token: &str) -> Option<Identity> {
        let mut v = Validation::new(self.algorithm);
        v.leeway = 0;
        v.required_spec_claims = ["exp".to_string()].into();
        let data = jsonwebtoken::decode::<Claims>(token, &self.verify, &v).ok()?;
        Some(Identity::Jwt {
            user: data.claims.username,
            revision: data.claims.revision,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_tokens_are_signed_and_lapse() {
        let t = SimpleTokens::new(Duration::from_secs(300));
        let tok = t.issue(b"secret", "alice:x", 7);
        assert_eq!(
            t.check(b"secret", &tok),
            Some(Identity::Simple {
                user: "alice:x".into(),
                epoch: 7
            })
        );
        assert_eq!(t.check(b"other", &tok), None, "another secret");
        assert_eq!(t.check(b"", &tok), None);
        let mut forged = tok.clone();
        forged.replace_range(0..1, if tok.starts_with('A') { "B" } else { "A" });
        assert_eq!(t.check(b"secret", &forged), None);
        assert_eq!(t.check(b"secret", "garbage"), None);
        assert_eq!(t.check(b"secret", "a.b.c"), None);
        // Another member (no last use) accepts it while it is young.
        let other = SimpleTokens::new(Duration::from_secs(300));
        assert!(other.check(b"secret", &tok).is_some());
        // With a TTL of zero nothing is fresh.
        let short = SimpleTokens::new(Duration::ZERO);
        let tok = short.issue(b"s", "u", 1);
        assert_eq!(short.check(b"s", &tok), None);
    }

    #[test]
    fn token_options_parse_as_etcd_spells_them() {
        assert!(matches!(
            Tokens::parse("simple", Duration::from_secs(1)),
            Ok(Tokens::Simple(_))
        ));
        for bad in [
            "",
            "plain",
            "simple,x=1",
            "jwt",
            "jwt,sign-method=RS256",
            "jwt,foo",
        ] {
            assert!(Tokens::parse(bad, Duration::from_secs(1)).is_err(), "{bad}");
        }
        assert!(matches!(
            Tokens::parse("jwt,sign-method=RS256,pub-key=/nonexistent", Duration::ZERO),
            Err(AuthError::Options(m)) if m.contains("/nonexistent")
        ));
    }

    #[test]
    fn hmac_jwt_round_trips() {
        let dir = std::env::temp_dir().join(format!("berth-jwt-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let key = dir.join("hs.key");
        let _ = std::fs::write(&key, b"0123456789abcdef0123456789abcdef");
        let opt = format!("jwt,sign-method=HS256,priv-key={},ttl=1m", key.display());
        let Ok(tokens) = Tokens::parse(&opt, Duration::ZERO) else {
            panic!("parse {opt}");
        };
        let tok = tokens.issue(b"", "bob", 0, 42).unwrap_or_default();
        assert_eq!(
            tokens.check(b"", &tok),
            Some(Identity::Jwt {
                user: "bob".into(),
                revision: 42
            })
        );
        assert_eq!(tokens.check(b"", &format!("{tok}x")), None);
        let _ = std::fs::remove_dir_all(dir);
    }
}
