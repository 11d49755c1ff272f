{{/* The name of every object: the release's, as the chart is. */}}
{{- define "cce.name" -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The labels the selectors match. */}}
{{- define "cce.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "cce.labels" -}}
{{ include "cce.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The image: a digest pins it, else the tag, else the appVersion. */}}
{{- define "cce.image" -}}
{{- $repo := printf "%s/%s" .Values.image.registry .Values.image.repository | trimPrefix "/" -}}
{{- if .Values.image.digest -}}
{{ $repo }}@{{ .Values.image.digest }}
{{- else -}}
{{ $repo }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- end -}}

{{/* Whether a kernel program is loaded at start (--refusals, --source
events): then the container starts as root with CAP_BPF and CAP_PERFMON,
the only way they are in effect (Kubernetes gives a non-root user no
ambient capabilities), and the exporter drops them once loaded. */}}
{{- define "cce.kernel" -}}
{{- if or .Values.refusals.enabled .Values.events.enabled }}true{{ end -}}
{{- end -}}

{{/* Whether /metrics is served: not in the textfile mode. */}}
{{- define "cce.web" -}}
{{- if not .Values.textfile.enabled }}true{{ end -}}
{{- end -}}

{{/*
The fleet's labels (prometheus.targetLabels) on every series scraped: the
mixin's fleet rules split the fleet by them.
*/}}
{{- define "cce.targetLabels" -}}
{{- with .Values.prometheus.targetLabels -}}
relabelings:
  {{- range $label, $value := . }}
  - action: replace
    targetLabel: {{ $label }}
    replacement: {{ $value | quote }}
  {{- end }}
{{- end }}
{{- end }}
