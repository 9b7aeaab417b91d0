{{- define "detector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "detector.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else if contains (include "detector.name" .) .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (include "detector.name" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "detector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "detector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "detector.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "detector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: detector
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "detector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "detector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "detector.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* detector.yaml: the values' config with the chart-owned keys filled in. */}}
{{- define "detector.config" -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "shutdown_timeout_s" .Values.shutdownTimeoutSeconds -}}
{{- $server := dict "enabled" true "host" "0.0.0.0" "port" .Values.service.port -}}
{{- $_ := set $config "server" $server -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Environment shared by the Deployment and the Job: secrets and the pod name. */}}
{{- define "detector.env" -}}
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- if .Values.embedding.existingSecret }}
- name: DETECTOR_EMBEDDING__API_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.embedding.existingSecret }}
      key: {{ .Values.embedding.existingSecretKey }}
{{- end }}
{{- if .Values.kafkaSasl.existingSecret }}
- name: DETECTOR_KAFKA__SASL_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.kafkaSasl.existingSecret }}
      key: {{ .Values.kafkaSasl.existingSecretKey }}
{{- end }}
{{- end -}}
