//! Active health checks of the gateway's upstreams (`checks.active`): one prober task per
//! upstream node with a check, on every member (health is judged from where the traffic
//! leaves). A prober probes at the check's healthy interval while its node is in and at the
//! unhealthy one while it is out, and follows [`berth_gateway::health::Tally`]'s rule.
//! Snapshots hold the node's [`Probed`] state; the prober holds it weakly and ends when no
//! snapshot names the node under that check any more, so a route or upstream change keeps
//! what was found for nodes it keeps and stops probing the ones it drops; every prober ends
//! when the gateway stops.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};

use berth_gateway::health::{Change, Probe, Probed, Tally};
use berth_gateway::model::{Active, ActiveKind};
use tokio::net::TcpStream;

use crate::metrics::Metrics;

/// Which prober: the upstream (its metrics label), the node, the check, and the client
/// certificate and key (PEM) the upstream shows its nodes over TLS (checks show it too).
type Key = (String, String, Active, Option<(String, String)>);

/// The probers of this member. See the module docs.
#[derive(Default)]
pub struct Probers {
    running: Mutex<HashMap<Key, Weak<Probed>>>,
    /// What verifies `https` probes (set when the gateway starts).
    pub roots: OnceLock<Arc<rustls::RootCertStore>>,
    /// Where changes are counted (set when the gateway starts).
    pub metrics: OnceLock<Arc<Metrics>>,
    /// The gateway's stop signal (set when it starts): probers end with it.
    pub stop: OnceLock<tokio::sync::watch::Receiver<bool>>,
}

impl Probers {
    /// The state of `authority` of upstream `label` under `check`, its prober started when
    /// there is none (a snapshot being built calls this, on the runtime). `client`: the
    /// client certificate and key the upstream shows its nodes, shown by TLS probes too.
    pub fn probed(
        &self,
        label: &str,
        authority: &str,
        check: &Active,
        client: Option<(&str, &str)>,
    ) -> Arc<Probed> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            label.to_string(),
            authority.to_string(),
            check.clone(),
            client.map(|(c, k)| (c.to_string(), k.to_string())),
        );
        if let Some(p) = running.get(&key).and_then(Weak::upgrade) {
            return p;
        }
        running.retain(|_, w| w.strong_count() > 0);
        let probed = Arc::new(Probed::default());
        running.insert(key.clone(), Arc::downgrade(&probed));
        let (roots, metrics) = (self.roots.get().cloned(), self.metrics.get().cloned());
        let stop = self.stop.get().cloned();
        let watched = Arc::downgrade(&probed);
        tokio::spawn(async move {
            let probing = run(key, watched, roots, metrics);
            match stop {
                Some(mut stop) if !*stop.borrow() => {
                    tokio::select! {
                        () = probing => {}
                        _ = stop.changed() => {}
                    }
                }
                Some(_) => {}
                None => probing.await,
            }
        });
        probed
    }
}

/// Probes one node until no snapshot names it.
async fn run(
    (label, authority, check, client): Key,
    state: Weak<Probed>,
    roots: Option<Arc<rustls::RootCertStore>>,
    metrics: Option<Arc<Metrics>>,
) {
    let mut tally = Tally::default();
    let roots = roots.unwrap_or_else(|| Arc::new(rustls::RootCertStore::empty()));
    let client = client.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
    // Built once: a bad setting fails every probe, saying why.
    let tls = match &check.kind {
        ActiveKind::Https { verify } => Some((*verify, &b"http/1.1"[..])),
        ActiveKind::Grpc {
            tls: Some(verify), ..
        } => Some((*verify, &b"h2"[..])),
        _ => None,
    }
    .map(|(verify, alpn)| {
        crate::gateway::node_tls::client_config(verify, client, &roots, alpn).map(Arc::new)
    });
    tracing::debug!(upstream = %label, node = %authority, "gateway: active checks start");
    loop {
        let probe = probe(&authority, &check, tls.as_ref()).await;
        let Some(probed) = state.upgrade() else {
            break;
        };
        match tally.record(probe, &check, &probed) {
            Some(Change::Down) => {
                tracing::warn!(upstream = %label, node = %authority, ?probe, "gateway: node out by active checks");
                if let Some(m) = &metrics {
                    m.observe_gateway_upstream(&label, "check_down");
                }
            }
            Some(Change::Up) => {
                tracing::info!(upstream = %label, node = %authority, "gateway: node back by active checks");
                if let Some(m) = &metrics {
                    m.observe_gateway_upstream(&label, "check_up");
                }
            }
            None => {}
        }
        let wait = if probed.is_down() {
            check.unhealthy_interval
        } else {
            check.healthy_interval
        };
        drop(probed);
        tokio::time::sleep(wait).await;
    }
    tracing::debug!(upstream = %label, node = %authority, "gateway: active checks end");
}

/// One probe of `authority` (its port replaced by the check's `port`, if set). The check's
/// `host`, when set, is the host asked for (HTTP's `Host`, gRPC's `:authority`) and, over
/// TLS (`tls`: the client configuration, or why there is none), the server name; else the
/// node's.
async fn probe(
    authority: &str,
    check: &Active,
    tls: Option<&Result<Arc<rustls::ClientConfig>, String>>,
) -> Probe {
    let host = authority.rsplit_once(':').map_or(authority, |(h, _)| h);
    let addr = match check.port {
        Some(p) => format!("{host}:{p}"),
        None => authority.to_string(),
    };
    let exchange = async {
        let tls = match tls {
            None => None,
            Some(Err(e)) => return Err(e.clone()),
            Some(Ok(cfg)) => {
                let named = check.host.as_deref().unwrap_or(host);
                let name = crate::gateway::node_tls::server_name(named)
                    .ok_or_else(|| format!("{named:?} is no TLS server name"))?;
                Some((name, cfg.clone()))
            }
        };
        match &check.kind {
            ActiveKind::Tcp => TcpStream::connect(addr.as_str())
                .await
                .map(|_| Probe::Connected)
                .map_err(|e| e.to_string()),
            ActiveKind::Grpc { service, .. } => {
                use berth_proto::grpc_health::health_check_response::ServingStatus;
                // An answer other than SERVING (an RPC error included) fails like an HTTP
                // status would; no answer fails like a connect.
                crate::registry::probe::grpc_status(&addr, service, tls, check.host.as_deref())
                    .await
                    .map(|s| match s {
                        Ok(ServingStatus::Serving) => Probe::Connected,
                        _ => Probe::NotServing,
                    })
            }
            ActiveKind::Http | ActiveKind::Https { .. } => {
                let header = check.host.as_deref().unwrap_or(addr.as_str());
                crate::registry::probe::http_status(
                    &addr,
                    tls,
                    header,
                    &check.http_path,
                    &check.req_headers,
                )
                .await
                .map(|s| Probe::Status(s.as_u16()))
            }
        }
    };
    match tokio::time::timeout(check.timeout, exchange).await {
        Ok(Ok(p)) => p,
        Ok(Err(e)) => {
            tracing::debug!(node = %addr, error = %e, "gateway: probe failed");
            Probe::ConnectFailed
        }
        Err(_) => Probe::TimedOut,
    }
}
