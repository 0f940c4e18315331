//! `<root>/serve.lock`: one `berth serve` per store. The server holds an exclusive `flock` on
//! it for its whole life and writes its pid into it, so a second server on the same store
//! fails at start naming the holder. The kernel drops the lock when the holder exits, however
//! it exits. The store commands of the CLI do not take it: they are safe beside a server.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};

/// Why the store could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the lock.
    #[error("store {} is in use by another berth serve{}; one server per store", .store.display(), .holder.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    Held {
        /// The store root.
        store: PathBuf,
        /// The holder's pid, when it could be read.
        holder: Option<u32>,
    },
    /// The lock file could not be created or locked.
    #[error("store {}: cannot lock {}: {source}", .store.display(), .store.join(LOCK_FILE).display())]
    Io {
        /// The store root.
        store: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

const LOCK_FILE: &str = "serve.lock";

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

impl StoreLock {
    /// Lock the store at `root` (creating the directory) or fail at once if another process
    /// holds it.
    pub fn acquire(root: &Path) -> Result<StoreLock, LockError> {
        let io = |source: std::io::Error| LockError::Io {
            store: root.to_path_buf(),
            source,
        };
        fs::create_dir_all(root).map_err(io)?;
        // Not truncated on open: the file holds the current holder's pid.
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join(LOCK_FILE))
            .map_err(io)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                let mut text = String::new();
                let holder = file
                    .read_to_string(&mut text)
                    .ok()
                    .and_then(|_| text.trim().parse().ok());
                return Err(LockError::Held {
                    store: root.to_path_buf(),
                    holder,
                });
            }
            Err(e) => return Err(io(e.into())),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        Ok(StoreLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_store_fails_naming_the_holder_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = StoreLock::acquire(dir.path()).unwrap();
        let err = StoreLock::acquire(dir.path()).unwrap_err();
        let pid = std::process::id();
        assert!(
            matches!(err, LockError::Held { holder: Some(p), .. } if p == pid),
            "{err:?}"
        );
        assert!(err.to_string().contains(&format!("(pid {pid})")), "{err}");
        drop(first);
        StoreLock::acquire(dir.path()).expect("free again once dropped");
    }
}
