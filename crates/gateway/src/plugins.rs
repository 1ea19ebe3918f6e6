//! Plugins by APISIX's names and configuration shapes, for the ones berth runs: `key-auth`,
//! `basic-auth`, `jwt-auth`, `limit-count`, `ip-restriction`, `cors`, `proxy-rewrite`,
//! `response-rewrite` and `prometheus`. A plugin berth does not know is refused (400), and
//! so is an APISIX plugin berth does not run yet: accepting a configuration that is then not
//! enforced (an auth plugin above all) would be worse than refusing it.

use std::collections::BTreeMap;

use ipnet::IpNet;
use regex::Regex;
use serde::Deserialize;
use serde_json::Value;

use crate::model::from_value;
use crate::vars::{Template, Vars};
use crate::GatewayError;

/// Where a plugin configuration sits: a route's (or service's) or a consumer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// On a route or a service: how the plugin treats requests.
    Route,
    /// On a consumer: its credentials (auth plugins) or its own limits.
    Consumer,
}

/// APISIX plugins berth does not run yet (refused as such, not as unknown).
const NOT_YET: &[&str] = &[
    "limit-conn",
    "hmac-auth",
    "openid-connect",
    "authz-keycloak",
    "wolf-rbac",
    "ldap-auth",
    "forward-auth",
    "consumer-restriction",
    "uri-blocker",
    "ua-restriction",
    "referer-restriction",
    "csrf",
    "request-id",
    "real-ip",
    "redirect",
    "echo",
    "gzip",
    "brotli",
    "fault-injection",
    "mocking",
    "grpc-transcode",
    "grpc-web",
    "traffic-split",
    "request-validation",
    "proxy-cache",
    "proxy-mirror",
    "workflow",
    "serverless-pre-function",
    "serverless-post-function",
    "http-logger",
    "file-logger",
    "zipkin",
    "opentelemetry",
    "skywalking",
    "body-transformer",
];

/// The plugins of a route, service or consumer, typed.
#[derive(Debug, Clone, Default)]
pub struct Plugins {
    /// `key-auth` on a route.
    pub key_auth: Option<KeyAuth>,
    /// `key-auth` on a consumer: its key.
    pub key_credential: Option<String>,
    /// `basic-auth` on a route.
    pub basic_auth: Option<BasicAuth>,
    /// `basic-auth` on a consumer: its user name and password.
    pub basic_credential: Option<(String, String)>,
    /// `jwt-auth` on a route.
    pub jwt_auth: Option<JwtAuth>,
    /// `jwt-auth` on a consumer: how its tokens are verified.
    pub jwt_credential: Option<JwtCredential>,
    /// `limit-count`.
    pub limit_count: Option<LimitCount>,
    /// `limit-req`.
    pub limit_req: Option<LimitReq>,
    /// `client-control`: the largest request body, in bytes.
    pub max_body_size: Option<u64>,
    /// `api-breaker`.
    pub api_breaker: Option<ApiBreaker>,
    /// `ip-restriction`.
    pub ip_restriction: Option<IpRestriction>,
    /// `cors`.
    pub cors: Option<Cors>,
    /// `proxy-rewrite`.
    pub proxy_rewrite: Option<ProxyRewrite>,
    /// `response-rewrite`.
    pub response_rewrite: Option<ResponseRewrite>,
    /// `prometheus` (berth always counts every route; the plugin is accepted for
    /// compatibility and changes nothing).
    pub prometheus: bool,
}

/// `key-auth` on a route: where the key is read.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyAuth {
    /// The header carrying the key.
    #[serde(default = "apikey")]
    pub header: String,
    /// The query parameter carrying the key (when the header is absent).
    #[serde(default = "apikey")]
    pub query: String,
    /// Remove the key before passing the request on.
    #[serde(default)]
    pub hide_credentials: bool,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

fn apikey() -> String {
    "apikey".into()
}

/// `jwt-auth` on a route: where the token is read, and which claim names the consumer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtAuth {
    /// The header carrying the token (`Bearer ` optional).
    #[serde(default = "authorization")]
    pub header: String,
    /// The query parameter carrying it (when the header is absent).
    #[serde(default = "jwt")]
    pub query: String,
    /// The cookie carrying it (when neither is present).
    #[serde(default = "jwt")]
    pub cookie: String,
    /// Remove the token before passing the request on.
    #[serde(default)]
    pub hide_credentials: bool,
    /// The claim whose value is the consumer's `key`.
    #[serde(default = "key_claim")]
    pub key_claim_name: String,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

fn authorization() -> String {
    "authorization".into()
}

fn jwt() -> String {
    "jwt".into()
}

fn key_claim() -> String {
    "key".into()
}

/// A JWT signature algorithm berth verifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256.
    Hs256,
    /// HMAC with SHA-384.
    Hs384,
    /// HMAC with SHA-512.
    Hs512,
    /// RSA PKCS#1 v1.5 with SHA-256.
    Rs256,
    /// RSA PKCS#1 v1.5 with SHA-384.
    Rs384,
    /// RSA PKCS#1 v1.5 with SHA-512.
    Rs512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
}

impl JwtAlgorithm {
    fn parse(s: &str) -> Option<JwtAlgorithm> {
        Some(match s {
            "HS256" => JwtAlgorithm::Hs256,
            "HS384" => JwtAlgorithm::Hs384,
            "HS512" => JwtAlgorithm::Hs512,
            "RS256" => JwtAlgorithm::Rs256,
            "RS384" => JwtAlgorithm::Rs384,
            "RS512" => JwtAlgorithm::Rs512,
            "ES256" => JwtAlgorithm::Es256,
            "ES384" => JwtAlgorithm::Es384,
            _ => return None,
        })
    }

    /// True for the HMAC algorithms (a shared secret).
    pub fn hmac(self) -> bool {
        matches!(
            self,
            JwtAlgorithm::Hs256 | JwtAlgorithm::Hs384 | JwtAlgorithm::Hs512
        )
    }
}

/// Where a consumer's verification key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JwtKey {
    /// A shared secret (HS*): its bytes.
    Secret(Vec<u8>),
    /// A PEM public key (RS*, ES*).
    PublicKey(String),
    /// A JWKS document at this URL (keys chosen by the token's `kid`).
    Jwks(String),
}

/// `jwt-auth` on a consumer: the token's `key` claim names it; its signature, `exp`, `nbf`,
/// and (when set) `aud` and `iss` are checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtCredential {
    /// The value of the key claim that names this consumer.
    pub key: String,
    /// The algorithm tokens must use (the token's own `alg` must be it).
    pub algorithm: JwtAlgorithm,
    /// The verification key.
    pub verify: JwtKey,
    /// Seconds of clock skew allowed on `exp` and `nbf`.
    pub grace: u64,
    /// The audience tokens must name (berth's; APISIX checks none).
    pub audience: Option<String>,
    /// The issuer tokens must name (berth's; APISIX checks none).
    pub issuer: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JwtCredentialSpec {
    key: String,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    private_key: Option<String>,
    #[serde(default)]
    algorithm: Option<String>,
    #[serde(default)]
    exp: Option<u64>,
    #[serde(default)]
    base64_secret: Option<bool>,
    #[serde(default)]
    lifetime_grace_period: Option<u64>,
    #[serde(default)]
    audience: Option<String>,
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    jwks_uri: Option<String>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

impl JwtCredentialSpec {
    fn parse(self, plugin: &str) -> Result<JwtCredential, GatewayError> {
        let _ = (self.meta, self.exp, self.private_key);
        if self.key.is_empty() {
            return Err(invalid(plugin, "property \"key\" is required"));
        }
        let alg_name = self.algorithm.as_deref().unwrap_or("HS256");
        let algorithm = JwtAlgorithm::parse(alg_name).ok_or_else(|| {
            invalid(plugin, format!("property \"algorithm\" validation failed: matches none of the enum values: {alg_name:?}"))
        })?;
        let verify = match (algorithm.hmac(), self.secret, self.public_key, self.jwks_uri) {
            (true, Some(secret), None, None) => {
                if secret.is_empty() {
                    return Err(invalid(plugin, "property \"secret\" is required"));
                }
                JwtKey::Secret(if self.base64_secret.unwrap_or(false) {
                    decode_base64(&secret)
                        .ok_or_else(|| invalid(plugin, "\"secret\" is not base64"))?
                } else {
                    secret.into_bytes()
                })
            }
            (true, None, ..) => {
                return Err(invalid(plugin, format!("property \"secret\" is required for {alg_name}")))
            }
            (false, None, Some(pem), None) => JwtKey::PublicKey(pem),
            (false, None, None, Some(url)) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(invalid(plugin, "\"jwks_uri\" must be an http:// or https:// URL"));
                }
                JwtKey::Jwks(url)
            }
            _ => {
                return Err(invalid(
                    plugin,
                    format!("{alg_name} takes \"public_key\" or \"jwks_uri\" (one of them), and no \"secret\""),
                ))
            }
        };
        Ok(JwtCredential {
            key: self.key,
            algorithm,
            verify,
            grace: self.lifetime_grace_period.unwrap_or(0),
            audience: self.audience,
            issuer: self.issuer,
        })
    }
}

/// `basic-auth` on a route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BasicAuth {
    /// Remove the `Authorization` header before passing the request on.
    #[serde(default)]
    pub hide_credentials: bool,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyCredential {
    key: String,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BasicCredential {
    username: String,
    password: String,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// What a `limit-count` counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitKey {
    /// One variable's value (`remote_addr`, `http_x_user`, `consumer_name`, ...).
    Var(String),
    /// A template of variables (`$remote_addr $http_x`).
    Combination(String),
    /// One counter for everyone.
    Constant,
}

/// `limit-count`: at most `count` requests per `time_window` seconds per key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitCount {
    /// Requests allowed per window.
    pub count: u64,
    /// The window, in seconds.
    pub time_window: u64,
    /// What requests are counted by.
    pub key: LimitKey,
    /// Status of a refused request.
    pub rejected_code: u16,
    /// Body of a refused request (`{"error_msg": ...}`), if any.
    pub rejected_msg: Option<String>,
    /// Send `X-RateLimit-*` headers.
    pub show_quota_headers: bool,
    /// Routes sharing a group share their counters.
    pub group: Option<String>,
    /// Where the count is kept.
    pub policy: LimitPolicy,
    /// With `cluster`: let requests pass (uncounted) when the leader cannot be asked, instead
    /// of answering 500.
    pub allow_degradation: bool,
}

/// Where `limit-count` keeps its count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitPolicy {
    /// On each member apart (APISIX's `local`): the cluster admits up to members × count.
    Local,
    /// Across the cluster (berth's own policy, in place of APISIX's Redis ones): members take
    /// shares of each window's quota from the Raft leader.
    Cluster,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitCountSpec {
    count: u64,
    time_window: u64,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    rejected_code: Option<u16>,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default)]
    show_limit_quota_header: Option<bool>,
    #[serde(default)]
    allow_degradation: Option<bool>,
    #[serde(default)]
    group: Option<String>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// `api-breaker`: after `failures` unhealthy answers in a row the route answers
/// `break_response_code` itself for 2 s, doubling with every further `failures` in a row up
/// to `max_breaker_sec`; `successes` healthy answers in a row close it.
#[derive(Debug, Clone)]
pub struct ApiBreaker {
    /// The status answered while open.
    pub break_response_code: u16,
    /// The body answered while open.
    pub break_response_body: Option<String>,
    /// Headers answered while open.
    pub break_response_headers: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Longest opening, in seconds.
    pub max_breaker_sec: u64,
    /// Statuses that count as unhealthy.
    pub unhealthy_statuses: Vec<u16>,
    /// Unhealthy answers in a row that open it.
    pub failures: u32,
    /// Statuses that count as healthy.
    pub healthy_statuses: Vec<u16>,
    /// Healthy answers in a row that close it.
    pub successes: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApiBreakerSpec {
    break_response_code: u16,
    #[serde(default)]
    break_response_body: Option<String>,
    #[serde(default)]
    break_response_headers: Option<Vec<KeyValue>>,
    #[serde(default)]
    max_breaker_sec: Option<u64>,
    #[serde(default)]
    unhealthy: Option<BreakerSide>,
    #[serde(default)]
    healthy: Option<BreakerSide>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct KeyValue {
    key: String,
    value: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct BreakerSide {
    #[serde(default)]
    http_statuses: Option<Vec<u16>>,
    #[serde(default)]
    failures: Option<u32>,
    #[serde(default)]
    successes: Option<u32>,
}

/// `limit-req`: nginx's leaky bucket, as GCRA: `rate` requests a second, `burst` more
/// queued (delayed until they conform, or passed at once with `nodelay`), the rest refused.
#[derive(Debug, Clone)]
pub struct LimitReq {
    /// Requests per second.
    pub rate: f64,
    /// Requests above the rate that wait (or pass, with `nodelay`) rather than fail.
    pub burst: f64,
    /// What requests are counted by.
    pub key: LimitKey,
    /// Status of a refused request.
    pub rejected_code: u16,
    /// Body of a refused request (`{"error_msg": ...}`), if any.
    pub rejected_msg: Option<String>,
    /// Pass burst requests at once instead of delaying them.
    pub nodelay: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitReqSpec {
    rate: f64,
    burst: f64,
    #[serde(default)]
    key_type: Option<String>,
    #[serde(default)]
    key: Option<String>,
    #[serde(default)]
    rejected_code: Option<u16>,
    #[serde(default)]
    rejected_msg: Option<String>,
    #[serde(default)]
    nodelay: Option<bool>,
    #[serde(default)]
    allow_degradation: Option<bool>,
    #[serde(default)]
    policy: Option<String>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientControlSpec {
    #[serde(default)]
    max_body_size: Option<u64>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// `ip-restriction`.
#[derive(Debug, Clone)]
pub struct IpRestriction {
    /// Allowed ranges (when set, others are refused).
    pub whitelist: Vec<IpNet>,
    /// Refused ranges.
    pub blacklist: Vec<IpNet>,
    /// The refusal's message.
    pub message: String,
    /// The refusal's status.
    pub response_code: u16,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct IpRestrictionSpec {
    #[serde(default)]
    whitelist: Option<Vec<String>>,
    #[serde(default)]
    blacklist: Option<Vec<String>>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    response_code: Option<u16>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// `cors`.
#[derive(Debug, Clone)]
pub struct Cors {
    /// Allowed origins (`*`: any).
    pub allow_origins: String,
    /// Origins allowed by pattern.
    pub allow_origins_by_regex: Vec<Regex>,
    /// `Access-Control-Allow-Methods`.
    pub allow_methods: String,
    /// `Access-Control-Allow-Headers` (`*`: whatever the preflight asks for).
    pub allow_headers: String,
    /// `Access-Control-Expose-Headers` (empty: not sent).
    pub expose_headers: String,
    /// `Access-Control-Max-Age`, seconds.
    pub max_age: i64,
    /// `Access-Control-Allow-Credentials`.
    pub allow_credential: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CorsSpec {
    #[serde(default)]
    allow_origins: Option<String>,
    #[serde(default)]
    allow_origins_by_regex: Option<Vec<String>>,
    #[serde(default)]
    allow_methods: Option<String>,
    #[serde(default)]
    allow_headers: Option<String>,
    #[serde(default)]
    expose_headers: Option<String>,
    #[serde(default)]
    max_age: Option<i64>,
    #[serde(default)]
    allow_credential: Option<bool>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// Header changes: set (replace), add (append), remove.
#[derive(Debug, Clone, Default)]
pub struct HeaderEdits {
    /// Replaced or created.
    pub set: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Appended.
    pub add: Vec<(http::HeaderName, http::HeaderValue)>,
    /// Removed.
    pub remove: Vec<http::HeaderName>,
    /// Values with nginx variables, filled in per request ([`HeaderEdits::resolved`]): the
    /// header, the value, and whether it is appended (else set).
    pub templated: Vec<(http::HeaderName, Template, bool)>,
}

impl HeaderEdits {
    /// These edits with their variables filled in from `vars` (a value that is not a valid
    /// header value then is left out).
    pub fn resolved(&self, vars: &dyn Vars) -> std::borrow::Cow<'_, HeaderEdits> {
        if self.templated.is_empty() {
            return std::borrow::Cow::Borrowed(self);
        }
        let mut out = HeaderEdits {
            templated: Vec::new(),
            ..self.clone()
        };
        for (name, t, append) in &self.templated {
            let Ok(v) = http::HeaderValue::from_str(&t.render(vars)) else {
                continue;
            };
            let list = if *append { &mut out.add } else { &mut out.set };
            list.push((name.clone(), v));
        }
        std::borrow::Cow::Owned(out)
    }
}

/// `proxy-rewrite`: what the node gets instead of the client's request.
#[derive(Debug, Clone)]
pub struct ProxyRewrite {
    /// A new path (and query), with nginx variables; the request's own query follows it.
    pub uri: Option<Template>,
    /// A path rewrite by pattern: the regex and its replacement (`$1`).
    pub regex_uri: Option<(Regex, String)>,
    /// A new `Host`.
    pub host: Option<http::HeaderValue>,
    /// A new method.
    pub method: Option<http::Method>,
    /// Header changes.
    pub headers: HeaderEdits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProxyRewriteSpec {
    #[serde(default)]
    uri: Option<String>,
    #[serde(default)]
    regex_uri: Option<Vec<String>>,
    #[serde(default)]
    host: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// `response-rewrite`: what the client gets instead of the node's response.
#[derive(Debug, Clone)]
pub struct ResponseRewrite {
    /// A new status.
    pub status_code: Option<u16>,
    /// A new body.
    pub body: Option<bytes_body::Body>,
    /// Header changes.
    pub headers: HeaderEdits,
}

/// A replacement body.
pub mod bytes_body {
    /// A body given in the configuration.
    #[derive(Debug, Clone)]
    pub struct Body(pub Vec<u8>);
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseRewriteSpec {
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_base64: Option<bool>,
    #[serde(default)]
    headers: Option<Value>,
    #[serde(default, rename = "_meta")]
    meta: Option<Value>,
}

/// A limit plugin's `key_type` and `key` (`constant` only where the plugin takes it).
fn limit_key(
    plugin: &str,
    key_type: Option<String>,
    key: Option<String>,
    constant: bool,
) -> Result<LimitKey, GatewayError> {
    let key = key.unwrap_or_else(|| "remote_addr".into());
    match key_type.as_deref().unwrap_or("var") {
        "var" => Ok(LimitKey::Var(key)),
        "var_combination" => Ok(LimitKey::Combination(key)),
        "constant" if constant => Ok(LimitKey::Constant),
        other => Err(invalid(plugin, format!("unknown key_type {other:?}"))),
    }
}

fn invalid(plugin: &str, why: impl std::fmt::Display) -> GatewayError {
    GatewayError::invalid(format!(
        "failed to check the configuration of plugin {plugin} err: {why}"
    ))
}

/// Parses a plugin's configuration as `T`, in the plugin's words on failure.
fn conf<T: serde::de::DeserializeOwned>(plugin: &str, v: &Value) -> Result<T, GatewayError> {
    from_value(v).map_err(|e| match e {
        GatewayError::Invalid(why) => invalid(plugin, why),
        other => other,
    })
}

/// True when the configuration's `_meta.disable` is set: the plugin is off.
fn disabled(v: &Value) -> bool {
    v.get("_meta")
        .and_then(|m| m.get("disable"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

fn header_edits(plugin: &str, v: Option<&Value>) -> Result<HeaderEdits, GatewayError> {
    let Some(v) = v else {
        return Ok(HeaderEdits::default());
    };
    let obj = v
        .as_object()
        .ok_or_else(|| invalid(plugin, "\"headers\" must be an object"))?;
    let structured = obj
        .keys()
        .all(|k| matches!(k.as_str(), "set" | "add" | "remove"));
    let mut templated = Vec::new();
    let mut pairs = |v: Option<&Value>,
                     append: bool|
     -> Result<Vec<(http::HeaderName, http::HeaderValue)>, GatewayError> {
        let Some(v) = v else { return Ok(Vec::new()) };
        let obj = v
            .as_object()
            .ok_or_else(|| invalid(plugin, "header changes must be objects"))?;
        obj.iter()
            .map(|(k, v)| {
                let name = http::HeaderName::from_bytes(k.as_bytes())
                    .map_err(|_| invalid(plugin, format!("{k:?} is not a header name")))?;
                let value = match v {
                    Value::String(s) => s.clone(),
                    Value::Number(n) => n.to_string(),
                    _ => {
                        return Err(invalid(
                            plugin,
                            format!("the value of header {k:?} must be a string"),
                        ))
                    }
                };
                // A value without variables is its text (escaped `\$`s become plain).
                let t = Template::parse(&value);
                let text = t.text();
                let header = http::HeaderValue::from_str(text.as_deref().unwrap_or(&value))
                    .map_err(|_| invalid(plugin, format!("{value:?} is not a header value")))?;
                if text.is_none() {
                    templated.push((name, t, append));
                    return Ok(None);
                }
                Ok(Some((name, header)))
            })
            .filter_map(Result::transpose)
            .collect()
    };
    if !structured {
        let set = pairs(Some(v), false)?;
        return Ok(HeaderEdits {
            set,
            templated,
            ..HeaderEdits::default()
        });
    }
    let remove = match obj.get("remove") {
        None => Vec::new(),
        Some(Value::Array(names)) => names
            .iter()
            .map(|n| {
                n.as_str()
                    .and_then(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
                    .ok_or_else(|| invalid(plugin, format!("{n} is not a header name")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid(plugin, "\"headers.remove\" must be an array")),
    };
    // response-rewrite's `add` is a list of "Name: value" lines.
    let add = match obj.get("add") {
        Some(Value::Array(lines)) => lines
            .iter()
            .map(|l| {
                let (k, v) = l
                    .as_str()
                    .and_then(|l| l.split_once(':'))
                    .ok_or_else(|| invalid(plugin, format!("{l} is not \"Name: value\"")))?;
                let name = http::HeaderName::from_bytes(k.trim().as_bytes())
                    .map_err(|_| invalid(plugin, format!("{k:?} is not a header name")))?;
                let value = http::HeaderValue::from_str(v.trim())
                    .map_err(|_| invalid(plugin, format!("{v:?} is not a header value")))?;
                Ok((name, value))
            })
            .collect::<Result<_, _>>()?,
        other => pairs(other, true)?,
    };
    let set = pairs(obj.get("set"), false)?;
    Ok(HeaderEdits {
        set,
        add,
        remove,
        templated,
    })
}

fn status(plugin: &str, field: &str, code: Option<u16>, default: u16) -> Result<u16, GatewayError> {
    let code = code.unwrap_or(default);
    if (200..=599).contains(&code) {
        Ok(code)
    } else {
        Err(invalid(
            plugin,
            format!("property \"{field}\" validation failed: expected 200 to 599, got {code}"),
        ))
    }
}

impl Plugins {
    /// Parses a `plugins` object in `scope`.
    pub fn parse(
        map: Option<&serde_json::Map<String, Value>>,
        scope: Scope,
    ) -> Result<Plugins, GatewayError> {
        let mut p = Plugins::default();
        let Some(map) = map else { return Ok(p) };
        for (name, v) in map {
            if !v.is_object() {
                return Err(invalid(name, "the configuration must be an object"));
            }
            let off = disabled(v);
            match name.as_str() {
                "key-auth" => match scope {
                    Scope::Route => {
                        let c: KeyAuth = conf(name, v)?;
                        let _ = &c.meta;
                        p.key_auth = (!off).then_some(c);
                    }
                    Scope::Consumer => {
                        let c: KeyCredential = conf(name, v)?;
                        let _ = c.meta;
                        if c.key.is_empty() {
                            return Err(invalid(name, "property \"key\" is required"));
                        }
                        p.key_credential = (!off).then_some(c.key);
                    }
                },
                "basic-auth" => match scope {
                    Scope::Route => {
                        let c: BasicAuth = conf(name, v)?;
                        let _ = &c.meta;
                        p.basic_auth = (!off).then_some(c);
                    }
                    Scope::Consumer => {
                        let c: BasicCredential = conf(name, v)?;
                        let _ = c.meta;
                        if c.username.is_empty() || c.username.contains(':') {
                            return Err(invalid(
                                name,
                                "property \"username\" must be non-empty and hold no ':'",
                            ));
                        }
                        p.basic_credential = (!off).then_some((c.username, c.password));
                    }
                },
                "jwt-auth" => match scope {
                    Scope::Route => {
                        let c: JwtAuth = conf(name, v)?;
                        let _ = &c.meta;
                        p.jwt_auth = (!off).then_some(c);
                    }
                    Scope::Consumer => {
                        let c: JwtCredentialSpec = conf(name, v)?;
                        let c = c.parse(name)?;
                        p.jwt_credential = (!off).then_some(c);
                    }
                },
                "limit-req" => {
                    let c: LimitReqSpec = conf(name, v)?;
                    let _ = (c.meta, c.allow_degradation);
                    if !(c.rate.is_finite()
                        && c.rate > 0.0
                        && c.burst.is_finite()
                        && c.burst >= 0.0)
                    {
                        return Err(invalid(
                            name,
                            "\"rate\" must be above 0 and \"burst\" at least 0",
                        ));
                    }
                    if c.policy.as_deref().is_some_and(|p| p != "local") {
                        return Err(invalid(
                            name,
                            "berth has no Redis: policy \"local\" is what it runs",
                        ));
                    }
                    let key = limit_key(name, c.key_type, c.key, false)?;
                    let limit = LimitReq {
                        rate: c.rate,
                        burst: c.burst,
                        key,
                        rejected_code: status(name, "rejected_code", c.rejected_code, 503)?,
                        rejected_msg: c.rejected_msg,
                        nodelay: c.nodelay.unwrap_or(false),
                    };
                    p.limit_req = (!off).then_some(limit);
                }
                "client-control" if scope == Scope::Route => {
                    let c: ClientControlSpec = conf(name, v)?;
                    let _ = c.meta;
                    p.max_body_size = if off { None } else { c.max_body_size };
                }
                "limit-count" => {
                    let c: LimitCountSpec = conf(name, v)?;
                    let _ = c.meta;
                    if c.count == 0 || c.time_window == 0 {
                        return Err(invalid(
                            name,
                            "\"count\" and \"time_window\" must be above 0",
                        ));
                    }
                    let policy = match c.policy.as_deref().unwrap_or("local") {
                        "local" => LimitPolicy::Local,
                        "cluster" => LimitPolicy::Cluster,
                        "redis" | "redis-cluster" | "redis-sentinel" => {
                            return Err(invalid(name, "berth has no Redis: policy \"cluster\" counts across berth's members (or \"local\", on each member apart)"))
                        }
                        other => return Err(invalid(name, format!("unknown policy {other:?}"))),
                    };
                    let key = limit_key(name, c.key_type, c.key, true)?;
                    let limit = LimitCount {
                        count: c.count,
                        time_window: c.time_window,
                        key,
                        rejected_code: status(name, "rejected_code", c.rejected_code, 503)?,
                        rejected_msg: c.rejected_msg,
                        show_quota_headers: c.show_limit_quota_header.unwrap_or(true),
                        group: c.group,
                        policy,
                        allow_degradation: c.allow_degradation.unwrap_or(false),
                    };
                    p.limit_count = (!off).then_some(limit);
                }
                "api-breaker" if scope == Scope::Route => {
                    let c: ApiBreakerSpec = conf(name, v)?;
                    let _ = c.meta;
                    let (u, h) = (
                        c.unhealthy.unwrap_or_default(),
                        c.healthy.unwrap_or_default(),
                    );
                    let breaker = ApiBreaker {
                        break_response_code: status(
                            name,
                            "break_response_code",
                            Some(c.break_response_code),
                            503,
                        )?,
                        break_response_body: c.break_response_body,
                        break_response_headers: c
                            .break_response_headers
                            .unwrap_or_default()
                            .into_iter()
                            .map(|kv| {
                                Ok((
                                    http::HeaderName::from_bytes(kv.key.as_bytes()).map_err(
                                        |_| {
                                            invalid(
                                                name,
                                                format!("{:?} is not a header name", kv.key),
                                            )
                                        },
                                    )?,
                                    http::HeaderValue::from_str(&kv.value).map_err(|_| {
                                        invalid(
                                            name,
                                            format!("{:?} is not a header value", kv.value),
                                        )
                                    })?,
                                ))
                            })
                            .collect::<Result<_, GatewayError>>()?,
                        max_breaker_sec: c.max_breaker_sec.unwrap_or(300),
                        unhealthy_statuses: u.http_statuses.unwrap_or_else(|| vec![500]),
                        failures: u.failures.unwrap_or(3),
                        healthy_statuses: h.http_statuses.unwrap_or_else(|| vec![200]),
                        successes: h.successes.unwrap_or(3),
                    };
                    if breaker.max_breaker_sec < 3
                        || breaker.failures == 0
                        || breaker.successes == 0
                    {
                        return Err(invalid(
                            name,
                            "max_breaker_sec must be at least 3, failures and successes at least 1",
                        ));
                    }
                    p.api_breaker = (!off).then_some(breaker);
                }
                "ip-restriction" if scope == Scope::Route => {
                    let c: IpRestrictionSpec = conf(name, v)?;
                    let _ = c.meta;
                    let nets = |l: Option<Vec<String>>| -> Result<Vec<IpNet>, GatewayError> {
                        l.unwrap_or_default()
                            .iter()
                            .map(|a| crate::model::parse_net(a, "whitelist"))
                            .collect()
                    };
                    let (whitelist, blacklist) = (nets(c.whitelist)?, nets(c.blacklist)?);
                    if whitelist.is_empty() == blacklist.is_empty() {
                        return Err(invalid(
                            name,
                            "value should match only one schema: \"whitelist\" or \"blacklist\"",
                        ));
                    }
                    let r = IpRestriction {
                        whitelist,
                        blacklist,
                        message: c
                            .message
                            .unwrap_or_else(|| "Your IP address is not allowed".into()),
                        response_code: status(name, "response_code", c.response_code, 403)?,
                    };
                    p.ip_restriction = (!off).then_some(r);
                }
                "cors" if scope == Scope::Route => {
                    let c: CorsSpec = conf(name, v)?;
                    let _ = c.meta;
                    let cors = Cors {
                        allow_origins: c.allow_origins.unwrap_or_else(|| "*".into()),
                        allow_origins_by_regex: c
                            .allow_origins_by_regex
                            .unwrap_or_default()
                            .iter()
                            .map(|r| Regex::new(r).map_err(|e| invalid(name, e)))
                            .collect::<Result<_, _>>()?,
                        allow_methods: c.allow_methods.unwrap_or_else(|| "*".into()),
                        allow_headers: c.allow_headers.unwrap_or_else(|| "*".into()),
                        expose_headers: c.expose_headers.unwrap_or_default(),
                        max_age: c.max_age.unwrap_or(5),
                        allow_credential: c.allow_credential.unwrap_or(false),
                    };
                    if cors.allow_credential
                        && [
                            &cors.allow_origins,
                            &cors.allow_methods,
                            &cors.allow_headers,
                        ]
                        .iter()
                        .any(|s| s.as_str() == "*")
                    {
                        return Err(invalid(
                            name,
                            "you can not set '*' for other option when 'allow_credential' is true",
                        ));
                    }
                    p.cors = (!off).then_some(cors);
                }
                "proxy-rewrite" if scope == Scope::Route => {
                    let c: ProxyRewriteSpec = conf(name, v)?;
                    let _ = &c.meta;
                    if let Some(uri) = &c.uri {
                        if !uri.starts_with('/') {
                            return Err(invalid(name, "property \"uri\" must start with /"));
                        }
                    }
                    let regex_uri = match c.regex_uri {
                        None => None,
                        Some(pair) => match pair.as_slice() {
                            [re, to] => {
                                Some((Regex::new(re).map_err(|e| invalid(name, e))?, to.clone()))
                            }
                            _ => {
                                return Err(invalid(
                                    name,
                                    "property \"regex_uri\" takes [regex, replacement]",
                                ))
                            }
                        },
                    };
                    let rewrite = ProxyRewrite {
                        uri: c.uri.as_deref().map(Template::parse),
                        regex_uri,
                        host: c
                            .host
                            .map(|h| {
                                http::HeaderValue::from_str(&h)
                                    .map_err(|_| invalid(name, "bad host"))
                            })
                            .transpose()?,
                        method: c
                            .method
                            .map(|m| {
                                http::Method::from_bytes(m.as_bytes())
                                    .map_err(|_| invalid(name, "bad method"))
                            })
                            .transpose()?,
                        headers: header_edits(name, c.headers.as_ref())?,
                    };
                    p.proxy_rewrite = (!off).then_some(rewrite);
                }
                "response-rewrite" if scope == Scope::Route => {
                    let c: ResponseRewriteSpec = conf(name, v)?;
                    let _ = &c.meta;
                    let body = match (c.body, c.body_base64.unwrap_or(false)) {
                        (None, _) => None,
                        (Some(b), false) => Some(bytes_body::Body(b.into_bytes())),
                        (Some(b), true) => Some(bytes_body::Body(
                            decode_base64(&b)
                                .ok_or_else(|| invalid(name, "\"body\" is not base64"))?,
                        )),
                    };
                    let rewrite = ResponseRewrite {
                        status_code: c
                            .status_code
                            .map(|s| status(name, "status_code", Some(s), s))
                            .transpose()?,
                        body,
                        headers: header_edits(name, c.headers.as_ref())?,
                    };
                    p.response_rewrite = (!off).then_some(rewrite);
                }
                "prometheus" if scope == Scope::Route => {
                    p.prometheus = !off;
                }
                other if NOT_YET.contains(&other) => {
                    return Err(GatewayError::Unsupported(other.to_string()))
                }
                other => return Err(GatewayError::UnknownPlugin(other.to_string())),
            }
        }
        Ok(p)
    }

    /// `self` (a route's) over `base` (its service's): a plugin the route configures wins.
    pub fn over(&self, base: &Plugins) -> Plugins {
        Plugins {
            key_auth: self.key_auth.clone().or_else(|| base.key_auth.clone()),
            key_credential: None,
            basic_auth: self.basic_auth.clone().or_else(|| base.basic_auth.clone()),
            basic_credential: None,
            jwt_auth: self.jwt_auth.clone().or_else(|| base.jwt_auth.clone()),
            jwt_credential: None,
            limit_count: self
                .limit_count
                .clone()
                .or_else(|| base.limit_count.clone()),
            ip_restriction: self
                .ip_restriction
                .clone()
                .or_else(|| base.ip_restriction.clone()),
            cors: self.cors.clone().or_else(|| base.cors.clone()),
            api_breaker: self
                .api_breaker
                .clone()
                .or_else(|| base.api_breaker.clone()),
            limit_req: self.limit_req.clone().or_else(|| base.limit_req.clone()),
            max_body_size: self.max_body_size.or(base.max_body_size),
            proxy_rewrite: self
                .proxy_rewrite
                .clone()
                .or_else(|| base.proxy_rewrite.clone()),
            response_rewrite: self
                .response_rewrite
                .clone()
                .or_else(|| base.response_rewrite.clone()),
            prometheus: self.prometheus || base.prometheus,
        }
    }

    /// A consumer's plugins over its group's: the consumer's win, its credentials stay.
    pub fn over_group(&self, group: &Plugins) -> Plugins {
        Plugins {
            key_credential: self.key_credential.clone(),
            basic_credential: self.basic_credential.clone(),
            jwt_credential: self.jwt_credential.clone(),
            ..self.over(group)
        }
    }

    /// These plugins but the gates that a global rule runs on its own (`ip-restriction`,
    /// `limit-count`, `limit-req`: each counts or checks once per rule, as APISIX runs a
    /// global rule's plugins apart from the route's).
    pub fn without_gates(&self) -> Plugins {
        Plugins {
            ip_restriction: None,
            limit_count: None,
            limit_req: None,
            ..self.clone()
        }
    }

    /// Only the gates (see [`Plugins::without_gates`]).
    pub fn gates(&self) -> Plugins {
        Plugins {
            ip_restriction: self.ip_restriction.clone(),
            limit_count: self.limit_count.clone(),
            limit_req: self.limit_req.clone(),
            ..Plugins::default()
        }
    }

    /// True when a consumer must be identified (an auth plugin is on).
    pub fn authenticates(&self) -> bool {
        self.key_auth.is_some() || self.basic_auth.is_some() || self.jwt_auth.is_some()
    }
}

/// Standard base64 (with or without padding).
fn decode_base64(s: &str) -> Option<Vec<u8>> {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut map = [255u8; 256];
    for (i, c) in ALPHABET.iter().enumerate() {
        map[*c as usize] = i as u8;
    }
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        let v = map[c as usize];
        if v == 255 {
            return None;
        }
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}

/// The counters of a consumer's credentials, for finding duplicates: two consumers with one
/// key would make a request's consumer ambiguous.
pub fn credentials(p: &Plugins) -> BTreeMap<&'static str, String> {
    let mut m = BTreeMap::new();
    if let Some(k) = &p.key_credential {
        m.insert("key-auth", k.clone());
    }
    if let Some((u, _)) = &p.basic_credential {
        m.insert("basic-auth", u.clone());
    }
    if let Some(j) = &p.jwt_credential {
        m.insert("jwt-auth", j.key.clone());
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value, scope: Scope) -> Result<Plugins, GatewayError> {
        Plugins::parse(v.as_object(), scope)
    }

    #[test]
    fn known_unknown_and_not_yet() {
        let p = parse(
            json!({"key-auth": {}, "limit-count": {"count": 2, "time_window": 60}}),
            Scope::Route,
        )
        .expect("parses");
        assert_eq!(
            p.key_auth.as_ref().map(|k| k.header.as_str()),
            Some("apikey")
        );
        let l = p.limit_count.expect("limit");
        assert_eq!(
            (l.count, l.rejected_code, l.key),
            (2, 503, LimitKey::Var("remote_addr".into()))
        );
        assert_eq!(
            parse(json!({"nope": {}}), Scope::Route).expect_err("unknown"),
            GatewayError::UnknownPlugin("nope".into())
        );
        assert_eq!(
            parse(json!({"limit-conn": {}}), Scope::Route).expect_err("not yet"),
            GatewayError::Unsupported("limit-conn".into())
        );
        let r =
            parse(json!({"limit-req": {"rate": 2, "burst": 1}}), Scope::Route).expect("limit-req");
        assert!(r
            .limit_req
            .is_some_and(|l| !l.nodelay && l.rejected_code == 503));
        assert!(parse(json!({"limit-req": {"rate": 0, "burst": 1}}), Scope::Route).is_err());
        let j = parse(
            json!({"jwt-auth": {"key": "u", "secret": "s"}}),
            Scope::Consumer,
        )
        .expect("jwt");
        let j = j.jwt_credential.expect("credential");
        assert_eq!(
            (j.algorithm, j.verify),
            (JwtAlgorithm::Hs256, JwtKey::Secret(b"s".to_vec()))
        );
        assert!(parse(
            json!({"jwt-auth": {"key": "u", "algorithm": "RS256", "secret": "s"}}),
            Scope::Consumer
        )
        .is_err());
        assert!(parse(
            json!({"jwt-auth": {"key": "u", "algorithm": "none", "secret": "s"}}),
            Scope::Consumer
        )
        .is_err());
        let r = parse(json!({"jwt-auth": {}}), Scope::Route).expect("route jwt-auth");
        assert_eq!(r.jwt_auth.map(|j| j.key_claim_name), Some("key".into()));
        assert!(parse(
            json!({"limit-count": {"count": 1, "time_window": 1, "policy": "redis"}}),
            Scope::Route
        )
        .is_err());
        let lc = parse(
            json!({"limit-count": {"count": 5, "time_window": 2, "policy": "cluster", "allow_degradation": true}}),
            Scope::Route,
        )
        .expect("cluster policy")
        .limit_count
        .expect("limit-count");
        assert_eq!(
            (lc.policy, lc.allow_degradation),
            (LimitPolicy::Cluster, true)
        );
        let lc = parse(
            json!({"limit-count": {"count": 5, "time_window": 2}}),
            Scope::Route,
        )
        .expect("local policy")
        .limit_count
        .expect("limit-count");
        assert_eq!(
            (lc.policy, lc.allow_degradation),
            (LimitPolicy::Local, false)
        );
        assert!(
            parse(json!({"key-auth": {"key": "k"}}), Scope::Route).is_err(),
            "a route's key-auth has no key"
        );
        let c = parse(json!({"key-auth": {"key": "k"}}), Scope::Consumer).expect("credential");
        assert_eq!(c.key_credential.as_deref(), Some("k"));
        let off = parse(
            json!({"key-auth": {"_meta": {"disable": true}}}),
            Scope::Route,
        )
        .expect("off");
        assert!(off.key_auth.is_none());
    }

    #[test]
    fn rewrites() {
        let p = parse(
            json!({"proxy-rewrite": {"regex_uri": ["^/api/(.*)", "/$1"], "headers": {"set": {"X-A": "1"}, "remove": ["X-B"]}},
                   "response-rewrite": {"headers": {"X-C": "2"}, "body": "aGk=", "body_base64": true}}),
            Scope::Route,
        )
        .expect("parses");
        let r = p.proxy_rewrite.expect("proxy-rewrite");
        assert_eq!(r.headers.set.len(), 1);
        assert_eq!(r.headers.remove.len(), 1);
        let rr = p.response_rewrite.expect("response-rewrite");
        assert_eq!(rr.headers.set.len(), 1, "a flat object sets");
        assert_eq!(rr.body.map(|b| b.0), Some(b"hi".to_vec()));
        assert!(parse(json!({"cors": {"allow_credential": true}}), Scope::Route).is_err());
    }
}
