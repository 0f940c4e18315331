//! Which committed objects are manifests: `manifests/<alg>/<ab>/<hex>` holds the media type an
//! object was validated as when it was fetched as a manifest. Only such objects are served on
//! the manifests endpoint; a config or layer blob with the same bytes-on-disk layout never is.
//! A digest names fixed bytes, so a record never goes wrong; it is removed with its object.
//! Blocking file I/O.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::{atomic, Error};
use crate::oci::{Digest, MediaType, MANIFEST_TYPES};

/// Handle to `<root>/manifests`. Cheap to clone.
#[derive(Debug, Clone)]
pub struct ManifestTypes {
    root: PathBuf,
    tmp: PathBuf,
}

impl ManifestTypes {
    /// The records under the store root.
    pub fn new(store_root: &Path) -> ManifestTypes {
        ManifestTypes {
            root: store_root.join("manifests"),
            tmp: store_root.join("tmp"),
        }
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        let hex = digest.hex();
        self.root.join(digest.algorithm().as_str()).join(&hex[..2]).join(hex)
    }

    /// The type `digest` was validated as, if it was fetched as a manifest.
    pub fn load(&self, digest: &Digest) -> Result<Option<MediaType>, Error> {
        match fs::read_to_string(self.path(digest)) {
            Ok(t) if MANIFEST_TYPES.contains(&t.as_str()) => Ok(Some(MediaType::new(&t))),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Record that `digest` is a manifest of `media_type`.
    pub fn save(&self, digest: &Digest, media_type: &MediaType) -> Result<(), Error> {
        let dest = self.path(digest);
        fs::create_dir_all(dest.parent().expect("record paths always have a parent"))?;
        let tmp = self.tmp.join(format!("type-{:016x}", fastrand::u64(..)));
        Ok(atomic::replace(&tmp, &dest, media_type.as_str().as_bytes())?)
    }

    /// Forget the record (absent is fine).
    pub fn remove(&self, digest: &Digest) -> Result<(), Error> {
        match fs::remove_file(self.path(digest)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}
