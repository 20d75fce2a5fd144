#!/usr/bin/env bash
# The demo: a 3-node lab in network namespaces, pods attached through the CNI plugin, pings,
# the mesh as `weft status` shows it; everything is removed afterwards. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --locked --workspace --bins
exec target/release/weft-sim lab demo
