//! Writes an Ed25519 key pair (license server, origin, entitlement signer,
//! seed) as `NAME.key` (PKCS#8 PEM, mode 0600) and `NAME.pub` (SPKI PEM).

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

/// Generate an Ed25519 key pair for Loaves.
#[derive(Debug, Parser)]
#[command(version, about)]
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
