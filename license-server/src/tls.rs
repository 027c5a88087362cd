//! TLS identity of the gRPC listener: certificate files, or a self-signed
//! development certificate generated at start.

use std::path::PathBuf;
use std::sync::Arc;

use loaves_http::tls::{ServerConfig, grpc_server_config};
use sha2::{Digest, Sha256};

use crate::config::TlsConfig;

/// Why the TLS identity could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The development certificate could not be generated.
    #[error("generating the development certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// The certificate file holds no PEM certificate.
    #[error("{0}: no PEM certificate found")]
    NoCertificate(PathBuf),
    /// The certificate and key do not make a TLS configuration.
    #[error("TLS identity: {0}")]
    Config(#[from] loaves_http::tls::TlsError),
}

/// The server's certificate and key.
pub struct TlsMaterial {
    /// For the TLS front end of the gRPC listener (ALPN `h2`).
    pub server_config: Arc<ServerConfig>,
    /// The certificate chain (PEM), for clients to trust in development.
    pub cert_pem: String,
    /// SHA-256 of the leaf certificate (DER), hex.
    pub fingerprint: String,
    /// Whether it was generated at start.
    pub generated: bool,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("fingerprint", &self.fingerprint)
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

fn read(path: &PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Io {
        path: path.clone(),
        source,
    })
}

/// SHA-256 fingerprint (hex) of the first certificate of a PEM chain.
pub fn pem_fingerprint(pem: &str) -> Option<String> {
    use base64::Engine;
    let start = pem.find("-----BEGIN CERTIFICATE-----")? + "-----BEGIN CERTIFICATE-----".len();
    let end = start + pem[start..].find("-----END CERTIFICATE-----")?;
    let b64: String = pem[start..end]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some(hex::encode(Sha256::digest(&der)))
}

/// Loads the configured certificate, or generates a development one.
pub fn load(config: &TlsConfig) -> Result<TlsMaterial, TlsError> {
    if let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) {
        let cert = read(cert_file)?;
        let key = zeroize::Zeroizing::new(read(key_file)?);
        let cert_pem = String::from_utf8_lossy(&cert).into_owned();
        let fingerprint =
            pem_fingerprint(&cert_pem).ok_or_else(|| TlsError::NoCertificate(cert_file.clone()))?;
        return Ok(TlsMaterial {
            server_config: Arc::new(grpc_server_config(&cert, key.as_slice())?),
            cert_pem,
            fingerprint,
            generated: false,
        });
    }
    let certified =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?;
    let cert_pem = certified.cert.pem();
    let key_pem = zeroize::Zeroizing::new(certified.signing_key.serialize_pem());
    let fingerprint = hex::encode(Sha256::digest(certified.cert.der()));
    if let Some(out) = &config.dev_cert_out {
        std::fs::write(out, &cert_pem).map_err(|source| TlsError::Io {
            path: out.clone(),
            source,
        })?;
    }
    Ok(TlsMaterial {
        server_config: Arc::new(grpc_server_config(cert_pem.as_bytes(), key_pem.as_bytes())?),
        cert_pem,
        fingerprint,
        generated: true,
    })
}
