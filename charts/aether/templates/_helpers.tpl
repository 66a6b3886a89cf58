{{- define "aether.name" -}}{{ .Release.Name }}-operator{{- end -}}
{{- define "aether.labels" -}}
app.kubernetes.io/name: aether
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/* A container that needs nothing from the node: no privilege, no capability, a read-only root. */}}
{{- define "aether.containerSecurity" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities: {drop: ["ALL"]}
{{- end }}
