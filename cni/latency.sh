#!/usr/bin/env bash
# latency.sh -- CNI ADD/DEL latency of weft-cni beside the reference bridge+host-local plugins,
# in the same run, with ../shared/harness/cni-latency.sh, inside a throwaway network namespace
# (never the root one). weft's router is stood in for by the fake_ipam example.
#
# usage: cni/latency.sh [CYCLES]   (root; needs containernetworking-plugins, jq, iproute2)
set -euo pipefail
N=${1:-50}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HARNESS=${HARNESS:-$ROOT/../shared/harness}
NS=weftlat$$
W=$(mktemp -d /tmp/weft-lat.XXXXXX)
IPAM_PID=
cleanup() {
  [ -n "$IPAM_PID" ] && kill "$IPAM_PID" 2>/dev/null
  ip netns del "$NS" 2>/dev/null
  rm -rf "$W"
}
trap cleanup EXIT

cargo build --release --locked -p weft-cni --bin weft-cni --example fake_ipam >&2
mkdir -p "$W/plugins"
ln -s "$ROOT/target/release/weft-cni" "$W/plugins/weft"
ip netns add "$NS"
ip -n "$NS" link set lo up
ip -n "$NS" link add weft type bridge
ip -n "$NS" link set weft up
ip -n "$NS" addr add 10.32.0.1/12 dev weft
nsenter --net="/run/netns/$NS" "$ROOT/target/release/examples/fake_ipam" "$W/weft.sock" &
IPAM_PID=$!
for _ in $(seq 50); do [ -S "$W/weft.sock" ] && break; sleep 0.1; done
printf '{"cniVersion":"1.0.0","name":"weftlat","type":"weft","socket":"%s"}\n' "$W/weft.sock" >"$W/weft.conf"

echo "### reference: bridge + host-local"
nsenter --net="/run/netns/$NS" "$HARNESS/cni-latency.sh" /usr/lib/cni "$HARNESS/examples/bridge-hostlocal.conf" "$N"
echo "### weft (fake IPAM)"
nsenter --net="/run/netns/$NS" env CNIH_LINK_RE='cnih-.*' "$HARNESS/cni-latency.sh" "$W/plugins" "$W/weft.conf" "$N"
