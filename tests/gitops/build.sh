#!/usr/bin/env bash
# Build tests/gitops/checker (gopher-lua as Argo CD runs it, kstatus from sigs.k8s.io/cli-utils, cel-go as Flux
# runs it) into a cache directory keyed by its sources; a warm cache returns at once. The last stdout line is
# the binary's path. Kept apart from tests/cluster/build.sh so a change here never rebuilds Kubernetes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
CACHE=${CPT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubecpt}
KEY=$(cat "$HERE/build.sh" "$HERE/checker/go.mod" "$HERE/checker/go.sum" "$HERE/checker/main.go" | sha256sum | cut -c1-12)
OUT=$CACHE/bin/gitops-$KEY/checker
if [ -x "$OUT" ]; then
    echo "$OUT"
    exit 0
fi
command -v go >/dev/null || { echo "tests/gitops/build.sh: Go is required" >&2; exit 1; }
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOFLAGS=-mod=readonly GOTOOLCHAIN=local CGO_ENABLED=0
mkdir -p "$(dirname "$OUT")"
(cd "$HERE/checker" && go build -trimpath -ldflags "-s -w" -o "$OUT.tmp.$$" .)
mv "$OUT.tmp.$$" "$OUT"
find "$CACHE/bin" -mindepth 1 -maxdepth 1 -name 'gitops-*' ! -name "gitops-$KEY" -exec rm -rf {} +
echo "$OUT"
