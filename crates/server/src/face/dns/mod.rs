//! Consul's DNS interface on `--listen-dns-addr` (UDP and TCP on the same port): service
//! instances as A/AAAA and SRV records (`web.service.consul`, `blue.web.service.consul`,
//! `_web._tcp.service.consul`), nodes (`n1.node.consul`), answered from this member's
//! catalog view (stale reads, as Consul's DNS defaults to) with `--dns-service-ttl` and
//! `--dns-node-ttl`. Every query is counted in `berth_dns_queries`.
//!
//! - `name`: what a query name asks for;
//! - `answer`: the records that answer it, from the catalog;
//! - `wire`: decoding a query and encoding the response within the transport's size.

mod answer;
mod name;
mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_net::{FirstBytes, Incoming};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::{watch, Semaphore};

use crate::config::Config;
use crate::core::Core;
use answer::Ttls;
use wire::{Reply, Transport};

/// How long a TCP connection may stay idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// Most TCP connections served at once; more are closed on accept.
const TCP_CONNECTIONS: usize = 256;

/// The sockets of one DNS address: a UDP socket and a TCP listener on the same port.
pub struct Sockets {
    udp: UdpSocket,
    tcp: Incoming,
}

impl Sockets {
    /// Binds UDP and TCP at `addr` (with port 0, TCP takes the port UDP got). Must run
    /// inside the runtime.
    pub fn bind(addr: SocketAddr, cfg: &Config) -> anyhow::Result<Sockets> {
        let what = || format!("binding the DNS listener {addr} (--listen-dns-addr)");
        let udp = std::net::UdpSocket::bind(addr).with_context(what)?;
        udp.set_nonblocking(true).with_context(what)?;
        let udp = UdpSocket::from_std(udp).with_context(what)?;
        let bound = udp.local_addr().with_context(what)?;
        let tcp = crate::listen::bind(bound, cfg).with_context(what)?;
        tracing::info!(address = %bound, "serving Consul DNS over UDP and TCP");
        Ok(Sockets { udp, tcp })
    }

    /// The address both sockets are bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// What answering needs, shared by the loops.
struct Responder {
    core: Arc<Core>,
    ttls: Ttls,
}

impl Responder {
    fn reply(&self, packet: &[u8], transport: Transport) -> Option<Reply> {
        let reply = wire::reply(packet, transport, |qname, qtype| {
            // A question wakes the registry (this member's node record follows shortly).
            self.core.registry.wake_up();
            let answer = self
                .core
                .registry
                .read(|catalog| answer::answer(catalog, qname, qtype, self.ttls));
            tracing::debug!(
                name = %qname,
                r#type = %qtype,
                rcode = %answer.rcode,
                answers = answer.answers.len(),
                "DNS query"
            );
            answer
        });
        let metrics = &self.core.metrics;
        match &reply {
            Some(r) => {
                metrics.observe_dns(wire::type_label(r.qtype), wire::rcode_label(r.rcode));
                if r.truncated {
                    metrics.dns_truncated.inc();
                }
            }
            None => metrics.observe_dns("none", "dropped"),
        }
        reply
    }
}

fn seconds(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

/// Answers DNS queries on `sockets` until `stop` turns true.
pub async fn serve(
    core: Arc<Core>,
    sockets: Sockets,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let responder = Arc::new(Responder {
        ttls: Ttls {
            service: seconds(core.config.dns_service_ttl),
            node: seconds(core.config.dns_node_ttl),
        },
        core,
    });
    tokio::join!(
        serve_udp(responder.clone(), sockets.udp, stop.clone()),
        serve_tcp(responder, sockets.tcp, stop),
    );
    Ok(())
}

async fn serve_udp(responder: Arc<Responder>, socket: UdpSocket, mut stop: watch::Receiver<bool>) {
    let mut buf = vec![0u8; usize::from(wire::EDNS_PAYLOAD)];
    loop {
        let (len, peer) = tokio::select! {
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    // An ICMP error of an earlier reply, or a datagram too large: the next
                    // one is unaffected.
                    tracing::debug!(error = %e, "DNS over UDP: receive");
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let Some(reply) = responder.reply(&buf[..len], Transport::Udp) else {
            continue;
        };
        if let Err(e) = socket.send_to(&reply.bytes, peer).await {
            tracing::debug!(error = %e, %peer, "DNS over UDP: send");
        }
    }
}

async fn serve_tcp(
    responder: Arc<Responder>,
    mut incoming: Incoming,
    mut stop: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(TCP_CONNECTIONS));
    loop {
        let (conn, peer) = tokio::select! {
            accepted = incoming.accept() => accepted,
            _ = stop.changed() => return,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "DNS over TCP: too many connections, closing one");
            continue;
        };
        let (responder, mut stop) = (responder.clone(), stop.clone());
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                res = serve_conn(&responder, conn) => {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, %peer, "DNS over TCP connection");
                    }
                }
                _ = stop.changed() => {}
            }
        });
    }
}

/// Queries on one TCP connection, each with its 2-byte length, until the client closes it,
/// stays idle for [`TCP_IDLE`], or sends something that gets no answer.
async fn serve_conn(responder: &Responder, mut conn: FirstBytes<TcpStream>) -> std::io::Result<()> {
    let mut buf = Vec::new();
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        }
        buf.resize(usize::from(u16::from_be_bytes(len)), 0);
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut buf)).await {
            Ok(res) => res?,
            Err(_) => return Ok(()),
        };
        let Some(reply) = responder.reply(&buf, Transport::Tcp) else {
            return Ok(());
        };
        // Replies over TCP are cut to 65535 bytes, so the length fits.
        let len = u16::try_from(reply.bytes.len()).unwrap_or(u16::MAX);
        let mut out = Vec::with_capacity(reply.bytes.len() + 2);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply.bytes);
        conn.write_all(&out).await?;
    }
}
