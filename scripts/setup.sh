#!/usr/bin/env bash
# Installs the system packages attnforge needs, only those missing:
#   hipcc        compiles generated HIP into AMDGPU code objects at build time
#   llvm-15-dev  LLVM for the CPU backend (JIT)
# Debian/Ubuntu only; elsewhere it says what to install and stops.
set -euo pipefail

installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

missing=()
command -v hipcc >/dev/null 2>&1 || missing+=(hipcc)
if command -v dpkg-query >/dev/null 2>&1; then
    installed llvm-15-dev || missing+=(llvm-15-dev)
fi

if ((${#missing[@]})); then
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "attnforge needs: ${missing[*]} (hipcc from ROCm, LLVM 15 development files)." >&2
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
