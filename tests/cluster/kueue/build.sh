#!/usr/bin/env bash
# Builds Kueue's manager (sigs.k8s.io/kueue/cmd/kueue) from its Go module for the cluster tests and
# prints the directory that holds it (`kueue`) and its CRDs (`crds/`, copied from the module's
# config/components/crd/bases). Cached outside the repo, keyed by version; a second run prints the
# directory in well under a second.
#
# Built from this wrapper module (go.mod/go.sum: Kueue and exactly the versions it pins; gen.sh
# regenerates them) with Kueue's cmd/kueue/main.go copied in and one line changed: with internal
# cert management off, the manager reads its metrics-server certificate from the hard-coded
# /etc/kueue/metrics/certs and exits when it is absent; here that directory is
# $KUEUE_METRICS_CERT_DIR, so a test run needs no write access to /etc. Everything else is Kueue's.
set -euo pipefail
KUEUE_VERSION=${KUEUE_VERSION:-v0.17.0}
OUT=${FORGELINE_KUEUE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/forgeline/testbins/kueue-$KUEUE_VERSION}
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-trimpath
if [[ -x $OUT/kueue && -d $OUT/crds ]]; then echo "$OUT"; exit 0; fi
here=$(cd "$(dirname "$0")" && pwd)
log() { echo "[testbins $(date +%H:%M:%S)] $*" >&2; }

mod=sigs.k8s.io/kueue
if ! grep -q "^[[:space:]]*$mod $KUEUE_VERSION\$" "$here/go.mod"; then
  echo "$here/go.mod does not pin $mod $KUEUE_VERSION; run KUEUE_VERSION=$KUEUE_VERSION $here/gen.sh" >&2
  exit 1
fi
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
cp "$here/go.mod" "$here/go.sum" "$work/"
cd "$work"
src=$(go list -mod=mod -m -f '{{.Dir}}' "$mod")
[[ -d $src ]] || src=$(go mod download -json "$mod@$KUEUE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
hard='metricsCertPath := "/etc/kueue/metrics/certs"'
if [[ $(grep -cF "$hard" "$src/cmd/kueue/main.go") != 1 ]]; then
  echo "$src/cmd/kueue/main.go no longer has exactly one line '$hard'; update $0" >&2
  exit 1
fi
sed "s#$hard#metricsCertPath := os.Getenv(\"KUEUE_METRICS_CERT_DIR\")#" "$src/cmd/kueue/main.go" > main.go

log "building kueue $KUEUE_VERSION"
mkdir -p "$OUT"
go build -mod=mod -ldflags "-s -w -X $mod/pkg/version.GitVersion=$KUEUE_VERSION" -o "$OUT/kueue" .
rm -rf "$OUT/crds"
mkdir -p "$OUT/crds"
install -m 0644 "$src"/config/components/crd/bases/*.yaml "$OUT/crds/"
echo "$OUT"
