#!/usr/bin/env bash
# The one command that runs every berth test on a fresh Debian 12 machine:
# installs the end-to-end test tools if any is missing, then fmt, clippy and all tests.
# Everything uses --release so a single release build serves every stage.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages whose tools the tests run (tests/support fails loudly if one is missing).
APT_PACKAGES=(docker-registry skopeo podman containerd nginx-light wrk umoci busybox-static jq curl openssl)
# One command per package, to decide whether anything needs installing.
REQUIRED_TOOLS=(docker-registry skopeo podman containerd nginx wrk umoci busybox jq curl openssl)

log() { printf '\n==> %s\n' "$*" >&2; }

install_test_tools() {
    local missing=()
    local tool
    for tool in "${REQUIRED_TOOLS[@]}"; do
        # nginx lives in /usr/sbin, which a non-login PATH may lack.
        if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
            missing+=("$tool")
        fi
    done
    if [[ ${#missing[@]} -eq 0 ]]; then
        return
    fi
    log "installing test tools (missing: ${missing[*]})"
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        sudo=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update
    "${sudo[@]}" apt-get install -y --no-install-recommends "${APT_PACKAGES[@]}"
}

install_test_tools

# cargo may be installed by rustup for this user without being on a non-login PATH.
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy --all-targets --release -- -D warnings"
cargo clippy --all-targets --release -- -D warnings

if cargo nextest --version >/dev/null 2>&1; then
    log "cargo nextest run --release --no-fail-fast"
    cargo nextest run --release --no-fail-fast
else
    log "cargo-nextest not installed: cargo test --release --no-fail-fast"
    cargo test --release --no-fail-fast
fi

# The Helm chart: lint, render every ci/*-values.yaml, validate against Kubernetes schemas and
# run berth check-config on each rendered config (helm and kubernetes-validate come from PyPI).
log "charts/berth/test.sh"
cargo build --release --bin berth
BERTH_BIN="$PWD/target/release/berth" bash charts/berth/test.sh

log "all tests passed"
