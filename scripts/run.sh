#!/usr/bin/env bash
# The main job: build the bundled model specs' kernels with hipcc (at build
# time) and list, per spec, its kernels, archs and code-object sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --quiet --example 00_bundled_kernels -- "$@"
