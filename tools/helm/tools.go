//go:build tools

// Package tools pins Helm for `go build`.
package tools

import _ "helm.sh/helm/v3/cmd/helm"
