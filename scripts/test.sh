#!/usr/bin/env bash
# The whole test suite: unit, property and netns lab tests (needs root). The lab tests run the
# real binaries, so they are built first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --workspace --bins --locked
cargo test --workspace --locked
