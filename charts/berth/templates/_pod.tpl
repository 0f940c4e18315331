{{/* The pod template shared by the StatefulSet and the Deployment. */}}
{{- define "berth.podTemplate" -}}
metadata:
  labels:
    {{- include "berth.labels" . | nindent 4 }}
    {{- with .Values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  annotations:
    {{- if not .Values.existingConfigMap }}
    checksum/config: {{ include "berth.config" . | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  serviceAccountName: {{ include "berth.serviceAccountName" . }}
  automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  securityContext:
    {{- toYaml .Values.podSecurityContext | nindent 4 }}
  {{- with .Values.initContainers }}
  initContainers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: berth
      image: {{ include "berth.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      args:
        - serve
        - --config
        - /etc/berth/config.toml
        {{- range .Values.extraArgs }}
        - {{ . | quote }}
        {{- end }}
      {{- $env := include "berth.env" . | trim }}
      {{- if $env }}
      env:
        {{- $env | nindent 8 }}
      {{- end }}
      {{- with .Values.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: http
          containerPort: {{ include "berth.httpPort" . }}
          protocol: TCP
        {{- $metricsPort := include "berth.metricsPort" . }}
        {{- if $metricsPort }}
        - name: metrics
          containerPort: {{ $metricsPort }}
          protocol: TCP
        {{- end }}
      {{- range $probe := list "startupProbe" "readinessProbe" "livenessProbe" }}
      {{- $p := omit (get $.Values $probe) "enabled" }}
      {{- if (get $.Values $probe).enabled }}
      {{- if and $p.httpGet (include "berth.clientCertRequired" $) }}
      {{- /* The kubelet has no client certificate: check that the port accepts connections. */}}
      {{- $p = set (omit $p "httpGet") "tcpSocket" (dict "port" $p.httpGet.port) }}
      {{- else if and $p.httpGet $.Values.tls.enabled }}
      {{- $p = set (deepCopy $p) "httpGet" (set (deepCopy $p.httpGet) "scheme" "HTTPS") }}
      {{- end }}
      {{ $probe }}:
        {{- toYaml $p | nindent 8 }}
      {{- end }}
      {{- end }}
      {{- with .Values.lifecycle }}
      lifecycle:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      securityContext:
        {{- toYaml .Values.securityContext | nindent 8 }}
      resources:
        {{- toYaml .Values.resources | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/berth/config.toml
          subPath: config.toml
          readOnly: true
        - name: data
          mountPath: {{ .Values.config.storage.path | default "/var/lib/berth" }}
        - name: tmp
          mountPath: /tmp
        {{- range $name, $cred := .Values.upstreamCredentials }}
        - name: {{ printf "upstream-%s" $name | lower | replace "_" "-" | trunc 63 | trimSuffix "-" }}
          mountPath: {{ include "berth.secretDir" $name }}
          readOnly: true
        {{- end }}
        {{- if .Values.tls.enabled }}
        {{- /* A directory, not subPath: Secret updates reach berth, which reloads them. */}}
        - name: tls
          mountPath: /etc/berth/tls
          readOnly: true
        {{- if .Values.tls.clientCA.existingSecret }}
        - name: tls-client-ca
          mountPath: /etc/berth/tls-client-ca
          readOnly: true
        {{- end }}
        {{- end }}
        {{- /* Directories, not subPath: an updated htpasswd Secret reaches berth, which re-reads it. */}}
        {{- if .Values.auth.htpasswd.existingSecret }}
        - name: auth-htpasswd
          mountPath: /etc/berth/auth/htpasswd
          readOnly: true
        {{- end }}
        {{- if .Values.auth.tokenKey.existingSecret }}
        - name: auth-token-key
          mountPath: /etc/berth/auth/token-key
          readOnly: true
        {{- end }}
        {{- if and .Values.sharedStorage.s3.enabled .Values.sharedStorage.s3.credentials.existingSecret }}
        - name: s3-credentials
          mountPath: /etc/berth/s3
          readOnly: true
        {{- end }}
        {{- if .Values.cluster.enabled }}
        - name: cluster-secret
          mountPath: /etc/berth/cluster
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
    {{- with .Values.sidecars }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ .Values.existingConfigMap | default (include "berth.fullname" .) }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if not .Values.persistence.enabled }}
    - name: data
      emptyDir:
        {{- with .Values.persistence.emptyDirSizeLimit }}
        sizeLimit: {{ . }}
        {{- end }}
    {{- else if .Values.persistence.existingClaim }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ .Values.persistence.existingClaim }}
    {{- else if eq .Values.kind "Deployment" }}
    - name: data
      persistentVolumeClaim:
        claimName: {{ include "berth.fullname" . }}
    {{- end }}
    {{- range $name, $cred := .Values.upstreamCredentials }}
    - name: {{ printf "upstream-%s" $name | lower | replace "_" "-" | trunc 63 | trimSuffix "-" }}
      secret:
        secretName: {{ $cred.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ $cred.passwordKey | default "password" }}
            path: {{ $cred.passwordKey | default "password" }}
    {{- end }}
    {{- if .Values.tls.enabled }}
    - name: tls
      secret:
        secretName: {{ .Values.tls.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.tls.certKey }}
            path: {{ .Values.tls.certKey }}
          - key: {{ .Values.tls.keyKey }}
            path: {{ .Values.tls.keyKey }}
    {{- with .Values.tls.clientCA.existingSecret }}
    - name: tls-client-ca
      secret:
        secretName: {{ . }}
        defaultMode: 0440
        items:
          - key: {{ $.Values.tls.clientCA.key }}
            path: {{ $.Values.tls.clientCA.key }}
    {{- end }}
    {{- end }}
    {{- with .Values.auth.htpasswd.existingSecret }}
    - name: auth-htpasswd
      secret:
        secretName: {{ . }}
        defaultMode: 0440
        items:
          - key: {{ $.Values.auth.htpasswd.key }}
            path: {{ $.Values.auth.htpasswd.key }}
    {{- end }}
    {{- with .Values.auth.tokenKey.existingSecret }}
    - name: auth-token-key
      secret:
        secretName: {{ . }}
        defaultMode: 0440
        items:
          - key: {{ $.Values.auth.tokenKey.key }}
            path: {{ $.Values.auth.tokenKey.key }}
    {{- end }}
    {{- if .Values.sharedStorage.s3.enabled }}
    {{- with .Values.sharedStorage.s3.credentials }}
    {{- if .existingSecret }}
    - name: s3-credentials
      secret:
        secretName: {{ .existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .secretAccessKeyKey }}
            path: {{ .secretAccessKeyKey }}
    {{- end }}
    {{- end }}
    {{- end }}
    {{- if .Values.cluster.enabled }}
    - name: cluster-secret
      secret:
        secretName: {{ .Values.cluster.existingSecret }}
        defaultMode: 0440
        items:
          - key: {{ .Values.cluster.key }}
            path: {{ .Values.cluster.key }}
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.affinity }}
  affinity:
    {{- toYaml .Values.affinity | nindent 4 }}
  {{- else if and (include "berth.multiReplica" .) (ne .Values.podAntiAffinity "none") }}
  {{- $term := dict "topologyKey" "kubernetes.io/hostname" "labelSelector" (dict "matchLabels" (include "berth.selectorLabels" . | fromYaml)) }}
  affinity:
    podAntiAffinity:
      {{- if eq .Values.podAntiAffinity "hard" }}
      requiredDuringSchedulingIgnoredDuringExecution:
        {{- toYaml (list $term) | nindent 8 }}
      {{- else }}
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            {{- toYaml $term | nindent 12 }}
      {{- end }}
  {{- end }}
  {{- with .Values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- if .Values.topologySpreadConstraints }}
  {{- $constraints := list }}
  {{- range .Values.topologySpreadConstraints }}
  {{- $c := deepCopy . }}
  {{- if not $c.labelSelector }}
  {{- $_ := set $c "labelSelector" (dict "matchLabels" (include "berth.selectorLabels" $ | fromYaml)) }}
  {{- end }}
  {{- $constraints = append $constraints $c }}
  {{- end }}
  topologySpreadConstraints:
    {{- toYaml $constraints | nindent 4 }}
  {{- end }}
{{- end }}

{{/* Environment of the berth container: the pod IP and this replica's cluster address,
the S3 access key id and usernames from Secrets, then extraEnv. */}}
{{- define "berth.env" -}}
{{- if .Values.cluster.enabled }}
- name: POD_IP
  valueFrom:
    fieldRef:
      fieldPath: status.podIP
- name: BERTH_CLUSTER__ADVERTISE
  value: {{ printf "%s://$(POD_IP):%d" (include "berth.scheme" .) (include "berth.httpPort" . | int) | quote }}
{{- end }}
{{- with .Values.sharedStorage.s3 }}
{{- if and .enabled .credentials.existingSecret }}
- name: BERTH_STORAGE__S3__ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .credentials.existingSecret }}
      key: {{ .credentials.accessKeyIdKey }}
{{- end }}
{{- end }}
{{- range $name, $cred := .Values.upstreamCredentials }}
{{- if and $cred.usernameKey (not $cred.username) }}
- name: {{ include "berth.usernameEnv" $name }}
  valueFrom:
    secretKeyRef:
      name: {{ $cred.existingSecret }}
      key: {{ $cred.usernameKey }}
{{- end }}
{{- end }}
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end }}
