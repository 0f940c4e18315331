//! berth's test kit, one crate shared by every test binary (so nothing in it is dead code in
//! one test and used in another):
//! - [`common`]: in-process harness: `FakeRegistry` (a scripted upstream for fault injection
//!   only), `TestProxy` (`berth::run` on an ephemeral port with a temp store), TLS test CA.
//! - [`support`]: real peers (`docker-registry`, skopeo, podman, containerd, Docker) and the
//!   built `berth` binary, all on 127.0.0.1.
//!
//! Nothing here reaches beyond loopback; a missing tool fails the test with an install hint.

pub mod common;
pub mod support;

use std::path::PathBuf;

/// The `berth` binary cargo built beside the running test binary
/// (`target/<profile>/deps/<test>` -> `target/<profile>/berth`).
pub fn berth_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary's path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binaries live in target/<profile>/deps");
    let bin = profile_dir.join(format!("berth{}", std::env::consts::EXE_SUFFIX));
    assert!(
        bin.exists(),
        "{} not built: run the tests with cargo, which builds it",
        bin.display()
    );
    bin
}
