//! `edge-seed serve`: flags and environment (`LOAVES_SEED_*`) over the TOML
//! file over the defaults, then run until SIGTERM or Ctrl-C and drain.
//!
//! `edge-seed credential`: the operator's command that mints the signed
//! seed credential `serve` presents to trackers and peers (its
//! `credential` file), for the public key of the seed's `identity_key`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use loaves_proto::keys::SigningKeyPair;
use loaves_proto::{UnixSeconds, pb};
use loaves_service::config::Overrides;
use loaves_wire::peerwire::{CredentialVerifier, SeedCredential};

use super::{SeedConfig, SeedKeys, ServeError};

/// Flags of `edge-seed serve`. Each overrides its setting (named in
/// brackets) from the configuration file and the environment.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file (see `edge-seed serve print-config --commented`).
    #[arg(long, env = "LOAVES_SEED_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// UDP address of the peer wire server [quic_listen].
    #[arg(long, global = true)]
    pub quic_listen: Option<SocketAddr>,
    /// TCP address of the HTTP origin, /metrics and /healthz [http_listen].
    #[arg(long, global = true)]
    pub http_listen: Option<SocketAddr>,
    /// Origin: http(s) base URL or directory holding one packaged title per
    /// subdirectory [origin].
    #[arg(long, global = true)]
    pub origin: Option<String>,
    /// Titles to serve (repeat, or comma-separated) [titles].
    #[arg(long = "title", value_delimiter = ',', global = true)]
    pub titles: Vec<String>,
    /// Ed25519 identity key (PKCS#8 PEM) [identity_key].
    #[arg(long, global = true)]
    pub identity_key: Option<PathBuf>,
    /// Signed seed credential file (written by `edge-seed credential`; it
    /// must name the public key of --identity-key) [credential].
    #[arg(long, global = true)]
    pub credential: Option<PathBuf>,
    /// License server public key (PEM); repeat for several
    /// [license_public_keys].
    #[arg(long = "license-key", value_delimiter = ',', global = true)]
    pub license_keys: Vec<PathBuf>,
    /// Origin manifest public key (PEM); repeat for several
    /// [origin_public_keys].
    #[arg(long = "origin-key", value_delimiter = ',', global = true)]
    pub origin_keys: Vec<PathBuf>,
    /// Disk cache directory [cache.disk_dir].
    #[arg(long, global = true)]
    pub cache_dir: Option<PathBuf>,
    /// Memory cache budget, bytes [cache.memory_bytes].
    #[arg(long, global = true)]
    pub memory_cache_bytes: Option<u64>,
    /// Disk cache budget, bytes [cache.disk_bytes].
    #[arg(long, global = true)]
    pub disk_cache_bytes: Option<u64>,
    /// Maximum QUIC connections [capacity.max_connections].
    #[arg(long, global = true)]
    pub max_connections: Option<usize>,
    /// Maximum concurrent uploads [capacity.max_concurrent_uploads].
    #[arg(long, global = true)]
    pub max_uploads: Option<usize>,
    /// Egress limit for peer uploads, bytes per second (0: none)
    /// [capacity.egress_bytes_per_second].
    #[arg(long, global = true)]
    pub egress_bytes_per_second: Option<u64>,
    /// Tracker shard addresses (repeat, or comma-separated)
    /// [tracker.addresses].
    #[arg(long = "tracker", value_delimiter = ',', global = true)]
    pub trackers: Vec<String>,
    /// Addresses announced to the tracker [advertise].
    #[arg(long = "advertise", value_delimiter = ',', global = true)]
    pub advertise: Vec<String>,
    /// Log filter (tracing `EnvFilter` syntax) [log].
    #[arg(long, global = true)]
    pub log: Option<String>,
    /// What to do instead of serving.
    #[command(subcommand)]
    pub action: Option<ServeAction>,
}

/// `edge-seed serve` commands besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum ServeAction {
    /// Print the effective configuration as TOML (defaults, file,
    /// environment, flags), or with --commented the full commented
    /// reference of every setting and its default.
    PrintConfig {
        /// Every setting with its documentation and default, commented out.
        #[arg(long)]
        commented: bool,
    },
}

impl ServeArgs {
    /// The effective configuration, from the process environment.
    pub fn config(&self) -> Result<SeedConfig, ServeError> {
        self.config_with_env(&loaves_service::config::process_env())
    }

    /// The effective configuration with the environment given.
    pub fn config_with_env(&self, env: &[(String, String)]) -> Result<SeedConfig, ServeError> {
        let mut flags = Overrides::new();
        flags
            .set_some("quic_listen", self.quic_listen)
            .set_some("http_listen", self.http_listen)
            .set_some("origin", self.origin.as_ref())
            .set_list("titles", &self.titles)
            .set_some("identity_key", self.identity_key.as_ref())
            .set_some("credential", self.credential.as_ref())
            .set_list("license_public_keys", &self.license_keys)
            .set_list("origin_public_keys", &self.origin_keys)
            .set_some("cache.disk_dir", self.cache_dir.as_ref())
            .set_some("cache.memory_bytes", self.memory_cache_bytes)
            .set_some("cache.disk_bytes", self.disk_cache_bytes)
            .set_some("capacity.max_connections", self.max_connections)
            .set_some("capacity.max_concurrent_uploads", self.max_uploads)
            .set_some(
                "capacity.egress_bytes_per_second",
                self.egress_bytes_per_second,
            )
            .set_list("tracker.addresses", &self.trackers)
            .set_list("advertise", &self.advertise)
            .set_some("log", self.log.as_ref());
        Ok(SeedConfig::load(self.config.as_deref(), env, &flags)?)
    }
}

/// Runs the seed until SIGTERM or Ctrl-C, then drains; or prints the
/// configuration.
pub fn run(args: ServeArgs) -> Result<(), ServeError> {
    match &args.action {
        Some(ServeAction::PrintConfig { commented: true }) => {
            print!("{}", SeedConfig::commented());
            return Ok(());
        }
        Some(ServeAction::PrintConfig { commented: false }) => {
            print!("{}", args.config()?.to_toml()?);
            return Ok(());
        }
        None => {}
    }
    let config = args.config()?;
    loaves_service::telemetry::init_tracing(&config.log)
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    let keys = SeedKeys::load(&config)?;
    check_credential(&config, &keys, UnixSeconds::now())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| ServeError::Setup(e.to_string()))?;
    runtime.block_on(async {
        let seed = super::start(&config, keys).await?;
        let signal = loaves_service::signal::shutdown_signal().await;
        tracing::info!(?signal, drain_s = config.drain_timeout_s, "draining");
        seed.shutdown().await;
        tracing::info!("stopped");
        Ok(())
    })
}

/// Clock skew allowed when checking the seed's own credential at start,
/// the peer wire's allowance.
const CREDENTIAL_SKEW_S: u64 = 30;

/// Checks at start that the configured credential fits this seed: signed
/// by a trusted license key (when any is configured), naming the public
/// key of `identity_key`, valid now. A credential that does not fit would
/// make every peer and tracker refuse the seed's hello, so starting with it
/// is refused too, with the reason. Returns the verified credential, if
/// any; titles it does not cover are logged.
pub fn check_credential(
    config: &SeedConfig,
    keys: &SeedKeys,
    now: UnixSeconds,
) -> Result<Option<SeedCredential>, ServeError> {
    let Some(bytes) = &keys.credential else {
        return Ok(None);
    };
    let path = config
        .credential
        .as_deref()
        .map_or_else(|| "credential".to_owned(), |p| p.display().to_string());
    if config.identity_key.is_none() {
        return Err(ServeError::Keys(format!(
            "{path}: a credential is configured but no identity_key: the credential names one key, set identity_key to it"
        )));
    }
    if keys.license.is_empty() {
        tracing::warn!(
            credential = %path,
            "no license public key configured: the seed credential is not checked at start"
        );
        return Ok(None);
    }
    let verifier = CredentialVerifier::new(keys.license.clone(), CREDENTIAL_SKEW_S);
    let credential = verifier
        .verify_seed(bytes, now)
        .map_err(|e| ServeError::Keys(format!("{path}: {e}")))?;
    let own = keys.identity.verifying_key();
    if credential.peer_key != own {
        return Err(ServeError::Keys(format!(
            "{path}: the credential names key {}, but identity_key is {}: mint it for this seed's key (edge-seed credential --seed-key)",
            hex_prefix(credential.peer_key.as_bytes()),
            hex_prefix(own.as_bytes()),
        )));
    }
    for title in &config.titles {
        if !credential.allows_title(title) {
            tracing::warn!(%title, "the seed credential does not cover this title: peers will refuse it");
        }
    }
    let left_days = credential.expires_at.0.saturating_sub(now.0) / 86_400;
    if left_days < 7 {
        tracing::warn!(
            expires_at = credential.expires_at.0,
            left_days,
            "seed credential expires soon: rotate it"
        );
    }
    tracing::info!(
        seed = %credential.seed_name,
        region = %credential.region,
        isp = %credential.isp,
        expires_at = credential.expires_at.0,
        "seed credential checked"
    );
    Ok(Some(credential))
}

fn hex_prefix(bytes: &[u8]) -> String {
    bytes.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Flags of `edge-seed credential`.
#[derive(Debug, Clone, clap::Args)]
#[command(after_long_help = "\
The credential is what a seed presents in its hello to trackers and \
viewers: they accept the seed only if the credential verifies against a key \
they trust for session tokens (today the license server's signing key, the \
one in their trusted keys), names the key of the seed's QUIC certificate, \
covers the title, and is within its validity. Give the file to the seed as \
`credential` (TOML), --credential or LOAVES_SEED_CREDENTIAL, beside its \
identity_key.

Example:
  loaves-keygen --out-dir keys --name seed-par-1     # on the seed host; keep seed-par-1.key there
  edge-seed credential --operator-key keys/license.key --seed-key keys/seed-par-1.pub \\
      --name seed-par-1 --region eu-west --isp as3215 --title '*' --valid-days 30 \\
      --out seed-par-1.credential")]
pub struct CredentialArgs {
    /// Signing key of the operator (PKCS#8 PEM, from loaves-keygen): a key
    /// the trackers and viewers trust for session tokens, i.e. the license
    /// server's signing key (license.key).
    #[arg(long, value_name = "FILE")]
    pub operator_key: PathBuf,
    /// The seed's identity key: its public key (SPKI PEM, NAME.pub) or its
    /// private key (PKCS#8 PEM, NAME.key; only the public half is used).
    /// Must be the key `serve` loads as identity_key.
    #[arg(long, value_name = "FILE")]
    pub seed_key: PathBuf,
    /// Seed name, shown in logs and by the tracker (letters, digits, '-',
    /// '_', '.').
    #[arg(long)]
    pub name: String,
    /// Region the seed serves from; the tracker lists seeds nearest first.
    #[arg(long)]
    pub region: String,
    /// ISP (network) the seed sits in, as viewers' tokens name ISPs.
    #[arg(long)]
    pub isp: String,
    /// Title the seed may serve (repeat, or comma-separated); '*' alone
    /// means every title.
    #[arg(long = "title", value_delimiter = ',', required = true)]
    pub titles: Vec<String>,
    /// Validity in days from now (1 to 366).
    #[arg(long, default_value_t = 30)]
    pub valid_days: u64,
    /// Start validity this many seconds in the past, for hosts whose clocks
    /// run behind.
    #[arg(long, default_value_t = 300)]
    pub backdate_s: u64,
    /// Output file (the encoded signed credential, binary).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,
    /// Replace --out if it exists (rotation).
    #[arg(long)]
    pub force: bool,
}

/// Why a credential could not be minted.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// A key file could not be read or is not an Ed25519 key of the
    /// expected kind.
    #[error("{what} {path}: {reason}")]
    Key {
        /// Which key (operator key, seed key).
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A flag's value is unusable.
    #[error("{0}")]
    Invalid(String),
    /// The output exists and --force was not given.
    #[error("{0} exists (pass --force to replace it)")]
    Exists(PathBuf),
    /// The output could not be written.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// What was minted.
#[derive(Debug, Clone)]
pub struct MintedCredential {
    /// The signed credential, as written.
    pub bytes: Vec<u8>,
    /// Its body.
    pub body: pb::SeedCredentialBody,
    /// Id of the operator key that signed it.
    pub signer: loaves_proto::keys::KeyId,
}

/// The seed's 32-byte public key from a SPKI or PKCS#8 PEM file.
fn read_seed_public_key(path: &Path) -> Result<[u8; 32], CredentialError> {
    let error = |reason: String| CredentialError::Key {
        what: "seed key",
        path: path.to_owned(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|e| error(e.to_string()))?;
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        let key = loaves_proto::keygen::read_public_key(path).map_err(|e| error(e.to_string()))?;
        Ok(key.to_bytes())
    } else if text.contains("-----BEGIN PRIVATE KEY-----") {
        let pair =
            loaves_proto::keygen::read_signing_key(path).map_err(|e| error(e.to_string()))?;
        Ok(pair.verifying_key().to_bytes())
    } else {
        Err(error(
            "not a PEM Ed25519 key: expected PUBLIC KEY (NAME.pub) or PRIVATE KEY (NAME.key) from loaves-keygen"
                .to_owned(),
        ))
    }
}

/// Mints (signs and writes) a seed credential as `args` say, at `now`.
pub fn mint_credential(
    args: &CredentialArgs,
    now: UnixSeconds,
) -> Result<MintedCredential, CredentialError> {
    if !super::safe_name(&args.name) {
        return Err(CredentialError::Invalid(format!(
            "--name {:?}: use 1 to 128 letters, digits, '-', '_' or '.'",
            args.name
        )));
    }
    for (flag, value) in [("--region", &args.region), ("--isp", &args.isp)] {
        if value.trim().is_empty() || value.len() > 64 || value.chars().any(char::is_control) {
            return Err(CredentialError::Invalid(format!(
                "{flag} {value:?}: give a non-empty name of at most 64 characters"
            )));
        }
    }
    let titles: Vec<String> = args
        .titles
        .iter()
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty())
        .collect();
    if titles.is_empty() {
        return Err(CredentialError::Invalid(
            "--title: at least one title (or '*' for every title)".to_owned(),
        ));
    }
    if titles.iter().any(|t| t == "*") && titles.len() > 1 {
        return Err(CredentialError::Invalid(
            "--title '*' (every title) must be the only title".to_owned(),
        ));
    }
    if let Some(bad) = titles.iter().find(|t| *t != "*" && !super::safe_name(t)) {
        return Err(CredentialError::Invalid(format!(
            "--title {bad:?} is not a safe title name"
        )));
    }
    if !(1..=366).contains(&args.valid_days) {
        return Err(CredentialError::Invalid(format!(
            "--valid-days {}: between 1 and 366",
            args.valid_days
        )));
    }
    if args.out.exists() && !args.force {
        return Err(CredentialError::Exists(args.out.clone()));
    }
    let operator: SigningKeyPair = loaves_proto::keygen::read_signing_key(&args.operator_key)
        .map_err(|e| CredentialError::Key {
            what: "operator key",
            path: args.operator_key.clone(),
            reason: e.to_string(),
        })?;
    let seed_key = read_seed_public_key(&args.seed_key)?;
    let body = pb::SeedCredentialBody {
        seed_name: args.name.clone(),
        peer_public_key: seed_key.to_vec(),
        region: args.region.trim().to_owned(),
        isp: args.isp.trim().to_owned(),
        titles,
        not_before: now.0.saturating_sub(args.backdate_s),
        expires_at: now.0.saturating_add(args.valid_days.saturating_mul(86_400)),
    };
    let bytes = loaves_wire::peerwire::sign_seed_credential(&body, &operator);
    write_atomically(&args.out, &bytes)?;
    Ok(MintedCredential {
        bytes,
        body,
        signer: operator.key_id(),
    })
}

/// Writes `bytes` to a temporary file beside `path`, syncs, renames.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), CredentialError> {
    use std::io::Write;
    let error = |source| CredentialError::Write {
        path: path.to_owned(),
        source,
    };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .map_or_else(|| "credential".into(), |n| n.to_string_lossy().into_owned());
    let temp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(error)
}

/// `edge-seed credential`: mints, writes, and prints what it signed.
pub fn run_credential(args: &CredentialArgs) -> Result<(), CredentialError> {
    let minted = mint_credential(args, UnixSeconds::now())?;
    let body = &minted.body;
    println!(
        "wrote {} ({} bytes)",
        args.out.display(),
        minted.bytes.len()
    );
    println!("  seed        {}", body.seed_name);
    println!("  seed key    {}", hex_prefix(&body.peer_public_key));
    println!("  region/isp  {} / {}", body.region, body.isp);
    println!("  titles      {}", body.titles.join(","));
    println!(
        "  valid       {} .. {} (unix seconds)",
        body.not_before, body.expires_at
    );
    println!("  signed by   {}", minted.signer);
    Ok(())
}
