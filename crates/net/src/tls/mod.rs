//! TLS for every listener and every outgoing connection, with rustls on the `ring` provider
//! (no OpenSSL, no aws-lc-rs), as etcd's `--cert-file`/`--peer-cert-file` family of flags
//! asks.
//!
//! # Layout
//! - [`files`]: reads certificates, keys and CA bundles from PEM files; every error names
//!   the file and what is wrong with it.
//! - [`reload`]: the certificate a side presents, re-read when its files change (rotation
//!   without a restart); a broken new file keeps the old certificate.
//! - [`trust`]: the CA bundles that verify the other end, re-read the same way.
//! - [`suites`]: etcd's `--cipher-suites` (Go's names) and `--tls-min-version`.
//! - [`selfsigned`]: `--auto-tls`: a self-signed certificate generated at start-up.
//! - [`settings`]: one side's settings ([`TlsSettings`]) turned into rustls server and
//!   client configurations.
//! - [`accept`]: TLS handshakes of accepted connections, run concurrently and bounded in
//!   time; the verified client certificate's common name travels with the connection.
//! - [`connect`]: a tonic connector that dials `https://` URLs over TLS.
//! - [`name`]: the subject common name of a DER certificate.
//! - [`stream`]: a connection that is plain or TLS.

pub mod accept;
pub mod connect;
pub mod files;
pub mod name;
pub mod reload;
pub mod selfsigned;
pub mod settings;
pub mod stream;
pub mod suites;
pub mod trust;

pub use accept::{handshake_failures, tls_incoming, ConnInfo, ServerConn};
pub use connect::Connector;
pub use settings::{SkipVerify, TlsSettings, TlsVersion};

use std::path::PathBuf;

/// Why TLS settings cannot be used; every variant names the file or flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read.
    #[error("{}: cannot read: {error}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why (in the message, not a source: chains would print it twice).
        error: std::io::Error,
    },
    /// A file is not PEM, or its PEM is damaged.
    #[error("{}: not a valid PEM file: {why}", path.display())]
    NotPem {
        /// The file.
        path: PathBuf,
        /// What the PEM parser said.
        why: String,
    },
    /// A certificate file holds no certificate.
    #[error("{}: no CERTIFICATE in it", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// A key file holds no private key.
    #[error("{}: no PRIVATE KEY in it", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key is of a type or shape rustls cannot sign with.
    #[error("{}: unusable private key: {why}", path.display())]
    BadKey {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The certificate cannot be parsed.
    #[error("{}: bad certificate: {why}", path.display())]
    BadCertificate {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// The private key is not the certificate's.
    #[error("{}: the private key does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// A flag's value is wrong, or flags do not fit together.
    #[error("{0}")]
    Flags(String),
    /// Generating a self-signed certificate failed.
    #[error("generating a self-signed certificate: {0}")]
    SelfSigned(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

impl From<rustls::Error> for TlsError {
    fn from(e: rustls::Error) -> Self {
        TlsError::Rustls(e.to_string())
    }
}

/// The crypto provider every configuration uses: rustls' `ring` provider. rustls 0.23.48
/// deprecates it for lacking post-quantum key exchange, which only its aws-lc-rs provider
/// has; aws-lc-rs needs cmake and clang to build, which berth does not require.
#[allow(deprecated)]
pub fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}
