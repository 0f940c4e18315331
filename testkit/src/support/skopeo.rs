//! `skopeo copy docker://... dir:...` and a verifier for skopeo's `dir:` layout (1.1):
//! `version`, `manifest.json` (the top-level manifest or index), `<hex>.manifest.json` for
//! each copied index child (`--all`), and one `<hex>` file per config/layer blob.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};

use super::image::{Image, Index};
use super::{require_tool, sha256_digest};

/// Upper bound for one skopeo command, so a hung proxy fails the test instead of stalling it.
const COMMAND_TIMEOUT: &str = "300s";

/// Outcome of one skopeo run.
#[derive(Debug)]
pub struct SkopeoRun {
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl SkopeoRun {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    /// Panics with the command line and skopeo's output unless it succeeded.
    pub fn assert_success(&self, what: &str) {
        assert!(
            self.success(),
            "{what}: `{}` failed ({})\n--- skopeo stderr ---\n{}\n--- skopeo stdout ---\n{}",
            self.command,
            self.status,
            self.stderr,
            self.stdout
        );
    }
}

/// Runs `skopeo copy --src-tls-verify=false docker://<src_ref> dir:<dest_dir> <extra...>`.
/// `src_ref` is `127.0.0.1:PORT/NAME:TAG` or `...NAME@sha256:...` (a `docker://` prefix is
/// optional). `extra` is e.g. `["--all"]` or `["--override-arch", "arm64"]`.
pub fn skopeo_copy(src_ref: &str, dest_dir: &Path, extra: &[&str]) -> SkopeoRun {
    let src = if src_ref.starts_with("docker://") {
        src_ref.to_string()
    } else {
        format!("docker://{src_ref}")
    };
    let dest = format!("dir:{}", dest_dir.display());
    let mut args: Vec<String> = vec![
        "--insecure-policy".into(),
        "--command-timeout".into(),
        COMMAND_TIMEOUT.into(),
        "copy".into(),
        "--src-tls-verify=false".into(),
        "--retry-times".into(),
        "0".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(src);
    args.push(dest);
    run_skopeo(&args)
}

/// Runs `skopeo <args>` with proxy variables removed (loopback only).
pub fn run_skopeo(args: &[String]) -> SkopeoRun {
    let skopeo = require_tool("skopeo");
    let command = format!("skopeo {}", args.join(" "));
    let mut cmd = Command::new(skopeo);
    cmd.args(args).stdin(Stdio::null());
    for var in super::cmd::PROXY_VARS {
        cmd.env_remove(var);
    }
    let out = cmd.output().expect("run skopeo");
    SkopeoRun {
        command,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// A skopeo `dir:` output whose every file was checked against its digest.
#[derive(Debug)]
pub struct DirContents {
    /// Bytes of `manifest.json` and their digest.
    pub manifest: Vec<u8>,
    pub manifest_digest: String,
    /// Index children copied as `<hex>.manifest.json`, keyed by `sha256:<hex>`.
    pub child_manifests: BTreeMap<String, Vec<u8>>,
    /// Config and layer files, keyed by `sha256:<hex>`.
    pub blobs: BTreeMap<String, Vec<u8>>,
}

/// Reads a skopeo `dir:` output and checks that every file's sha256 equals its name, that
/// every config/layer referenced by a copied manifest is present with the descriptor's size,
/// and that no unreferenced or unknown file is there.
pub fn verify_dir(dir: &Path) -> DirContents {
    let version = std::fs::read_to_string(dir.join("version"))
        .unwrap_or_else(|e| panic!("{}: no readable `version` file: {e}", dir.display()));
    assert!(
        version.starts_with("Directory Transport Version:"),
        "{}: unexpected version file {version:?}",
        dir.display()
    );
    let manifest = std::fs::read(dir.join("manifest.json"))
        .unwrap_or_else(|e| panic!("{}: no readable manifest.json: {e}", dir.display()));
    let mut contents = DirContents {
        manifest_digest: sha256_digest(&manifest),
        manifest,
        child_manifests: BTreeMap::new(),
        blobs: BTreeMap::new(),
    };

    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read dir {}: {e}", dir.display()));
    for entry in entries {
        let entry = entry.expect("read a dir entry");
        let name = entry.file_name().to_string_lossy().into_owned();
        if name == "version" || name == "manifest.json" {
            continue;
        }
        let data = std::fs::read(entry.path()).unwrap_or_else(|e| panic!("read {}: {e}", entry.path().display()));
        let (hex, is_manifest) = match name.strip_suffix(".manifest.json") {
            Some(hex) => (hex, true),
            None => (name.as_str(), false),
        };
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{}: unexpected file {name:?} in skopeo dir output",
            dir.display()
        );
        let digest = format!("sha256:{hex}");
        assert_eq!(
            sha256_digest(&data),
            digest,
            "{}: file {name} does not hold the bytes of its digest",
            dir.display()
        );
        if is_manifest {
            contents.child_manifests.insert(digest, data);
        } else {
            contents.blobs.insert(digest, data);
        }
    }

    // Every copied manifest's config and layers are present with the right size.
    let mut referenced = BTreeSet::new();
    let top: serde_json::Value = serde_json::from_slice(&contents.manifest).expect("manifest.json is JSON");
    let mut image_manifests = Vec::new();
    if let Some(children) = top.get("manifests").and_then(|m| m.as_array()) {
        for child in children {
            let digest = child["digest"].as_str().expect("index child has a digest");
            if let Some(bytes) = contents.child_manifests.get(digest) {
                image_manifests
                    .push(serde_json::from_slice::<serde_json::Value>(bytes).expect("child manifest is JSON"));
            }
        }
    } else {
        image_manifests.push(top.clone());
    }
    for m in &image_manifests {
        let descriptors = std::iter::once(&m["config"]).chain(m["layers"].as_array().expect("manifest has layers"));
        for d in descriptors {
            let digest = d["digest"].as_str().expect("descriptor has a digest");
            let size = d["size"].as_u64().expect("descriptor has a size");
            let data = contents
                .blobs
                .get(digest)
                .unwrap_or_else(|| panic!("{}: blob {digest} referenced by a manifest is missing", dir.display()));
            assert_eq!(
                data.len() as u64,
                size,
                "{}: blob {digest} has the wrong size",
                dir.display()
            );
            referenced.insert(digest.to_string());
        }
    }
    let present: BTreeSet<String> = contents.blobs.keys().cloned().collect();
    assert_eq!(
        present,
        referenced,
        "{}: blob files must be exactly those the manifests reference",
        dir.display()
    );
    contents
}

/// Verifies `dir` and asserts it holds exactly `image` (manifest bytes and every blob).
pub fn assert_dir_has_image(dir: &Path, image: &Image) -> DirContents {
    let contents = verify_dir(dir);
    assert_eq!(
        contents.manifest_digest,
        image.manifest.digest,
        "{}: manifest.json digest differs from the pushed manifest",
        dir.display()
    );
    assert_eq!(
        contents.manifest,
        image.manifest.data,
        "{}: manifest.json bytes differ from the pushed manifest",
        dir.display()
    );
    assert!(
        contents.child_manifests.is_empty(),
        "{}: a single image must not come with child manifests",
        dir.display()
    );
    let expected: BTreeSet<String> = image.blobs().iter().map(|b| b.digest.clone()).collect();
    let got: BTreeSet<String> = contents.blobs.keys().cloned().collect();
    assert_eq!(
        got,
        expected,
        "{}: blob set differs from the pushed image",
        dir.display()
    );
    contents
}

/// Verifies `dir` (from `skopeo copy --all`) and asserts it holds exactly `index`: the index
/// bytes, every child manifest and every child's blobs.
pub fn assert_dir_has_index(dir: &Path, index: &Index) -> DirContents {
    let contents = verify_dir(dir);
    assert_eq!(
        contents.manifest_digest,
        index.index.digest,
        "{}: manifest.json digest differs from the pushed index",
        dir.display()
    );
    assert_eq!(
        contents.manifest,
        index.index.data,
        "{}: manifest.json bytes differ from the pushed index",
        dir.display()
    );
    let expected_children: BTreeMap<String, Vec<u8>> = index
        .children
        .iter()
        .map(|c| (c.manifest.digest.clone(), c.manifest.data.clone()))
        .collect();
    assert_eq!(
        contents.child_manifests.keys().collect::<Vec<_>>(),
        expected_children.keys().collect::<Vec<_>>(),
        "{}: child manifests differ from the pushed index children",
        dir.display()
    );
    assert!(
        contents.child_manifests == expected_children,
        "{}: child manifest bytes differ from the pushed ones",
        dir.display()
    );
    let expected: BTreeSet<String> = index
        .children
        .iter()
        .flat_map(|c| c.blobs())
        .map(|b| b.digest.clone())
        .collect();
    let got: BTreeSet<String> = contents.blobs.keys().cloned().collect();
    assert_eq!(
        got,
        expected,
        "{}: blob set differs from the pushed index",
        dir.display()
    );
    contents
}
