#!/usr/bin/env bash
# Regenerates go.mod/go.sum for a new KUEUE_VERSION: a wrapper module whose only package is Kueue's
# cmd/kueue/main.go (copied in by build.sh), so the versions are exactly the ones Kueue pins.
set -euo pipefail
KUEUE_VERSION=${KUEUE_VERSION:-v0.17.0}
export GOTOOLCHAIN=local
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cd "$work"
go mod init forgeline.invalid/kueuebin
go mod edit -go=1.25.0
go get "sigs.k8s.io/kueue@$KUEUE_VERSION"
install -m 0644 "$(go list -m -f '{{.Dir}}' sigs.k8s.io/kueue)/cmd/kueue/main.go" .
go mod tidy
cp go.mod go.sum "$here/"
