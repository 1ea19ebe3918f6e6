//! The security domain at run time: the live auth view (rebuilt from the store's `Auth`
//! keyspace whenever the auth revision moves), credentials resolved to a [`Principal`],
//! logins, and auth changes proposed through consensus. Faces translate their credentials
//! (an etcd token or client-certificate CN today) and their requests into calls here; the
//! rules themselves are `berth_auth`'s.
//!
//! Stale checks: a write carries a [`Guard`] naming the auth state its checks were made
//! against (the `revision` record while auth is on, the `enabled` record while it is off),
//! and the store refuses it at apply if that state has moved on, so a permission revoked
//! while a write is in flight, or auth enabled under it, never lets it through.

use std::sync::{Arc, Mutex};

use berth_auth::change::{Changes, Write};
use berth_auth::{layout, Access, AuthError, AuthView, Identity, Tokens};
use berth_proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use berth_proto::etcdserverpb::request_op::Request as Op;
use berth_proto::etcdserverpb::{
    Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp, TxnRequest,
};
use berth_store::{Applied, Command, Guard, Keyspace, Store};

use crate::config::Config;
use crate::consensus::{Consensus, WriteError};

/// How many times a change is retried when another change landed between its checks and
/// its commit.
const CHANGE_ATTEMPTS: usize = 8;

/// Why an auth change, or a login, failed.
#[derive(Debug, thiserror::Error)]
pub enum AuthFailure {
    /// The auth rules refused it.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The write path failed.
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Who a request acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    /// Auth is off: anything goes.
    Open,
    /// Auth is on and no credential was given.
    Anonymous,
    /// A user (who may have been deleted since its token was issued).
    User(String),
}

/// A request's identity, with the auth view its checks are made against.
#[derive(Debug, Clone)]
pub struct Principal {
    view: Arc<AuthView>,
    who: Who,
    /// The auth revision the credential speaks for (a JWT's own; else the view's).
    revision: i64,
}

impl Principal {
    /// True when auth is off (no checks apply).
    pub fn is_open(&self) -> bool {
        self.who == Who::Open
    }

    /// The user's name, if a user is known.
    pub fn user(&self) -> Option<&str> {
        match &self.who {
            Who::User(u) => Some(u),
            _ => None,
        }
    }

    fn known_user(&self) -> Result<Option<&str>, AuthError> {
        match &self.who {
            Who::Open => Ok(None),
            Who::Anonymous => Err(AuthError::UserEmpty),
            Who::User(_) if self.revision < self.view.revision => Err(AuthError::OldRevision),
            Who::User(u) => Ok(Some(u)),
        }
    }

    /// Checks `access` to `key`/`range_end` (etcd's range conventions) of keyspace `ks`.
    pub fn check(
        &self,
        ks: Keyspace,
        access: Access,
        key: &[u8],
        range_end: &[u8],
    ) -> Result<(), AuthFailure> {
        match self.known_user()? {
            None => Ok(()),
            Some(u) if self.view.allows(u, ks.id(), access, key, range_end) => Ok(()),
            Some(_) => Err(AuthError::PermissionDenied.into()),
        }
    }

    /// Checks that the user has the root role (etcd's "admin" operations).
    pub fn admin(&self) -> Result<(), AuthFailure> {
        match self.known_user()? {
            None => Ok(()),
            Some(u) if self.view.is_root(u) => Ok(()),
            Some(_) => Err(AuthError::PermissionDenied.into()),
        }
    }

    /// Checks that some user is known (operations any user may do).
    pub fn authenticated(&self) -> Result<(), AuthFailure> {
        Ok(self.known_user().map(|_| ())?)
    }

    /// True when the user is root or has `role` (etcd lets a user read its own roles).
    pub fn admin_or_role(&self, role: &str) -> Result<(), AuthFailure> {
        match self.admin() {
            Err(AuthFailure::Auth(AuthError::PermissionDenied))
                if self.user().is_some_and(|u| self.view.has_role(u, role)) =>
            {
                Ok(())
            }
            other => other,
        }
    }

    /// True when the user is root or is `name` (etcd lets a user read itself).
    pub fn admin_or_self(&self, name: &str) -> Result<(), AuthFailure> {
        match self.admin() {
            Err(AuthFailure::Auth(AuthError::PermissionDenied)) if self.user() == Some(name) => {
                Ok(())
            }
            other => other,
        }
    }

    /// The guard a write checked by this principal is proposed with.
    pub fn guard(&self) -> Guard {
        if self.is_open() {
            Guard {
                keyspace: Keyspace::Auth,
                key: layout::ENABLED.to_vec(),
                mod_revision: self.view.enabled_revision(),
            }
        } else {
            Guard {
                keyspace: Keyspace::Auth,
                key: layout::REVISION.to_vec(),
                mod_revision: self.view.revision,
            }
        }
    }
}

/// The credentials a request presented.
#[derive(Debug, Clone, Default)]
pub struct Credential {
    /// An auth token.
    pub token: Option<String>,
    /// The verified client certificate's common name.
    pub cert_cn: Option<String>,
}

impl Credential {
    /// The token an HTTP request carries in the first of the headers `names` that has one
    /// (`authorization` counts when it is `Bearer <token>`), else `query_token`.
    pub fn from_http(
        headers: &axum::http::HeaderMap,
        names: &[&str],
        query_token: Option<&str>,
    ) -> Credential {
        let token = names
            .iter()
            .find_map(|name| {
                let v = headers.get(*name)?.to_str().ok()?;
                if name.eq_ignore_ascii_case("authorization") {
                    v.strip_prefix("Bearer ").map(str::to_string)
                } else {
                    Some(v.to_string())
                }
            })
            .or_else(|| query_token.map(str::to_string))
            .filter(|t| !t.is_empty());
        Credential {
            token,
            cert_cn: None,
        }
    }
}

/// The live auth state of this member.
pub struct Auth {
    store: Arc<Store>,
    consensus: Consensus,
    tokens: Tokens,
    bcrypt_cost: u32,
    cached: Mutex<Arc<AuthView>>,
}

impl Auth {
    /// The domain over `store`, with the token kind and bcrypt cost of `cfg`.
    pub fn new(store: Arc<Store>, consensus: Consensus, cfg: &Config) -> anyhow::Result<Auth> {
        let tokens = Tokens::parse(&cfg.auth_token, cfg.auth_token_ttl)
            .map_err(|e| anyhow::anyhow!("--auth-token: {e}"))?;
        Ok(Auth {
            store,
            consensus,
            tokens,
            bcrypt_cost: cfg.bcrypt_cost,
            cached: Mutex::new(Arc::new(AuthView::default())),
        })
    }

    /// The auth revision as applied on this member (one index lookup): what a caller that
    /// keeps its own answers compares to know they still hold.
    pub fn revision(&self) -> i64 {
        self.store.mod_revision_in(Keyspace::Auth, layout::REVISION)
    }

    /// The auth state as applied on this member. Rebuilt only when the auth revision moved
    /// since the last call (every change, enabling included, rewrites the `revision` record
    /// in the same txn): otherwise one index lookup.
    pub fn view(&self) -> Arc<AuthView> {
        let revision = self.revision();
        if let Ok(cached) = self.cached.lock() {
            if cached.revision == revision {
                return cached.clone();
            }
        }
        let fresh = Arc::new(self.load());
        if let Ok(mut cached) = self.cached.lock() {
            if fresh.revision >= cached.revision {
                *cached = fresh.clone();
            }
        }
        fresh
    }

    fn load(&self) -> AuthView {
        let all = RangeRequest {
            key: vec![0],
            range_end: vec![0],
            ..Default::default()
        };
        match self.store.range_in(Keyspace::Auth, &all) {
            Ok(resp) => {
                let at = |key: &[u8]| {
                    resp.kvs
                        .iter()
                        .find(|kv| kv.key == key)
                        .map_or(0, |kv| kv.mod_revision)
                };
                AuthView::from_records(
                    at(layout::REVISION),
                    at(layout::ENABLED),
                    resp.kvs
                        .iter()
                        .map(|kv| (kv.key.as_slice(), kv.value.as_slice())),
                )
            }
            Err(e) => {
                // The store failed: nothing is granted (auth stays as strict as it was).
                tracing::error!(error = %e, "reading the auth keyspace");
                let mut view = AuthView::from_records(i64::MAX, 0, []);
                view.enabled = true;
                view
            }
        }
    }

    /// Resolves a request's credentials: a token (etcd's `token` metadata) or, with client
    /// certificate auth, the certificate's CN. A token that does not check out is an error
    /// even when a certificate is also presented (as etcd).
    pub fn principal(&self, cred: &Credential) -> Result<Principal, AuthFailure> {
        let view = self.view();
        let revision = view.revision;
        if !view.enabled {
            return Ok(Principal {
                view,
                who: Who::Open,
                revision,
            });
        }
        let (who, revision) = match (&cred.token, &cred.cert_cn) {
            (Some(token), _) => match self.tokens.check(&view.secret, token) {
                Some(Identity::Simple { user, epoch }) => {
                    if view.user(&user).is_none_or(|u| u.epoch != epoch) {
                        return Err(AuthError::InvalidToken.into());
                    }
                    (Who::User(user), revision)
                }
                Some(Identity::Jwt { user, revision }) => (Who::User(user), revision),
                None => return Err(AuthError::InvalidToken.into()),
            },
            (None, Some(cn)) if !cn.is_empty() => (Who::User(cn.clone()), revision),
            _ => (Who::Anonymous, revision),
        };
        Ok(Principal {
            view,
            who,
            revision,
        })
    }

    /// Checks that the auth state did not move while a read was served for `p` (etcd's
    /// post-read revision check): the same condition a write's guard is checked against.
    pub fn still_current(&self, p: &Principal) -> Result<(), AuthFailure> {
        let g = p.guard();
        if self.store.mod_revision_in(g.keyspace, &g.key) != g.mod_revision {
            return Err(AuthError::OldRevision.into());
        }
        Ok(())
    }

    /// Logs `name` in: a token if the password matches. The hash is checked off the runtime.
    pub async fn authenticate(&self, name: &str, password: &str) -> Result<String, AuthFailure> {
        // See every change acknowledged anywhere before (a user added through another member).
        self.consensus.read_index().await?;
        let view = self.view();
        if !view.enabled {
            return Err(AuthError::NotEnabled.into());
        }
        let user = view.user(name).ok_or(AuthError::AuthFailed)?.clone();
        let hash = user.password.clone().ok_or(AuthError::AuthFailed)?;
        let password = password.to_string();
        let ok =
            tokio::task::spawn_blocking(move || berth_auth::password::verify(&password, &hash))
                .await
                .map_err(|e| AuthError::Internal(e.to_string()))?;
        if !ok {
            tracing::info!(user = %name, "authentication failed: wrong password");
            return Err(AuthError::AuthFailed.into());
        }
        let token = self
            .tokens
            .issue(&view.secret, name, user.epoch, view.revision)?;
        tracing::debug!(user = %name, "authenticated");
        Ok(token)
    }

    /// A bcrypt hash of `password`, computed off the runtime (and before any proposal, so
    /// the apply path never hashes).
    pub async fn hash(&self, password: &str) -> Result<String, AuthFailure> {
        let password = password.to_string();
        let cost = self.bcrypt_cost;
        let hash = tokio::task::spawn_blocking(move || berth_auth::password::hash(&password, cost))
            .await
            .map_err(|e| AuthError::Internal(e.to_string()))??;
        Ok(hash)
    }

    /// Makes a change for `cred`: `admin` says whether it needs root; `change` computes the
    /// record writes from the current view. Committed as one txn in the `Auth` keyspace,
    /// valid only if the auth revision is still the one the checks saw (else checked again
    /// on the new state). Returns the store revision after it.
    pub async fn change(
        &self,
        cred: &Credential,
        admin: bool,
        change: impl Fn(&AuthView) -> Result<Changes, AuthError>,
    ) -> Result<i64, AuthFailure> {
        for _ in 0..CHANGE_ATTEMPTS {
            // Checked against everything acknowledged before, on any member (this member's
            // own last change may have been applied at the leader only so far).
            self.consensus.read_index().await?;
            let p = self.principal(cred)?;
            if admin {
                p.admin()?;
            }
            let changes = change(&p.view)?;
            if changes.is_empty() {
                return Ok(self.store.revision());
            }
            let txn = Self::txn(&p.view, changes);
            match self
                .consensus
                .propose_in(Keyspace::Auth, Command::Txn(txn))
                .await?
            {
                Applied::Txn(resp) if resp.succeeded => {
                    let revision = resp.header.map_or(0, |h| h.revision);
                    tracing::info!(revision, "auth state changed");
                    return Ok(revision);
                }
                // Another change landed first: check again against the new state.
                Applied::Txn(_) => continue,
                other => {
                    tracing::error!(?other, "unexpected result of an auth change");
                    return Err(WriteError::Unknown.into());
                }
            }
        }
        Err(AuthError::OldRevision.into())
    }

    fn txn(view: &AuthView, changes: Changes) -> TxnRequest {
        let mut success: Vec<RequestOp> = changes
            .0
            .into_iter()
            .map(|w| RequestOp {
                request: Some(match w {
                    Write::Put(key, value) => Op::RequestPut(PutRequest {
                        key,
                        value,
                        ..Default::default()
                    }),
                    Write::Delete(key) => Op::RequestDeleteRange(DeleteRangeRequest {
                        key,
                        ..Default::default()
                    }),
                }),
            })
            .collect();
        success.push(RequestOp {
            request: Some(Op::RequestPut(PutRequest {
                key: layout::REVISION.to_vec(),
                ..Default::default()
            })),
        });
        TxnRequest {
            compare: vec![Compare {
                result: CompareResult::Equal as i32,
                target: CompareTarget::Mod as i32,
                key: layout::REVISION.to_vec(),
                target_union: Some(TargetUnion::ModRevision(view.revision)),
                ..Default::default()
            }],
            success,
            failure: Vec::new(),
        }
    }
}
