//! Peer identity on QUIC: self-signed Ed25519 certificates and mutual TLS.
//!
//! Every Loaves process (viewer, seed, tracker) owns an Ed25519
//! [`SigningKeyPair`]. Its QUIC certificate is a self-signed X.509 certificate
//! for *that same key*, so the key a session token names
//! (`SessionTokenBody.peer_public_key`) is the key that signs the TLS
//! handshake. There is no certificate authority: trust comes from the token,
//! not from the certificate. The verifiers here therefore accept any
//! well-formed, self-signed Ed25519 certificate whose handshake signature
//! verifies, and the application then calls [`peer_public_key`] on the
//! connection's peer chain and checks that it equals the key named in the
//! verified token (or seed credential). Until that check passes, a connection
//! proves only that its peer holds *some* Ed25519 key.
//!
//! Client certificates are mandatory (mutual TLS) in both directions: the
//! server configuration refuses clients without a certificate.
//!
//! Only TLS 1.3 is offered (QUIC requires it) and only the Ed25519 signature
//! scheme is accepted. Certificate validity dates are not checked: the
//! certificate is a key container, the token carries the validity window.
//!
//! Cryptography comes from `ring` through rustls's provider (handshake
//! signatures) and `ed25519-dalek` (certificate self-signatures).

use std::sync::Arc;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::{Signature, VerifyingKey};
use rustls::DigitallySignedStruct;
use rustls::SignatureScheme;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};

use loaves_proto::keys::{SigningKeyPair, verifying_key_from_slice};

/// The server name clients put in their TLS ClientHello. It is never checked:
/// peers are identified by key, not by name.
pub const SERVER_NAME: &str = "loaves.invalid";

/// DER of the AlgorithmIdentifier for Ed25519 (RFC 8410): OID 1.3.101.112,
/// parameters absent.
const ED25519_ALGORITHM_ID: &[u8] = &[0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70];

/// Largest certificate accepted, in bytes. Ours are about 300 bytes.
pub const MAX_CERTIFICATE_LEN: usize = 4096;

/// Why a certificate or TLS configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The peer presented no certificate.
    #[error("the peer presented no certificate")]
    NoCertificate,
    /// The peer presented intermediates; a self-signed identity has none.
    #[error("unexpected certificate chain of {0} certificates (want exactly one)")]
    UnexpectedChain(usize),
    /// The certificate is not valid DER X.509, or too large.
    #[error("malformed certificate: {0}")]
    Malformed(&'static str),
    /// The certificate's key is not Ed25519.
    #[error("certificate key is not Ed25519")]
    NotEd25519,
    /// The certificate is not signed by its own key.
    #[error("certificate is not validly self-signed")]
    BadSelfSignature,
    /// The certificate or TLS configuration could not be built.
    #[error("could not build the TLS identity: {0}")]
    Build(String),
}

impl From<IdentityError> for rustls::Error {
    fn from(error: IdentityError) -> Self {
        use rustls::CertificateError;
        match error {
            IdentityError::NoCertificate => rustls::Error::NoCertificatesPresented,
            IdentityError::BadSelfSignature => {
                rustls::Error::InvalidCertificate(CertificateError::BadSignature)
            }
            other => rustls::Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(other)),
            )),
        }
    }
}

/// A process's QUIC identity: its Ed25519 key and the self-signed certificate
/// for it. `Debug` never shows the private key.
pub struct PeerIdentity {
    public_key: VerifyingKey,
    certificate: CertificateDer<'static>,
    private_key: PrivatePkcs8KeyDer<'static>,
}

impl Clone for PeerIdentity {
    fn clone(&self) -> Self {
        Self {
            public_key: self.public_key,
            certificate: self.certificate.clone(),
            private_key: self.private_key.clone_key(),
        }
    }
}

impl std::fmt::Debug for PeerIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerIdentity")
            .field("public_key", &hex::encode(self.public_key.as_bytes()))
            .field("private_key", &"<redacted>")
            .finish()
    }
}

impl PeerIdentity {
    /// Builds the self-signed certificate for `key`.
    pub fn new(key: &SigningKeyPair) -> Result<Self, IdentityError> {
        let seed = key.seed();
        let signing_key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let pkcs8 = signing_key
            .to_pkcs8_der()
            .map_err(|e| IdentityError::Build(e.to_string()))?;
        let private_key = PrivatePkcs8KeyDer::from(pkcs8.as_bytes().to_vec());
        let key_pair =
            rcgen::KeyPair::from_pkcs8_der_and_sign_algo(&private_key, &rcgen::PKCS_ED25519)
                .map_err(|e| IdentityError::Build(e.to_string()))?;
        let mut params = rcgen::CertificateParams::new(vec![SERVER_NAME.to_owned()])
            .map_err(|e| IdentityError::Build(e.to_string()))?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            hex::encode(key.verifying_key().as_bytes()),
        );
        let certificate = params
            .self_signed(&key_pair)
            .map_err(|e| IdentityError::Build(e.to_string()))?;
        let certificate = CertificateDer::from(certificate.der().to_vec());
        // The certificate must carry exactly our key: check rather than trust.
        let public_key = certificate_public_key(&certificate)?;
        if public_key != key.verifying_key() {
            return Err(IdentityError::Build(
                "certificate key differs from the signing key".to_owned(),
            ));
        }
        Ok(Self {
            public_key,
            certificate,
            private_key,
        })
    }

    /// The Ed25519 public key (= the certificate's key).
    pub fn public_key(&self) -> VerifyingKey {
        self.public_key
    }

    /// The DER certificate.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.certificate
    }

    /// A TLS 1.3 server configuration presenting this identity, requiring a
    /// self-signed Ed25519 client certificate, offering `alpn`.
    pub fn server_config(&self, alpn: &[u8]) -> Result<rustls::ServerConfig, IdentityError> {
        let provider = provider();
        let verifier = SelfSignedClientVerifier {
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Build(e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(
                vec![self.certificate.clone()],
                PrivateKeyDer::Pkcs8(self.private_key.clone_key()),
            )
            .map_err(|e| IdentityError::Build(e.to_string()))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }

    /// A TLS 1.3 client configuration presenting this identity as client
    /// certificate, accepting any self-signed Ed25519 server certificate,
    /// offering `alpn`. Connect with [`SERVER_NAME`].
    pub fn client_config(&self, alpn: &[u8]) -> Result<rustls::ClientConfig, IdentityError> {
        let provider = provider();
        let verifier = SelfSignedServerVerifier {
            algorithms: provider.signature_verification_algorithms,
        };
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| IdentityError::Build(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_client_auth_cert(
                vec![self.certificate.clone()],
                PrivateKeyDer::Pkcs8(self.private_key.clone_key()),
            )
            .map_err(|e| IdentityError::Build(e.to_string()))?;
        config.alpn_protocols = vec![alpn.to_vec()];
        Ok(config)
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The Ed25519 key of a connection's peer, from the certificate chain the TLS
/// layer verified (for quinn: `connection.peer_identity()` downcast to
/// `Vec<CertificateDer>`). Compare it with the key named in the peer's token.
pub fn peer_public_key(chain: &[CertificateDer<'_>]) -> Result<VerifyingKey, IdentityError> {
    match chain {
        [] => Err(IdentityError::NoCertificate),
        [certificate] => certificate_public_key(certificate),
        more => Err(IdentityError::UnexpectedChain(more.len())),
    }
}

/// Parses a self-signed Ed25519 certificate, checks its self-signature and
/// returns its key. Never panics on hostile input.
pub fn certificate_public_key(
    certificate: &CertificateDer<'_>,
) -> Result<VerifyingKey, IdentityError> {
    let der: &[u8] = certificate.as_ref();
    if der.len() > MAX_CERTIFICATE_LEN {
        return Err(IdentityError::Malformed("certificate too large"));
    }
    let parsed = ParsedCertificate::parse(der)?;
    if parsed.signature_algorithm != ED25519_ALGORITHM_ID
        || parsed.tbs_signature_algorithm != ED25519_ALGORITHM_ID
    {
        return Err(IdentityError::NotEd25519);
    }
    let key = ed25519_key_from_spki(parsed.subject_public_key_info)?;
    if parsed.issuer != parsed.subject {
        return Err(IdentityError::BadSelfSignature);
    }
    let signature: &[u8; 64] = parsed
        .signature
        .try_into()
        .map_err(|_| IdentityError::BadSelfSignature)?;
    key.verify_strict(parsed.tbs, &Signature::from_bytes(signature))
        .map_err(|_| IdentityError::BadSelfSignature)?;
    Ok(key)
}

/// The parts of an X.509 certificate we look at, borrowed from its DER.
struct ParsedCertificate<'a> {
    /// The whole TBSCertificate TLV: the bytes the signature covers.
    tbs: &'a [u8],
    tbs_signature_algorithm: &'a [u8],
    issuer: &'a [u8],
    subject: &'a [u8],
    subject_public_key_info: &'a [u8],
    signature_algorithm: &'a [u8],
    signature: &'a [u8],
}

const TAG_SEQUENCE: u8 = 0x30;
const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_VERSION: u8 = 0xa0;

impl<'a> ParsedCertificate<'a> {
    fn parse(der: &'a [u8]) -> Result<Self, IdentityError> {
        // Certificate ::= SEQUENCE { tbsCertificate, signatureAlgorithm, signatureValue }
        let (certificate, rest) = Tlv::read(der)?;
        if !rest.is_empty() || certificate.tag != TAG_SEQUENCE {
            return Err(IdentityError::Malformed("not a single DER SEQUENCE"));
        }
        let (tbs, rest) = Tlv::read(certificate.content)?;
        let (signature_algorithm, rest) = Tlv::read(rest)?;
        let (signature, rest) = Tlv::read(rest)?;
        if !rest.is_empty()
            || tbs.tag != TAG_SEQUENCE
            || signature_algorithm.tag != TAG_SEQUENCE
            || signature.tag != TAG_BIT_STRING
        {
            return Err(IdentityError::Malformed("unexpected certificate structure"));
        }
        // BIT STRING: first content byte counts unused bits, must be 0.
        let signature = match signature.content.split_first() {
            Some((0, bits)) => bits,
            _ => return Err(IdentityError::Malformed("bad signature bit string")),
        };
        // TBSCertificate ::= SEQUENCE { [0] version OPTIONAL, serialNumber,
        //   signature, issuer, validity, subject, subjectPublicKeyInfo, ... }
        let mut fields = tbs.content;
        let (mut field, mut rest) = Tlv::read(fields)?;
        if field.tag == TAG_VERSION {
            fields = rest;
            (field, rest) = Tlv::read(fields)?;
        }
        if field.tag != TAG_INTEGER {
            return Err(IdentityError::Malformed("missing serial number"));
        }
        let (tbs_signature_algorithm, rest) = Tlv::read_tag(rest, TAG_SEQUENCE)?;
        let (issuer, rest) = Tlv::read_tag(rest, TAG_SEQUENCE)?;
        let (_validity, rest) = Tlv::read_tag(rest, TAG_SEQUENCE)?;
        let (subject, rest) = Tlv::read_tag(rest, TAG_SEQUENCE)?;
        let (subject_public_key_info, _extensions) = Tlv::read_tag(rest, TAG_SEQUENCE)?;
        Ok(Self {
            tbs: tbs.raw,
            tbs_signature_algorithm: tbs_signature_algorithm.raw,
            issuer: issuer.raw,
            subject: subject.raw,
            subject_public_key_info: subject_public_key_info.raw,
            signature_algorithm: signature_algorithm.raw,
            signature,
        })
    }
}

/// One DER tag-length-value.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    /// Tag, length and content together.
    raw: &'a [u8],
}

impl<'a> Tlv<'a> {
    /// Reads one TLV (single-byte tags, definite lengths up to 4 bytes).
    fn read(input: &'a [u8]) -> Result<(Self, &'a [u8]), IdentityError> {
        const TRUNCATED: IdentityError = IdentityError::Malformed("truncated DER");
        let (&tag, after_tag) = input.split_first().ok_or(TRUNCATED)?;
        if tag & 0x1f == 0x1f {
            return Err(IdentityError::Malformed("multi-byte DER tag"));
        }
        let (&first, mut after_len) = after_tag.split_first().ok_or(TRUNCATED)?;
        let length = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 {
                return Err(IdentityError::Malformed("unsupported DER length"));
            }
            let bytes = after_len.get(..count).ok_or(TRUNCATED)?;
            after_len = &after_len[count..];
            bytes
                .iter()
                .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
        };
        let content = after_len.get(..length).ok_or(TRUNCATED)?;
        let header_len = input.len() - after_len.len();
        let raw = &input[..header_len + length];
        Ok((Self { tag, content, raw }, &after_len[length..]))
    }

    fn read_tag(input: &'a [u8], tag: u8) -> Result<(Self, &'a [u8]), IdentityError> {
        let (tlv, rest) = Self::read(input)?;
        if tlv.tag != tag {
            return Err(IdentityError::Malformed("unexpected DER tag"));
        }
        Ok((tlv, rest))
    }
}

/// The key of an Ed25519 SubjectPublicKeyInfo (RFC 8410: fixed 44 bytes).
fn ed25519_key_from_spki(spki: &[u8]) -> Result<VerifyingKey, IdentityError> {
    let (outer, _) = Tlv::read(spki)?;
    let (algorithm, rest) = Tlv::read_tag(outer.content, TAG_SEQUENCE)?;
    if algorithm.raw != ED25519_ALGORITHM_ID {
        return Err(IdentityError::NotEd25519);
    }
    let (key, rest) = Tlv::read_tag(rest, TAG_BIT_STRING)?;
    if !rest.is_empty() {
        return Err(IdentityError::Malformed("trailing data in public key info"));
    }
    match key.content.split_first() {
        Some((0, bytes)) => verifying_key_from_slice(bytes).map_err(|_| IdentityError::NotEd25519),
        _ => Err(IdentityError::Malformed("bad public key bit string")),
    }
}

const SUPPORTED_SCHEMES: [SignatureScheme; 1] = [SignatureScheme::ED25519];

/// Accepts any self-signed Ed25519 server certificate (see module docs).
#[derive(Debug)]
struct SelfSignedServerVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SelfSignedServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(IdentityError::UnexpectedChain(intermediates.len() + 1).into());
        }
        certificate_public_key(end_entity)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SUPPORTED_SCHEMES.to_vec()
    }
}

/// Requires and accepts any self-signed Ed25519 client certificate.
#[derive(Debug)]
struct SelfSignedClientVerifier {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for SelfSignedClientVerifier {
    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        &[]
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() {
            return Err(IdentityError::UnexpectedChain(intermediates.len() + 1).into());
        }
        certificate_public_key(end_entity)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        SUPPORTED_SCHEMES.to_vec()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    #[test]
    fn certificate_carries_the_signing_key() {
        let key = SigningKeyPair::from_seed(&[7; 32]);
        let identity = PeerIdentity::new(&key).unwrap();
        assert_eq!(identity.public_key(), key.verifying_key());
        let extracted = peer_public_key(std::slice::from_ref(identity.certificate())).unwrap();
        assert_eq!(extracted.as_bytes(), key.verifying_key().as_bytes());
        assert!(!format!("{identity:?}").contains(&hex::encode(*key.seed())));
    }

    #[test]
    fn configs_build() {
        let identity = PeerIdentity::new(&SigningKeyPair::from_seed(&[1; 32])).unwrap();
        let server = identity.server_config(loaves_proto::ALPN_TRACKER).unwrap();
        assert_eq!(
            server.alpn_protocols,
            vec![loaves_proto::ALPN_TRACKER.to_vec()]
        );
        let client = identity.client_config(loaves_proto::ALPN_PEER).unwrap();
        assert_eq!(
            client.alpn_protocols,
            vec![loaves_proto::ALPN_PEER.to_vec()]
        );
    }

    #[test]
    fn chain_shapes_are_checked() {
        let identity = PeerIdentity::new(&SigningKeyPair::from_seed(&[2; 32])).unwrap();
        assert_eq!(peer_public_key(&[]), Err(IdentityError::NoCertificate));
        let two = [
            identity.certificate().clone(),
            identity.certificate().clone(),
        ];
        assert_eq!(
            peer_public_key(&two),
            Err(IdentityError::UnexpectedChain(2))
        );
    }

    #[test]
    fn tampered_certificate_fails_self_signature() {
        let identity = PeerIdentity::new(&SigningKeyPair::from_seed(&[3; 32])).unwrap();
        let der = identity.certificate().as_ref().to_vec();
        // Flip one bit of the common name (inside the signed TBS).
        let name = hex::encode(identity.public_key().as_bytes());
        let at = der
            .windows(name.len())
            .position(|w| w == name.as_bytes())
            .unwrap();
        let mut tampered = der.clone();
        tampered[at] ^= 0x01;
        assert_eq!(
            certificate_public_key(&CertificateDer::from(tampered)),
            Err(IdentityError::BadSelfSignature)
        );
        // Corrupt the signature itself.
        let mut bad_signature = der;
        let last = bad_signature.len() - 1;
        bad_signature[last] ^= 0x80;
        assert_eq!(
            certificate_public_key(&CertificateDer::from(bad_signature)),
            Err(IdentityError::BadSelfSignature)
        );
    }

    #[test]
    fn foreign_key_type_is_refused() {
        let ecdsa = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x".to_owned()])
            .unwrap()
            .self_signed(&ecdsa)
            .unwrap();
        let der = CertificateDer::from(cert.der().to_vec());
        assert_eq!(certificate_public_key(&der), Err(IdentityError::NotEd25519));
    }

    #[test]
    fn garbage_never_panics() {
        let identity = PeerIdentity::new(&SigningKeyPair::from_seed(&[4; 32])).unwrap();
        let der = identity.certificate().as_ref().to_vec();
        // Every truncation and a few byte patterns: errors, never panics.
        for len in 0..der.len() {
            assert!(certificate_public_key(&CertificateDer::from(der[..len].to_vec())).is_err());
        }
        for i in 0..der.len() {
            for value in [0x00, 0x7f, 0x80, 0x84, 0xff] {
                let mut mutated = der.clone();
                mutated[i] = value;
                let _ = certificate_public_key(&CertificateDer::from(mutated));
            }
        }
        let huge = vec![0x30; MAX_CERTIFICATE_LEN + 1];
        assert!(certificate_public_key(&CertificateDer::from(huge)).is_err());
    }
}
