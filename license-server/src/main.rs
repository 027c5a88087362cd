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
/// Configuration is read from a TOML file (--config), then overridden by
/// LOAVES_LICENSE_* environment variables and flags. Every setting has a
/// default that runs as is (see `license-server print-config`). Secrets come
/// from files or the environment only: LOAVES_LICENSE_KEK (64 hex digits)
/// and LOAVES_LICENSE_ADMIN_TOKEN.
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
    /// Print the effective configuration as TOML (defaults, file, env, flags).
    PrintConfig,
    /// Mint an entitlement token signed by a sign-in key (development and
    /// tests). Prints it as base64url.
    MintEntitlement(Mint),
}

#[derive(Debug, Args)]
struct Overrides {
    /// TOML configuration file.
    #[arg(long, short, env = "LOAVES_LICENSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// gRPC (TLS) listen address.
    #[arg(long, env = "LOAVES_LICENSE_LISTEN", global = true)]
    listen: Option<SocketAddr>,
    /// HTTP listen address of /metrics and /healthz.
    #[arg(long, env = "LOAVES_LICENSE_METRICS_LISTEN", global = true)]
    metrics_listen: Option<SocketAddr>,
    /// HTTP listen address of the ClearKey endpoint.
    #[arg(long, env = "LOAVES_LICENSE_CLEARKEY_LISTEN", global = true)]
    clearkey_listen: Option<SocketAddr>,
    /// Directory of generated development material and the default database.
    #[arg(long, env = "LOAVES_LICENSE_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// Store URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "LOAVES_LICENSE_STORE_URL", global = true)]
    store_url: Option<String>,
    /// TLS certificate chain (PEM).
    #[arg(
        long,
        env = "LOAVES_LICENSE_TLS_CERT",
        global = true,
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(
        long,
        env = "LOAVES_LICENSE_TLS_KEY",
        global = true,
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// Write the generated development certificate here (PEM).
    #[arg(long, env = "LOAVES_LICENSE_DEV_CERT_OUT", global = true)]
    dev_cert_out: Option<PathBuf>,
    /// License signing key (PKCS#8 PEM).
    #[arg(long, env = "LOAVES_LICENSE_SIGNING_KEY", global = true)]
    signing_key: Option<PathBuf>,
    /// Key-encryption key file (32 bytes or 64 hex digits).
    #[arg(long, env = "LOAVES_LICENSE_KEK_FILE", global = true)]
    kek_file: Option<PathBuf>,
    /// File holding the admin (packager) credential.
    #[arg(long, env = "LOAVES_LICENSE_ADMIN_TOKEN_FILE", global = true)]
    admin_token_file: Option<PathBuf>,
    /// Trusted entitlement public key (SPKI PEM); repeat for several.
    #[arg(
        long = "entitlement-key",
        env = "LOAVES_LICENSE_ENTITLEMENT_KEYS",
        value_delimiter = ',',
        global = true
    )]
    entitlement_keys: Vec<PathBuf>,
    /// Log filter (tracing EnvFilter syntax).
    #[arg(
        long,
        env = "LOAVES_LICENSE_LOG",
        default_value = "info,sqlx=warn,h2=warn,hyper=warn,tower=warn",
        global = true
    )]
    log: String,
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
    fn apply(&self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.listen = v;
        }
        if let Some(v) = self.metrics_listen {
            config.metrics_listen = v;
        }
        if let Some(v) = self.clearkey_listen {
            config.clearkey_listen = Some(v);
        }
        if let Some(v) = &self.data_dir {
            config.data_dir = v.clone();
        }
        if let Some(v) = &self.store_url {
            config.store.url = Some(v.clone());
        }
        if let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) {
            config.tls.cert_file = Some(cert.clone());
            config.tls.key_file = Some(key.clone());
        }
        if let Some(v) = &self.dev_cert_out {
            config.tls.dev_cert_out = Some(v.clone());
        }
        if let Some(v) = &self.signing_key {
            config.keys.signing_key_file = Some(v.clone());
        }
        if let Some(v) = &self.kek_file {
            config.keys.kek_file = Some(v.clone());
        }
        if let Some(v) = &self.admin_token_file {
            config.keys.admin_token_file = Some(v.clone());
        }
        if !self.entitlement_keys.is_empty() {
            config.keys.entitlement_public_keys = self.entitlement_keys.clone();
        }
    }

    fn config(&self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        self.apply(&mut config);
        config.validate()?;
        Ok(config)
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

async fn terminated() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGTERM; ctrl-c only");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match &cli.command {
        Some(Command::MintEntitlement(args)) => return mint(args),
        Some(Command::PrintConfig) => {
            print!("{}", cli.overrides.config()?.to_toml()?);
            return Ok(());
        }
        Some(Command::Serve) | None => {}
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_new(&cli.overrides.log)
                .context("parsing the log filter")?,
        )
        .init();
    let config = cli.overrides.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    runtime.block_on(async move {
        let server = start(config, Arc::new(SystemClock))
            .await
            .context("starting the license server")?;
        terminated().await;
        server.shutdown().await.context("shutting down")?;
        Ok(())
    })
}
