//! Small file helpers: secrets written 0600, and the private folders and
//! database files of the server (0700 and 0600).

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
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

/// Whether a mode lets group or others in.
fn shared(mode: u32) -> bool {
    mode & 0o077 != 0
}

/// Makes `dir` the server's private folder: created with mode 0700 when
/// missing (with any missing parents), narrowed to 0700 when it exists
/// wider. A folder the server does not own (a volume mounted by the
/// platform) cannot be narrowed; that is logged, not fatal, because the
/// files inside are created 0600 either way.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    match fs::metadata(dir) {
        Ok(metadata) if metadata.is_dir() => {
            let mode = metadata.permissions().mode();
            if shared(mode) {
                match fs::set_permissions(dir, fs::Permissions::from_mode(0o700)) {
                    Ok(()) => tracing::warn!(
                        dir = %dir.display(),
                        was = format!("{:04o}", mode & 0o7777),
                        "narrowed the data folder to mode 0700"
                    ),
                    Err(e) => tracing::warn!(
                        dir = %dir.display(),
                        mode = format!("{:04o}", mode & 0o7777),
                        error = %e,
                        "the data folder is open to group or others and cannot be narrowed to 0700"
                    ),
                }
            }
            Ok(())
        }
        Ok(_) => Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists and is not a folder",
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir),
        Err(e) => Err(e),
    }
}

/// Creates the missing folders of `dir` with mode 0700; existing ones are
/// left as they are (they may be shared system folders).
pub fn create_private_parents(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Makes the SQLite database at `db` and its `-wal` and `-shm` companions
/// private: the database is created empty with mode 0600 when missing
/// (SQLite then gives its companions the database's mode), and any of the
/// three that exists with a wider mode (made by an older version, under
/// the umask) is narrowed to 0600. Narrowing rather than refusing: these
/// are the server's own files, so it can fix them itself, and refusing
/// would turn an upgrade into an outage. A file it cannot narrow (another
/// owner) is refused.
pub fn private_database(db: &Path) -> std::io::Result<()> {
    if let Some(dir) = db.parent().filter(|d| !d.as_os_str().is_empty()) {
        create_private_parents(dir)?;
    }
    match fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(db)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for suffix in ["", "-wal", "-shm"] {
        let mut name = db.as_os_str().to_owned();
        name.push(suffix);
        let path = std::path::PathBuf::from(name);
        let mode = match fs::metadata(&path) {
            Ok(metadata) => metadata.permissions().mode(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        // umask may have narrowed 0600 further; only widening is fixed.
        if shared(mode) {
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
            tracing::warn!(
                file = %path.display(),
                was = format!("{:04o}", mode & 0o7777),
                "narrowed a database file to mode 0600"
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_database_is_created_private_and_old_files_are_narrowed() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("new/sub/license-server.db");
        private_database(&db).unwrap();
        assert_eq!(mode(&db), 0o600);
        assert_eq!(mode(&dir.path().join("new")), 0o700, "missing folders");

        let old = dir.path().join("old.db");
        for name in ["old.db", "old.db-wal", "old.db-shm"] {
            let path = dir.path().join(name);
            fs::write(&path, b"").unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        }
        private_database(&old).unwrap();
        for name in ["old.db", "old.db-wal", "old.db-shm"] {
            assert_eq!(mode(&dir.path().join(name)), 0o600, "{name}");
        }
        // Narrower than 0600 stays as it is.
        fs::set_permissions(&old, fs::Permissions::from_mode(0o400)).unwrap();
        private_database(&old).unwrap();
        assert_eq!(mode(&old), 0o400);
    }

    #[test]
    fn the_data_folder_is_made_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700);
        fs::set_permissions(&data, fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&data).unwrap();
        assert_eq!(mode(&data), 0o700, "narrowed");
        let file = dir.path().join("file");
        fs::write(&file, b"").unwrap();
        assert!(private_dir(&file).is_err(), "not a folder");
    }
}
