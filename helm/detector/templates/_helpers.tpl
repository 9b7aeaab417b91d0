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

{{/* Labels of one component: "detector" (the daemon) or the Job's command. */}}
{{- define "detector.labelsFor" -}}
helm.sh/chart: {{ printf "%s-%s" .ctx.Chart.Name .ctx.Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "detector.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end -}}

{{/* The daemon's pods only: a Job's pods must not join its Service, PDB or scrapes. */}}
{{- define "detector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "detector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: detector
{{- end -}}

{{- define "detector.labels" -}}
{{- include "detector.labelsFor" (dict "ctx" . "component" "detector") -}}
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
{{- range $key := list "shutdown_timeout_s" "server" -}}
{{- if hasKey $.Values.config $key -}}
{{- fail (printf "config.%s is set by the chart (shutdownTimeoutSeconds, service.port): remove it from values" $key) -}}
{{- end -}}
{{- end -}}
{{- $config := deepCopy .Values.config -}}
{{- $_ := set $config "shutdown_timeout_s" .Values.shutdownTimeoutSeconds -}}
{{- if .Values.topics.strimzi.enabled -}}
{{- /* the Topic Operator owns the topics: the daemon must not create them */ -}}
{{- $kafka := get $config "kafka" | default dict -}}
{{- $_ := set $kafka "create_topics" false -}}
{{- $_ := set $config "kafka" $kafka -}}
{{- end -}}
{{- $server := dict "enabled" true "host" "0.0.0.0" "port" .Values.service.port -}}
{{- $_ := set $config "server" $server -}}
{{- toYaml $config -}}
{{- end -}}

{{/* Grace period: the daemon's shutdown budget plus time for SIGTERM delivery and exit. */}}
{{- define "detector.terminationGracePeriodSeconds" -}}
{{- add .Values.shutdownTimeoutSeconds 15 -}}
{{- end -}}

{{/* Secrets shared by the StatefulSet and the Job, always as secretKeyRef (never values),
then extraEnv. */}}
{{- define "detector.env" -}}
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
{{- with .Values.extraEnv }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Volumes and mounts shared by the StatefulSet and the Job (config, /tmp, extras). */}}
{{- define "detector.volumeMounts" -}}
- name: config
  mountPath: /etc/detector
  readOnly: true
- name: tmp
  mountPath: /tmp
{{- with .Values.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "detector.volumes" -}}
- name: config
  configMap:
    name: {{ include "detector.fullname" . }}
- name: tmp
  emptyDir:
    sizeLimit: 64Mi
{{- with .Values.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/* Scheduling shared by the StatefulSet and the Job. */}}
{{- define "detector.scheduling" -}}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/* The selector Prometheus rules use for this release's daemon series. */}}
{{- define "detector.promSelector" -}}
{{- .Values.prometheusRule.selector | default (printf "namespace=%q,job=%q" .Release.Namespace (include "detector.fullname" .)) -}}
{{- end -}}

{{/* The Job's name: the release revision in it, because a Job's template is immutable. */}}
{{- define "detector.jobName" -}}
{{- printf "%s-%s-%d" (include "detector.fullname" . | trunc 40 | trimSuffix "-") (first .Values.job.args) .Release.Revision | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
`detector check` as an init container: the files, API key, brokers and topics the
configuration names are verified before the main container starts; each problem is one
line in `kubectl logs POD -c check`.
*/}}
{{- define "detector.checkContainer" -}}
- name: check
  image: {{ include "detector.image" . }}
  imagePullPolicy: {{ .Values.image.pullPolicy }}
  args: ["--config", "/etc/detector/detector.yaml", "check"{{ if .Values.check.offline }}, "--offline"{{ end }}]
  {{- with include "detector.env" . }}
  env:
    {{- . | nindent 4 }}
  {{- end }}
  resources:
    {{- toYaml .Values.resources | nindent 4 }}
  securityContext:
    {{- toYaml .Values.securityContext | nindent 4 }}
  volumeMounts:
    {{- include "detector.volumeMounts" . | nindent 4 }}
{{- end }}
