#!/usr/bin/env bash
# Debian packages the end-to-end tests' real node needs (tests/e2e/node.py): containerd + runc, the CNI
# plugins (bridge, host-local, loopback), iptables, conntrack and iproute2; and Chromium, in which the report
# tests open the HTML report headless (tests/pipeline/report/browser.py). Needs root; idempotent: when every
# tool is already there it changes nothing and needs no network.
set -euo pipefail
need=()
command -v containerd >/dev/null || need+=(containerd)
command -v runc >/dev/null || need+=(runc)
[ -x /usr/lib/cni/bridge ] && [ -x /usr/lib/cni/host-local ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
command -v conntrack >/dev/null || need+=(conntrack)
command -v ip >/dev/null || need+=(iproute2)
command -v chromium >/dev/null || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then
    echo "node packages: already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "node packages: root is needed to install ${need[*]}" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${need[@]}"
echo "node packages: installed ${need[*]}"
