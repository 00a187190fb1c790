#!/usr/bin/env bash
# Every test: formatting, lints, unit, snapshot, compile-fail, build-helper,
# code-object and doc tests. Installs missing system packages first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export INSTA_UPDATE=no   # a changed snapshot fails; it is never written
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
