//! The one way a file in the store is replaced or published: the content is complete and
//! fsynced before a rename makes it visible, and the directory is fsynced after, so a crash at
//! any moment leaves either the old file or the new one. A temp file that was not published
//! is removed. Used for tag records, manifest-type records, `pins.json` and committed content;
//! nothing else renames into the store.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Write `bytes` to `tmp` (created new), fsync, and publish it as `dest`.
pub fn replace(tmp: &Path, dest: &Path, bytes: &[u8]) -> io::Result<()> {
    let written = File::create_new(tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| publish(tmp, dest)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = fs::remove_file(tmp);
            Err(e)
        }
    }
}

/// Rename a complete, fsynced `tmp` onto `dest` and fsync `dest`'s directory. On failure the
/// caller still owns `tmp`.
pub fn publish(tmp: &Path, dest: &Path) -> io::Result<()> {
    fs::rename(tmp, dest)?;
    match dest.parent() {
        Some(dir) => File::open(dir)?.sync_all(),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replace_swaps_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let (tmp, dest) = (dir.path().join("t"), dir.path().join("d"));
        fs::write(&dest, b"old").unwrap();
        replace(&tmp, &dest, b"new").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert!(!tmp.exists());
    }

    #[test]
    fn a_failed_replace_keeps_the_old_file_and_removes_the_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let tmp = dir.path().join("t");
        // A directory cannot be replaced by a file: the rename fails after the write.
        let dest = dir.path().join("d");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("x"), b"keep").unwrap();
        assert!(replace(&tmp, &dest, b"new").is_err());
        assert!(!tmp.exists());
        assert_eq!(fs::read(dest.join("x")).unwrap(), b"keep");
    }
}
