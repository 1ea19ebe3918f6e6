//! The protocols berth speaks, one folder per protocol. A face decodes requests, validates
//! them with pure functions, calls the core's domains, and encodes answers with its own error
//! table; it owns no loop of its own beyond its connections. Each exports a constructor that
//! only [`crate::node`] calls, and no face imports another.

pub mod api;
pub mod apisix;
pub mod consul;
pub mod dns;
pub mod etcd;
pub mod http_status;
pub mod nacos;
pub mod nats;
