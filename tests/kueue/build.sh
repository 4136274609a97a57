#!/usr/bin/env bash
# Build the Kueue controller pinned by module/go.mod (sigs.k8s.io/kueue/cmd/kueue) and copy its CRDs into a cache
# directory keyed by the pins; a warm cache returns at once. The last stdout line is that directory. Apart from
# tests/cluster/build.sh, so a Kueue change never rebuilds Kubernetes.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
VERSION=v0.19.2
CACHE=${CPT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubecpt}
KEY=$(cat "$HERE/build.sh" "$HERE/module/go.mod" "$HERE/module/go.sum" | sha256sum | cut -c1-12)
OUT=$CACHE/bin/kueue-$KEY
if [ -x "$OUT/kueue" ] && [ -d "$OUT/crds" ]; then
    echo "$OUT"
    exit 0
fi
command -v go >/dev/null || { echo "tests/kueue/build.sh: Go is required" >&2; exit 1; }
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOFLAGS=-mod=readonly GOTOOLCHAIN=local CGO_ENABLED=0
TMP=$OUT.tmp.$$
rm -rf "$TMP"
mkdir -p "$TMP/crds"
trap 'rm -rf "$TMP"' EXIT
start=$(date +%s)
(cd "$HERE/module" && go build -trimpath -ldflags "-s -w" -o "$TMP/kueue" sigs.k8s.io/kueue/cmd/kueue)
install -m 0644 "$GOMODCACHE/sigs.k8s.io/kueue@$VERSION"/config/components/crd/bases/*.yaml "$TMP/crds/"
rm -rf "$OUT"
mv "$TMP" "$OUT"
trap - EXIT
find "$CACHE/bin" -mindepth 1 -maxdepth 1 -name 'kueue-*' ! -name "kueue-$KEY" -exec rm -rf {} +
echo "kueue $VERSION: built in $(( $(date +%s) - start ))s into $OUT" >&2
echo "$OUT"
