//! Files the servers accept as secrets: readable by their owner only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// Writes `contents` to `path` and makes it readable by its owner only
/// (mode 0600), as the servers require of a secret file.
pub fn write_private(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .unwrap_or_else(|e| panic!("chmod 600 {}: {e}", path.display()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_only() {
        let dir = std::env::temp_dir().join(format!("loaves-testkit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        write_private(&path, "s3cret");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
