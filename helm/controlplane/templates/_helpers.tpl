{{/* Names. */}}
{{- define "controlplane.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "controlplane.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "controlplane.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Standard labels; call with (dict "ctx" $ "component" "web"). */}}
{{- define "controlplane.labels" -}}
helm.sh/chart: {{ include "controlplane.chart" .ctx }}
{{ include "controlplane.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Values.image.tag | default .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: controlplane
{{- end -}}

{{- define "controlplane.selectorLabels" -}}
app.kubernetes.io/name: {{ include "controlplane.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
{{- if .component }}
app.kubernetes.io/component: {{ .component }}
{{- end }}
{{- end -}}

{{- define "controlplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "controlplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "controlplane.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (required "image.tag is required" .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "controlplane.secretName" -}}
{{- default (printf "%s-secrets" (include "controlplane.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "controlplane.configName" -}}
{{- printf "%s-config" (include "controlplane.fullname" .) -}}
{{- end -}}

{{/* The Secret's data. Fails the render, naming the value, when a required one is missing. */}}
{{- define "controlplane.secretData" -}}
SECRET_KEY: {{ required "secrets.secretKey is required (or set secrets.existingSecret)" .Values.secrets.secretKey | b64enc | quote }}
DATABASE_URL: {{ required "secrets.databaseUrl is required (or set secrets.existingSecret)" .Values.secrets.databaseUrl | b64enc | quote }}
REDIS_URL: {{ required "secrets.redisUrl is required (or set secrets.existingSecret)" .Values.secrets.redisUrl | b64enc | quote }}
{{- with .Values.secrets.celeryBrokerUrl }}
CELERY_BROKER_URL: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.emailUrl }}
EMAIL_URL: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.stripeSecretKey }}
STRIPE_SECRET_KEY: {{ . | b64enc | quote }}
{{- end }}
{{- with .Values.secrets.stripeWebhookSecret }}
STRIPE_WEBHOOK_SECRET: {{ . | b64enc | quote }}
{{- end }}
FIELD_ENCRYPTION_KEYS: {{ required "secrets.fieldEncryptionKeys is required (or set secrets.existingSecret)" .Values.secrets.fieldEncryptionKeys | b64enc | quote }}
{{- with .Values.secrets.emqxLicenseKey }}
EMQX_LICENSE_KEY: {{ . | b64enc | quote }}
{{- end }}
{{- if .Values.metrics.serviceMonitor.enabled }}
METRICS_TOKEN: {{ required "secrets.metricsToken is required when metrics.serviceMonitor.enabled (or set secrets.existingSecret)" .Values.secrets.metricsToken | b64enc | quote }}
{{- else if .Values.secrets.metricsToken }}
METRICS_TOKEN: {{ .Values.secrets.metricsToken | b64enc | quote }}
{{- end }}
{{- end -}}

{{/* The ConfigMap's data: every non-secret setting. */}}
{{- define "controlplane.configData" -}}
{{- $c := .Values.config -}}
{{- /* settings.py knows production, development (DEBUG on) and test (MD5 password hashing, open metrics): only
production belongs in a cluster. Checked here rather than by an enum in the schema so the message names the value. */ -}}
{{- if ne (toString $c.environment) "production" -}}
{{- fail (printf "config.environment is %q: the chart runs only \"production\" (\"development\" turns DEBUG on, \"test\" hashes passwords with MD5 and serves /metrics without a token)" (toString $c.environment)) -}}
{{- end -}}
{{- if hasKey $c.extraEnv "CONTROLPLANE_ENV" -}}
{{- fail "config.extraEnv must not set CONTROLPLANE_ENV: the chart runs only config.environment \"production\"" -}}
{{- end -}}
{{- $hosts := list (urlParse $c.publicUrl).hostname -}}
{{- if $c.pkiBaseUrl }}{{ $hosts = append $hosts (urlParse $c.pkiBaseUrl).hostname }}{{ end -}}
{{- if .Values.ingress.enabled }}{{ range .Values.ingress.hosts }}{{ $hosts = append $hosts .host }}{{ end }}{{ end -}}
{{- $svc := include "controlplane.fullname" . -}}
{{- $hosts = concat $hosts (list $svc (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace)) -}}
CONTROLPLANE_ENV: {{ $c.environment | quote }}
PUBLIC_URL: {{ $c.publicUrl | quote }}
{{- with $c.pkiBaseUrl }}
PKI_BASE_URL: {{ . | quote }}
{{- end }}
ALLOWED_HOSTS: {{ join "," (default ($hosts | uniq) $c.allowedHosts) | quote }}
CSRF_TRUSTED_ORIGINS: {{ join "," (default (list $c.publicUrl) $c.csrfTrustedOrigins) | quote }}
DEFAULT_FROM_EMAIL: {{ $c.defaultFromEmail | quote }}
TRUST_X_FORWARDED_PROTO: {{ $c.trustXForwardedProto | quote }}
TRUSTED_PROXY_COUNT: {{ $c.trustedProxyCount | quote }}
SECURE_SSL_REDIRECT: {{ $c.secureSslRedirect | quote }}
SECURE_HSTS_SECONDS: {{ $c.secureHstsSeconds | quote }}
LOG_LEVEL: {{ $c.logLevel | quote }}
LOG_FORMAT: {{ $c.logFormat | quote }}
CONN_MAX_AGE: {{ $c.connMaxAge | quote }}
CONTROLPLANE_VAR_DIR: "/var/lib/controlplane"
HOME: "/tmp"
{{- with $c.seller.name }}
SELLER_NAME: {{ . | quote }}
{{- end }}
{{- with $c.seller.country }}
SELLER_COUNTRY: {{ . | quote }}
{{- end }}
{{- with $c.seller.address }}
SELLER_ADDRESS: {{ . | quote }}
{{- end }}
{{- with $c.seller.vatNumber }}
SELLER_VAT_NUMBER: {{ . | quote }}
{{- end }}
{{- with $c.rateLimits.platform }}
RATE_LIMIT_PLATFORM: {{ . | quote }}
{{- end }}
{{- with $c.rateLimits.organization }}
RATE_LIMIT_ORGANIZATION: {{ . | quote }}
{{- end }}
{{- with $c.rateLimits.principal }}
RATE_LIMIT_PRINCIPAL: {{ . | quote }}
{{- end }}
{{- range $k, $v := $c.extraEnv }}
{{ $k }}: {{ $v | toString | quote }}
{{- end }}
{{- end -}}

{{/* Pod annotations that roll every pod when the config or secret changes. */}}
{{- define "controlplane.checksums" -}}
checksum/config: {{ include "controlplane.configData" . | sha256sum }}
{{- if .Values.secrets.existingSecret }}
checksum/secret: {{ .Values.secrets.existingSecret | sha256sum }}
{{- else }}
checksum/secret: {{ include "controlplane.secretData" . | sha256sum }}
{{- end }}
{{- end -}}

{{- define "controlplane.envFrom" -}}
- configMapRef:
    name: {{ include "controlplane.configName" . }}
- secretRef:
    name: {{ include "controlplane.secretName" . }}
{{- end -}}

{{- define "controlplane.podSecurityContext" -}}
{{- toYaml .Values.podSecurityContext -}}
{{- end -}}

{{- define "controlplane.containerSecurityContext" -}}
{{- toYaml .Values.securityContext -}}
{{- end -}}

{{/* Writable scratch space; the root filesystem is read-only. */}}
{{- define "controlplane.scratchVolumes" -}}
- name: tmp
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
- name: var
  emptyDir:
    sizeLimit: {{ .Values.tmpVolumeSizeLimit }}
{{- end -}}

{{- define "controlplane.scratchMounts" -}}
- name: tmp
  mountPath: /tmp
- name: var
  mountPath: /var/lib/controlplane
{{- end -}}

{{- define "controlplane.podScheduling" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{- define "controlplane.podMetadata" -}}
annotations:
  {{- include "controlplane.checksums" .ctx | nindent 2 }}
  {{- with .ctx.Values.podAnnotations }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
labels:
  {{- include "controlplane.labels" . | nindent 2 }}
  {{- with .ctx.Values.podLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end -}}

{{/* The queue coverage check: every Celery queue consumed by exactly one worker group. */}}
{{- define "controlplane.checkQueues" -}}
{{- $seen := dict -}}
{{- range $group, $w := .Values.workers -}}
{{- range $w.queues -}}
{{- if hasKey $seen . -}}
{{- fail (printf "workers: queue %q is consumed by both %s and %s" . (get $seen .) $group) -}}
{{- end -}}
{{- $_ := set $seen . $group -}}
{{- end -}}
{{- end -}}
{{- range list "provisioning" "billing" "monitoring" "notifications" "default" -}}
{{- if not (hasKey $seen .) -}}
{{- fail (printf "workers: no worker group consumes the %q queue" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* A liveness probe on a file the process touches on every pass of its loop; call with (dict "path" … "probe" …).
A shell test of the file's age (date and stat from coreutils), so no interpreter starts each period. */}}
{{- define "controlplane.livenessFileProbe" -}}
exec:
  command:
    - sh
    - -c
    - f={{ .path }}; test -f "$f" && test $(( $(date +%s) - $(stat -c %Y "$f") )) -lt {{ .probe.maxAgeSeconds }}
initialDelaySeconds: {{ .probe.initialDelaySeconds }}
periodSeconds: {{ .probe.periodSeconds }}
timeoutSeconds: {{ .probe.timeoutSeconds }}
failureThreshold: {{ .probe.failureThreshold }}
{{- end -}}
