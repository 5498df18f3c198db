{{/* The image of every component: `image`, else imageRef.repository:tag (tag defaulting to appVersion). */}}
{{- define "dynatrace-operator.image" -}}
{{- if .Values.image -}}
{{- .Values.image -}}
{{- else -}}
{{- printf "%s:%s" .Values.imageRef.repository (.Values.imageRef.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end }}

{{/* The labels of every object; the argument is (list $ "component"). */}}
{{- define "dynatrace-operator.labels" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: dynatrace-operator
app.kubernetes.io/component: {{ index . 1 }}
app.kubernetes.io/managed-by: {{ $root.Release.Service }}
app.kubernetes.io/version: {{ $root.Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" $root.Chart.Name $root.Chart.Version }}
{{- end }}

{{/* The security context of the operator's and the webhook's container: the image's user, nothing else. */}}
{{- define "dynatrace-operator.restrictedContainer" -}}
allowPrivilegeEscalation: false
capabilities:
  drop:
    - ALL
privileged: false
readOnlyRootFilesystem: true
runAsGroup: 1001
runAsNonRoot: true
runAsUser: 1001
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* POD_NAMESPACE and POD_NAME from the downward API. */}}
{{- define "dynatrace-operator.podEnv" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end }}
