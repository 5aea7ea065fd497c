{{/* Name of the release's objects: the release name, or release-herald when it lacks "herald". */}}
{{- define "herald.fullname" -}}
{{- if contains "herald" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-herald" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "herald.selectorLabels" -}}
app.kubernetes.io/name: herald
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: control-plane
{{- end -}}

{{- define "herald.labels" -}}
{{ include "herald.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "herald.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "herald.sidecarImage" -}}
{{- default (include "herald.image" .) .Values.sidecar.image -}}
{{- end -}}

{{/* The webhook Service's DNS name, which the serving certificate must carry. */}}
{{- define "herald.serviceHost" -}}
{{- printf "%s.%s.svc" (include "herald.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "herald.tlsSecret" -}}
{{- printf "%s-webhook-tls" (include "herald.fullname" .) -}}
{{- end -}}
