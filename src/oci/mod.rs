//! OCI spec vocabulary: repository names, references, digests and manifest media types.
//! Pure parsing and validation only: nothing here touches the network, the disk or HTTP types,
//! and nothing here imports from the rest of the crate.

mod digest;
mod media;
mod name;
mod walk;

pub use digest::{Algorithm, Digest, DigestError, Hasher};
pub use media::{inspect_manifest, ManifestError, MediaType, MANIFEST_TYPES, OCI_INDEX};
pub use name::{is_registry_host, NameError, Reference, RepoName, Tag};
pub use walk::{reachable, references, MAX_MANIFEST_BYTES};
