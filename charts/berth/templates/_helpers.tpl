{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "berth.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart unless the release name already contains the chart name. */}}
{{- define "berth.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "berth.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels every resource carries. */}}
{{- define "berth.labels" -}}
helm.sh/chart: {{ include "berth.chart" . }}
{{ include "berth.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: registry-cache
app.kubernetes.io/part-of: berth
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels: stable across upgrades. */}}
{{- define "berth.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "berth.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "berth.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: repository@digest or repository:tag (tag defaults to appVersion). */}}
{{- define "berth.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}
{{- end }}

{{/* "true" for a Deployment on one PVC: one pod, Recreate. */}}
{{- define "berth.singlePVCDeployment" -}}
{{- if and (eq .Values.kind "Deployment") .Values.persistence.enabled }}true{{ end }}
{{- end }}

{{/* Number of replicas run (with autoscaling: at least minReplicas). */}}
{{- define "berth.replicas" -}}
{{- if include "berth.singlePVCDeployment" . }}1
{{- else if .Values.autoscaling.enabled }}{{ .Values.autoscaling.minReplicas | int }}
{{- else }}{{ .Values.replicaCount | int }}{{ end }}
{{- end }}

{{/* "true" when more than one replica may run (replicas, autoscaling or a cluster). */}}
{{- define "berth.multiReplica" -}}
{{- if or (gt (int (include "berth.replicas" .)) 1) (and .Values.autoscaling.enabled (not (include "berth.singlePVCDeployment" .))) .Values.cluster.enabled }}true{{ end }}
{{- end }}

{{/* The scheme berth's listener speaks. */}}
{{- define "berth.scheme" -}}
{{- ternary "https" "http" .Values.tls.enabled }}
{{- end }}

{{/* The headless Service through which the replicas find each other. */}}
{{- define "berth.peersService" -}}
{{- printf "%s-peers" (include "berth.fullname" . | trunc 57 | trimSuffix "-") }}
{{- end }}

{{/* Port number at the end of a listen address ("0.0.0.0:5000", "[::]:5000"). */}}
{{- define "berth.portOf" -}}
{{- $parts := splitList ":" (toString .) }}
{{- last $parts | int }}
{{- end }}

{{- define "berth.httpPort" -}}
{{- if .Values.existingConfigMap }}
{{- .Values.ports.http | int }}
{{- else }}
{{- include "berth.portOf" (.Values.config.server.listen | default "0.0.0.0:5000") }}
{{- end }}
{{- end }}

{{/* Metrics container port, or empty when berth runs no metrics listener. */}}
{{- define "berth.metricsPort" -}}
{{- if .Values.existingConfigMap }}
{{- .Values.ports.metrics | int }}
{{- else if and .Values.config.metrics .Values.config.metrics.listen }}
{{- include "berth.portOf" .Values.config.metrics.listen }}
{{- end }}
{{- end }}

{{/* Where the Secret of upstream credentials is mounted. */}}
{{- define "berth.secretDir" -}}
/etc/berth/secrets/{{ . }}
{{- end }}

{{/*
The config as rendered into config.toml: .Values.config plus, for each entry of
upstreamCredentials, password_file (and username when given as a value), and server.tls from
.Values.tls (files under /etc/berth/tls and /etc/berth/tls-client-ca), and auth.htpasswd /
auth.token_key_file from .Values.auth (files under /etc/berth/auth/), storage.s3 from
.Values.sharedStorage.s3 (secret key under /etc/berth/s3) and cluster from .Values.cluster
(secret under /etc/berth/cluster; advertise comes from the environment).
*/}}
{{- define "berth.config" -}}
{{- $cfg := deepCopy .Values.config }}
{{- $ups := $cfg.upstreams | default dict }}
{{- range $name, $cred := .Values.upstreamCredentials }}
{{- if not (hasKey $ups $name) }}
{{- fail (printf "upstreamCredentials.%s: there is no config.upstreams.%s" $name $name) }}
{{- end }}
{{- if not $cred.existingSecret }}
{{- fail (printf "upstreamCredentials.%s.existingSecret is required" $name) }}
{{- end }}
{{- if and (not $cred.username) (not $cred.usernameKey) }}
{{- fail (printf "upstreamCredentials.%s: set username or usernameKey" $name) }}
{{- end }}
{{- $up := get $ups $name }}
{{- $_ := set $up "password_file" (printf "%s/%s" (include "berth.secretDir" $name) ($cred.passwordKey | default "password")) }}
{{- if $cred.username }}
{{- $_ := set $up "username" $cred.username }}
{{- end }}
{{- end }}
{{- if .Values.tls.enabled }}
{{- if not .Values.tls.existingSecret }}
{{- fail "tls.enabled needs tls.existingSecret (a Secret with the certificate and key)" }}
{{- end }}
{{- $server := $cfg.server | default dict }}
{{- $tls := dict "cert_file" (printf "/etc/berth/tls/%s" .Values.tls.certKey) "key_file" (printf "/etc/berth/tls/%s" .Values.tls.keyKey) }}
{{- with .Values.tls.clientCA.existingSecret }}
{{- $_ := set $tls "client_ca_file" (printf "/etc/berth/tls-client-ca/%s" $.Values.tls.clientCA.key) }}
{{- $_ := set $tls "client_auth" $.Values.tls.clientCA.clientAuth }}
{{- end }}
{{- $_ := set $server "tls" $tls }}
{{- $_ := set $cfg "server" $server }}
{{- end }}
{{- if or .Values.auth.htpasswd.existingSecret .Values.auth.tokenKey.existingSecret }}
{{- $auth := $cfg.auth | default dict }}
{{- with .Values.auth.htpasswd.existingSecret }}
{{- $_ := set $auth "htpasswd" (printf "/etc/berth/auth/htpasswd/%s" $.Values.auth.htpasswd.key) }}
{{- end }}
{{- with .Values.auth.tokenKey.existingSecret }}
{{- $_ := set $auth "token_key_file" (printf "/etc/berth/auth/token-key/%s" $.Values.auth.tokenKey.key) }}
{{- end }}
{{- if not (hasKey $auth "htpasswd") }}
{{- fail "auth.tokenKey needs users: set auth.htpasswd.existingSecret (or config.auth.htpasswd)" }}
{{- end }}
{{- $_ := set $cfg "auth" $auth }}
{{- end }}
{{- $storage := $cfg.storage | default dict }}
{{- $s3v := .Values.sharedStorage.s3 }}
{{- if $s3v.enabled }}
{{- if not $s3v.bucket }}
{{- fail "sharedStorage.s3.enabled needs sharedStorage.s3.bucket" }}
{{- end }}
{{- $s3 := $storage.s3 | default dict }}
{{- $_ := set $s3 "bucket" $s3v.bucket }}
{{- with $s3v.endpoint }}{{ $_ := set $s3 "endpoint" . }}{{ end }}
{{- with $s3v.region }}{{ $_ := set $s3 "region" . }}{{ end }}
{{- with $s3v.prefix }}{{ $_ := set $s3 "prefix" . }}{{ end }}
{{- if $s3v.allowHttp }}{{ $_ := set $s3 "allow_http" true }}{{ end }}
{{- with $s3v.timeout }}{{ $_ := set $s3 "timeout" . }}{{ end }}
{{- if $s3v.credentials.existingSecret }}
{{- /* The key id comes from the Secret as BERTH_STORAGE__S3__ACCESS_KEY_ID (berth.env). */}}
{{- $_ := set $s3 "secret_access_key_file" (printf "/etc/berth/s3/%s" $s3v.credentials.secretAccessKeyKey) }}
{{- end }}
{{- $_ := set $storage "s3" $s3 }}
{{- $_ := set $cfg "storage" $storage }}
{{- end }}
{{- if .Values.cluster.enabled }}
{{- if not .Values.cluster.existingSecret }}
{{- fail "cluster.enabled needs cluster.existingSecret (a Secret holding at least 16 bytes: kubectl create secret generic berth-cluster --from-literal=secret=$(head -c 32 /dev/urandom | base64))" }}
{{- end }}
{{- if include "berth.clientCertRequired" . }}
{{- fail "cluster.enabled with tls.clientCA.clientAuth=required: replicas present no client certificate to each other; use clientAuth=optional" }}
{{- end }}
{{- $cl := $cfg.cluster | default dict }}
{{- $_ := set $cl "peers_dns" (printf "%s.%s.svc.%s:%d" (include "berth.peersService" .) .Release.Namespace .Values.cluster.clusterDomain (include "berth.httpPort" . | int)) }}
{{- $_ := set $cl "secret_file" (printf "/etc/berth/cluster/%s" .Values.cluster.key) }}
{{- with .Values.cluster.refreshInterval }}{{ $_ := set $cl "refresh_interval" . }}{{ end }}
{{- with .Values.cluster.peerTimeout }}{{ $_ := set $cl "peer_timeout" . }}{{ end }}
{{- with .Values.cluster.downFor }}{{ $_ := set $cl "down_for" . }}{{ end }}
{{- /* advertise is per pod: BERTH_CLUSTER__ADVERTISE from the pod IP (berth.env). */}}
{{- $_ := set $cfg "cluster" $cl }}
{{- end }}
{{- if and (not (hasKey $storage "max_size")) (gt (int .Values.persistence.maxSizePercent) 0) }}
{{- $size := ternary .Values.persistence.size .Values.persistence.emptyDirSizeLimit .Values.persistence.enabled }}
{{- if $size }}
{{- $bytes := include "berth.quantityBytes" $size | int64 }}
{{- $_ := set $storage "max_size" (div (mul $bytes (int .Values.persistence.maxSizePercent)) 100) }}
{{- $_ := set $cfg "storage" $storage }}
{{- end }}
{{- end }}
{{- include "berth.toml.table" (dict "path" list "map" $cfg) }}
{{- end }}

{{/* BERTH_UPSTREAMS__<NAME>__USERNAME: the env override for an upstream's username. */}}
{{- define "berth.usernameEnv" -}}
BERTH_UPSTREAMS__{{ . | upper }}__USERNAME
{{- end }}

{{/*
A small TOML writer for the config (Helm's toToml prints every YAML number as a float, which
berth's integer keys reject). Whole numbers print as integers, strings as JSON strings (valid
TOML basic strings), lists inline, maps as [tables]; null values are left out.
*/}}
{{- define "berth.toml.key" -}}
{{- if regexMatch "^[A-Za-z0-9_-]+$" . }}{{ . }}{{ else }}{{ toJson . }}{{ end }}
{{- end }}

{{- define "berth.toml.value" -}}
{{- $k := kindOf . }}
{{- if eq $k "string" }}{{ toJson . }}
{{- else if eq $k "bool" }}{{ . }}
{{- else if or (eq $k "float64") (eq $k "float32") }}{{ if eq (floor .) (float64 .) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else if or (eq $k "int") (eq $k "int64") (eq $k "int32") (eq $k "uint64") (eq $k "uint32") }}{{ . }}
{{- else if eq $k "slice" }}[{{ range $i, $e := . }}{{ if $i }}, {{ end }}{{ include "berth.toml.value" $e }}{{ end }}]
{{- else if eq $k "map" }}{ {{- $first := true }}{{ range $mk, $mv := . }}{{ if not (kindIs "invalid" $mv) }}{{ if not $first }},{{ end }}{{ $first = false }} {{ include "berth.toml.key" $mk }} = {{ include "berth.toml.value" $mv }}{{ end }}{{ end }} }
{{- else }}{{ fail (printf "config: cannot write a %s value as TOML" $k) }}
{{- end }}
{{- end }}

{{- define "berth.toml.table" -}}
{{- $path := .path }}
{{- $m := .map }}
{{- $scalars := 0 }}
{{- range $k, $v := $m }}{{ if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) }}{{ $scalars = add1 $scalars }}{{ end }}{{ end }}
{{- if and $path (or $scalars (not $m)) }}

[{{ join "." $path }}]
{{- end }}
{{- range $k, $v := $m }}
{{- if and (not (kindIs "invalid" $v)) (not (kindIs "map" $v)) }}
{{ include "berth.toml.key" $k }} = {{ include "berth.toml.value" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := $m }}
{{- if kindIs "map" $v }}
{{- include "berth.toml.table" (dict "path" (append $path (include "berth.toml.key" $k)) "map" $v) }}
{{- end }}
{{- end }}
{{- end }}

{{/* storageClassName line: omitted for "" (cluster default), empty string for "-". */}}
{{- define "berth.storageClass" -}}
{{- if .Values.persistence.storageClass }}
{{- if eq "-" .Values.persistence.storageClass }}
storageClassName: ""
{{- else }}
storageClassName: {{ .Values.persistence.storageClass | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Bytes of a Kubernetes quantity such as 50Gi, 500M, 1T or 1073741824. */}}
{{- define "berth.quantityBytes" -}}
{{- $q := toString . }}
{{- $m := regexFind "^[0-9]+" $q }}
{{- if not $m }}{{ fail (printf "cannot read the size %q" $q) }}{{ end }}
{{- $unit := trimPrefix $m $q }}
{{- $mult := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 }}
{{- if not (hasKey $mult $unit) }}{{ fail (printf "cannot read the size %q (use Ki, Mi, Gi, Ti, k, M, G or T)" $q) }}{{ end }}
{{- mul (int64 $m) (get $mult $unit) }}
{{- end }}

{{/* "true" when clients must present a certificate: probes and `helm test` cannot. */}}
{{- define "berth.clientCertRequired" -}}
{{- if and .Values.tls.enabled .Values.tls.clientCA.existingSecret (eq .Values.tls.clientCA.clientAuth "required") }}true{{ end }}
{{- end }}

{{/* node-config DaemonSet: "alias=fallback-url" pairs for every registry it configures. */}}
{{- define "berth.nodeConfig.registries" -}}
{{- if .Values.existingConfigMap }}
{{- fail "nodeConfig: the chart reads the registries from config.upstreams, which existingConfigMap replaces" }}
{{- end }}
{{- $want := .Values.nodeConfig.registries | default list }}
{{- $aliases := list }}
{{- $pairs := list }}
{{- range $name, $up := .Values.config.upstreams }}
{{- range $alias := $up.aliases | default list }}
{{- $aliases = append $aliases $alias }}
{{- if or (empty $want) (has $alias $want) }}
{{- $pairs = append $pairs (printf "%s=%s" $alias $up.url) }}
{{- end }}
{{- end }}
{{- end }}
{{- range $want }}
{{- if not (has . $aliases) }}
{{- fail (printf "nodeConfig.registries: %s is not an alias of any upstream in config.upstreams (aliases: %s)" . (join ", " $aliases)) }}
{{- end }}
{{- end }}
{{- join " " $pairs }}
{{- end }}

{{/* node-config DaemonSet: berth's address as every node reaches it. */}}
{{- define "berth.nodeConfig.mirror" -}}
{{- if .Values.nodeConfig.mirror }}
{{- .Values.nodeConfig.mirror }}
{{- else if and (has .Values.service.type (list "NodePort" "LoadBalancer")) .Values.service.nodePort }}
{{- printf "%s://$(HOST_IP):%d" (ternary "https" "http" .Values.tls.enabled) (.Values.service.nodePort | int) }}
{{- else }}
{{- fail "nodeConfig needs an address every node reaches: service.type=NodePort (or LoadBalancer) with a fixed service.nodePort, or nodeConfig.mirror (e.g. http://<pinned service.clusterIP>:5000)" }}
{{- end }}
{{- end }}

{{/* Pod labels of the node-config DaemonSet: distinct from the berth pods', so no Service selects them. */}}
{{- define "berth.nodeConfig.selectorLabels" -}}
app.kubernetes.io/name: {{ include "berth.name" . }}-node-config
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* "true" when berth authenticates clients ([auth] rendered): GET /v2/ then answers 401. */}}
{{- define "berth.authEnabled" -}}
{{- if or .Values.config.auth .Values.auth.htpasswd.existingSecret .Values.auth.tokenKey.existingSecret }}true{{ end }}
{{- end }}
