#!/usr/bin/env bash
# Build the real control-plane binaries for the tests (etcd, kube-apiserver, kube-controller-manager,
# kube-scheduler, kubectl, and the node's kubelet, kube-proxy and pause from tools/go.mod; CoreDNS; kwok and helm at their pinned releases) into a cache
# directory keyed by the pinned versions and the build inputs. A warm cache returns in about a second.
# Logs go to stderr; the last stdout line is the directory that holds the binaries.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
TOOLS=$HERE/tools
# shellcheck source=versions.env
source "$HERE/versions.env"
CACHE=${CPT_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/kubecpt}
KEY=$(cat "$HERE/versions.env" "$HERE/build.sh" "$TOOLS/go.mod" "$TOOLS/go.sum" "$TOOLS"/cmd/*/main.go \
      "$HERE/jobset/go.mod" "$HERE/jobset/go.sum" "$HERE/coredns/go.mod" "$HERE/coredns/go.sum" "$HERE/coredns/main.go" \
      | sha256sum | cut -c1-12)
BIN=$CACHE/bin/k8s-$K8S_VERSION-$KEY
# kubelet, kube-proxy, pause and coredns make the end-to-end tests' real node (tests/e2e).
NAMES=(etcd kube-apiserver kube-controller-manager kube-scheduler kubectl kwok helm jobset kubelet kube-proxy pause coredns)
# kwok ships no default stages in its binary: take its node stages from the pinned release's sources.
NODE_STAGES=(fast/node-initialize.yaml heartbeat-with-lease/node-heartbeat-with-lease.yaml)
# CRDs of the controllers our children use, from their pinned modules (the JobSet CRD: `cpt render` output
# is checked with --dry-run=server against it).
CRDS=(jobset.x-k8s.io_jobsets.yaml)

complete() {
    for n in "${NAMES[@]}"; do [ -x "$BIN/$n" ] || return 1; done
    for s in "${NODE_STAGES[@]}"; do [ -f "$BIN/kwok-stages/$(basename "$s")" ] || return 1; done
    for c in "${CRDS[@]}"; do [ -f "$BIN/crds/$c" ] || return 1; done
}
if complete; then
    echo "cluster binaries: cached in $BIN" >&2
    echo "$BIN"
    exit 0
fi
command -v go >/dev/null || { echo "build.sh: Go is required (https://go.dev/dl)" >&2; exit 1; }
export GOMODCACHE=$CACHE/go/mod GOCACHE=$CACHE/go/build GOFLAGS=-mod=readonly GOTOOLCHAIN=local
export CGO_ENABLED=0
TMP=$BIN.tmp.$$
rm -rf "$TMP"
mkdir -p "$TMP"
trap 'rm -rf "$TMP"' EXIT
start=$(date +%s)
minor=${K8S_VERSION#v1.}; minor=${minor%%.*}
ldflags=""
for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldflags+=" -X $pkg.gitVersion=$K8S_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
done
echo "building Kubernetes $K8S_VERSION components and etcd $ETCD_VERSION into $BIN" >&2
(cd "$TOOLS" && go build -trimpath -ldflags "-s -w $ldflags" -o "$TMP/" ./cmd/...)
echo "building kwok $KWOK_VERSION" >&2
GOBIN=$TMP go install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
mkdir -p "$TMP/kwok-stages"
for s in "${NODE_STAGES[@]}"; do
    install -m 0644 "$GOMODCACHE/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage/node/$s" "$TMP/kwok-stages/"
done
echo "building helm $HELM_VERSION" >&2
GOBIN=$TMP go install -trimpath -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
    "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
echo "building the JobSet controller $JOBSET_VERSION (pinned by jobset/go.mod)" >&2
(cd "$HERE/jobset" && go build -trimpath -ldflags "-s -w" -o "$TMP/jobset" sigs.k8s.io/jobset)
echo "building CoreDNS (pinned by coredns/go.mod, with the plugins the tests use)" >&2
(cd "$HERE/coredns" && go build -trimpath -ldflags "-s -w" -o "$TMP/coredns" .)
mkdir -p "$TMP/crds"
install -m 0644 "$GOMODCACHE/sigs.k8s.io/jobset@$JOBSET_VERSION/config/components/crd/bases/jobset.x-k8s.io_jobsets.yaml" \
    "$TMP/crds/"
mkdir -p "$(dirname "$BIN")"
rm -rf "$BIN"
mv "$TMP" "$BIN"
trap - EXIT
# Binaries of older pins or build inputs are of no further use.
find "$CACHE/bin" -mindepth 1 -maxdepth 1 -name 'k8s-*' ! -name "$(basename "$BIN")" -exec rm -rf {} +
complete || { echo "build.sh: a binary is missing after the build" >&2; exit 1; }
echo "cluster binaries: built in $(( $(date +%s) - start ))s into $BIN" >&2
echo "$BIN"
