//! Spools: temp files under `tmp/` on the local disk that fills and manifest writes stream
//! into while hashing, and that fill readers tail. A [`Spool`] becomes a [`VerifiedSpool`]
//! only through [`Spool::verify`], which compares the hash of exactly the bytes written with
//! the expected digest, so committing unverified bytes does not type-check. An uncommitted
//! spool's file is removed when it is dropped. Blocking file I/O: call off the async threads.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use crate::oci::{Digest, Hasher};

/// A temp file being written; removed on drop unless committed.
#[derive(Debug)]
pub(super) struct TempFile {
    pub(super) path: PathBuf,
    pub(super) file: Arc<File>,
    pub(super) committed: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.committed {
            // Open readers keep their descriptor; the name goes now.
            let _ = fs::remove_file(&self.path);
        }
    }
}

/// Content being written for an expected digest, hashed as it is written.
pub struct Spool {
    tmp: TempFile,
    expected: Digest,
    hasher: Hasher,
    len: u64,
}

/// A spool whose bytes hashed to its digest: the only thing a store commits.
#[derive(Debug)]
pub struct VerifiedSpool {
    pub(super) tmp: TempFile,
    pub(super) digest: Digest,
    pub(super) size: u64,
    /// Bytes the writer reserved for this content; the commit turns them into committed bytes
    /// in one step (and gives them back if it fails), so the budget never counts them twice.
    pub(super) reserved: u64,
}

impl VerifiedSpool {
    /// Hand the writer's reservation of `n` bytes for this content over to the commit.
    pub fn holding_reservation(mut self, n: u64) -> VerifiedSpool {
        self.reserved = n;
        self
    }

    /// The digest the content matched.
    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// Its size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The file (still readable through this handle after the commit renames it).
    pub fn file(&self) -> &Arc<File> {
        &self.tmp.file
    }
}

impl Spool {
    pub(super) fn new(tmp: TempFile, expected: &Digest) -> Spool {
        Spool {
            tmp,
            hasher: expected.hasher(),
            expected: expected.clone(),
            len: 0,
        }
    }

    /// The file, for readers that follow the spool as it grows (positional reads).
    pub fn file(&self) -> &Arc<File> {
        &self.tmp.file
    }

    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Append `data` and hash it.
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.tmp.file.write_all_at(data, self.len)?;
        self.hasher.update(data);
        self.len += data.len() as u64;
        Ok(())
    }

    /// Start over from byte 0 (the upstream ignored a resume `Range`).
    pub fn restart(&mut self) {
        self.hasher = Hasher::new(self.expected.algorithm());
        self.len = 0;
    }

    /// Check the bytes written against the expected digest. On a mismatch the spool is
    /// dropped (its file removed) and the digest of what was written is returned.
    pub fn verify(self) -> Result<VerifiedSpool, Digest> {
        let Spool {
            tmp,
            expected,
            hasher,
            len,
        } = self;
        let actual = hasher.finish();
        if actual != expected {
            return Err(actual);
        }
        Ok(VerifiedSpool {
            tmp,
            digest: expected,
            size: len,
            reserved: 0,
        })
    }
}
