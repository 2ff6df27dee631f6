{{/* Names, labels and the few computed values every template shares. */}}

{{- define "forgeline.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "forgeline.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else if contains (include "forgeline.name" .) .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name (include "forgeline.name" .) | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}

{{- define "forgeline.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "forgeline.selectorLabels" -}}
app.kubernetes.io/name: {{ include "forgeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "forgeline.labels" -}}
helm.sh/chart: {{ include "forgeline.chart" . }}
app.kubernetes.io/name: {{ include "forgeline.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: forgeline
{{- end }}

{{- define "forgeline.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "forgeline.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "forgeline.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{- define "forgeline.trainerImage" -}}
{{- $t := .Values.operator.trainerImage }}
{{- printf "%s:%s" $t.repository (default .Chart.AppVersion $t.tag) }}
{{- end }}

{{/*
Whether to render the Prometheus Operator objects: the API is served (helm install/upgrade asks
the cluster) or monitoring.force says so (helm template has no cluster to ask).
*/}}
{{- define "forgeline.monitoring" -}}
{{- if and .Values.monitoring.enabled (or .Values.monitoring.force (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1")) }}true{{- end }}
{{- end }}

{{- define "forgeline.monitoringLabels" -}}
{{ include "forgeline.labels" . }}
{{- with .Values.monitoring.additionalLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The metrics Service's job label in Prometheus (the ServiceMonitor sets it; alerts match on it). */}}
{{- define "forgeline.metricsJob" -}}
{{- include "forgeline.fullname" . }}-metrics
{{- end }}

{{/* The rules for the namespaced resources the operator handles (a ClusterRole's or each Role's). */}}
{{- define "forgeline.namespacedRules" -}}
  # The five job kinds: kopf watches them (and may patch its annotations on them); a finished job
  # with spec.runPolicy.ttlSecondsAfterFinished deletes itself.
  - apiGroups: [forgeline.io]
    resources: [pretrainjobs, rewardmodeljobs, rlhfjobs, lorajobs, evaljobs]
    verbs: [get, list, watch, patch, delete]
  # Status is written once per reconcile pass (a merge patch guarded by resourceVersion).
  - apiGroups: [forgeline.io]
    resources: [pretrainjobs/status, rewardmodeljobs/status, rlhfjobs/status, lorajobs/status, evaljobs/status]
    verbs: [get, patch]
  # Children carry ownerReferences with blockOwnerDeletion, which OwnerReferencesPermissionEnforcement
  # allows only to who may update the owner's finalizers.
  - apiGroups: [forgeline.io]
    resources:
      - pretrainjobs/finalizers
      - rewardmodeljobs/finalizers
      - rlhfjobs/finalizers
      - lorajobs/finalizers
      - evaljobs/finalizers
    verbs: [update]
  # One Indexed Job per attempt, created (never applied over a namesake's), deleted when the gang restarts.
  - apiGroups: [batch]
    resources: [jobs]
    verbs: [get, list, watch, create, patch, delete]
  # The per-attempt stage config and the headless rendezvous Service.
  - apiGroups: [""]
    resources: [configmaps, services]
    verbs: [get, list, create, patch, delete]
  # Where the cluster serves them (gang placement, KEP-4671): one PodGroup per attempt, written
  # with server-side apply, deleted with its attempt.
  - apiGroups: [scheduling.k8s.io]
    resources: [podgroups]
    verbs: [get, list, create, patch, delete]
  # The Job controller creates the pods; the operator only reads them (phase, exit codes, rank 0's IP).
  - apiGroups: [""]
    resources: [pods]
    verbs: [get, list, watch]
{{- if .Values.rbac.kueueWorkloads }}
  # Kueue's Workload of a Job it holds suspended: why it waits, and whether Kueue preempted it.
  # Read only, for that one Job (a list by its kueue.x-k8s.io/job-uid label).
  - apiGroups: [kueue.x-k8s.io]
    resources: [workloads]
    verbs: [get, list]
{{- end }}
  # One Event per condition transition, and kopf's own.
  - apiGroups: [""]
    resources: [events]
    verbs: [create, patch]
{{- end }}

{{/* The arguments of `forgeline operator`: the one place values become operator flags. */}}
{{- define "forgeline.operatorArgs" -}}
{{- $op := .Values.operator -}}
- --liveness=http://0.0.0.0:{{ .Values.ports.liveness }}/healthz
- --metrics-port={{ .Values.ports.metrics }}
{{- range .Values.watchNamespaces }}
- --namespace={{ . }}
{{- end }}
- --image={{ include "forgeline.trainerImage" . }}
- --store={{ $op.store }}
{{- with $op.storage.endpoint }}
- --storage-endpoint={{ . }}
{{- end }}
{{- with $op.storage.credentialsSecret }}
- --storage-secret={{ . }}
{{- end }}
{{- range $op.allowedUriPrefixes }}
- --allowed-uri-prefix={{ . }}
{{- end }}
- --trainer-metrics-port={{ $op.trainerMetricsPort }}
{{- range $name, $value := $op.trainerEnv }}
- --trainer-env={{ $name }}={{ $value }}
{{- end }}
- --log-level={{ $op.logLevel }}
{{- with .Values.leaderElection }}
{{- if .enabled }}
- --leader-elect
- --leader-election-namespace={{ $.Release.Namespace }}
- --leader-election-id={{ include "forgeline.leaseName" $ }}
- --lease-duration={{ .leaseDurationSeconds }}
- --renew-deadline={{ .renewDeadlineSeconds }}
- --retry-period={{ .retryPeriodSeconds }}
{{- end }}
{{- end }}
{{- range $op.extraArgs }}
- {{ . }}
{{- end }}
{{- end }}

{{/* The leader-election Lease's name (in the release namespace). */}}
{{- define "forgeline.leaseName" -}}
{{- default (include "forgeline.fullname" .) .Values.leaderElection.leaseName }}
{{- end }}

{{/*
Operator replicas: more than one only with leader election (two unelected operators would both
write), and lease timings in client-go's order (lease > renew deadline > 1.2 x retry period).
*/}}
{{- define "forgeline.replicas" -}}
{{- $le := .Values.leaderElection }}
{{- if and (gt (int .Values.replicaCount) 1) (not $le.enabled) }}
{{- fail (printf "replicaCount %d needs leaderElection.enabled: two operators without a lease would both reconcile every job" (int .Values.replicaCount)) }}
{{- end }}
{{- if $le.enabled }}
{{- if le (int $le.leaseDurationSeconds) (int $le.renewDeadlineSeconds) }}
{{- fail "leaderElection.leaseDurationSeconds must be more than renewDeadlineSeconds (the difference is the gap between the old leader stopping and a standby starting)" }}
{{- end }}
{{- if lt (mulf (float64 $le.retryPeriodSeconds) 1.2) (float64 $le.renewDeadlineSeconds) | not }}
{{- fail "leaderElection.renewDeadlineSeconds must be more than 1.2 x retryPeriodSeconds" }}
{{- end }}
{{- end }}
{{- .Values.replicaCount }}
{{- end }}
