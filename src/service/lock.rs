//! The data-folder lock: one daemon per data folder.
//!
//! An OS advisory lock on `data_dir/nof1d.lock`, held for the daemon's life.
//! The kernel drops it when the process dies, even by `kill -9`, so a crash
//! never leaves a stale lock behind; a second `nof1d serve` on the same
//! folder is refused with a clear message instead of sharing the database.

use std::fs::{File, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// Why the lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it.
    #[error(
        "another nof1d is already running on data folder {dir} (it holds {file}{pid}); stop it first, or use another --data-dir"
    )]
    Held {
        /// The data folder.
        dir: PathBuf,
        /// The lock file.
        file: PathBuf,
        /// ", pid N" when the holder wrote it.
        pid: String,
    },
    /// The lock file could not be opened or written.
    #[error("cannot use lock file {file}: {source}")]
    Io {
        /// The lock file.
        file: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The held lock; dropping it releases it.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
    path: PathBuf,
}

impl DataLock {
    /// Takes the lock on `dir` (which must exist) or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DataLock, LockError> {
        let path = dir.join("nof1d.lock");
        let io = |source| LockError::Io {
            file: path.clone(),
            source,
        };
        let mut file = crate::service::private::open_rw(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let pid = holder
                    .trim()
                    .parse::<u32>()
                    .map(|p| format!(", pid {p}"))
                    .unwrap_or_default();
                return Err(LockError::Held {
                    dir: dir.to_path_buf(),
                    file: path,
                    pid,
                });
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_all().map_err(io)?;
        Ok(DataLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_then_free_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataLock::acquire(dir.path()).unwrap();
        let err = DataLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains("already running"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        DataLock::acquire(dir.path()).unwrap();
    }
}
