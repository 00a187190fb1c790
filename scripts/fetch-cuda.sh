#!/usr/bin/env bash
# Installs NVIDIA's CUDA 13.0 compiler (nvcc, ptxas, the CUDA headers),
# NVRTC and the SASS disassembler (nvdisasm, whose PyPI wheels start at
# 13.2; it reads 13.0's cubins) from PyPI wheels into attnforge's cache,
# unless a system CUDA is
# there ($NVCC, $CUDA_PATH/bin/nvcc, nvcc on PATH, /usr/local/cuda) or the
# wheels were installed before:
#   $ATTNFORGE_CACHE_DIR/cuda/13.0.88, else $XDG_CACHE_HOME/attnforge/...,
#   else ~/.cache/attnforge/cuda/13.0.88
# No GPU is needed. The wheels are pinned by version and SHA-256 (pip
# checks them); 13.0 is the CUDA of the driver (580) our cubins must load
# on. Prints the nvcc it found or installed.
set -euo pipefail

for c in "${NVCC:-}" "${CUDA_PATH:+$CUDA_PATH/bin/nvcc}" "$(command -v nvcc || true)" /usr/local/cuda/bin/nvcc; do
    if [ -n "$c" ] && [ -x "$c" ]; then
        echo "$c"
        exit 0
    fi
done

version=13.0.88
root="${ATTNFORGE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/attnforge}/cuda"
dir="$root/$version"
nvcc="$dir/nvidia/cu13/bin/nvcc"
# An install from before nvdisasm joined it is done again.
complete() { [ -x "$nvcc" ] && [ -x "$dir/nvidia/cu13/bin/nvdisasm" ] && [ -f "$dir/.complete" ]; }
if complete; then
    echo "$nvcc"
    exit 0
fi
if [ "$(uname -m)" != x86_64 ]; then
    echo "fetch-cuda: the pinned wheels are for x86_64 Linux; on $(uname -m), install the CUDA toolkit and set CUDA_PATH" >&2
    exit 1
fi
mkdir -p "$root"
# One install at a time: a second run waits, then finds the first's.
if command -v flock >/dev/null 2>&1; then
    exec 9>"$root/.lock"
    flock 9
    if complete; then
        echo "$nvcc"
        exit 0
    fi
fi

py="$(command -v python3 || true)"
if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
    echo "fetch-cuda: needs python3 with pip (apt-get install python3-pip)" >&2
    exit 1
fi
tmp="$(mktemp -d "$root/.install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
cat >"$tmp/requirements.txt" <<'REQ'
nvidia-cuda-nvcc==13.0.88 --hash=sha256:56fe502eb77625a12f25172caa3cdddb4e4c8ba2c8c17dba44b164761b380f03
nvidia-cuda-crt==13.0.88 --hash=sha256:2c8043c7c9e02492716426e9919fc78d2c5b3b2a7a768a88e952676b08aa55a4
nvidia-nvvm==13.0.88 --hash=sha256:c5f41ffeb6466944a026dfa5317d7d85355c119bbec279205d22f1869d1054e0
nvidia-cuda-runtime==13.0.88 --hash=sha256:422a38f7c739ecbdd3a4b6ec7ed0a1d74db43d8e9bc26685f3d845638922b178
nvidia-cuda-cccl==13.0.85 --hash=sha256:e0da7ad981f3a8aff08241b5bfc1af868742a63e2762f53a5171c492ef242649
nvidia-cuda-nvrtc==13.0.88 --hash=sha256:ad9b6d2ead2435f11cbb6868809d2adeeee302e9bb94bcf0539c7a40d80e8575
nvidia-cuda-nvdisasm==13.5.37 --hash=sha256:d3fdbdd49fa53e2e4aacd3db8259d052bd2b049ececdcb69e92e083c6728e7ca
REQ
echo "fetch-cuda: downloading NVIDIA's CUDA $version compiler, NVRTC and nvdisasm from PyPI (200 MB)" >&2
"$py" -m pip download --quiet --no-deps --disable-pip-version-check \
    --only-binary :all: --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2010_x86_64 --platform manylinux_2_12_x86_64 \
    --require-hashes -r "$tmp/requirements.txt" -d "$tmp/wheels" >&2
# One tree from all wheels, with the files' modes (nvcc, ptxas and cicc
# must stay executable), written next to its final place and renamed.
"$py" - "$tmp/wheels" "$tmp/tree" <<'PY'
import glob, os, sys, zipfile
wheels, dest = sys.argv[1], sys.argv[2]
found = sorted(glob.glob(os.path.join(wheels, "*.whl")))
if len(found) != 7:
    sys.exit(f"fetch-cuda: expected 7 wheels, found {len(found)}")
for w in found:
    with zipfile.ZipFile(w) as z:
        for info in z.infolist():
            path = z.extract(info, dest)
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                os.chmod(path, mode)
PY
chmod +x "$tmp/tree/nvidia/cu13/bin/"* "$tmp/tree/nvidia/cu13/nvvm/bin/"* 2>/dev/null || true
# It must compile a kernel (nvcc, cicc, ptxas and the headers), not only start.
printf '#include <cuda_fp16.h>\nextern "C" __global__ void k(__half* p) { p[0] = __float2half(1.0f); }\n' >"$tmp/k.cu"
ccbin=()
if ! command -v g++ >/dev/null 2>&1; then
    for c in clang++-15 clang++; do
        if command -v "$c" >/dev/null 2>&1; then ccbin=("-ccbin=$(command -v "$c")"); break; fi
    done
fi
if ! (cd "$tmp" && TMPDIR="$tmp" "$tmp/tree/nvidia/cu13/bin/nvcc" "${ccbin[@]}" -cubin -arch=sm_80 -o k.cubin k.cu) >&2; then
    echo "fetch-cuda: the installed nvcc does not compile a kernel (see above)" >&2
    exit 1
fi
touch "$tmp/tree/.complete"
rm -rf "$dir"
mv -T "$tmp/tree" "$dir"
echo "$nvcc"
