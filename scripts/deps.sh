#!/usr/bin/env bash
# Installs the Debian packages the lab, the demo and the tests use, if any is missing.
# iproute2/iputils-ping/nftables: the lab; iperf3: benches; prometheus: promtool checks the
# metrics exposition; tcpdump: underlay captures; containernetworking-plugins + iptables: the
# reference CNI plugins (portmap chain test, latency comparison); jq: the CNI harness;
# containerd, runc, busybox-static: the real-runtime CNI test (../shared/harness/ctr-cni.sh);
# gcc: links every Rust binary, and builds mimalloc (weft-sim's allocator).
set -euo pipefail
pkgs=(gcc iproute2 iputils-ping nftables iperf3 tcpdump prometheus procps containernetworking-plugins iptables jq containerd runc busybox-static)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
