#!/usr/bin/env bash
# Regenerates go.mod/go.sum for a new KUBE_VERSION: every staging module k8s.io/kubernetes
# replaces with ./staging/... is pinned to its published v0.<minor>.<patch> tag instead.
set -euo pipefail
KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
export GOTOOLCHAIN=local
cd "$(dirname "$0")"
staging=v0.${KUBE_VERSION#v1.}
gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
for m in $(sed -n 's#^[[:space:]]*\(k8s\.io/[A-Za-z0-9._-]*\)[[:space:]]*=>[[:space:]]*\./staging/.*#\1#p' "$gomod"); do
  go mod edit -replace="$m=$m@$staging"
done
go get "k8s.io/kubernetes@$KUBE_VERSION"
etcd_ver=$(go list -m -f '{{.Version}}' go.etcd.io/etcd/client/v3)
go get -tool "k8s.io/kubernetes/cmd/kube-apiserver@$KUBE_VERSION" "k8s.io/kubernetes/cmd/kube-controller-manager@$KUBE_VERSION" \
  "k8s.io/kubernetes/cmd/kube-scheduler@$KUBE_VERSION" "go.etcd.io/etcd/server/v3@$etcd_ver"
go mod tidy
