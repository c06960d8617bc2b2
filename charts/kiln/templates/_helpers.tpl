{{/* The chart name, or nameOverride. */}}
{{- define "kiln.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The full name of the release's objects: fullnameOverride, else the release name when it
already contains the chart name (release "kiln" gives "kiln"), else "<release>-<name>".
Cut to 40 characters, so that the suffixed names (`-leader-election`, …) stay short.
*/}}
{{- define "kiln.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "kiln.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "kiln.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of the pods, selected by the Deployment and the Service. */}}
{{- define "kiln.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kiln.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels of every object of the chart. */}}
{{- define "kiln.labels" -}}
helm.sh/chart: {{ include "kiln.chart" . }}
{{ include "kiln.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: operator
app.kubernetes.io/part-of: kiln
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "kiln.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kiln.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "kiln.image" -}}
{{- $tag := default .Chart.AppVersion .Values.image.tag -}}
{{- if .Values.image.digest -}}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{- define "kiln.leaseName" -}}
{{- default (printf "%s-leader" (include "kiln.fullname" .)) .Values.leaderElection.leaseName -}}
{{- end -}}

{{/* True (non-empty) when the listener serves TLS. */}}
{{- define "kiln.tlsEnabled" -}}
{{- if ne .Values.tls.mode "disabled" -}}true{{- end -}}
{{- end -}}

{{/* The Secret holding tls.crt and tls.key (and ca.crt). */}}
{{- define "kiln.tlsSecretName" -}}
{{- if eq .Values.tls.mode "secret" -}}
{{- required "tls.secret.name is required when tls.mode is secret" .Values.tls.secret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "kiln.fullname" .) -}}
{{- end -}}
{{- end -}}

{{/* The Service's port name: https, or http when TLS is disabled. */}}
{{- define "kiln.portName" -}}
{{- if include "kiln.tlsEnabled" . -}}https{{- else -}}http{{- end -}}
{{- end -}}

{{/* The DNS names the Service answers to, which the certificate must carry. */}}
{{- define "kiln.dnsNames" -}}
{{- $svc := include "kiln.fullname" . -}}
{{- $ns := .Release.Namespace -}}
{{- list $svc (printf "%s.%s" $svc $ns) (printf "%s.%s.svc" $svc $ns) (printf "%s.%s.svc.%s" $svc $ns .Values.clusterDomain) | toJson -}}
{{- end -}}

{{/*
A size in bytes from an integer or a quantity string ("10Mi", "1G"). Values read from YAML
arrive as float64, so integers are converted before printing (10485760, not 1.048576e+07).
*/}}
{{- define "kiln.bytes" -}}
{{- $v := .value -}}
{{- if or (kindIs "float64" $v) (kindIs "int64" $v) (kindIs "int" $v) -}}
{{- $v = $v | int64 | toString -}}
{{- end -}}
{{- $v = toString $v -}}
{{- if not (regexMatch "^[0-9]+(Ki|Mi|Gi|Ti|k|M|G|T)?$" $v) -}}
{{- fail (printf "%s: %q is not a size; use bytes (10485760) or a quantity (10Mi, 1G)" .name $v) -}}
{{- end -}}
{{- $digits := regexFind "^[0-9]+" $v -}}
{{- $suffix := trimPrefix $digits $v -}}
{{- $mult := dict "" 1 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 -}}
{{- mul ($digits | int64) (get $mult $suffix) -}}
{{- end -}}

{{/*
The workspace limits in bytes, checked against each other: a file fits in a job, a job in the
workspace budget, and the budget under the emptyDir's size limit (above it, the kubelet
evicts the pod). Returns a dict as JSON.
*/}}
{{- define "kiln.limits" -}}
{{- $sizeLimit := include "kiln.bytes" (dict "name" "workspace.sizeLimit" "value" .Values.workspace.sizeLimit) | int64 -}}
{{- $file := include "kiln.bytes" (dict "name" "limits.maxFileBytes" "value" .Values.limits.maxFileBytes) | int64 -}}
{{- $job := include "kiln.bytes" (dict "name" "limits.maxJobBytes" "value" .Values.limits.maxJobBytes) | int64 -}}
{{- $workspace := div (mul $sizeLimit 9) 10 -}}
{{- if .Values.limits.maxWorkspaceBytes -}}
{{- $workspace = include "kiln.bytes" (dict "name" "limits.maxWorkspaceBytes" "value" .Values.limits.maxWorkspaceBytes) | int64 -}}
{{- end -}}
{{- if gt $workspace $sizeLimit -}}
{{- fail (printf "limits.maxWorkspaceBytes (%d) must not exceed workspace.sizeLimit (%s = %d bytes): the kubelet would evict the pod before Kiln refuses a write" $workspace .Values.workspace.sizeLimit $sizeLimit) -}}
{{- end -}}
{{- if gt $job $workspace -}}
{{- fail (printf "limits.maxJobBytes (%d) must not exceed the workspace budget (%d bytes)" $job $workspace) -}}
{{- end -}}
{{- if gt $file $job -}}
{{- fail (printf "limits.maxFileBytes (%d) must not exceed limits.maxJobBytes (%d)" $file $job) -}}
{{- end -}}
{{- dict "file" $file "job" $job "workspace" $workspace | toJson -}}
{{- end -}}
