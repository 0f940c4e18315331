//! Generated container images, built offline, and a v2 push client.
//!
//! A layer is a real gzip'd tar of random files; the config lists `rootfs.diff_ids`
//! (sha256 of each uncompressed tar); manifests are Docker v2 schema2 or OCI; an index
//! holds one OCI manifest per platform. Every digest and every byte is kept so tests can
//! compare what a client received with what the upstream holds.

use std::io::Write as _;

use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::json;

use super::{http, sha256_digest};

pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// The `Accept` value a modern client sends for manifests (all four types).
pub const ACCEPT_ALL_MANIFESTS: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.docker.distribution.manifest.v2+json";

/// Largest file inside a generated layer; bigger layers get several files.
const MAX_FILE: usize = 1 << 20;

/// Content-addressed bytes with their media type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    pub digest: String,
    pub media_type: String,
    pub data: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, data: Vec<u8>) -> Blob {
        Blob {
            digest: sha256_digest(&data),
            media_type: media_type.to_string(),
            data,
        }
    }

    pub fn size(&self) -> usize {
        self.data.len()
    }

    /// The hex part of the digest (what skopeo's `dir:` uses as a file name).
    pub fn hex(&self) -> &str {
        self.digest
            .strip_prefix("sha256:")
            .expect("generated digests are sha256")
    }

    /// An OCI descriptor for this blob.
    pub fn descriptor(&self) -> serde_json::Value {
        json!({"mediaType": self.media_type, "size": self.size(), "digest": self.digest})
    }
}

/// Manifest flavour of a generated image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/vnd.docker.distribution.manifest.v2+json`.
    DockerV2,
    /// `application/vnd.oci.image.manifest.v1+json`.
    Oci,
}

/// A single-platform image: manifest, config and layers, all with bytes and digests.
#[derive(Debug, Clone)]
pub struct Image {
    pub format: Format,
    pub os: String,
    pub architecture: String,
    pub manifest: Blob,
    pub config: Blob,
    pub layers: Vec<Blob>,
    /// sha256 of each uncompressed layer tar, as listed in the config.
    pub diff_ids: Vec<String>,
}

impl Image {
    /// Builds an image for `linux/<architecture>` with one layer per entry of
    /// `layer_sizes` (bytes of random file content, before tar and gzip).
    pub fn generate(rng: &mut fastrand::Rng, format: Format, architecture: &str, layer_sizes: &[usize]) -> Image {
        let (config_type, layer_type, manifest_type) = match format {
            Format::DockerV2 => (DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST_V2),
            Format::Oci => (OCI_CONFIG, OCI_LAYER_GZIP, OCI_MANIFEST),
        };
        let mut layers = Vec::new();
        let mut diff_ids = Vec::new();
        for (i, &size) in layer_sizes.iter().enumerate() {
            let tar = layer_tar(rng, i, size);
            diff_ids.push(sha256_digest(&tar));
            layers.push(Blob::new(layer_type, gzip(&tar)));
        }
        let history: Vec<_> = (0..layers.len())
            .map(|i| json!({"created": "2024-01-01T00:00:00Z", "created_by": format!("berth-e2e layer {i}")}))
            .collect();
        let config = json!({
            "architecture": architecture,
            "os": "linux",
            "created": "2024-01-01T00:00:00Z",
            "config": {"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/bin:/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": history,
        });
        let config = Blob::new(config_type, to_json_bytes(&config));
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": manifest_type,
            "config": config.descriptor(),
            "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
        });
        let manifest = Blob::new(manifest_type, to_json_bytes(&manifest));
        Image {
            format,
            os: "linux".to_string(),
            architecture: architecture.to_string(),
            manifest,
            config,
            layers,
            diff_ids,
        }
    }

    /// Config and layers: every blob the manifest references.
    pub fn blobs(&self) -> Vec<&Blob> {
        std::iter::once(&self.config).chain(self.layers.iter()).collect()
    }
}

/// An OCI image index over several single-platform OCI images.
#[derive(Debug, Clone)]
pub struct Index {
    pub index: Blob,
    pub children: Vec<Image>,
}

impl Index {
    /// Builds an OCI index listing `children` with their `platform` fields.
    pub fn new(children: Vec<Image>) -> Index {
        let manifests: Vec<_> = children
            .iter()
            .map(|c| {
                let mut d = c.manifest.descriptor();
                d["platform"] = json!({"architecture": c.architecture, "os": c.os});
                d
            })
            .collect();
        let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
        Index {
            index: Blob::new(OCI_INDEX, to_json_bytes(&index)),
            children,
        }
    }

    /// Builds a linux/amd64 + linux/arm64 index of OCI images.
    pub fn generate_two_platform(rng: &mut fastrand::Rng, layer_sizes: &[usize]) -> Index {
        Index::new(vec![
            Image::generate(rng, Format::Oci, "amd64", layer_sizes),
            Image::generate(rng, Format::Oci, "arm64", layer_sizes),
        ])
    }

    /// The child for `architecture`.
    pub fn child(&self, architecture: &str) -> &Image {
        self.children
            .iter()
            .find(|c| c.architecture == architecture)
            .unwrap_or_else(|| panic!("index has no {architecture} child"))
    }
}

/// A tar with random files totalling `size` bytes under `layer<i>/`.
fn layer_tar(rng: &mut fastrand::Rng, layer: usize, size: usize) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    let mut dir = tar::Header::new_gnu();
    dir.set_entry_type(tar::EntryType::Directory);
    dir.set_mode(0o755);
    dir.set_size(0);
    dir.set_mtime(1_700_000_000);
    builder
        .append_data(&mut dir, format!("layer{layer}/"), std::io::empty())
        .expect("append a directory to the layer tar");
    let mut remaining = size;
    let mut file = 0;
    while remaining > 0 || file == 0 {
        let len = remaining.min(MAX_FILE);
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_mode(0o644);
        header.set_size(len as u64);
        header.set_mtime(1_700_000_000);
        builder
            .append_data(&mut header, format!("layer{layer}/file{file}.bin"), &data[..])
            .expect("append a file to the layer tar");
        remaining -= len;
        file += 1;
    }
    builder.into_inner().expect("finish the layer tar")
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut encoder = GzEncoder::new(Vec::new(), Compression::fast());
    encoder.write_all(data).expect("gzip a layer");
    encoder.finish().expect("finish gzip")
}

fn to_json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).expect("serialize generated JSON")
}

/// Uploads `blob` to repository `name` on the registry at `addr` (monolithic:
/// `POST /v2/<name>/blobs/uploads/`, then `PUT <Location>&digest=...` with the bytes).
pub fn push_blob(addr: &str, name: &str, blob: &Blob) {
    let start = http::request(addr, "POST", &format!("/v2/{name}/blobs/uploads/"), &[], &[])
        .unwrap_or_else(|e| panic!("POST upload for {name} on {addr}: {e}"));
    assert_eq!(
        start.status,
        202,
        "POST /v2/{name}/blobs/uploads/ must start an upload: {}",
        start.text()
    );
    let location = start
        .header("Location")
        .expect("upload start response must carry Location");
    let target = location_target(location);
    let sep = if target.contains('?') { '&' } else { '?' };
    let target = format!("{target}{sep}digest={}", blob.digest);
    let put = http::request(
        addr,
        "PUT",
        &target,
        &[("Content-Type", "application/octet-stream")],
        &blob.data,
    )
    .unwrap_or_else(|e| panic!("PUT blob {} to {name} on {addr}: {e}", blob.digest));
    assert_eq!(
        put.status,
        201,
        "PUT of blob {} to {name} must be created: {}",
        blob.digest,
        put.text()
    );
}

/// Puts `manifest` as `/v2/<name>/manifests/<reference>` with its media type.
pub fn push_manifest(addr: &str, name: &str, reference: &str, manifest: &Blob) {
    let put = http::request(
        addr,
        "PUT",
        &format!("/v2/{name}/manifests/{reference}"),
        &[("Content-Type", manifest.media_type.as_str())],
        &manifest.data,
    )
    .unwrap_or_else(|e| panic!("PUT manifest {name}:{reference} on {addr}: {e}"));
    assert_eq!(
        put.status,
        201,
        "PUT manifest {name}:{reference} ({}) must be created: {}",
        manifest.media_type,
        put.text()
    );
    assert_eq!(
        put.header("Docker-Content-Digest"),
        Some(manifest.digest.as_str()),
        "the registry must store the manifest bytes unchanged"
    );
}

/// Pushes every blob of `image`, then its manifest under `tag`.
pub fn push_image(addr: &str, name: &str, tag: &str, image: &Image) {
    for blob in image.blobs() {
        push_blob(addr, name, blob);
    }
    push_manifest(addr, name, tag, &image.manifest);
}

/// Pushes every child (by digest), then the index under `tag`.
pub fn push_index(addr: &str, name: &str, tag: &str, index: &Index) {
    for child in &index.children {
        push_image(addr, name, &child.manifest.digest, child);
    }
    push_manifest(addr, name, tag, &index.index);
}

/// Turns a `Location` (absolute URL or absolute path) into a request target.
fn location_target(location: &str) -> String {
    match location.split_once("://") {
        Some((_, rest)) => match rest.find('/') {
            Some(i) => rest[i..].to_string(),
            None => "/".to_string(),
        },
        None => location.to_string(),
    }
}

/// The OCI empty descriptor's media type (`{}`), the config of artifacts without one.
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";

/// An OCI 1.1 artifact: an image manifest with `artifactType`, the empty config, one payload
/// layer and a `subject` (e.g. an SBOM or a signature of an image).
#[derive(Debug, Clone)]
pub struct Artifact {
    pub artifact_type: String,
    pub manifest: Blob,
    pub config: Blob,
    pub payload: Blob,
    pub annotations: serde_json::Value,
}

impl Artifact {
    /// An artifact of `artifact_type` carrying `payload` (as `payload_type`) about `subject`.
    pub fn new(artifact_type: &str, payload_type: &str, payload: Vec<u8>, subject: &Blob) -> Artifact {
        let config = Blob::new(OCI_EMPTY, b"{}".to_vec());
        let payload = Blob::new(payload_type, payload);
        let annotations = json!({"org.opencontainers.image.created": "2026-12-05T00:00:00Z"});
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "artifactType": artifact_type,
            "config": config.descriptor(),
            "layers": [payload.descriptor()],
            "subject": subject.descriptor(),
            "annotations": annotations,
        });
        Artifact {
            artifact_type: artifact_type.to_string(),
            manifest: Blob::new(OCI_MANIFEST, to_json_bytes(&manifest)),
            config,
            payload,
            annotations,
        }
    }

    /// The descriptor a referrers list holds for this artifact.
    pub fn descriptor(&self) -> serde_json::Value {
        let mut d = self.manifest.descriptor();
        d["artifactType"] = json!(self.artifact_type);
        d["annotations"] = self.annotations.clone();
        d
    }
}

/// Pushes `artifact` to `name` following the OCI 1.1 push rules: blobs, then the manifest by
/// digest; a registry that answered without `OCI-Subject` and whose referrers API answers 404
/// (distribution 2.8) gets the descriptor added to the fallback tag `sha256-<hex>` index.
pub fn push_referrer(addr: &str, name: &str, artifact: &Artifact, subject: &str) {
    push_blob(addr, name, &artifact.config);
    push_blob(addr, name, &artifact.payload);
    let put = http::request(
        addr,
        "PUT",
        &format!("/v2/{name}/manifests/{}", artifact.manifest.digest),
        &[("Content-Type", OCI_MANIFEST)],
        &artifact.manifest.data,
    )
    .unwrap_or_else(|e| panic!("PUT artifact manifest to {name} on {addr}: {e}"));
    assert_eq!(put.status, 201, "PUT artifact manifest: {}", put.text());
    if put.header("OCI-Subject").is_some() {
        return;
    }
    let api = http::get(addr, &format!("/v2/{name}/referrers/{subject}"), &[])
        .unwrap_or_else(|e| panic!("GET referrers on {addr}: {e}"));
    if api.status != 404 {
        return;
    }
    let tag = subject.replace(':', "-");
    let current = http::get(addr, &format!("/v2/{name}/manifests/{tag}"), &[("Accept", OCI_INDEX)])
        .unwrap_or_else(|e| panic!("GET fallback tag on {addr}: {e}"));
    let mut manifests = match current.status {
        200 => {
            let v: serde_json::Value = serde_json::from_slice(&current.body).expect("the fallback tag is an index");
            v["manifests"].as_array().cloned().unwrap_or_default()
        }
        404 => Vec::new(),
        s => panic!("GET fallback tag {tag} answered {s}: {}", current.text()),
    };
    manifests.push(artifact.descriptor());
    let index = json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests});
    push_manifest(addr, name, &tag, &Blob::new(OCI_INDEX, to_json_bytes(&index)));
}
