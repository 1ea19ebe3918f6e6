//! etcd `Auth` service. Authentication is not built yet: status reports it disabled and
//! Authenticate answers as etcd does with auth off; listing users and roles answers empty,
//! and changing them is refused until auth is built.

use std::sync::Arc;

use berth_proto::etcdserverpb::auth_server::Auth;
use berth_proto::etcdserverpb::*;
use tonic::{Request, Response, Status};

use super::Headers as _;
use crate::core::Core;
use crate::face::etcd::errors::ApiError;

/// The Auth service.
pub struct AuthService {
    core: Arc<Core>,
}

impl AuthService {
    /// Creates the service.
    pub fn new(core: Arc<Core>) -> Self {
        Self { core }
    }
}

fn not_built(what: &str) -> Status {
    Status::unimplemented(format!(
        "berth: {what} is not built yet (auth is disabled in this build)"
    ))
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_status(
        &self,
        _req: Request<AuthStatusRequest>,
    ) -> Result<Response<AuthStatusResponse>, Status> {
        Ok(Response::new(AuthStatusResponse {
            header: self.core.header(self.core.store.revision()),
            enabled: false,
            auth_revision: 0,
        }))
    }

    async fn authenticate(
        &self,
        _req: Request<AuthenticateRequest>,
    ) -> Result<Response<AuthenticateResponse>, Status> {
        Err(ApiError::AuthNotEnabled.into())
    }

    async fn auth_disable(
        &self,
        _req: Request<AuthDisableRequest>,
    ) -> Result<Response<AuthDisableResponse>, Status> {
        // Disabling auth that is off is a successful no-op in etcd.
        Ok(Response::new(AuthDisableResponse {
            header: self.core.header(self.core.store.revision()),
        }))
    }

    async fn auth_enable(
        &self,
        _req: Request<AuthEnableRequest>,
    ) -> Result<Response<AuthEnableResponse>, Status> {
        Err(not_built("auth enable"))
    }

    async fn user_add(
        &self,
        _req: Request<AuthUserAddRequest>,
    ) -> Result<Response<AuthUserAddResponse>, Status> {
        Err(not_built("user add"))
    }

    async fn user_get(
        &self,
        _req: Request<AuthUserGetRequest>,
    ) -> Result<Response<AuthUserGetResponse>, Status> {
        Err(not_built("user get"))
    }

    async fn user_list(
        &self,
        _req: Request<AuthUserListRequest>,
    ) -> Result<Response<AuthUserListResponse>, Status> {
        // No users can exist until user and role management is built: the list is empty.
        Ok(Response::new(AuthUserListResponse {
            header: self.core.header(self.core.store.revision()),
            users: Vec::new(),
        }))
    }

    async fn user_delete(
        &self,
        _req: Request<AuthUserDeleteRequest>,
    ) -> Result<Response<AuthUserDeleteResponse>, Status> {
        Err(not_built("user delete"))
    }

    async fn user_change_password(
        &self,
        _req: Request<AuthUserChangePasswordRequest>,
    ) -> Result<Response<AuthUserChangePasswordResponse>, Status> {
        Err(not_built("user passwd"))
    }

    async fn user_grant_role(
        &self,
        _req: Request<AuthUserGrantRoleRequest>,
    ) -> Result<Response<AuthUserGrantRoleResponse>, Status> {
        Err(not_built("user grant-role"))
    }

    async fn user_revoke_role(
        &self,
        _req: Request<AuthUserRevokeRoleRequest>,
    ) -> Result<Response<AuthUserRevokeRoleResponse>, Status> {
        Err(not_built("user revoke-role"))
    }

    async fn role_add(
        &self,
        _req: Request<AuthRoleAddRequest>,
    ) -> Result<Response<AuthRoleAddResponse>, Status> {
        Err(not_built("role add"))
    }

    async fn role_get(
        &self,
        _req: Request<AuthRoleGetRequest>,
    ) -> Result<Response<AuthRoleGetResponse>, Status> {
        Err(not_built("role get"))
    }

    async fn role_list(
        &self,
        _req: Request<AuthRoleListRequest>,
    ) -> Result<Response<AuthRoleListResponse>, Status> {
        // No roles can exist until user and role management is built: the list is empty.
        Ok(Response::new(AuthRoleListResponse {
            header: self.core.header(self.core.store.revision()),
            roles: Vec::new(),
        }))
    }

    async fn role_delete(
        &self,
        _req: Request<AuthRoleDeleteRequest>,
    ) -> Result<Response<AuthRoleDeleteResponse>, Status> {
        Err(not_built("role delete"))
    }

    async fn role_grant_permission(
        &self,
        _req: Request<AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<AuthRoleGrantPermissionResponse>, Status> {
        Err(not_built("role grant-permission"))
    }

    async fn role_revoke_permission(
        &self,
        _req: Request<AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<AuthRoleRevokePermissionResponse>, Status> {
        Err(not_built("role revoke-permission"))
    }
}
