// Package deploy holds overlay's Kubernetes manifests. KubeOverlay is
// kube-overlay.yml, embedded so the e2e harness and `overlay demo --kube`
// grant their agents exactly the RBAC the manifest grants. Its test
// validates the manifest against a real kube-apiserver: a server-side dry
// run with strict field validation, and the ServiceAccount's permissions
// after a real apply.
package deploy

import _ "embed"

// KubeOverlay is deploy/kube-overlay.yml.
//
//go:embed kube-overlay.yml
var KubeOverlay []byte

// Names of the objects in KubeOverlay that clients refer to.
const (
	Namespace      = "kube-overlay"
	ServiceAccount = "overlay"
)
