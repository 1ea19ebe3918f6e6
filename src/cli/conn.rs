//! Connections for client commands: normalises `--endpoints`, dials them in order within
//! `--dial-timeout` (`https://` ones over TLS with `--cacert`/`--cert`/`--key`), bounds each
//! request by `--command-timeout` and turns gRPC errors into text.

use std::future::Future;
use std::time::Duration;

use std::sync::Arc;

use anyhow::{anyhow, bail, Result};
use berth_proto::client::{Token, Transport};
use berth_proto::etcdserverpb::{
    auth_client::AuthClient, cluster_client::ClusterClient, kv_client::KvClient,
    lease_client::LeaseClient, maintenance_client::MaintenanceClient, watch_client::WatchClient,
    AuthenticateRequest, MemberListRequest, MemberListResponse,
};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// Largest response a client accepts; etcd's own client allows up to 2 GiB.
const MAX_RECV: usize = i32::MAX as usize;

/// The message etcdctl prints when a request outlives `--command-timeout`.
pub const DEADLINE_EXCEEDED: &str = "context deadline exceeded";

/// Endpoints and timeouts shared by every command.
#[derive(Debug, Clone)]
pub struct Conn {
    endpoints: Vec<String>,
    dial_timeout: Duration,
    command_timeout: Duration,
    /// Dials plain or TLS by the URL's scheme.
    connector: berth_net::tls::Connector,
    /// TLS flags were given: endpoints without a scheme use TLS.
    tls: bool,
    /// `--user`/`--password`: logged in once, on the first connection.
    user: Option<(String, String)>,
    /// The token of that login, shared by every channel (a token works on every member).
    token: Arc<tokio::sync::OnceCell<Token>>,
}

impl Conn {
    /// Checks the endpoint list (non-empty, plain `http`) and keeps the timeouts.
    pub fn new(
        endpoints: Vec<String>,
        dial_timeout: Duration,
        command_timeout: Duration,
    ) -> Result<Self> {
        let endpoints: Vec<String> = endpoints
            .into_iter()
            .map(|e| e.trim().to_string())
            .filter(|e| !e.is_empty())
            .collect();
        if endpoints.is_empty() {
            bail!("no endpoints given");
        }
        for ep in &endpoints {
            endpoint_uri(ep)?;
        }
        Ok(Self {
            endpoints,
            dial_timeout,
            command_timeout,
            connector: berth_net::tls::Connector::default(),
            tls: false,
            user: None,
            token: Arc::default(),
        })
    }

    /// Logs in as etcdctl's `--user name[:password]` and `--password` say: the password in
    /// one of the two, never both.
    pub fn with_user(mut self, user: Option<String>, password: Option<String>) -> Result<Self> {
        self.user = credentials(user, password)?;
        Ok(self)
    }

    /// The login `--user`/`--password` gave, if any.
    pub fn user(&self) -> Option<&(String, String)> {
        self.user.as_ref()
    }

    /// `ch` with the login's token on every request (logging in first if not yet done).
    async fn authorized(&self, ch: Channel) -> Result<Transport> {
        let token = self
            .token
            .get_or_try_init(|| async {
                let Some((name, password)) = self.user.clone() else {
                    return Ok(Token::default());
                };
                let resp = self
                    .call(
                        AuthClient::new(ch.clone())
                            .authenticate(AuthenticateRequest { name, password }),
                    )
                    .await?;
                Token::new(&resp.token).map_err(|e| anyhow!("the server sent a bad token: {e}"))
            })
            .await?;
        Ok(InterceptedService::new(ch, token.clone()))
    }

    /// Logs in as `--user` over the etcd API and returns the token: what the commands that
    /// speak berth's HTTP APIs send, since they take the same tokens. `None` without `--user`,
    /// or when no endpoint answers (the HTTP API may be a Consul agent's, with no etcd API
    /// beside it): the HTTP API then says whether it needs a token. A refused login is an
    /// error.
    pub async fn login(&self) -> Result<Option<String>> {
        let Some((name, password)) = &self.user else {
            return Ok(None);
        };
        for ep in &self.endpoints {
            if let Ok(ch) = self.dial(ep).await {
                let req = AuthenticateRequest {
                    name: name.clone(),
                    password: password.clone(),
                };
                let resp = self.call(AuthClient::new(ch).authenticate(req)).await?;
                return Ok(Some(resp.token));
            }
        }
        Ok(None)
    }

    /// Uses TLS settings (`--cacert`, `--cert`, `--key`): for `https://` endpoints, and for
    /// endpoints without a scheme. Files are read now, so a bad one fails before dialing.
    pub fn with_tls(mut self, tls: Option<berth_net::tls::TlsSettings>) -> Result<Self> {
        if let Some(settings) = tls {
            let config = settings
                .client_config("--cacert (or --insecure-skip-tls-verify)")
                .map_err(|e| anyhow!("{e}"))?;
            self.connector = berth_net::tls::Connector::new(Some(std::sync::Arc::new(config)));
            self.tls = true;
        }
        Ok(self)
    }

    /// The endpoints as the user wrote them.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// `--command-timeout`: how long one request may take.
    pub fn command_timeout(&self) -> Duration {
        self.command_timeout
    }

    /// Dials the endpoints in order and returns the first channel that connects (logged in
    /// when `--user` is given).
    pub async fn channel(&self) -> Result<Transport> {
        let mut errors = Vec::new();
        for ep in &self.endpoints {
            match self.dial(ep).await {
                Ok(ch) => return self.authorized(ch).await,
                Err(e) => errors.push(format!("{e:#}")),
            }
        }
        Err(anyhow!(errors.join("; ")))
    }

    /// Dials exactly one endpoint (commands that report per endpoint use this), logged in
    /// when `--user` is given.
    pub async fn channel_to(&self, ep: &str) -> Result<Transport> {
        let ch = self.dial(ep).await?;
        self.authorized(ch).await
    }

    async fn dial(&self, ep: &str) -> Result<Channel> {
        let mut uri = endpoint_uri(ep)?;
        if self.tls && !ep.contains("://") {
            uri = uri.replacen("http://", "https://", 1);
        }
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| anyhow!("invalid endpoint {ep:?}: {e}"))?
            .connect_timeout(self.dial_timeout);
        let connect = endpoint.connect_with_connector(self.connector.clone());
        match tokio::time::timeout(self.dial_timeout, connect).await {
            Ok(Ok(ch)) => Ok(ch),
            Ok(Err(e)) => Err(anyhow!("failed to connect to {ep}: {}", error_chain(&e))),
            Err(_) => Err(anyhow!(
                "failed to connect to {ep}: {DEADLINE_EXCEEDED} (dial timeout {:?})",
                self.dial_timeout
            )),
        }
    }

    /// A KV client on the first reachable endpoint.
    pub async fn kv(&self) -> Result<KvClient<Transport>> {
        Ok(KvClient::new(self.channel().await?).max_decoding_message_size(MAX_RECV))
    }

    /// A Watch client on the first reachable endpoint.
    pub async fn watch(&self) -> Result<WatchClient<Transport>> {
        Ok(WatchClient::new(self.channel().await?).max_decoding_message_size(MAX_RECV))
    }

    /// A Lease client on the first reachable endpoint.
    pub async fn lease(&self) -> Result<LeaseClient<Transport>> {
        Ok(LeaseClient::new(self.channel().await?).max_decoding_message_size(MAX_RECV))
    }

    /// A Cluster client on the first reachable endpoint.
    pub async fn cluster(&self) -> Result<ClusterClient<Transport>> {
        Ok(ClusterClient::new(self.channel().await?).max_decoding_message_size(MAX_RECV))
    }

    /// The member list, as the first reachable endpoint knows it (not linearizable, as
    /// etcdctl asks).
    pub async fn member_list(&self) -> Result<MemberListResponse> {
        let mut c = self.cluster().await?;
        self.call(c.member_list(MemberListRequest {
            linearizable: false,
        }))
        .await
    }

    /// A Maintenance client on the first reachable endpoint.
    pub async fn maintenance(&self) -> Result<MaintenanceClient<Transport>> {
        Ok(maintenance(self.channel().await?))
    }

    /// A Maintenance client on one given endpoint.
    pub async fn maintenance_to(&self, ep: &str) -> Result<MaintenanceClient<Transport>> {
        Ok(maintenance(self.channel_to(ep).await?))
    }

    /// Awaits one RPC within `--command-timeout`, mapping failures to etcdctl's messages.
    pub async fn call<T>(
        &self,
        rpc: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T> {
        match tokio::time::timeout(self.command_timeout, rpc).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(status_error(&status)),
            Err(_) => Err(anyhow!(DEADLINE_EXCEEDED)),
        }
    }
}

fn maintenance(ch: Transport) -> MaintenanceClient<Transport> {
    MaintenanceClient::new(ch).max_decoding_message_size(MAX_RECV)
}

/// Turns `host:port` or `http://host:port` into the URI tonic dials.
pub fn endpoint_uri(ep: &str) -> Result<String> {
    let ep = ep.trim().trim_end_matches('/');
    if let Some(rest) = ep.strip_prefix("http://") {
        if rest.is_empty() {
            bail!("invalid endpoint {ep:?}");
        }
        return Ok(ep.to_string());
    }
    if let Some(rest) = ep.strip_prefix("https://") {
        if rest.is_empty() {
            bail!("invalid endpoint {ep:?}");
        }
        return Ok(ep.to_string());
    }
    if ep.contains("://") {
        bail!("endpoint {ep}: only http:// and https:// endpoints are supported");
    }
    if ep.is_empty() {
        bail!("empty endpoint");
    }
    Ok(format!("http://{ep}"))
}

/// A failed RPC: its gRPC code (for callers that treat some codes specially) and the text
/// etcd clients show, which is the status message (etcd puts `etcdserver: ...` there).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc {
    /// The gRPC status code.
    pub code: tonic::Code,
    /// The message shown to the user.
    pub message: String,
}

impl std::fmt::Display for Rpc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Rpc {}

/// Wraps a gRPC status as an [`Rpc`] error.
pub fn status_error(status: &tonic::Status) -> anyhow::Error {
    let mut message = match status.message() {
        "" => status.code().description().to_string(),
        m => m.to_string(),
    };
    // A local transport failure ("transport error") says why in its sources, e.g. that a
    // TLS server refused the client certificate.
    if let Some(source) = std::error::Error::source(status) {
        let chain = error_chain(source);
        message = if chain.starts_with(&message) {
            chain
        } else {
            format!("{message}: {chain}")
        };
    }
    anyhow::Error::new(Rpc {
        code: status.code(),
        message,
    })
}

/// `e` and its sources joined with `: `, since transport errors hide the useful part
/// (e.g. "Connection refused") in their source chain.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut parts = vec![e.to_string()];
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        cur = s.source();
    }
    parts.join(": ")
}

/// etcdctl's `--user name[:password]` and `--password` as (name, password): the password in
/// one of the two, never both.
pub fn credentials(
    user: Option<String>,
    password: Option<String>,
) -> Result<Option<(String, String)>> {
    let Some(user) = user else {
        if password.is_some() {
            bail!("--password given without --user");
        }
        return Ok(None);
    };
    let (name, pw) = match (user.split_once(':'), password) {
        (Some(_), Some(_)) => {
            bail!("--user {user:?}: the password is in --password, so --user must not hold one")
        }
        (Some((name, pw)), None) => (name.to_string(), pw.to_string()),
        (None, Some(pw)) => (user.clone(), pw),
        (None, None) => {
            bail!("--user {user}: no password given (use --user {user}:PASSWORD or --password)")
        }
    };
    if name.is_empty() {
        bail!("--user: the user name is empty");
    }
    Ok(Some((name, pw)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_accept_with_or_without_scheme() {
        assert_eq!(
            endpoint_uri("127.0.0.1:2379").ok().as_deref(),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(
            endpoint_uri("http://127.0.0.1:2379/").ok().as_deref(),
            Some("http://127.0.0.1:2379")
        );
        assert_eq!(
            endpoint_uri("https://127.0.0.1:2379").expect("https"),
            "https://127.0.0.1:2379"
        );
        assert!(endpoint_uri("unix://x").is_err());
        assert!(endpoint_uri("").is_err());
    }

    #[test]
    fn conn_rejects_empty_list() {
        let t = Duration::from_secs(1);
        assert!(Conn::new(vec![" ".into()], t, t).is_err());
        let c = Conn::new(vec!["a:1".into(), "http://b:2".into()], t, t);
        assert_eq!(c.map(|c| c.endpoints().len()).ok(), Some(2));
    }

    #[test]
    fn status_messages_are_etcd_strings() {
        let s =
            tonic::Status::out_of_range("etcdserver: mvcc: required revision has been compacted");
        assert_eq!(
            status_error(&s).to_string(),
            "etcdserver: mvcc: required revision has been compacted"
        );
        let s = tonic::Status::unavailable("");
        assert_eq!(
            status_error(&s).to_string(),
            "The service is currently unavailable"
        );
    }
}
