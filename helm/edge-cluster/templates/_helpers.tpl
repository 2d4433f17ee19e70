{{/* Chart name, truncated to a DNS label. */}}
{{- define "edge-cluster.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Fully qualified app name: release-chart, unless the release name holds the chart name. */}}
{{- define "edge-cluster.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 58 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 58 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 58 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "edge-cluster.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "edge-cluster.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: edge-orchestrator
{{- end -}}

{{- define "edge-cluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "edge-cluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: cluster-orchestrator
{{- end -}}

{{- define "edge-cluster.secretName" -}}
{{- if .Values.auth.existingSecret -}}
{{- .Values.auth.existingSecret -}}
{{- else -}}
{{- include "edge-cluster.fullname" . -}}
{{- end -}}
{{- end -}}

{{- define "edge-cluster.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "edge-cluster.mosquittoImage" -}}
{{- printf "%s:%s" .Values.mosquitto.image.repository .Values.mosquitto.image.tag -}}
{{- end -}}

{{/* Where the root reaches this cluster's API. */}}
{{- define "edge-cluster.url" -}}
{{- if .Values.cluster.url -}}
{{- .Values.cluster.url -}}
{{- else -}}
{{- printf "http://%s.%s.svc:%v" (include "edge-cluster.fullname" .) .Release.Namespace .Values.service.api.port -}}
{{- end -}}
{{- end -}}

{{/* The broker host handed to joining nodes. */}}
{{- define "edge-cluster.advertisedHost" -}}
{{- if .Values.broker.advertisedHost -}}
{{- .Values.broker.advertisedHost -}}
{{- else -}}
{{- printf "%s-mqtt.%s.svc" (include "edge-cluster.fullname" .) .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- define "edge-cluster.advertisedPort" -}}
{{- if .Values.broker.advertisedPort -}}
{{- .Values.broker.advertisedPort -}}
{{- else -}}
{{- .Values.service.mqtt.port -}}
{{- end -}}
{{- end -}}

{{/* The broker port the nodes use: mqtts (TLS, 8883) with broker.tls.enabled, else mqtt. */}}
{{- define "edge-cluster.mqttPortName" -}}
{{- if .Values.broker.tls.enabled -}}
mqtts
{{- else -}}
mqtt
{{- end -}}
{{- end -}}
