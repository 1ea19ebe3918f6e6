//! etcd `Auth` service: enable/disable, login, users and roles, translated onto the security
//! domain (`crate::auth`). Who may do what is etcd's: changes and lists need root; a user may
//! read itself and the roles it has; AuthStatus and Authenticate are open.

use std::sync::Arc;

use berth_auth::{change, Access, AuthError, Permission};
use berth_proto::authpb;
use berth_proto::etcdserverpb::auth_server::Auth;
use berth_proto::etcdserverpb::*;
use berth_store::Keyspace;
use tonic::{Request, Response, Status};

use super::{credential, principal, Headers as _};
use crate::auth::AuthFailure;
use crate::core::Core;

/// The Auth service.
pub struct AuthService {
    core: Arc<Core>,
}

impl AuthService {
    /// Creates the service.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// Makes a root-only change; answers the header at the revision it produced.
    async fn change<T>(
        &self,
        req: &Request<T>,
        f: impl Fn(&berth_auth::AuthView) -> Result<change::Changes, AuthError>,
    ) -> Result<Option<ResponseHeader>, Status> {
        let revision = self.core.auth.change(&credential(req), true, f).await?;
        Ok(self.core.header(revision))
    }

    /// The header for a read of the auth state, after catching up with the leader (etcd
    /// serves these through its log, so they are linearizable).
    async fn caught_up(&self) -> Result<Option<ResponseHeader>, Status> {
        self.core.consensus.read_index().await?;
        Ok(self.core.header(self.core.store.revision()))
    }
}

/// A password's bcrypt hash: the one the client sent already hashed (etcd 3.5's
/// `hashedPassword`), or a new one computed off the runtime.
async fn hash_of(core: &Core, password: &str, hashed: &str) -> Result<String, Status> {
    if !hashed.is_empty() {
        return Ok(hashed.to_string());
    }
    Ok(core.auth.hash(password).await?)
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        let header = self.caught_up().await?;
        let view = self.core.auth.view();
        Ok(Response::new(AuthStatusResponse {
            header,
            enabled: view.enabled,
            auth_revision: u64::try_from(view.revision).unwrap_or(0),
        }))
    }

    async fn authenticate(
        &self,
        req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        let r = req.into_inner();
        let token = self.core.auth.authenticate(&r.name, &r.password).await?;
        Ok(Response::new(AuthenticateResponse {
            header: self.core.header(self.core.store.revision()),
            token,
        }))
    }

    async fn auth_enable(
        &self,
        req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        let header = self.change(&req, change::enable).await?;
        tracing::info!("authentication enabled");
        Ok(Response::new(AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        let header = self.change(&req, |v| Ok(change::disable(v))).await?;
        tracing::info!("authentication disabled");
        Ok(Response::new(AuthDisableResponse { header }))
    }

    async fn user_add(
        &self,
        req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        let r = req.get_ref();
        if r.name.is_empty() {
            return Err(AuthFailure::from(AuthError::UserEmpty).into());
        }
        // Refuse before paying for a hash when the caller may not add users at all.
        self.core.consensus.read_index().await?;
        principal(&self.core, &req)?.admin()?;
        let no_password = r.options.as_ref().is_some_and(|o| o.no_password);
        let hash = if no_password {
            None
        } else {
            Some(hash_of(&self.core, &r.password, &r.hashed_password).await?)
        };
        let name = r.name.clone();
        let header = self
            .change(&req, |v| change::user_add(v, &name, hash.clone()))
            .await?;
        Ok(Response::new(AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        let header = self.caught_up().await?;
        let p = principal(&self.core, &req)?;
        let name = &req.get_ref().name;
        p.admin_or_self(name)?;
        let view = self.core.auth.view();
        let user = view
            .user(name)
            .ok_or(AuthFailure::from(AuthError::UserNotFound))?;
        Ok(Response::new(AuthUserGetResponse {
            header,
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        let header = self.caught_up().await?;
        principal(&self.core, &req)?.admin()?;
        let users = self
            .core
            .auth
            .view()
            .users()
            .map(|u| u.name.clone())
            .collect();
        Ok(Response::new(AuthUserListResponse { header, users }))
    }

    async fn user_delete(
        &self,
        req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self.change(&req, |v| change::user_delete(v, &name)).await?;
        Ok(Response::new(AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        self.core.consensus.read_index().await?;
        principal(&self.core, &req)?.admin()?;
        let r = req.get_ref();
        let hash = hash_of(&self.core, &r.password, &r.hashed_password).await?;
        let name = r.name.clone();
        let header = self
            .change(&req, |v| {
                change::user_change_password(v, &name, hash.clone())
            })
            .await?;
        Ok(Response::new(AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        let (user, role) = (req.get_ref().user.clone(), req.get_ref().role.clone());
        let header = self
            .change(&req, |v| change::user_grant_role(v, &user, &role))
            .await?;
        Ok(Response::new(AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        let (user, role) = (req.get_ref().name.clone(), req.get_ref().role.clone());
        let header = self
            .change(&req, |v| change::user_revoke_role(v, &user, &role))
            .await?;
        Ok(Response::new(AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        let name = req.get_ref().name.clone();
        let header = self.change(&req, |v| change::role_add(v, &name)).await?;
        Ok(Response::new(AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        let header = self.caught_up().await?;
        let p = principal(&self.core, &req)?;
        let name = &req.get_ref().role;
        p.admin_or_role(name)?;
        let view = self.core.auth.view();
        let role = view
            .role(name)
            .ok_or(AuthFailure::from(AuthError::RoleNotFound))?;
        // The etcd face shows the grants of its own keyspace only.
        let perm = role
            .permissions
            .iter()
            .filter(|q| q.keyspace == Keyspace::User.id())
            .map(|q| authpb::Permission {
                perm_type: q.access.to_etcd(),
                key: q.key.clone(),
                range_end: q.range_end.clone(),
            })
            .collect();
        Ok(Response::new(AuthRoleGetResponse { header, perm }))
    }

    async fn role_list(
        &self,
        req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        let header = self.caught_up().await?;
        principal(&self.core, &req)?.admin()?;
        let roles = self
            .core
            .auth
            .view()
            .roles()
            .map(|r| r.name.clone())
            .collect();
        Ok(Response::new(AuthRoleListResponse { header, roles }))
    }

    async fn role_delete(
        &self,
        req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        let name = req.get_ref().role.clone();
        let header = self.change(&req, |v| change::role_delete(v, &name)).await?;
        Ok(Response::new(AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        let r = req.get_ref();
        let not_given = || AuthFailure::from(AuthError::PermissionNotGiven);
        let perm = r.perm.as_ref().ok_or_else(not_given)?;
        let access = Access::from_etcd(perm.perm_type).ok_or_else(not_given)?;
        let grant = Permission {
            keyspace: Keyspace::User.id(),
            access,
            key: perm.key.clone(),
            range_end: perm.range_end.clone(),
        };
        let name = r.name.clone();
        let header = self
            .change(&req, |v| {
                change::role_grant_permission(v, &name, grant.clone())
            })
            .await?;
        Ok(Response::new(AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        let r = req.get_ref();
        let (role, key, end) = (r.role.clone(), r.key.clone(), r.range_end.clone());
        let header = self
            .change(&req, |v| {
                change::role_revoke_permission(v, &role, Keyspace::User.id(), &key, &end)
            })
            .await?;
        Ok(Response::new(AuthRoleRevokePermissionResponse { header }))
    }
}
