#!/bin/sh
# Writes containerd registry host files that send pulls through berth, on one node. Run by the
# chart's node-config DaemonSet (one pod per node, the node's containerd config_path mounted):
#
#   configure-containerd.sh install     write <CONFIG_PATH>/<registry>/hosts.toml for each registry
#   configure-containerd.sh uninstall   remove the files this release wrote
#   configure-containerd.sh run         install, re-install every RESYNC_SECONDS (k3s and rke2
#                                       rewrite their certs.d when the agent restarts), and
#                                       uninstall on SIGTERM (pod deleted: helm uninstall, the
#                                       DaemonSet disabled, or the node drained)
#
# Environment:
#   CONFIG_PATH      containerd's config_path as mounted in the pod (e.g. /host/certs.d)
#   MIRROR           berth's address as the node reaches it, e.g. http://10.0.0.7:30500
#   REGISTRIES       space-separated registry=fallback pairs, e.g.
#                    "docker.io=https://registry-1.docker.io ghcr.io=https://ghcr.io"
#   OWNER            marks the files of this release (e.g. namespace/release); files with another
#                    owner, or written by hand, are never changed or removed
#   RESYNC_SECONDS   for `run` (default 60)
#
# containerd tries the [host] entries in order and then `server`, so a pull still works when
# berth is down or does not know the registry (berth answers 404 for unknown ?ns= values).
# containerd reads hosts.toml on every pull: no restart is needed, neither to add nor to remove.
set -eu

: "${CONFIG_PATH:?CONFIG_PATH is not set}"
: "${OWNER:?OWNER is not set}"
MARK="# managed-by: berth node-config $OWNER"

log() { printf 'configure-containerd: %s\n' "$*" >&2; }

ours() {   # ours FILE: written by this release
    [ -f "$1" ] && [ "$(sed -n 1p "$1")" = "$MARK" ]
}

wanted() {   # wanted REGISTRY: listed in REGISTRIES
    for pair in $REGISTRIES; do
        [ "${pair%%=*}" = "$1" ] && return 0
    done
    return 1
}

install() {
    : "${MIRROR:?MIRROR is not set}"
    : "${REGISTRIES:?REGISTRIES is not set}"
    for pair in $REGISTRIES; do
        registry=${pair%%=*}
        fallback=${pair#*=}
        file=$CONFIG_PATH/$registry/hosts.toml
        if [ -e "$file" ] && ! ours "$file"; then
            log "$file exists and was not written by $OWNER: left alone"
            continue
        fi
        mkdir -p "$CONFIG_PATH/$registry"
        tmp=$file.berth-tmp
        cat >"$tmp" <<EOF
$MARK
# Pulls of $registry/... try berth first, then the registry itself (server).
# Removed when the DaemonSet's pod on this node is deleted (helm uninstall).
server = "$fallback"

[host."$MIRROR"]
  capabilities = ["pull", "resolve"]
  dial_timeout = "500ms"
EOF
        if cmp -s "$tmp" "$file" 2>/dev/null; then
            rm -f "$tmp"
        else
            mv "$tmp" "$file"
            log "wrote $file (mirror $MIRROR, fallback $fallback)"
        fi
    done
    # Registries dropped from the list since an earlier install.
    for file in "$CONFIG_PATH"/*/hosts.toml; do
        ours "$file" || continue
        registry=$(basename "$(dirname "$file")")
        wanted "$registry" || remove "$file"
    done
}

remove() {   # remove FILE, and its directory when that is left empty
    rm -f "$1"
    rmdir "$(dirname "$1")" 2>/dev/null || true
    log "removed $1"
}

uninstall() {
    for file in "$CONFIG_PATH"/*/hosts.toml; do
        if ours "$file"; then
            remove "$file"
        fi
    done
}

run() {
    trap 'uninstall; exit 0' TERM INT
    install
    log "configured; rewriting every ${RESYNC_SECONDS:-60}s, removing the files on SIGTERM"
    while :; do
        # sleep in the background so the trap runs as soon as the signal arrives
        sleep "${RESYNC_SECONDS:-60}" &
        wait $! || true
        install
    done
}

case ${1:-} in
    install) install ;;
    uninstall) uninstall ;;
    run) run ;;
    *) echo "usage: $0 install|uninstall|run" >&2; exit 2 ;;
esac
