//! Test harness: a real server on 127.0.0.1:0 over TLS, a real database
//! (SQLite file in a temp dir, or a fresh PostgreSQL database), a manual
//! clock, and clients that speak the real protocol.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use license_server::config::Config;
use license_server::server::{RunningServer, start};
use license_server::{ManualClock, Store};
use loaves_grpc::key_service_client::KeyServiceClient;
use loaves_grpc::license_service_client::LicenseServiceClient;
use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::Entitlement;
use loaves_proto::keys::{Keyring, SessionId, SigningKeyPair};
use loaves_proto::keywrap::SessionKeyPair;
use loaves_proto::license::{self, OpenedKey, VerifiedLicense};
use loaves_proto::pb;
use loaves_proto::signed::{self, Purpose};
use loaves_testkit::files::write_private;
pub use loaves_testkit::http::request as http;
use loaves_testkit::process::{LogLines, logged_addr};
use prost::Message;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// The start of the manual clock in every test.
pub const T0: u64 = 1_800_000_000;
/// The admin credential of test servers.
pub const ADMIN: &str = "test-admin-credential";
/// The KEK of test servers (hex).
pub const KEK_HEX: &str = "0101010101010101010101010101010101010101010101010101010101010101";

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Db {
    Sqlite,
    Postgres,
}

/// A fresh, empty store URL for one test, or `None` when PostgreSQL is not
/// available outside CI (the test then returns after a notice). In CI
/// (`CI=true`) a missing PostgreSQL fails the test.
pub async fn fresh_store_url(db: Db, dir: &std::path::Path) -> Option<String> {
    match db {
        Db::Sqlite => Some(format!("sqlite://{}", dir.join("store.db").display())),
        Db::Postgres => {
            let Ok(base) = std::env::var("LOAVES_TEST_POSTGRES_URL") else {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!(
                        "LOAVES_TEST_POSTGRES_URL is not set in CI: scripts/test.d/postgres.sh should have started PostgreSQL"
                    );
                }
                eprintln!(
                    "notice: LOAVES_TEST_POSTGRES_URL unset, skipping the PostgreSQL variant (run scripts/test)"
                );
                return None;
            };
            let name = format!(
                "loaves_test_{}",
                hex::encode(loaves_proto::keys::random_array::<6>().unwrap())
            );
            sqlx::any::install_default_drivers();
            let admin = sqlx::AnyPool::connect(&base)
                .await
                .expect("connecting to LOAVES_TEST_POSTGRES_URL");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&admin)
                .await
                .expect("creating a test database");
            admin.close().await;
            Some(with_database(&base, &name))
        }
    }
}

/// `base` with its database name replaced.
pub fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, Some(q)),
        None => (base, None),
    };
    let scheme_end = head.find("://").map_or(0, |i| i + 3);
    let path_start = head[scheme_end..].find('/').map(|i| i + scheme_end);
    let root = match path_start {
        Some(i) => &head[..i],
        None => head,
    };
    match query {
        Some(q) => format!("{root}/{name}?{q}"),
        None => format!("{root}/{name}"),
    }
}

/// Writes the test KEK, admin credential and entitlement signer into `dir`
/// and returns a config using them, listening on port 0.
pub fn test_config(dir: &std::path::Path, store_url: &str) -> (Config, SigningKeyPair) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    // Secret files must be private to their owner.
    write_private(&dir.join("kek"), KEK_HEX);
    write_private(&dir.join("admin-token"), ADMIN);
    let files = loaves_proto::keygen::write_key_pair(dir, "signin", true).unwrap();
    let signer = loaves_proto::keygen::read_signing_key(&files.private_key).unwrap();
    let mut config = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        metrics_listen: "127.0.0.1:0".parse().unwrap(),
        clearkey_listen: Some("127.0.0.1:0".parse().unwrap()),
        data_dir: data,
        ..Config::default()
    };
    config.store.url = Some(store_url.to_owned());
    config.keys.kek_file = Some(dir.join("kek"));
    config.keys.admin_token_file = Some(dir.join("admin-token"));
    config.keys.entitlement_public_keys = vec![files.public_key];
    let mut live = license_server::config::TitleConfig::demo();
    live.id = "live".into();
    live.key_period_s = 600;
    live.period_epoch = T0 - 6000; // current period 10 at T0
    config.titles.push(live);
    config.limits.shutdown_grace_s = 5;
    (config, signer)
}

/// A running test server with its clock and database.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub clock: ManualClock,
    pub server: Option<RunningServer>,
    pub signer: SigningKeyPair,
    pub config: Config,
    pub db: Db,
}

impl Harness {
    /// Starts a server on a fresh store; `None` if the backend is unavailable
    /// outside CI.
    pub async fn start(db: Db) -> Option<Self> {
        Self::start_with(db, |_| {}).await
    }

    /// Like [`Self::start`], with a config tweak.
    pub async fn start_with(db: Db, tweak: impl FnOnce(&mut Config)) -> Option<Self> {
        let dir = tempfile::tempdir().unwrap();
        let url = fresh_store_url(db, dir.path()).await?;
        let (mut config, signer) = test_config(dir.path(), &url);
        tweak(&mut config);
        let clock = ManualClock::new(UnixSeconds(T0));
        let server = start(config.clone(), Arc::new(clock.clone()))
            .await
            .unwrap();
        Some(Self {
            dir,
            clock,
            server: Some(server),
            signer,
            config,
            db,
        })
    }

    pub fn server(&self) -> &RunningServer {
        self.server.as_ref().unwrap()
    }

    pub fn store(&self) -> &Store {
        &self.server().core.store
    }

    /// Stops the server and starts a new one on the same store and files.
    pub async fn restart(&mut self) {
        self.server.take().unwrap().shutdown().await.unwrap();
        let server = start(self.config.clone(), Arc::new(self.clock.clone()))
            .await
            .unwrap();
        self.server = Some(server);
    }

    pub fn now(&self) -> UnixSeconds {
        license_server::Clock::now(&self.clock)
    }

    pub async fn channel(&self) -> Channel {
        connect(self.server().grpc_addr, &self.server().tls_cert_pem).await
    }

    pub async fn licenses(&self) -> LicenseServiceClient<Channel> {
        LicenseServiceClient::new(self.channel().await)
    }

    pub async fn keys(&self) -> KeyServiceClient<Channel> {
        KeyServiceClient::new(self.channel().await)
    }

    /// The license server's public key, as clients trust it.
    pub fn license_keyring(&self) -> Keyring {
        [self.server().core.license_public_key()]
            .into_iter()
            .collect()
    }

    /// An entitlement for `account` to every title, valid one day.
    pub fn entitlement(&self, account: &str, max_streams: u32) -> Vec<u8> {
        self.entitlement_with(account, max_streams, |_| {})
    }

    pub fn entitlement_with(
        &self,
        account: &str,
        max_streams: u32,
        tweak: impl FnOnce(&mut Entitlement),
    ) -> Vec<u8> {
        let now = license_server::Clock::now(&self.clock);
        let mut e = Entitlement {
            account: account.to_owned(),
            titles: vec!["*".into()],
            max_concurrent_streams: max_streams,
            renditions: vec![],
            max_height: 0,
            issued_at: now,
            expires_at: now.plus(86_400),
        };
        tweak(&mut e);
        e.sign(&self.signer)
    }

    pub async fn counts(&self) -> license_server::store::RowCounts {
        self.store().row_counts().await.unwrap()
    }

    /// GETs a path on the metrics listener.
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http(self.server().metrics_addr, "GET", path, &[], b"").await
    }
}

/// A TLS channel trusting `cert_pem`, for the name `localhost`.
pub async fn connect(addr: SocketAddr, cert_pem: &str) -> Channel {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(cert_pem))
        .domain_name("localhost");
    Endpoint::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .connect()
        .await
        .unwrap()
}

/// A viewer: an ephemeral HPKE key pair and a peer (QUIC) key pair.
pub struct Viewer {
    pub hpke: SessionKeyPair,
    pub peer: SigningKeyPair,
    pub session_id: Option<SessionId>,
    pub seq: u64,
}

impl Viewer {
    pub fn new() -> Self {
        Self {
            hpke: SessionKeyPair::generate().unwrap(),
            peer: SigningKeyPair::generate().unwrap(),
            session_id: None,
            seq: 0,
        }
    }

    pub fn acquire_request(&self, entitlement: Vec<u8>, title: &str) -> pb::AcquireLicenseRequest {
        pb::AcquireLicenseRequest {
            entitlement,
            title: title.to_owned(),
            client_hpke_public_key: self.hpke.public_key().to_vec(),
            peer_public_key: self.peer.verifying_key().as_bytes().to_vec(),
            key_periods: None,
            renditions: vec![],
            region: "eu-west".into(),
            isp: "isp-a".into(),
        }
    }

    /// A signed renewal body with the next sequence number.
    pub fn renew_envelope(&mut self, periods: Option<(u32, u32)>) -> pb::Signed {
        self.seq += 1;
        self.envelope(self.seq, periods)
    }

    pub fn envelope(&self, seq: u64, periods: Option<(u32, u32)>) -> pb::Signed {
        let body = pb::RenewRequestBody {
            session_id: self.session_id.unwrap().0.to_vec(),
            renewal_sequence: seq,
            key_periods: periods.map(|(first, count)| pb::KeyPeriodRange { first, count }),
        };
        signed::sign(&self.peer, Purpose::RenewRequest, body.encode_to_vec())
    }
}

impl Default for Viewer {
    fn default() -> Self {
        Self::new()
    }
}

/// Verifies a license response as a client does, and opens its keys.
pub fn open_license(
    keyring: &Keyring,
    viewer: &mut Viewer,
    response: &pb::LicenseResponse,
    now: UnixSeconds,
) -> (VerifiedLicense, Vec<OpenedKey>) {
    let envelope = response.license.as_ref().expect("license present");
    let body = pb::LicenseBody::decode(envelope.body.as_slice()).unwrap();
    let session_id = SessionId::from_slice(&body.session_id).unwrap();
    viewer.session_id = Some(session_id);
    let verified = license::verify(keyring, envelope, &session_id, now).unwrap();
    let keys = verified.open_keys(&viewer.hpke).unwrap();
    (verified, keys)
}

/// Asks the key service with the admin credential.
pub async fn get_keys(
    client: &mut KeyServiceClient<Channel>,
    title: &str,
    wanted: &[(&str, u32)],
) -> Result<Vec<pb::ContentKey>, tonic::Status> {
    let mut request = tonic::Request::new(pb::GetContentKeysRequest {
        title: title.to_owned(),
        keys: wanted
            .iter()
            .map(|(t, p)| pb::ContentKeyRequest {
                track_type: (*t).to_owned(),
                key_period: *p,
            })
            .collect(),
    });
    request
        .metadata_mut()
        .insert("authorization", format!("Bearer {ADMIN}").parse().unwrap());
    client
        .get_content_keys(request)
        .await
        .map(|r| r.into_inner().keys)
}

/// Path of a file in the crate (for binaries and fixtures).
pub fn crate_path(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(rel)
}

/// A gRPC codec that sends and receives bytes as they are: requests no
/// generated client would make.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let len = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, len).to_vec()))
    }
}

/// Calls the unary method at `path` with `body` as the raw request message.
pub async fn raw_call(
    channel: Channel,
    path: &'static str,
    body: Vec<u8>,
) -> Result<Vec<u8>, tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    grpc.unary(
        tonic::Request::new(body),
        tonic::codegen::http::uri::PathAndQuery::from_static(path),
        RawCodec,
    )
    .await
    .map(tonic::Response::into_inner)
}

/// The server binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_license-server");

/// The binary with the test KEK and admin credential, every listener on
/// port 0 (it reports the ports it bound in its log), its data in
/// `dir/data`, the development certificate written to `dir/cert.pem`, the
/// log filter `log`, and neither a configuration file nor a store URL from
/// the test's environment. Standard output goes nowhere unless the caller
/// pipes it.
pub fn command(dir: &Path, log: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(["--metrics-listen", "127.0.0.1:0"])
        .args(["--clearkey-listen", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--dev-cert-out")
        .arg(dir.join("cert.pem"))
        .env("LOAVES_LICENSE_KEK", KEK_HEX)
        .env("LOAVES_LICENSE_ADMIN_TOKEN", ADMIN)
        .env("LOAVES_LICENSE_LOG", log)
        .env_remove("LOAVES_LICENSE_CONFIG")
        .env_remove("LOAVES_LICENSE_STORE_URL")
        .stdout(Stdio::null());
    command
}

/// A started binary and where it listens.
pub struct Spawned {
    pub child: tokio::process::Child,
    pub grpc: SocketAddr,
    pub metrics: SocketAddr,
    pub clearkey: Option<SocketAddr>,
    /// The development certificate it wrote.
    pub cert_pem: String,
    /// Its log (standard error).
    pub log: LogLines,
}

/// Starts `command` (from [`command`]; its log filter must let the
/// `license server listening` line through) and waits until it logs the
/// addresses it listens on. `echo` copies its log to the test's.
pub async fn spawn(mut command: tokio::process::Command, dir: &Path, echo: bool) -> Spawned {
    let mut child = command
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawning the license server");
    let log = LogLines::spawn(child.stderr.take().unwrap(), echo);
    let line = log
        .line_with("license server listening", Duration::from_secs(30))
        .await;
    let cert_pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    assert!(cert_pem.contains("END CERTIFICATE"), "{cert_pem}");
    Spawned {
        child,
        grpc: logged_addr(&line, "grpc").expect("the gRPC address in the log"),
        metrics: logged_addr(&line, "metrics").expect("the metrics address in the log"),
        clearkey: logged_addr(&line, "clearkey"),
        cert_pem,
        log,
    }
}
