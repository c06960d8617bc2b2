{{/*
What the operator does in the namespaces it watches, and nothing more. No wildcards. These
rules go into a ClusterRole (all namespaces) or a Role per watched namespace.
*/}}
{{- define "kiln.rules.namespaced" -}}
# Reconcile the three kinds: read and watch them, add and remove the Job finalizer, apply
# fields (server-side apply is a patch), delete what expired.
- apiGroups: [kiln.dev]
  resources: [drafts, jobs, providerconfigs]
  verbs: [get, list, watch, patch, update, delete]
- apiGroups: [kiln.dev]
  resources: [drafts/status, jobs/status, providerconfigs/status]
  verbs: [get, patch, update]
# Objects Kiln derives carry an ownerReference with blockOwnerDeletion to their Job or
# ProviderConfig; with the OwnerReferencesPermissionEnforcement admission plugin, setting
# that needs update on the owner's finalizers.
- apiGroups: [kiln.dev]
  resources: [jobs/finalizers, providerconfigs/finalizers]
  verbs: [update]
# Published ConfigMaps and their revisions, ProviderConfig ConfigMaps; a Draft's schemaRef
# and a Job's contentFrom read ConfigMaps too (listed and watched as metadata only, to follow
# them live).
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, watch, create, patch, update, delete]
# Derived credentials (`<name>-credentials`, `default-<type>-credentials`), the Secrets
# their keys are read from, and a Job's Secret sources (listed and watched as metadata only).
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch, create, patch, update, delete]
# kube-runtime's event recorder creates an Event, then patches it to count repeats.
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Rollouts of the workloads annotated kiln.dev/follow: a pod-template annotation.
- apiGroups: [apps]
  resources: [deployments, statefulsets, daemonsets]
  verbs: [get, list, watch, patch]
{{- end -}}

{{/* Cluster-scoped APIs of the Job file API's authentication and authorization. */}}
{{- define "kiln.rules.auth" -}}
# The file API checks each caller's bearer token...
- apiGroups: [authentication.k8s.io]
  resources: [tokenreviews]
  verbs: [create]
# ...and asks whether that caller may use jobs/files in the namespace.
- apiGroups: [authorization.k8s.io]
  resources: [subjectaccessreviews]
  verbs: [create]
{{- end -}}
