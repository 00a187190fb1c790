#!/usr/bin/env bash
# The demo: SmolLM2-135M generating text on attnforge's paged KV cache and
# generated kernels (CPU backend), streamed as it is generated. Arguments go
# to the example: --prompt TEXT, --chat, --max-new-tokens N, --json,
# --model PATH; --help lists them all. Set-up (system packages, the model)
# comes first. It runs in release: a first build takes a few minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec cargo run --release --example smollm2 -- "$@"
