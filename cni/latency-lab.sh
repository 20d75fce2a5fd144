#!/usr/bin/env bash
# latency-lab.sh -- CNI ADD/DEL latency of weft-cni against a REAL weft router (IPAM with
# crash-safe persistence), beside the reference bridge+host-local plugins, in the same run, with
# ../shared/harness/cni-latency.sh, inside a one-node lab (weft-sim lab), never the root netns.
#
# usage: cni/latency-lab.sh [CYCLES]   (root; needs containernetworking-plugins, jq, iproute2)
set -euo pipefail
N=${1:-50}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/harness}
LAB=weftlat$$
W=$(mktemp -d /tmp/weft-lat.XXXXXX)
SIM=$ROOT/target/release/weft-sim
cleanup() {
  "$SIM" lab down --name "$LAB" >/dev/null 2>&1 || true
  rm -rf "$W"
}
trap cleanup EXIT

cargo build --release --locked --workspace --bins >&2
"$SIM" lab up --name "$LAB" --nodes 1 --pods 0 >/dev/null
mkdir -p "$W/plugins"
ln -s "$ROOT/target/release/weft-cni" "$W/plugins/weft"
printf '{"cniVersion":"1.0.0","name":"weftlat","type":"weft","socket":"/run/weft-lab/%s/h1/weft.sock"}\n' \
  "$LAB" >"$W/weft.conf"

echo "### reference: bridge + host-local"
nsenter --net="/run/netns/$LAB-h1" "$HARNESS/cni-latency.sh" /usr/lib/cni "$HARNESS/examples/bridge-hostlocal.conf" "$N"
echo "### weft (real router IPAM)"
nsenter --net="/run/netns/$LAB-h1" env CNIH_LINK_RE='cnih-.*' "$HARNESS/cni-latency.sh" "$W/plugins" "$W/weft.conf" "$N"

printf '{"cniVersion":"1.0.0","name":"weftlatpm","plugins":[{"type":"weft","socket":"/run/weft-lab/%s/h1/weft.sock"},{"type":"portmap","capabilities":{"portMappings":true}}]}\n' \
  "$LAB" >"$W/weft-portmap.conflist"
echo "### reference: bridge + host-local -> portmap"
nsenter --net="/run/netns/$LAB-h1" "$HARNESS/cni-latency.sh" /usr/lib/cni "$HARNESS/examples/bridge-hostlocal-portmap.conflist" "$N"
echo "### weft (real router IPAM) -> portmap"
nsenter --net="/run/netns/$LAB-h1" env CNIH_LINK_RE='cnih-.*' "$HARNESS/cni-latency.sh" "$W/plugins" "$W/weft-portmap.conflist" "$N"
