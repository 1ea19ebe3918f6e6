//! berth's gateway domain: routes, services, upstreams, consumers and certificates as
//! APISIX's Admin API v3 shapes them, compiled into an immutable routing table, and the load
//! balancers that pick upstream nodes. No network code: the server's data plane
//! (`crates/server/src/gateway`) serves requests with what this crate builds, and its admin
//! face (`face/apisix`) stores what this crate validates.
//!
//! - [`model`]: the resources, parsed (parsing is validation);
//! - [`plugins`]: the plugins berth runs, by APISIX's names and shapes;
//! - [`vars`]: route predicates (`vars`);
//! - [`table`]: the routing table and its stated match order;
//! - [`balance`]: node pickers and nodes' live figures;
//! - [`health`]: the rule active health checks follow;
//! - [`layout`]: where resources live in the `Gateway` keyspace;
//! - [`error`]: what the domain refuses.

pub mod balance;
pub mod error;
pub mod health;
pub mod layout;
pub mod model;
pub mod plugins;
pub mod table;
pub mod vars;

pub use error::GatewayError;
pub use model::{ClientCert, Consumer, Kind, NodeTls, PluginSet, Route, Service, Ssl, Upstream};
