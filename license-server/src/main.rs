//! `license-server`: serve licenses (default), mint development
//! entitlements, or print the default configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use clap::{Args, Parser, Subcommand};
use license_server::config::Config;
use license_server::{SystemClock, start};
use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::Entitlement;
use loaves_proto::keygen;

/// The Loaves license server: per-session content keys over gRPC/TLS, a
/// packager key service, a ClearKey endpoint, and a durable sealed key store.
///
/// Configuration: built-in defaults, then the TOML file (--config), then
/// LOAVES_LICENSE_<FIELD> / LOAVES_LICENSE_<SECTION>__<FIELD> environment
/// variables (e.g. LOAVES_LICENSE_STORE__URL; the older LOAVES_LICENSE_STORE_URL
/// still works), then flags. `print-config` shows the result,
/// `print-config --commented` every setting. Secrets come from the
/// environment or from files readable by their owner only:
/// LOAVES_LICENSE_KEK (64 hex digits) or keys.kek_file,
/// LOAVES_LICENSE_ADMIN_TOKEN or keys.admin_token_file, a store URL with a
/// password in LOAVES_LICENSE_STORE__URL or store.url_file.
#[derive(Debug, Parser)]
#[command(version, about, long_about)]
struct Cli {
    #[command(flatten)]
    overrides: Overrides,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve (the default when no subcommand is given).
    Serve,
    /// Print the effective configuration as TOML (defaults, file, env,
    /// flags; the store URL's password redacted), or with --commented the
    /// full commented reference of every setting and its default.
    PrintConfig {
        /// Every setting with its documentation and default, commented out.
        #[arg(long)]
        commented: bool,
    },
    /// Mint an entitlement token signed by a sign-in key (development and
    /// tests). Prints it as base64url.
    MintEntitlement(Mint),
}

/// Flags: each overrides its setting (named in brackets) from the file and
/// the environment.
#[derive(Debug, Args)]
struct Overrides {
    /// TOML configuration file.
    #[arg(long, short, env = "LOAVES_LICENSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// gRPC (TLS) listen address [listen].
    #[arg(long, global = true)]
    listen: Option<SocketAddr>,
    /// HTTP listen address of /metrics and /healthz [metrics_listen].
    #[arg(long, global = true)]
    metrics_listen: Option<SocketAddr>,
    /// HTTP listen address of the ClearKey endpoint, or "off"
    /// [clearkey_listen].
    #[arg(long, global = true)]
    clearkey_listen: Option<String>,
    /// Directory of generated development material and the default
    /// database [data_dir].
    #[arg(long, global = true)]
    data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH or postgres://USER@HOST/DB [store.url]. A
    /// URL with a password belongs in LOAVES_LICENSE_STORE__URL or
    /// store.url_file, not on the command line.
    #[arg(long, global = true)]
    store_url: Option<String>,
    /// File holding the store URL, readable by its owner only
    /// [store.url_file].
    #[arg(long, global = true)]
    store_url_file: Option<PathBuf>,
    /// TLS certificate chain (PEM) [tls.cert_file].
    #[arg(long, global = true, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) [tls.key_file].
    #[arg(long, global = true, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Write the generated development certificate here (PEM)
    /// [tls.dev_cert_out].
    #[arg(long, global = true)]
    dev_cert_out: Option<PathBuf>,
    /// License signing key (PKCS#8 PEM) [keys.signing_key_file].
    #[arg(long, global = true)]
    signing_key: Option<PathBuf>,
    /// Key-encryption key file (32 bytes or 64 hex digits), readable by
    /// its owner only [keys.kek_file].
    #[arg(long, global = true)]
    kek_file: Option<PathBuf>,
    /// File holding the admin (packager) credential, readable by its owner
    /// only [keys.admin_token_file].
    #[arg(long, global = true)]
    admin_token_file: Option<PathBuf>,
    /// Trusted entitlement public key (SPKI PEM); repeat for several
    /// [keys.entitlement_public_keys].
    #[arg(long = "entitlement-key", value_delimiter = ',', global = true)]
    entitlement_keys: Vec<PathBuf>,
    /// Log filter (tracing EnvFilter syntax) [log].
    #[arg(long, global = true)]
    log: Option<String>,
}

#[derive(Debug, Args)]
struct Mint {
    /// Private key of the sign-in system (PKCS#8 PEM); the development one
    /// is DATA_DIR/entitlement-dev.key.
    #[arg(long)]
    key: PathBuf,
    /// Pseudonymous account id.
    #[arg(long)]
    account: String,
    /// Titles, comma-separated; "*" for all.
    #[arg(long, value_delimiter = ',', default_value = "*")]
    titles: Vec<String>,
    /// Concurrent stream limit.
    #[arg(long, default_value_t = 2)]
    max_streams: u32,
    /// Allowed renditions, comma-separated; empty for all.
    #[arg(long, value_delimiter = ',')]
    renditions: Vec<String>,
    /// Largest picture height; 0 for no limit.
    #[arg(long, default_value_t = 0)]
    max_height: u32,
    /// Validity in seconds from now.
    #[arg(long, default_value_t = 86_400)]
    valid_for_s: u64,
    /// Also write the raw token bytes to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

impl Overrides {
    fn config(&self) -> anyhow::Result<Config> {
        let mut flags = loaves_service::config::Overrides::new();
        flags
            .set_some("listen", self.listen)
            .set_some("metrics_listen", self.metrics_listen)
            .set_some("clearkey_listen", self.clearkey_listen.as_ref())
            .set_some("data_dir", self.data_dir.as_ref())
            .set_some("store.url", self.store_url.as_ref())
            .set_some("store.url_file", self.store_url_file.as_ref())
            .set_some("tls.cert_file", self.tls_cert.as_ref())
            .set_some("tls.key_file", self.tls_key.as_ref())
            .set_some("tls.dev_cert_out", self.dev_cert_out.as_ref())
            .set_some("keys.signing_key_file", self.signing_key.as_ref())
            .set_some("keys.kek_file", self.kek_file.as_ref())
            .set_some("keys.admin_token_file", self.admin_token_file.as_ref())
            .set_list("keys.entitlement_public_keys", &self.entitlement_keys)
            .set_some("log", self.log.as_ref());
        Ok(Config::load(
            self.config.as_deref(),
            &loaves_service::config::process_env(),
            &flags,
        )?)
    }
}

fn mint(args: &Mint) -> anyhow::Result<()> {
    let key = keygen::read_signing_key(&args.key).context("reading the sign-in key")?;
    let now = UnixSeconds::now();
    let entitlement = Entitlement {
        account: args.account.clone(),
        titles: args.titles.clone(),
        max_concurrent_streams: args.max_streams,
        renditions: args.renditions.clone(),
        max_height: args.max_height,
        issued_at: now,
        expires_at: now.plus(args.valid_for_s),
    };
    let bytes = entitlement.sign(&key);
    if let Some(out) = &args.out {
        std::fs::write(out, &bytes).with_context(|| format!("writing {}", out.display()))?;
    }
    println!(
        "{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes)
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::MintEntitlement(args)) => return mint(args),
        Some(Command::PrintConfig { commented: true }) => {
            print!("{}", Config::commented());
            return Ok(());
        }
        Some(Command::PrintConfig { commented: false }) => {
            print!("{}", cli.overrides.config()?.redacted().to_toml()?);
            return Ok(());
        }
        Some(Command::Serve) | None => {}
    }
    let config = cli.overrides.config()?;
    loaves_service::telemetry::init_tracing(&config.log)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = start(config, Arc::new(SystemClock))
            .await
            .context("starting the license server")?;
        let signal = loaves_service::signal::shutdown_signal().await;
        tracing::info!(?signal, "signal received");
        server.shutdown().await.context("shutting down")?;
        Ok(())
    })
}
