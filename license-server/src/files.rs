//! Small file helpers for generated development material.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Writes a secret to a new file with mode 0600 and syncs it. Fails if the
/// file exists: a secret is never overwritten.
pub fn write_secret_file(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        fs::create_dir_all(dir)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(contents)?;
    file.sync_all()?;
    // umask may have narrowed the mode; never widen it beyond 0600.
    fs::set_permissions(path, fs::Permissions::from_mode(0o600))
}
