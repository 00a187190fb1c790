#!/usr/bin/env bash
# Every test: formatting, lints, unit, snapshot, compile-fail, build-helper,
# code-object (HIP code objects and CUDA cubins) and doc tests. Installs
# missing system packages and NVIDIA's compiler (from PyPI) first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export INSTA_UPDATE=no   # a changed snapshot fails; it is never written
cargo fmt --all -- --check
# The `cuda` feature: the bundled kernels are built into cubins too (nvcc),
# and the CUDA device is compiled (it has no GPU to run on here).
features=(--features attnforge/cuda)
cargo clippy --workspace --all-targets "${features[@]}" -- -D warnings
# A GPU-only runtime builds without the CPU backend (so without LLVM): the
# launch layer (element types, validation) is not the CPU device's.
for gpu in hip cuda; do
  if cargo tree -p attnforge-runtime --no-default-features --features "$gpu" -e normal \
      | grep -q inkwell; then
    echo "attnforge-runtime with --features $gpu alone depends on inkwell (LLVM)" >&2
    exit 1
  fi
  cargo clippy -p attnforge-runtime --no-default-features --features "$gpu" -- -D warnings
done
# The GPU check's CUDA runner (scripts/gpu-check.sh) is built this way:
# no LLVM, the bundled kernels' cubins.
cargo clippy -p attnforge-gpu-check --no-default-features --features cuda -- -D warnings
cargo test --workspace "${features[@]}"
# The fuzzing layer and the bad-input tests again in the release profile,
# where integer overflow wraps instead of panicking: neither profile may
# hide a bug (tests/README.md, "fuzzing").
# (The GGUF fuzz test runs in the debug profile only: a release build of
# candle costs the clean-clone run about 5 minutes, and the GGUF check
# uses checked arithmetic throughout.)
cargo test --release -p attnforge-runtime -p attnforge-codegen \
  --test fuzz_launch --test bad_input --test cache_props --test alloc_props \
  --test fuzz_frontend --test spec_space
