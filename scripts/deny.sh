#!/usr/bin/env bash
# cargo deny check (advisories, licenses, bans, sources; see deny.toml) without network access:
# the RustSec database comes from .cargo-deny/advisory-db, staged where deny.toml's db-path
# expects a fetched clone. cargo-deny dates a database by its .git/FETCH_HEAD, so the staged copy
# gets the vendored snapshot's commit date and cargo-deny's staleness limit applies to it.
# Needs cargo-deny (scripts/test.sh installs it into target/test-tools).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export PATH="$PWD/target/test-tools/bin:$PATH"

VENDORED=.cargo-deny/advisory-db
SNAPSHOT=.cargo-deny/advisory-db.snapshot
# cargo-deny keeps the database of URL u under db-path/advisory-db-<xxhash64 of u>; this is
# the directory for deny.toml's db-urls entry https://github.com/rustsec/advisory-db.
STAGED=target/cargo-deny/advisory-db-3157b0e258782691

date=$(sed -n 's/^date=//p' "$SNAPSHOT")
[[ -n $date && -d $VENDORED/crates ]] || { echo "deny.sh: no vendored advisory database in $VENDORED" >&2; exit 1; }
rm -rf "$STAGED"
mkdir -p "$STAGED/.git"
cp -R "$VENDORED/crates" "$STAGED/crates"
touch -d "$date" "$STAGED/.git/FETCH_HEAD"

# --frozen keeps cargo-deny off the network, and so cargo metadata too: it needs every locked
# crate on disk, including those of other platforms that no build here downloads.
cargo fetch --locked
exec cargo deny --frozen check --hide-inclusion-graph "$@"
