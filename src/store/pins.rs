//! `pins.json`: manifests an operator pinned, exempt from eviction with everything they
//! reference. Written atomically by `berth cache pin`; read by every eviction pass, so a
//! running server honours a new pin without a restart.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{atomic, Error};
use crate::oci::Digest;

/// One pin: the reference the operator gave and the manifest digest it resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pin {
    /// As typed, e.g. `docker.io/library/alpine:3.20`.
    pub reference: String,
    /// The pinned manifest (or index).
    pub digest: String,
}

/// Handle to `<root>/pins.json`.
#[derive(Debug, Clone)]
pub struct Pins {
    path: PathBuf,
}

#[derive(Default, Serialize, Deserialize)]
struct PinsFile {
    pins: Vec<Pin>,
}

impl Pins {
    /// Pins of the store at `root`.
    pub fn new(root: &Path) -> Pins {
        Pins {
            path: root.join("pins.json"),
        }
    }

    /// Every pin (none if the file is absent).
    pub fn load(&self) -> Result<Vec<Pin>, Error> {
        match fs::read(&self.path) {
            Ok(b) => Ok(serde_json::from_slice::<PinsFile>(&b)
                .map(|f| f.pins)
                .unwrap_or_default()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(e.into()),
        }
    }

    /// The pinned digests.
    pub fn digests(&self) -> Result<Vec<Digest>, Error> {
        Ok(self.load()?.iter().filter_map(|p| p.digest.parse().ok()).collect())
    }

    /// Add a pin (replacing one with the same reference).
    pub fn add(&self, pin: Pin) -> Result<(), Error> {
        let mut pins = self.load()?;
        pins.retain(|p| p.reference != pin.reference);
        pins.push(pin);
        self.save(pins)
    }

    /// Remove pins whose reference or digest equals `what`; returns how many.
    pub fn remove(&self, what: &str) -> Result<usize, Error> {
        let mut pins = self.load()?;
        let before = pins.len();
        pins.retain(|p| p.reference != what && p.digest != what);
        let n = before - pins.len();
        self.save(pins)?;
        Ok(n)
    }

    fn save(&self, pins: Vec<Pin>) -> Result<(), Error> {
        let tmp = self.path.with_extension(format!("tmp{:08x}", fastrand::u32(..)));
        let bytes = serde_json::to_vec_pretty(&PinsFile { pins }).expect("plain struct serializes");
        atomic::replace(&tmp, &self.path, &bytes)?;
        Ok(())
    }
}
