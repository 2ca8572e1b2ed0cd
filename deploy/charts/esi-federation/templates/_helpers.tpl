{{/* Names, labels and the checks every template relies on. */}}

{{- define "esi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esi.fullname" -}}
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

{{- define "esi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "esi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "esi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "esi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: esi-federation
{{- end -}}

{{- define "esi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "esi.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "esi.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "esi.fullname" .)) .Values.tls.secretName -}}
{{- end -}}

{{- define "esi.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}
{{- end -}}

{{/* Whether the server talks to the Kubernetes API (then it needs its token and RBAC). */}}
{{- define "esi.needsApi" -}}
{{- if or (eq .Values.source "kubernetes") (eq .Values.ledger.type "kubernetes") -}}true{{- end -}}
{{- end -}}

{{/* Replicas the Deployment asks for: one with the embedded ledger. */}}
{{- define "esi.replicas" -}}
{{- if eq .Values.ledger.type "embedded" -}}1{{- else -}}{{ .Values.replicaCount }}{{- end -}}
{{- end -}}

{{/* Value combinations that cannot work fail the render with the reason. */}}
{{- define "esi.validate" -}}
{{- if not (has .Values.source (list "kubernetes" "directory")) -}}
{{- fail (printf "source must be kubernetes or directory, not %q" .Values.source) -}}
{{- end -}}
{{- if not (has .Values.ledger.type (list "kubernetes" "postgres" "embedded")) -}}
{{- fail (printf "ledger.type must be kubernetes, postgres or embedded, not %q" .Values.ledger.type) -}}
{{- end -}}
{{- if and .Values.server.enabled (eq .Values.ledger.type "postgres") (not .Values.ledger.postgres.existingSecret) -}}
{{- fail "ledger.type=postgres needs ledger.postgres.existingSecret: the name of a Secret holding the PostgreSQL URL (never put the URL in values)" -}}
{{- end -}}
{{- if and (eq .Values.ledger.type "embedded") .Values.autoscaling.enabled -}}
{{- fail "ledger.type=embedded keeps the ledger in a file on one volume: it runs exactly one replica, so autoscaling.enabled must be false (use ledger.type kubernetes or postgres for several replicas)" -}}
{{- end -}}
{{- if not (has .Values.tls.source (list "secret" "certManager")) -}}
{{- fail (printf "tls.source must be secret or certManager, not %q" .Values.tls.source) -}}
{{- end -}}
{{- if and .Values.server.enabled (eq .Values.tls.source "certManager") (not .Values.tls.certManager.issuerRef.name) -}}
{{- fail "tls.source=certManager needs tls.certManager.issuerRef.name" -}}
{{- end -}}
{{- if not (has .Values.podAntiAffinity (list "soft" "hard" "none")) -}}
{{- fail (printf "podAntiAffinity must be soft, hard or none, not %q" .Values.podAntiAffinity) -}}
{{- end -}}
{{- if .Values.webhook.enabled -}}
{{- if not (has .Values.webhook.tls.source (list "certManager" "secret")) -}}
{{- fail (printf "webhook.tls.source must be certManager or secret, not %q" .Values.webhook.tls.source) -}}
{{- end -}}
{{- if and (eq .Values.webhook.tls.source "secret") (not .Values.webhook.tls.caBundle) -}}
{{- fail "webhook.tls.source=secret needs webhook.tls.caBundle: the base64 PEM of the CA that signed the Secret's certificate (the API server trusts only it)" -}}
{{- end -}}
{{- if not (has .Values.webhook.failurePolicy (list "Fail" "Ignore")) -}}
{{- fail (printf "webhook.failurePolicy must be Fail or Ignore, not %q" .Values.webhook.failurePolicy) -}}
{{- end -}}
{{- if or (lt (int .Values.webhook.timeoutSeconds) 1) (gt (int .Values.webhook.timeoutSeconds) 30) -}}
{{- fail "webhook.timeoutSeconds must be between 1 and 30" -}}
{{- end -}}
{{- end -}}
{{- if and .Values.metrics.podMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.podMonitor.enabled needs metrics.enabled (the PodMonitor scrapes the plain-HTTP metrics port)" -}}
{{- end -}}
{{- if not (or .Values.server.enabled .Values.reconciler.enabled .Values.webhook.enabled) -}}
{{- fail "server.enabled, reconciler.enabled and webhook.enabled are all false: nothing to deploy" -}}
{{- end -}}
{{- if .Values.reconciler.enabled -}}
{{- if lt (int .Values.reconciler.replicaCount) 1 -}}
{{- fail "reconciler.replicaCount must be at least 1" -}}
{{- end -}}
{{- if or (lt (int .Values.reconciler.concurrency) 1) (gt (int .Values.reconciler.concurrency) 256) -}}
{{- fail "reconciler.concurrency must be between 1 and 256" -}}
{{- end -}}
{{- if and .Values.reconciler.metrics.podMonitor.enabled (not .Values.reconciler.metrics.enabled) -}}
{{- fail "reconciler.metrics.podMonitor.enabled needs reconciler.metrics.enabled (the PodMonitor scrapes the reconciler's plain-HTTP metrics port)" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* The webhook's names and labels: its own app name, so that the server's selectors never
match its Pods. */}}
{{- define "esi.webhookName" -}}
{{- printf "%s-webhook" (include "esi.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esi.webhookSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-webhook" (include "esi.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "esi.webhookLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "esi.webhookSelectorLabels" . }}
app.kubernetes.io/component: webhook
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: esi-federation
{{- end -}}

{{- define "esi.webhookTlsSecretName" -}}
{{- default (printf "%s-tls" (include "esi.webhookName" .)) .Values.webhook.tls.secretName -}}
{{- end -}}

{{/* The reconciler's names and labels (`esi-server reconcile --kubernetes`,
docs/reconciler.md): its own app name, so that the server's selectors never match its Pods. */}}
{{- define "esi.reconcilerName" -}}
{{- printf "%s-reconciler" (include "esi.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "esi.reconcilerSelectorLabels" -}}
app.kubernetes.io/name: {{ printf "%s-reconciler" (include "esi.name" .) | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "esi.reconcilerLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "esi.reconcilerSelectorLabels" . }}
app.kubernetes.io/component: reconciler
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: esi-federation
{{- end -}}

{{- define "esi.reconcilerServiceAccountName" -}}
{{- if .Values.reconciler.serviceAccount.create -}}
{{- default (include "esi.reconcilerName" .) .Values.reconciler.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.reconciler.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The reconciler's image: `reconciler.image.*` where set, else the server's. */}}
{{- define "esi.reconcilerImage" -}}
{{- $i := .Values.reconciler.image -}}
{{- if not $i.repository -}}
{{- include "esi.image" . -}}
{{- else if $i.digest -}}
{{- printf "%s@%s" $i.repository $i.digest -}}
{{- else -}}
{{- printf "%s:%s" $i.repository (default .Chart.AppVersion $i.tag) -}}
{{- end -}}
{{- end -}}
