//! End-to-end tests: every test starts real `berth` processes on free loopback ports and talks
//! to them with real clients (the `etcd-client` crate, `etcdctl`, the `berth` CLI).

mod api_gateway;
mod auth;
mod cli;
mod cluster;
mod config_cli;
mod consul;
mod consul_cli;
mod crash;
mod dns;
mod etcdctl;
mod gateway;
mod hardening;
mod harness;
mod history;
mod jetstream;
mod jetstream_cluster;
mod kv;
mod lease;
mod linearizable;
mod listen;
mod maintenance;
mod nacos;
mod nats;
mod partition;
mod patroni;
mod python;
mod server;
mod sim;
mod snapshot;
mod tls;
mod watch;
