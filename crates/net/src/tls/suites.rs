//! etcd's `--cipher-suites` and `--tls-min-version`. Cipher suites are named as Go (and so
//! etcd) names them; as in Go they restrict the TLS 1.2 suites only (TLS 1.3's are always
//! on). rustls implements only ECDHE key exchange with AEAD ciphers: Go names of other suites
//! (RSA key exchange, CBC, RC4, 3DES) are refused as unsupported, other names as unknown.

use rustls::crypto::ring::cipher_suite as cs;
use rustls::SupportedCipherSuite;

use super::TlsError;

/// Go's names of the suites berth supports (with Go's older aliases).
const SUPPORTED: &[(&str, SupportedCipherSuite)] = &[
    (
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256",
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
        cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384",
        cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
        cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256",
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305",
        cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256",
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
    (
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305",
        cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
    ),
];

/// TLS 1.3 suites: Go accepts their names and ignores them (always on); so does berth.
const TLS13: &[&str] = &[
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
];

/// Suites Go knows that rustls does not implement.
const UNSUPPORTED: &[&str] = &[
    "TLS_RSA_WITH_RC4_128_SHA",
    "TLS_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA",
    "TLS_RSA_WITH_AES_256_CBC_SHA",
    "TLS_RSA_WITH_AES_128_CBC_SHA256",
    "TLS_RSA_WITH_AES_128_GCM_SHA256",
    "TLS_RSA_WITH_AES_256_GCM_SHA384",
    "TLS_ECDHE_ECDSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_RC4_128_SHA",
    "TLS_ECDHE_RSA_WITH_3DES_EDE_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA",
    "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA",
    "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256",
    "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256",
];

/// The suites a comma-separated `--cipher-suites` list allows: every TLS 1.3 suite, and the
/// TLS 1.2 suites it names. An empty list allows every suite.
pub fn parse(list: &str) -> Result<Vec<SupportedCipherSuite>, TlsError> {
    let names: Vec<&str> = list
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .collect();
    let all = rustls::crypto::ring::ALL_CIPHER_SUITES;
    if names.is_empty() {
        return Ok(all.to_vec());
    }
    let mut out: Vec<SupportedCipherSuite> = all
        .iter()
        .copied()
        .filter(|s| matches!(s, SupportedCipherSuite::Tls13(_)))
        .collect();
    for name in names {
        if let Some((_, suite)) = SUPPORTED.iter().find(|(n, _)| *n == name) {
            if !out.contains(suite) {
                out.push(*suite);
            }
        } else if TLS13.contains(&name) {
        } else if UNSUPPORTED.contains(&name) {
            return Err(TlsError::Flags(format!(
                "--cipher-suites: {name} is not supported (berth's TLS offers ECDHE with AES-GCM or ChaCha20-Poly1305 only: {})",
                supported_names()
            )));
        } else {
            return Err(TlsError::Flags(format!(
                "--cipher-suites: unknown cipher suite {name:?} (supported: {})",
                supported_names()
            )));
        }
    }
    Ok(out)
}

fn supported_names() -> String {
    SUPPORTED
        .iter()
        .map(|(n, _)| *n)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_as_go_writes_them() {
        let all = parse("").expect("empty");
        assert_eq!(all.len(), rustls::crypto::ring::ALL_CIPHER_SUITES.len());
        let two =
            parse("TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305")
                .expect("two");
        // Three TLS 1.3 suites stay on.
        assert_eq!(two.len(), 5);
        assert!(two.contains(&cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256));
        assert!(!two.contains(&cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384));
        let e = parse("TLS_RSA_WITH_AES_128_CBC_SHA").expect_err("cbc");
        assert!(e.to_string().contains("not supported"), "{e}");
        let e = parse("TLS_BOGUS").expect_err("unknown");
        assert!(e.to_string().contains("unknown cipher suite"), "{e}");
        assert_eq!(parse("TLS_AES_128_GCM_SHA256").expect("1.3").len(), 3);
    }
}
