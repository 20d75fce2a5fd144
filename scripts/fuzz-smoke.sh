#!/usr/bin/env bash
# Builds every fuzz target and runs each briefly from its committed corpus (cargo-fuzz on the
# stable toolchain, with RUSTC_BOOTSTRAP for libFuzzer's sanitizer flags).
# usage: scripts/fuzz-smoke.sh [SECONDS_PER_TARGET=20]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-20}
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
export RUSTC_BOOTSTRAP=1
targets=$(cd fuzz && cargo fuzz list)
for t in $targets; do
  echo "== $t (${secs}s)"
  cargo fuzz run "$t" -- -max_total_time="$secs" 2>&1 | grep -E '^(Done|#[0-9]+ +DONE)|ERROR|panicked' || true
  if [ -d "fuzz/artifacts/$t" ] && [ -n "$(ls -A "fuzz/artifacts/$t" 2>/dev/null)" ]; then
    echo "fuzz target $t found a crash: fuzz/artifacts/$t" >&2
    exit 1
  fi
done
