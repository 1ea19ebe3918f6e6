//! What a replica needs from the world outside openraft: how it dials its peers and where its
//! blocking storage work runs. Production dials TCP (`https://` peers over TLS, see
//! [`TlsDialer`]) and uses tokio's blocking threads; the deterministic simulation dials its
//! simulated network and runs storage work inline.

use std::fmt;
use std::io;
use std::sync::Arc;

use tonic::transport::{Channel, Endpoint};

/// Opens gRPC channels to peers.
pub trait Dialer: Send + Sync + 'static {
    /// A lazily connecting channel to `endpoint`.
    fn channel(&self, endpoint: Endpoint) -> Channel;
}

/// Dials peers over TCP (the operating system's network), writes coalesced.
#[derive(Debug, Clone, Copy, Default)]
pub struct TcpDialer;

impl Dialer for TcpDialer {
    fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(berth_net::TcpConnector)
    }
}

/// Dials `http://` peers over TCP and `https://` peers over TLS (the peer certificate as
/// client certificate, the server verified against the peer CA), writes coalesced.
#[derive(Debug, Clone)]
pub struct TlsDialer(pub berth_net::tls::Connector);

impl Dialer for TlsDialer {
    fn channel(&self, endpoint: Endpoint) -> Channel {
        endpoint.connect_with_connector_lazy(self.0.clone())
    }
}

/// A shared [`Dialer`].
#[derive(Clone)]
pub struct Transport(Arc<dyn Dialer>);

impl Transport {
    /// A transport using `dialer`.
    pub fn new(dialer: impl Dialer) -> Transport {
        Transport(Arc::new(dialer))
    }

    /// A lazily connecting channel to `endpoint`.
    pub fn channel(&self, endpoint: Endpoint) -> Channel {
        self.0.channel(endpoint)
    }
}

impl Default for Transport {
    fn default() -> Self {
        Transport::new(TcpDialer)
    }
}

impl fmt::Debug for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Transport")
    }
}

/// Where slow storage work runs: log fsyncs and snapshot files. (Short steps — reads and
/// fsync-free redb transactions — always run on the calling task.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StorageIo {
    /// Log fsyncs on a flusher thread, batched (group commit); snapshot files on tokio's
    /// blocking threads.
    #[default]
    Threads,
    /// On the calling task, every log append fsynced before it is reported: nothing runs
    /// outside the async runtime, so a simulation that controls the runtime controls all.
    Inline,
}

impl StorageIo {
    /// Runs `f` where this mode says.
    pub async fn run<T: Send + 'static>(
        self,
        f: impl FnOnce() -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        match self {
            StorageIo::Threads => tokio::task::spawn_blocking(f)
                .await
                .map_err(|e| io::Error::other(e.to_string()))?,
            StorageIo::Inline => f(),
        }
    }
}

/// A replica's environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// How peers are dialed.
    pub transport: Transport,
    /// Where storage work runs.
    pub storage_io: StorageIo,
}
