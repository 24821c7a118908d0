// Package deploy holds overlay's Kubernetes manifests (kube-overlay.yml).
// It has no code; its test validates the manifests against a real
// kube-apiserver: a server-side dry-run with strict field validation, and
// the ServiceAccount's permissions after a real apply.
package deploy
