#!/usr/bin/env bash
# The GPU check's two halves (gpu-check/README.md):
#
#   scripts/gpu-check.sh build PACK_DIR [--quick] [--cpu-runner]
#       here (Debian/Ubuntu, x86_64): builds the CUDA runner in release
#       (no LLVM; the bundled kernels' cubins by nvcc, which
#       scripts/fetch-cuda.sh installs when missing), computes the expected
#       outputs on the CPU backend at sm_90, and writes the pack: the
#       runner, manifest.json, expected/, python/, run.sh, README.md and
#       pack-info.json. --quick: the tests' few cases and tiny speed
#       shapes; --cpu-runner: a runner on the CPU driver instead (needs
#       LLVM where it runs: for trying run.sh without a GPU).
#   scripts/gpu-check.sh run PACK_DIR RESULTS_DIR
#       on the GPU machine: PACK_DIR/run.sh RESULTS_DIR (results.json,
#       results.md).
set -euo pipefail

usage() {
    sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
}

root="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-}"
[ $# -gt 0 ] && shift
case "$cmd" in
    run)
        [ $# -eq 2 ] || usage
        exec bash "$1/run.sh" "$2"
        ;;
    build) [ $# -ge 1 ] || usage ;;
    *) usage ;;
esac

pack="$1"
shift
quick=()
runner=cuda
for a in "$@"; do
    case "$a" in
        --quick) quick=(--quick) ;;
        --cpu-runner) runner=cpu ;;
        *) usage ;;
    esac
done
start=$(date +%s)
if [ -e "$pack" ] && [ -n "$(ls -A "$pack" 2>/dev/null)" ]; then
    if [ ! -f "$pack/.attnforge-gpu-pack" ]; then
        echo "gpu-check: $pack is not empty and is not a pack: not overwriting it" >&2
        exit 2
    fi
    rm -rf "$pack"
fi
mkdir -p "$pack/bin" "$pack/python"
touch "$pack/.attnforge-gpu-pack"
pack="$(cd "$pack" && pwd)"
cd "$root"
bin=target/release/attnforge-gpu-check

# 1. The runner.
if [ "$runner" = cuda ]; then
    nvcc="$(scripts/fetch-cuda.sh)"
    echo "gpu-check: building the CUDA runner (cubins by $nvcc)" >&2
    cargo build --release -p attnforge-gpu-check --no-default-features --features cuda
else
    echo "gpu-check: building a runner on the CPU driver (it needs LLVM 15 where it runs)" >&2
    cargo build --release -p attnforge-gpu-check --features cpu
fi
cp "$bin" "$pack/bin/attnforge-gpu-check"
runner_bin="$pack/bin/attnforge-gpu-check"
needs="$(ldd "$runner_bin" | awk '{ print $1 }' | sort)"
odd=""
for l in $needs; do
    case "$l" in
        linux-vdso.so.* | libc.so.* | libm.so.* | libgcc_s.so.* | libdl.so.* | libpthread.so.* | librt.so.* | /lib64/ld-linux-x86-64.so.* | ld-linux-x86-64.so.*) ;;
        *) odd="$odd $l" ;;
    esac
done
if [ -n "$odd" ] && [ "$runner" = cuda ]; then
    echo "gpu-check: the runner needs$odd, which the GPU machine may not have" >&2
    exit 1
fi
glibc="$(objdump -T "$runner_bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
echo "gpu-check: the runner needs ${glibc:-no versioned glibc symbol} and:" $needs >&2

# 2. The expected outputs: the CPU backend at sm_90 (LLVM, here).
t_expected=$(date +%s)
if [ "$runner" = cuda ]; then
    cargo build --release -p attnforge-gpu-check --features cpu
fi
"$bin" build "$pack" ${quick[@]+"${quick[@]}"}
t_expected=$(($(date +%s) - t_expected))

# 3. The rest of the pack.
cp gpu-check/run.sh "$pack/run.sh"
cp gpu-check/python/reference.py gpu-check/python/report.py "$pack/python/"
chmod +x "$pack/run.sh" "$pack/python/"*.py
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
if [ -n "$(git status --porcelain 2>/dev/null | head -1)" ]; then commit="$commit+changes"; fi
host="$( (. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME") || uname -sr)"
host_glibc="$(ldd --version 2>&1 | head -1 | grep -o '[0-9][0-9.]*$' || true)"
cases="$(grep -c '"id":' "$pack/manifest.json" || true)"
seconds=$(($(date +%s) - start))
cat >"$pack/pack-info.json" <<EOF
{
  "built": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "commit": "$commit",
  "host": "$host, glibc $host_glibc",
  "runner": {"driver": "$runner", "glibc_needed": "${glibc#GLIBC_}", "needs": "$(echo $needs)"},
  "cases": $cases,
  "quick": $([ ${#quick[@]} -gt 0 ] && echo true || echo false),
  "expected_outputs_seconds": $t_expected,
  "build_seconds": $seconds
}
EOF
cat >"$pack/README.md" <<EOF
# attnforge GPU check pack

Built $(date -u +%Y-%m-%d) from attnforge $commit on $host (glibc $host_glibc)
by \`scripts/gpu-check.sh build\`; what it is and how it works: gpu-check/README.md
in the repository.

Run it on the GPU machine (NVIDIA GPU with its driver, \`timeout\`, and for
the Python part python3 with torch; no Rust, no network):

    ./run.sh RESULTS_DIR

It never hangs (every step has a time limit, the whole run
\$ATTNFORGE_GPU_BUDGET seconds, 420 by default) and writes
RESULTS_DIR/results.json and results.md.

- bin/attnforge-gpu-check: the runner ($runner driver). It needs ${glibc:-glibc} or
  newer (the GPU machine's glibc must be at least ${glibc#GLIBC_}: Ubuntu 22.04 has
  2.35, Debian 12 2.36, RHEL 9 2.34; Ubuntu 20.04's 2.31 is too old) and only:
  $(echo $needs). libcuda and libnvrtc are loaded at run time.
- manifest.json: $cases cases (spec, lengths, seed, inputs' SHA-256,
  tolerance), the speed part's shapes.
- expected/: the CPU backend's outputs at sm_90 and the f64 reference's.
- python/reference.py: the torch reference and SDPA; python/report.py: the report.

The run half first ran on an NVIDIA H200 on 2026-12-04 (gpu-check/README.md).
EOF
echo "gpu-check: pack $pack: $(du -sh "$pack" | cut -f1), $cases cases; expected outputs ${t_expected}s, build ${seconds}s" >&2
