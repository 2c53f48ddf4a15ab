//! Files only the daemon's own user may read: the data folder (0700), the
//! database and its WAL, backups, the lock file and `.eml` files (0600),
//! whatever the process's umask. They hold a person's health data and live
//! one-click tokens, so a home server's other accounts must not read them.
//!
//! SQLite creates `-wal` and `-shm` with the database file's own mode, so
//! creating the database 0600 covers them. On non-Unix systems these are
//! plain file operations (the OS's ACLs apply).

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of the data folder and of folders inside it.
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file nof1d writes there.
pub const FILE_MODE: u32 = 0o600;

/// Creates `dir` (and missing parents) as 0700; an existing `dir` that is
/// group- or world-accessible is narrowed to 0700. Returns true when an
/// existing folder was narrowed, so the caller can say so.
pub fn ensure_dir(dir: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(DIR_MODE)
                .create(dir)?;
            return Ok(false);
        }
        let mode = std::fs::metadata(dir)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & DIR_MODE))?;
            return Ok(true);
        }
        Ok(false)
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)?;
        Ok(false)
    }
}

/// Creates a new file (failing if it exists) readable by its owner only.
pub fn create_new(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options.open(path)
}

/// Opens (creating if missing) a file for reading and writing, readable by
/// its owner only; an existing file is narrowed to 0600.
pub fn open_rw(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    let file = options.open(path)?;
    narrow_file(path)?;
    Ok(file)
}

/// Writes `bytes` to a new file `path` (0600), replacing nothing.
pub fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut file = create_new(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// Narrows an existing file to 0600 when group or others may read it
/// (databases written by earlier versions followed the umask). Returns true
/// when it changed something; a missing file is left alone.
pub fn narrow_file(path: &Path) -> io::Result<bool> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = match std::fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & FILE_MODE))?;
            return Ok(true);
        }
        Ok(false)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        Ok(false)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn new_files_and_folders_are_private_and_wide_ones_are_narrowed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a/b");
        assert!(!ensure_dir(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        let f = dir.join("x");
        write_new(&f, b"secret").unwrap();
        assert_eq!(mode(&f), 0o600);
        assert!(write_new(&f, b"again").is_err(), "never replaces a file");
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(narrow_file(&f).unwrap());
        assert_eq!(mode(&f), 0o600);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert!(ensure_dir(&dir).unwrap());
        assert_eq!(mode(&dir), 0o700);
        assert!(!narrow_file(&dir.join("missing")).unwrap());
    }
}
