#!/usr/bin/env bash
# Builds every fuzz target and runs each briefly from its committed corpus; fails on a crash.
# New inputs go to a temporary directory (libFuzzer writes to the first corpus directory
# only), so the committed corpora stay as they are; the script checks that they did.
# usage: scripts/fuzz-smoke.sh [SECONDS_PER_TARGET=5]
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-5}

# A fresh machine: the nightly toolchain (libFuzzer's sanitizer flags) and cargo-fuzz.
if ! cargo +nightly --version >/dev/null 2>&1; then
  rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

corpus_sum() { find fuzz/corpus -type f -print0 | sort -z | xargs -0 sha1sum | sha1sum; }
before=$(corpus_sum)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cd fuzz
cargo +nightly fuzz build
failed=()
for t in $(cargo +nightly fuzz list); do
  mkdir -p "$tmp/$t" "$tmp/artifacts/$t" "corpus/$t"
  if cargo +nightly fuzz run "$t" "$tmp/$t" "corpus/$t" -- -max_total_time="$secs" \
    -timeout=10 -artifact_prefix="$tmp/artifacts/$t/" >"$tmp/$t.log" 2>&1; then
    echo "$t: $(grep -E '^Done [0-9]+ runs' "$tmp/$t.log" || echo done)"
  else
    echo "$t: FAILED" >&2
    grep -E -A12 'panicked|ERROR: libFuzzer|SUMMARY' "$tmp/$t.log" | head -40 >&2 || true
    mkdir -p "artifacts/$t"
    cp -r "$tmp/artifacts/$t/." "artifacts/$t/" 2>/dev/null || true
    failed+=("$t")
  fi
done
cd ..

if [[ $(corpus_sum) != "$before" ]]; then
  echo "the committed fuzz corpora changed during the smoke run" >&2
  exit 1
fi
if ((${#failed[@]})); then
  echo "fuzz targets that crashed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
  exit 1
fi
echo "fuzz smoke: every target ran ${secs}s without a crash"
