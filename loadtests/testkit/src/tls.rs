//! A TLS client for servers with a test certificate (issued for
//! `localhost`), speaking HTTP/2 as gRPC does.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

/// A client configuration trusting the certificates in `ca_pem` only,
/// offering `h2`.
pub fn h2_client_config(ca_pem: &str) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.expect("a PEM certificate")).unwrap();
    }
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    config
}

/// A finished handshake with `addr` as `localhost`, trusting `ca_pem`.
pub async fn connect(addr: SocketAddr, ca_pem: &str) -> TlsStream<TcpStream> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    tokio_rustls::TlsConnector::from(Arc::new(h2_client_config(ca_pem)))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap()
}
