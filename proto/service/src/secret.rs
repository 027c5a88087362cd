//! Secrets from files: the servers' one rule.
//!
//! A secret (an admin credential, a key-encryption key, a database URL with
//! its password) can be given as the path of a file whose content, trimmed
//! of surrounding whitespace, is the secret. The file must not be readable
//! by group or others: a secret file anyone on the host can read is refused
//! at start, with the command that fixes it, rather than used. The mode is
//! checked on the opened file, so the file checked is the file read.

use std::io::Read;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

/// Largest secret file read: secrets are short; anything bigger is a
/// wrong path.
pub const MAX_SECRET_FILE_BYTES: u64 = 64 * 1024;

/// Why a secret could not be read.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// The file could not be opened or read.
    #[error("secret file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The file can be read by group or others.
    #[error(
        "secret file {path} is readable by group or others (mode {mode:04o}): \
         restrict it to its owner (chmod 600 {path}) or pass the secret in the environment"
    )]
    Exposed {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The file is larger than [`MAX_SECRET_FILE_BYTES`].
    #[error(
        "secret file {path} is larger than {MAX_SECRET_FILE_BYTES} bytes: is it the right file?"
    )]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// The file holds nothing but whitespace.
    #[error("secret file {path} is empty")]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// The file is not UTF-8 text.
    #[error("secret file {path} is not UTF-8 text")]
    NotText {
        /// The file.
        path: PathBuf,
    },
}

/// Refuses `mode` when group or others may read.
fn check_mode(path: &Path, mode: u32) -> Result<(), SecretError> {
    if mode & 0o044 != 0 {
        return Err(SecretError::Exposed {
            path: path.to_owned(),
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// The raw bytes of a secret file, after the mode check.
pub fn read_secret_bytes(path: &Path) -> Result<Zeroizing<Vec<u8>>, SecretError> {
    use std::os::unix::fs::PermissionsExt;
    let read_error = |source| SecretError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let metadata = file.metadata().map_err(read_error)?;
    check_mode(path, metadata.permissions().mode())?;
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_SECRET_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_SECRET_FILE_BYTES {
        return Err(SecretError::TooLarge {
            path: path.to_owned(),
        });
    }
    Ok(bytes)
}

/// A secret file's text, trimmed; refused when empty.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, SecretError> {
    let bytes = read_secret_bytes(path)?;
    let text = std::str::from_utf8(&bytes).map_err(|_| SecretError::NotText {
        path: path.to_owned(),
    })?;
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SecretError::Empty {
            path: path.to_owned(),
        });
    }
    Ok(Zeroizing::new(trimmed.to_owned()))
}

/// Where a secret came from (for the log; never the value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// An environment variable.
    Env(&'static str),
    /// A file.
    File(PathBuf),
}

impl std::fmt::Display for SecretSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Env(name) => write!(f, "environment variable {name}"),
            Self::File(path) => write!(f, "file {}", path.display()),
        }
    }
}

/// A secret from the environment value `env` (of variable `var`) or else
/// from `file`: the environment wins, as everywhere else in the
/// configuration. `None` when neither is given. The value is trimmed.
pub fn secret(
    var: &'static str,
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<(Zeroizing<String>, SecretSource)>, SecretError> {
    if let Some(value) = env.map(str::trim).filter(|v| !v.is_empty()) {
        return Ok(Some((
            Zeroizing::new(value.to_owned()),
            SecretSource::Env(var),
        )));
    }
    match file {
        Some(path) => Ok(Some((
            read_secret_file(path)?,
            SecretSource::File(path.to_owned()),
        ))),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn file_with(dir: &Path, name: &str, contents: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn a_private_file_is_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), "token", "  s3cret\n", 0o600);
        assert_eq!(read_secret_file(&path).unwrap().as_str(), "s3cret");
        let path = file_with(dir.path(), "ro", "x", 0o400);
        assert_eq!(read_secret_file(&path).unwrap().as_str(), "x");
    }

    #[test]
    fn a_readable_file_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        for mode in [0o644, 0o640, 0o604] {
            let path = file_with(dir.path(), "token", "s3cret", mode);
            let error = read_secret_file(&path).unwrap_err().to_string();
            assert!(
                error.contains("readable by group or others")
                    && error.contains(&format!("{mode:04o}"))
                    && error.contains("chmod 600"),
                "{error}"
            );
            assert!(!error.contains("s3cret"), "never the secret: {error}");
        }
    }

    #[test]
    fn empty_missing_and_huge_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), "empty", " \n", 0o600);
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::Empty { .. })
        ));
        assert!(matches!(
            read_secret_file(&dir.path().join("missing")),
            Err(SecretError::Read { .. })
        ));
        let big = "x".repeat(MAX_SECRET_FILE_BYTES as usize + 1);
        let path = file_with(dir.path(), "big", &big, 0o600);
        assert!(matches!(
            read_secret_file(&path),
            Err(SecretError::TooLarge { .. })
        ));
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_with(dir.path(), "token", "from-file", 0o600);
        let (value, source) = secret("LOAVES_X", Some("from-env"), Some(&path))
            .unwrap()
            .unwrap();
        assert_eq!(value.as_str(), "from-env");
        assert_eq!(source, SecretSource::Env("LOAVES_X"));
        let (value, source) = secret("LOAVES_X", Some(""), Some(&path)).unwrap().unwrap();
        assert_eq!(value.as_str(), "from-file");
        assert_eq!(source.to_string(), format!("file {}", path.display()));
        assert!(secret("LOAVES_X", None, None).unwrap().is_none());
    }
}
