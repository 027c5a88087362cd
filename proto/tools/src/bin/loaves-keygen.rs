//! Writes an Ed25519 key pair (license server, origin, entitlement signer,
//! seed) as `NAME.key` (PKCS#8 v1 PEM, mode 0600) and `NAME.pub` (SPKI PEM).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Generate an Ed25519 key pair for Loaves: NAME.key (PKCS#8 v1 PEM, mode
/// 0600) and NAME.pub (SPKI PEM), both readable by OpenSSL, and print the
/// key id the servers name it by.
///
/// One pair per role: the license server's signing key (its public half
/// goes to the tracker, the seeds and the SDK as a trusted key), the
/// origin's manifest key, the sign-in system's entitlement key, each edge
/// seed's identity key. Existing files are never overwritten unless
/// --force is given.
#[derive(Debug, Parser)]
#[command(name = "loaves-keygen", version, about, long_about)]
struct Args {
    /// Directory to write the files into (created if missing).
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// Base name of the files: NAME.key and NAME.pub.
    #[arg(long)]
    name: String,
    /// Replace existing files.
    #[arg(long)]
    force: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let files = loaves_proto::keygen::write_key_pair(&args.out_dir, &args.name, args.force)
        .context("writing the key pair")?;
    println!("private key: {}", files.private_key.display());
    println!("public key:  {}", files.public_key.display());
    println!("key id:      {}", files.key_id);
    Ok(())
}
