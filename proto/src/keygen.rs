//! Writing and reading Ed25519 key pairs as files.
//!
//! `NAME.key` holds the private key as PKCS#8 PEM with mode 0600; `NAME.pub`
//! holds the public key as SPKI PEM (mode 0644: it is meant to be copied to
//! every verifier). Both are readable by OpenSSL. Files are written under a
//! temporary name, synced, then linked into place, so a crash never leaves a
//! half-written key and an existing key is never overwritten unless asked.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::VerifyingKey;

use crate::keys::{KeyError, KeyId, SigningKeyPair, public_key_from_pem, public_key_to_pem};

/// Mode of private key files.
pub const PRIVATE_KEY_MODE: u32 = 0o600;
/// Mode of public key files.
pub const PUBLIC_KEY_MODE: u32 = 0o644;

/// Why a key file could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum KeygenError {
    /// The key name would escape the directory or is empty.
    #[error("invalid key name {0:?}: use letters, digits, '.', '_' and '-'")]
    InvalidName(String),
    /// The file exists and overwriting was not requested.
    #[error("{0} already exists (pass --force to replace it)")]
    Exists(PathBuf),
    /// A filesystem operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The key could not be generated, encoded or decoded.
    #[error("{path}: {source}")]
    Key {
        /// The file concerned.
        path: PathBuf,
        /// The error.
        source: KeyError,
    },
}

/// The files of one key pair.
#[derive(Debug, Clone)]
pub struct KeyFiles {
    /// `NAME.key`.
    pub private_key: PathBuf,
    /// `NAME.pub`.
    pub public_key: PathBuf,
    /// Id of the public key.
    pub key_id: KeyId,
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> KeygenError + '_ {
    move |source| KeygenError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Generates a key pair and writes `dir/NAME.key` and `dir/NAME.pub`.
pub fn write_key_pair(dir: &Path, name: &str, overwrite: bool) -> Result<KeyFiles, KeygenError> {
    let valid = !name.is_empty()
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !valid {
        return Err(KeygenError::InvalidName(name.to_owned()));
    }
    let private_key = dir.join(format!("{name}.key"));
    let public_key = dir.join(format!("{name}.pub"));
    if !overwrite {
        for path in [&private_key, &public_key] {
            if path.exists() {
                return Err(KeygenError::Exists(path.clone()));
            }
        }
    }
    fs::create_dir_all(dir).map_err(io_error(dir))?;
    let pair = SigningKeyPair::generate().map_err(|source| KeygenError::Key {
        path: private_key.clone(),
        source,
    })?;
    let private_pem = pair.to_pkcs8_pem().map_err(|source| KeygenError::Key {
        path: private_key.clone(),
        source,
    })?;
    let public_pem =
        public_key_to_pem(&pair.verifying_key()).map_err(|source| KeygenError::Key {
            path: public_key.clone(),
            source,
        })?;
    write_atomically(
        &private_key,
        private_pem.as_bytes(),
        PRIVATE_KEY_MODE,
        overwrite,
    )?;
    write_atomically(
        &public_key,
        public_pem.as_bytes(),
        PUBLIC_KEY_MODE,
        overwrite,
    )?;
    Ok(KeyFiles {
        private_key,
        public_key,
        key_id: pair.key_id(),
    })
}

fn write_atomically(
    path: &Path,
    contents: &[u8],
    mode: u32,
    overwrite: bool,
) -> Result<(), KeygenError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut temp = tempfile::Builder::new()
        .prefix(".loaves-key-")
        .permissions(fs::Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(io_error(dir))?;
    temp.write_all(contents).map_err(io_error(temp.path()))?;
    temp.as_file().sync_all().map_err(io_error(path))?;
    if overwrite {
        temp.persist(path).map_err(|e| io_error(path)(e.error))?;
    } else {
        // Fails if the file appeared meanwhile: never clobber a key.
        temp.persist_noclobber(path)
            .map_err(|e| match e.error.kind() {
                std::io::ErrorKind::AlreadyExists => KeygenError::Exists(path.to_owned()),
                _ => io_error(path)(e.error),
            })?;
    }
    // tempfile applies the mode at creation, but umask may have narrowed it.
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(io_error(path))?;
    Ok(())
}

/// Reads a private key written by [`write_key_pair`] (or OpenSSL).
pub fn read_signing_key(path: &Path) -> Result<SigningKeyPair, KeygenError> {
    let pem = zeroize::Zeroizing::new(fs::read_to_string(path).map_err(io_error(path))?);
    SigningKeyPair::from_pkcs8_pem(&pem).map_err(|source| KeygenError::Key {
        path: path.to_owned(),
        source,
    })
}

/// Reads a public key written by [`write_key_pair`] (or OpenSSL).
pub fn read_public_key(path: &Path) -> Result<VerifyingKey, KeygenError> {
    let pem = fs::read_to_string(path).map_err(io_error(path))?;
    public_key_from_pem(&pem).map_err(|source| KeygenError::Key {
        path: path.to_owned(),
        source,
    })
}
