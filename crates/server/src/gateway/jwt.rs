//! `jwt-auth`: verifying a request's JWT against the consumer its key claim names. The
//! consumer's algorithm is the only one accepted (a token's own `alg` cannot choose a weaker
//! one, nor `none`); the signature, `exp` and `nbf` (with the consumer's grace period), and
//! `aud` and `iss` when the consumer sets them, are checked. A consumer's key is a shared
//! secret, a PEM public key, or a JWKS URL: JWKS documents are fetched on first use, kept five
//! minutes, and fetched again early (at most every ten seconds) when a token names a `kid`
//! the kept document lacks.
//!
//! A token that verified is remembered ([`Verified`], one per routing snapshot, so a change
//! of consumers forgets them all) for at most a minute, by its exact text (signature and
//! all) and the claim that named its consumer: a client sending the same token again costs a lookup, and its `exp` and `nbf` are
//! still checked on every request.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use berth_gateway::plugins::{JwtAlgorithm, JwtCredential, JwtKey};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// How long a fetched JWKS document is used.
const JWKS_FRESH: Duration = Duration::from_secs(300);
/// The soonest a document is fetched again for an unknown `kid`.
const JWKS_RETRY: Duration = Duration::from_secs(10);
/// Largest JWKS document read.
const JWKS_MAX: usize = 1 << 20;

/// Why a token was refused, in APISIX's words (the 401's message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Not a JWT.
    Invalid,
    /// No key claim.
    NoKey,
    /// A key claim no consumer has.
    UnknownKey,
    /// A bad signature, a wrong algorithm, expired, not yet valid, or the wrong audience or
    /// issuer.
    Unverified,
}

impl Refusal {
    /// The message APISIX answers with.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Invalid => "JWT token invalid",
            Refusal::NoKey => "missing user key in JWT token",
            Refusal::UnknownKey => "Invalid user key in JWT token",
            Refusal::Unverified => "failed to verify jwt",
        }
    }
}

fn algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Hs384 => Algorithm::HS384,
        JwtAlgorithm::Hs512 => Algorithm::HS512,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Rs384 => Algorithm::RS384,
        JwtAlgorithm::Rs512 => Algorithm::RS512,
        JwtAlgorithm::Es256 => Algorithm::ES256,
        JwtAlgorithm::Es384 => Algorithm::ES384,
    }
}

/// How one consumer's tokens are verified.
pub struct Verifier {
    key: Option<DecodingKey>,
    jwks: Option<String>,
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .field("jwks", &self.jwks)
            .finish()
    }
}

impl Verifier {
    /// The verifier of `cred`; a public key that does not parse is an error.
    pub fn new(cred: &JwtCredential) -> Result<Verifier, String> {
        let alg = algorithm(cred.algorithm);
        let (key, jwks) = match &cred.verify {
            JwtKey::Secret(s) => (Some(DecodingKey::from_secret(s)), None),
            JwtKey::PublicKey(pem) => {
                let key = match cred.algorithm {
                    JwtAlgorithm::Es256 | JwtAlgorithm::Es384 => {
                        DecodingKey::from_ec_pem(pem.as_bytes())
                    }
                    _ => DecodingKey::from_rsa_pem(pem.as_bytes()),
                }
                .map_err(|e| format!("failed to check the configuration of plugin jwt-auth err: \"public_key\": {e}"))?;
                (Some(key), None)
            }
            JwtKey::Jwks(url) => (None, Some(url.clone())),
        };
        let mut validation = Validation::new(alg);
        validation.leeway = cred.grace;
        validation.required_spec_claims = HashSet::new();
        validation.validate_nbf = true;
        match &cred.audience {
            Some(a) => validation.set_audience(&[a]),
            None => validation.validate_aud = false,
        }
        if let Some(i) = &cred.issuer {
            validation.set_issuer(&[i]);
            validation.required_spec_claims.insert("iss".into());
        }
        if cred.audience.is_some() {
            validation.required_spec_claims.insert("aud".into());
        }
        Ok(Verifier {
            key,
            jwks,
            validation,
        })
    }
}

/// The value of `claim` in the token's payload, read before the token is verified (it
/// chooses the consumer whose key verifies it).
pub fn claim(token: &str, claim: &str) -> Result<String, Refusal> {
    use base64::Engine;
    let payload = token.split('.').nth(1).ok_or(Refusal::Invalid)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| Refusal::Invalid)?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| Refusal::Invalid)?;
    match v.get(claim) {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
        _ => Err(Refusal::NoKey),
    }
}

struct Fetched {
    at: Instant,
    set: Option<Arc<JwkSet>>,
}

/// JWKS documents by URL.
#[derive(Default)]
pub struct JwksCache {
    docs: Mutex<HashMap<String, Fetched>>,
}

impl JwksCache {
    async fn key(
        &self,
        url: &str,
        kid: Option<&str>,
        roots: &Arc<rustls::RootCertStore>,
    ) -> Option<DecodingKey> {
        let pick = |set: &JwkSet| match kid {
            Some(k) => set.find(k).and_then(|j| DecodingKey::from_jwk(j).ok()),
            None if set.keys.len() == 1 => DecodingKey::from_jwk(&set.keys[0]).ok(),
            None => None,
        };
        let (kept, age) = {
            let docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
            match docs.get(url) {
                Some(f) => (f.set.clone(), Some(f.at.elapsed())),
                None => (None, None),
            }
        };
        if age.is_some_and(|a| a < JWKS_FRESH) {
            if let Some(k) = kept.as_deref().and_then(pick) {
                return Some(k);
            }
        }
        // Stale, never fetched, or without the token's kid: fetch, unless just fetched. The
        // attempt is stamped first, so requests arriving meanwhile do not fetch too.
        if age.is_some_and(|a| a < JWKS_RETRY) {
            return kept.as_deref().and_then(pick);
        }
        self.docs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            url.to_string(),
            Fetched {
                at: Instant::now(),
                set: kept.clone(),
            },
        );
        let fetched = match crate::registry::probe::fetch(url, roots, JWKS_MAX).await {
            Ok(body) => match serde_json::from_slice::<JwkSet>(&body) {
                Ok(set) => Some(Arc::new(set)),
                Err(e) => {
                    tracing::warn!(%url, error = %e, "jwt-auth: the JWKS document does not read");
                    None
                }
            },
            Err(e) => {
                tracing::warn!(%url, error = %e, "jwt-auth: fetching the JWKS document");
                None
            }
        };
        let set = fetched.or(kept);
        self.docs.lock().unwrap_or_else(|p| p.into_inner()).insert(
            url.to_string(),
            Fetched {
                at: Instant::now(),
                set: set.clone(),
            },
        );
        set.as_deref().and_then(pick)
    }
}

/// How long a verified token is remembered at most (a JWKS key withdrawn meanwhile stops
/// verifying it after this).
const VERIFIED_FOR: Duration = Duration::from_secs(60);
/// Tokens remembered per snapshot at most (past it, all are forgotten).
const VERIFIED_MAX: usize = 10_000;

/// A verified token: whose it is and the times it holds between.
struct Hit {
    consumer: Arc<berth_gateway::Consumer>,
    exp: Option<i64>,
    nbf: Option<i64>,
    leeway: i64,
    until: Instant,
}

/// Tokens verified under one snapshot's consumers. See the module docs.
#[derive(Default)]
pub struct Verified {
    tokens: Mutex<HashMap<String, Hit>>,
}

impl std::fmt::Debug for Verified {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verified").finish_non_exhaustive()
    }
}

fn epoch_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Verified {
    /// The consumer of `token` if it verified before and still holds now.
    pub fn get(&self, token: &str) -> Option<Arc<berth_gateway::Consumer>> {
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        let hit = tokens.get(token)?;
        let now = epoch_secs();
        let holds = hit.until > Instant::now()
            && hit
                .exp
                .is_none_or(|exp| exp.saturating_add(hit.leeway) >= now)
            && hit
                .nbf
                .is_none_or(|nbf| nbf <= now.saturating_add(hit.leeway));
        if holds {
            return Some(hit.consumer.clone());
        }
        tokens.remove(token);
        None
    }

    /// Remembers that `token`, with `claims`, verified as `consumer`'s under `verifier`.
    pub fn put(
        &self,
        token: &str,
        consumer: Arc<berth_gateway::Consumer>,
        claims: &serde_json::Value,
        verifier: &Verifier,
    ) {
        let time = |name: &str| claims.get(name).and_then(serde_json::Value::as_i64);
        let hit = Hit {
            consumer,
            exp: time("exp"),
            nbf: time("nbf"),
            leeway: i64::try_from(verifier.validation.leeway).unwrap_or(i64::MAX),
            until: Instant::now() + VERIFIED_FOR,
        };
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if tokens.len() >= VERIFIED_MAX {
            tokens.clear();
        }
        tokens.insert(token.to_string(), hit);
    }
}

/// Verifies `token` with `verifier`; its claims when it holds.
pub async fn verify(
    token: &str,
    verifier: &Verifier,
    jwks: &JwksCache,
    roots: &Arc<rustls::RootCertStore>,
) -> Result<serde_json::Value, Refusal> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| Refusal::Invalid)?;
    if !verifier.validation.algorithms.contains(&header.alg) {
        return Err(Refusal::Unverified);
    }
    let key = match (&verifier.key, &verifier.jwks) {
        (Some(k), _) => k.clone(),
        (None, Some(url)) => jwks
            .key(url, header.kid.as_deref(), roots)
            .await
            .ok_or(Refusal::Unverified)?,
        (None, None) => return Err(Refusal::Unverified),
    };
    jsonwebtoken::decode::<serde_json::Value>(token, &key, &verifier.validation)
        .map(|d| d.claims)
        .map_err(|e| {
            tracing::debug!(error = %e, "jwt-auth: token refused");
            Refusal::Unverified
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_tokens_still_expire() {
        let consumer = Arc::new(
            berth_gateway::Consumer::parse(&serde_json::json!({"username": "jack",
                "plugins": {"jwt-auth": {"key": "k", "secret": "s"}}}))
            .expect("consumer"),
        );
        let cred = consumer
            .plugins
            .jwt_credential
            .as_ref()
            .expect("credential");
        let verifier = Verifier::new(cred).expect("verifier");
        let v = Verified::default();
        let now = epoch_secs();
        v.put(
            "fresh",
            consumer.clone(),
            &serde_json::json!({"exp": now + 60}),
            &verifier,
        );
        v.put(
            "stale",
            consumer.clone(),
            &serde_json::json!({"exp": now - 5}),
            &verifier,
        );
        v.put(
            "early",
            consumer.clone(),
            &serde_json::json!({"nbf": now + 60}),
            &verifier,
        );
        assert_eq!(
            v.get("fresh").map(|c| c.username.clone()).as_deref(),
            Some("jack")
        );
        assert!(v.get("stale").is_none(), "expired");
        assert!(v.get("early").is_none(), "not yet valid");
        assert!(v.get("other").is_none());
    }
}
