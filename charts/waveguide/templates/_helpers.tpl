{{/* The chart's name. */}}
{{- define "waveguide.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name, used for every resource. */}}
{{- define "waveguide.fullname" -}}
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

{{/* Labels of every resource. */}}
{{- define "waveguide.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "waveguide.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels the Service and Deployment select on. */}}
{{- define "waveguide.selectorLabels" -}}
app.kubernetes.io/name: {{ include "waveguide.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "waveguide.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "waveguide.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Settings that cannot work together fail the install with a reason. */}}
{{- define "waveguide.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not .Values.postgresql.existingSecret) }}
{{- fail "replicaCount > 1 needs PostgreSQL: set postgresql.existingSecret (SQLite serves one replica)" }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) .Values.persistence.enabled (ne .Values.persistence.accessMode "ReadWriteMany") (not .Values.persistence.existingClaim) }}
{{- fail "replicaCount > 1 needs persistence.accessMode ReadWriteMany: every replica serves the TUF files" }}
{{- end }}
{{- end }}
