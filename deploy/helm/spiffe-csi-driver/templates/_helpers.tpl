{{/*
Helpers. Their names start with "spiffe-csi." and never "spiffe-csi-driver.": template names are
global to a release, and SPIRE's own spiffe-csi-driver subchart (still rendered for its upstream
alias when only the main driver is replaced) defines templates under that prefix.
*/}}

{{- define "spiffe-csi.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "spiffe-csi.fullname" -}}
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

{{/* SPIRE's recommendations: on when global.spire.recommendations.enabled; each part on by default. */}}
{{- define "spiffe-csi.recommended" -}}
{{- if and (dig "spire" "recommendations" "enabled" false .root.Values.global) (dig "spire" "recommendations" .part true .root.Values.global) }}true{{ end }}
{{- end }}

{{/* The namespace: namespaceOverride, SPIRE's system namespace with its recommended layout, or the release's. */}}
{{- define "spiffe-csi.namespace" -}}
{{- if .Values.namespaceOverride }}
{{- .Values.namespaceOverride }}
{{- else if include "spiffe-csi.recommended" (dict "root" . "part" "namespaceLayout") }}
{{- dig "spire" "namespaces" "system" "name" "" .Values.global | default "spire-system" }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* The SPIRE server's namespace, the only one whose pods an upstream driver serves. */}}
{{- define "spiffe-csi.serverNamespace" -}}
{{- if .Values.serverNamespaceOverride }}
{{- .Values.serverNamespaceOverride }}
{{- else if include "spiffe-csi.recommended" (dict "root" . "part" "namespaceLayout") }}
{{- dig "spire" "namespaces" "server" "name" "" .Values.global | default "spire-server" }}
{{- else }}
{{- .Release.Namespace }}
{{- end }}
{{- end }}

{{/* "true" when the ValidatingAdmissionPolicy is rendered: asked for, or automatic for an upstream driver on Kubernetes 1.30 or later. */}}
{{- define "spiffe-csi.admissionPolicy" -}}
{{- $setting := .Values.validatingAdmissionPolicy.enabled | toString }}
{{- if or (eq $setting "true") (and (eq $setting "auto") (eq .Values.pluginName "upstream.csi.spiffe.io") (semverCompare ">=1.30-0" .Capabilities.KubeVersion.GitVersion)) }}true{{ end }}
{{- end }}

{{- define "spiffe-csi.selectorLabels" -}}
app.kubernetes.io/name: {{ include "spiffe-csi.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "spiffe-csi.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "spiffe-csi.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: csi-driver
{{- end }}

{{- define "spiffe-csi.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "spiffe-csi.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {image, global, default tag}: global.spire.image.registry over the
image's registry; a tag of "sha256:..." is a digest; an empty tag is the default tag.
*/}}
{{- define "spiffe-csi.image" -}}
{{- $registry := dig "spire" "image" "registry" "" .global | default .image.registry }}
{{- $prefix := ternary "" (printf "%s/" $registry) (empty $registry) }}
{{- $tag := .image.tag | toString | default .defaultTag }}
{{- if hasPrefix "sha256:" $tag }}
{{- printf "%s%s@%s" $prefix .image.repository $tag }}
{{- else if $tag }}
{{- printf "%s%s:%s" $prefix .image.repository $tag }}
{{- else }}
{{- printf "%s%s" $prefix .image.repository }}
{{- end }}
{{- end }}

{{/* The priority class: priorityClassName, or system-node-critical with SPIRE's recommendations. */}}
{{- define "spiffe-csi.priorityClassName" -}}
{{- if .Values.priorityClassName }}
{{- .Values.priorityClassName }}
{{- else if include "spiffe-csi.recommended" (dict "root" . "part" "priorityClassName") }}
{{- print "system-node-critical" }}
{{- end }}
{{- end }}

{{/* The agent's socket directory on the node, which pods get. */}}
{{- define "spiffe-csi.agentSocketDir" -}}
{{- dir .Values.agentSocketPath }}
{{- end }}

{{/* The directory above it mounted into the driver. */}}
{{- define "spiffe-csi.agentSocketParent" -}}
{{- $socketDir := include "spiffe-csi.agentSocketDir" . }}
{{- $parent := .Values.agentSocketParentPath | default (dir $socketDir) | trimSuffix "/" }}
{{- if or (eq $parent "") (eq $parent "/") }}
{{- fail (printf "the driver mounts the directory above the agent's socket directory %s, which is /: set agentSocketParentPath to a directory below / that holds it" $socketDir) }}
{{- end }}
{{- if not (hasPrefix (printf "%s/" $parent) $socketDir) }}
{{- fail (printf "agentSocketParentPath %s does not hold the agent's socket directory %s" $parent $socketDir) }}
{{- end }}
{{- $parent }}
{{- end }}

{{/* The driver's --selinux-label: selinux.label, or "on" when selinux.enabled (or global.selinux) asks for labels. */}}
{{- define "spiffe-csi.selinuxLabel" -}}
{{- if and (eq .Values.selinux.label "auto") (or .Values.selinux.enabled (dig "selinux" false .Values.global)) }}
{{- print "on" }}
{{- else }}
{{- .Values.selinux.label }}
{{- end }}
{{- end }}

{{/* The driver's --selinux-context: a bare type (SPIRE's form) gets the user, role and level s0. */}}
{{- define "spiffe-csi.selinuxContext" -}}
{{- if contains ":" .Values.selinux.context }}
{{- .Values.selinux.context }}
{{- else }}
{{- printf "system_u:object_r:%s:s0" .Values.selinux.context }}
{{- end }}
{{- end }}

{{/* Mebibytes in a Kubernetes memory quantity, or -1 for a form this does not read. */}}
{{- define "spiffe-csi.mebibytes" -}}
{{- $q := toString . }}
{{- $units := dict "Ki" 0.0009765625 "Mi" 1.0 "Gi" 1024.0 "Ti" 1048576.0 "k" 0.00095367431640625 "M" 0.95367431640625 "G" 953.67431640625 "T" 953674.31640625 "" 0.00000095367431640625 }}
{{- $match := regexFindAll "^([0-9]+(\\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q 1 }}
{{- if $match }}
{{- $number := regexReplaceAll "^([0-9]+(\\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q "${1}" | float64 }}
{{- $unit := regexReplaceAll "^([0-9]+(\\.[0-9]+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?$" $q "${3}" }}
{{- mulf $number (get $units $unit) }}
{{- else }}
{{- print "-1" }}
{{- end }}
{{- end }}

{{/*
What values.schema.json cannot say, since it compares no two values: checked once, from the
DaemonSet's template.
*/}}
{{- define "spiffe-csi.validate" -}}
{{- if eq (int .Values.healthChecks.port) (int .Values.healthChecks.driverPort) }}
{{- fail (printf "healthChecks.port and healthChecks.driverPort are both %d: the registrar and the driver share the pod's network, give them different ports" (int .Values.healthChecks.port)) }}
{{- end }}
{{- $drain := add (int .Values.mountTimeoutSeconds) 1 }}
{{- if lt (int .Values.terminationGracePeriodSeconds) $drain }}
{{- fail (printf "terminationGracePeriodSeconds %d is shorter than the driver's drain (mountTimeoutSeconds + 1 = %d s): it would be killed with mounts in flight" (int .Values.terminationGracePeriodSeconds) $drain) }}
{{- end }}
{{- with dig "limits" "memory" "" .Values.resources }}
{{- $mib := include "spiffe-csi.mebibytes" . | float64 }}
{{- if and (ge $mib 0.0) (lt $mib 128.0) }}
{{- fail (printf "resources.limits.memory %s is below 128Mi: the driver's resident memory reaches 161 MB under load (the Go driver's 64Mi does not fit this one)" (toString .)) }}
{{- end }}
{{- end }}
{{- $set := list "workload-api-socket-dir" "plugin-name" "csi-socket-path" "node-id" "node-id-env" "health-addr" "log-level" "log-format" "mount-timeout" "selinux-label" "selinux-context" "recursive-bind" "allow-writable-submounts" "kubelet-registration-dir" "kubelet-registration-path" }}
{{- range .Values.extraArgs }}
{{- $flag := regexReplaceAll "^--?([^=]*).*$" . "${1}" }}
{{- if has $flag $set }}
{{- fail (printf "extraArgs: %s is set by the chart (from its values: see the chart's README), or is not for a DaemonSet beside node-driver-registrar" .) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
How the PodMonitor and the ServiceMonitor scrape, as deploy/kubernetes/monitoring's do: the
health port's /metrics, with the job and node labels the alerts and the dashboard select on.
*/}}
{{- define "spiffe-csi.metricsEndpoint" -}}
port: health
path: /metrics
interval: 30s
scrapeTimeout: 10s
relabelings:
  - action: replace
    targetLabel: job
    replacement: spiffe-csi-driver
  - action: replace
    sourceLabels: [__meta_kubernetes_pod_node_name]
    targetLabel: node
{{- end }}

{{/*
The chart's values at the top level, as values.schema.json declares them (a test keeps the two
equal). Others are accepted, so that a parent chart may pass values this version does not know,
and the install notes name them.
*/}}
{{- define "spiffe-csi.knownValues" -}}
global enabled pluginName image resources extraEnvVars allow extraArgs healthChecks updateStrategy livenessProbe readinessProbe imagePullSecrets nameOverride namespaceOverride serverNamespaceOverride validatingAdmissionPolicy fullnameOverride csiDriverLabels csiDriverAnnotations preventPodSchedulingIfMissing syncWave initContainers serviceAccount podAnnotations podLabels podSecurityContext securityContext hostNetwork nodeSelector tolerations affinity nodeDriverRegistrar agentSocketPath agentSocketParentPath kubeletPath priorityClassName priorityQuota terminationGracePeriodSeconds logLevel logFormat mountTimeoutSeconds recursiveBind restrictedScc selinux networkPolicy tests telemetry
{{- end }}

{{/* The top-level values the chart does not know, sorted. */}}
{{- define "spiffe-csi.unknownValues" -}}
{{- $known := splitList " " (include "spiffe-csi.knownValues" .) }}
{{- $unknown := list }}
{{- range $key, $_ := .Values }}
{{- if not (has $key $known) }}
{{- $unknown = append $unknown $key }}
{{- end }}
{{- end }}
{{- sortAlpha $unknown | join ", " }}
{{- end }}
