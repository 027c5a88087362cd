//! `loaves-entitlement`: mints and checks entitlements, the tokens by
//! which the streamer's sign-in system vouches for a viewer to the license
//! server.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use clap::{Parser, Subcommand};
use loaves_proto::UnixSeconds;
use loaves_proto::entitlement::{Entitlement, EntitlementVerifier, MAX_ENTITLEMENT_LEN};
use loaves_proto::keygen;
use loaves_proto::keys::Keyring;

/// Mint or check a Loaves entitlement: the signed statement by which your
/// sign-in system tells the license server that an account may watch some
/// titles, how many at once and until when.
///
/// The license server accepts an entitlement signed by a key in its
/// `keys.entitlement_public_keys`; make that pair with `loaves-keygen
/// --name entitlement` and keep the private half with the sign-in system.
/// An app hands the entitlement to the SDK's `open` (raw bytes); the
/// `loaves-viewer --entitlement FILE` reads the file `mint --out` writes.
/// A sign-in system in another language signs the same bytes: an encoded
/// `loaves.v1.Signed` envelope over a `loaves.v1.EntitlementBody`, Ed25519
/// over "loaves/v1/entitlement\0" followed by the body (see
/// proto/schemas/loaves/v1/token.proto and proto/testvectors/).
#[derive(Debug, Parser)]
#[command(name = "loaves-entitlement", version, about, long_about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Sign an entitlement for one account. Writes the raw token to --out
    /// (mode 0600: it is a credential) and prints it as base64url.
    Mint {
        /// The sign-in system's private key (PKCS#8 PEM, from
        /// `loaves-keygen`).
        #[arg(long)]
        key: PathBuf,
        /// Pseudonymous account id (the license server counts concurrent
        /// sessions per account).
        #[arg(long)]
        account: String,
        /// Titles, comma-separated or repeated; "*" alone for every title.
        #[arg(long = "title", value_delimiter = ',', default_value = "*")]
        titles: Vec<String>,
        /// Sessions the account may hold at once.
        #[arg(long, default_value_t = 1)]
        max_streams: u32,
        /// Renditions allowed, comma-separated or repeated; none for all.
        #[arg(long = "rendition", value_delimiter = ',')]
        renditions: Vec<String>,
        /// Largest picture height allowed; 0 for no limit.
        #[arg(long, default_value_t = 0)]
        max_height: u32,
        /// Validity from now, seconds.
        #[arg(long, default_value_t = 86_400)]
        valid_for_s: u64,
        /// Write the raw token here (an existing file is replaced).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Check an entitlement file against the sign-in system's public key(s)
    /// and print its claims as JSON. Exit status 1 if it does not verify
    /// now.
    Show {
        /// The entitlement: a file of raw bytes, or of base64url text.
        file: PathBuf,
        /// A trusted public key (SPKI PEM); repeat for several.
        #[arg(long = "key", required = true)]
        keys: Vec<PathBuf>,
    },
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// The token in `bytes`: raw, or base64url text (as `mint` prints it).
fn decode(bytes: Vec<u8>) -> Vec<u8> {
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    if !text.is_empty()
        && let Ok(decoded) = URL_SAFE_NO_PAD.decode(text.trim_end_matches('='))
    {
        return decoded;
    }
    bytes
}

fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::Mint {
            key,
            account,
            titles,
            max_streams,
            renditions,
            max_height,
            valid_for_s,
            out,
        } => {
            if account.is_empty() {
                bail!("--account must not be empty");
            }
            if max_streams == 0 {
                bail!("--max-streams must be at least 1");
            }
            if valid_for_s == 0 {
                bail!("--valid-for-s must be at least 1");
            }
            let titles: Vec<String> = titles.into_iter().filter(|t| !t.is_empty()).collect();
            if titles.is_empty() {
                bail!("at least one --title (or \"*\")");
            }
            let key = keygen::read_signing_key(&key).context("reading the sign-in key")?;
            let now = UnixSeconds::now();
            let token = Entitlement {
                account,
                titles,
                max_concurrent_streams: max_streams,
                renditions: renditions.into_iter().filter(|r| !r.is_empty()).collect(),
                max_height,
                issued_at: now,
                expires_at: now.plus(valid_for_s),
            }
            .sign(&key);
            if let Some(out) = &out {
                write_private(out, &token)?;
            }
            println!("{}", URL_SAFE_NO_PAD.encode(&token));
            Ok(())
        }
        Command::Show { file, keys } => {
            let bytes =
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?;
            if bytes.len() > 2 * MAX_ENTITLEMENT_LEN {
                bail!("{} is too large for an entitlement", file.display());
            }
            let token = decode(bytes);
            let mut ring = Keyring::default();
            for path in &keys {
                ring.insert(
                    keygen::read_public_key(path)
                        .with_context(|| format!("reading the key {}", path.display()))?,
                );
            }
            let claims = match EntitlementVerifier::new(ring).verify(&token, UnixSeconds::now()) {
                Ok(claims) => claims,
                Err(e) => {
                    eprintln!("{}: refused ({}): {e}", file.display(), e.reason());
                    std::process::exit(1);
                }
            };
            let json = serde_json::json!({
                "account": claims.account,
                "titles": claims.titles,
                "max_concurrent_streams": claims.max_concurrent_streams,
                "renditions": claims.renditions,
                "max_height": claims.max_height,
                "issued_at": claims.issued_at.0,
                "expires_at": claims.expires_at.0,
            });
            println!("{json:#}");
            Ok(())
        }
    }
}
