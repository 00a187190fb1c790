#!/usr/bin/env bash
# attnforge GPU check, the run half, for the GPU machine:
#
#     ./run.sh RESULTS_DIR
#
# Runs every step under a time limit, records each step's status (ok,
# failed, timeout, missing, skipped), goes on after a failure, and writes
# RESULTS_DIR/results.json and results.md. The whole run fits in
# $ATTNFORGE_GPU_BUDGET seconds (default 420); a step gets at most its own
# limit and what is left of the budget. Inputs and outputs go to a scratch
# folder ($ATTNFORGE_GPU_SCRATCH, else a new temporary one, removed at the
# end unless ATTNFORGE_GPU_KEEP_SCRATCH=1); RESULTS_DIR gets only small
# files (logs, JSON, Markdown, the outputs of failed cases).
set -u

PACK="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [ $# -ne 1 ]; then
    echo "usage: $0 RESULTS_DIR" >&2
    exit 2
fi
mkdir -p "$1/logs" || exit 2
RESULTS="$(cd "$1" && pwd)"
BIN="$PACK/bin/attnforge-gpu-check"
BUDGET="${ATTNFORGE_GPU_BUDGET:-420}"
# The runner's driver: cuda; cpu only for a pack whose runner was built
# with the CPU backend (how the tests run this script without a GPU).
DRIVER="${ATTNFORGE_GPU_DRIVER:-cuda}"
# The Python with torch.
PY="${ATTNFORGE_GPU_PYTHON:-python3}"
START=$(date +%s)
own_scratch=0
if [ -n "${ATTNFORGE_GPU_SCRATCH:-}" ]; then
    SCRATCH="$ATTNFORGE_GPU_SCRATCH"
    mkdir -p "$SCRATCH"
else
    SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/attnforge-gpu-check.XXXXXX")"
    own_scratch=1
fi
: >"$RESULTS/steps.tsv"
date -u +%Y-%m-%dT%H:%M:%SZ >"$RESULTS/started.txt"

# The CUDA driver (libcuda) and NVRTC are loaded at run time, and NVRTC
# needs the CUDA headers (cuda_fp16.h): a CUDA install's, else those of
# PyTorch's CUDA wheels (nvidia/cu13: lib/ and include/).
if [ -z "${CUDA_PATH:-}" ]; then
    for c in /usr/local/cuda "$(dirname "$(command -v nvcc 2>/dev/null || echo /nonexistent/bin/nvcc)")/.." \
        /usr/local/cuda-13*; do
        if [ -f "$c/include/cuda_fp16.h" ]; then
            CUDA_PATH="$(cd "$c" && pwd)"
            export CUDA_PATH
            break
        fi
    done
fi
if [ -z "${CUDA_PATH:-}" ]; then
    if command -v "$PY" >/dev/null 2>&1; then
        wheel="$("$PY" - <<'PY' 2>/dev/null
import glob, importlib.util, os
spec = importlib.util.find_spec("nvidia")
for root in (spec.submodule_search_locations if spec else []):
    for d in sorted(glob.glob(os.path.join(root, "cu*"))):
        if glob.glob(os.path.join(d, "lib", "libnvrtc.so*")) and os.path.isfile(os.path.join(d, "include", "cuda_fp16.h")):
            print(d)
            raise SystemExit
PY
)"
        [ -n "$wheel" ] && export CUDA_PATH="$wheel"
    fi
fi
libdirs=""
for d in "${CUDA_PATH:-/usr/local/cuda}/lib64" "${CUDA_PATH:-/usr/local/cuda}/lib" \
    /usr/local/cuda/targets/x86_64-linux/lib /usr/lib/x86_64-linux-gnu /usr/lib64; do
    [ -d "$d" ] && libdirs="$libdirs:$d"
done
# For the runner only (torch keeps its own CUDA libraries).
RUNNER_LD="${libdirs#:}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
RUN=(env LD_LIBRARY_PATH="$RUNNER_LD" "$BIN")
# NVRTC's cubins go to a fresh cache in the scratch folder (the compile
# step's times are then NVRTC's own).
export ATTNFORGE_CACHE_DIR="${ATTNFORGE_CACHE_DIR:-$SCRATCH/cache}"
export RUST_BACKTRACE=1

# `timeout` from coreutils, else a watchdog of our own.
limited() {
    local limit=$1
    shift
    if command -v timeout >/dev/null 2>&1; then
        timeout -k 10 "$limit" "$@"
        return $?
    fi
    "$@" &
    local pid=$!
    (sleep "$limit" && kill -TERM "$pid" 2>/dev/null && sleep 10 && kill -KILL "$pid" 2>/dev/null) &
    local dog=$!
    wait "$pid"
    local rc=$?
    kill "$dog" 2>/dev/null
    wait "$dog" 2>/dev/null
    [ $rc -eq 143 ] && rc=124
    return $rc
}

# step NAME LIMIT COMMAND...: runs it, output to logs/NAME.log, and
# records NAME, status, exit code, seconds and the limit it ran under.
step() {
    local name=$1 want=$2
    shift 2
    local left=$((BUDGET - ($(date +%s) - START) - 20))
    local limit=$((want < left ? want : left))
    if [ "$limit" -lt 5 ]; then
        printf '%s\tskipped (budget)\t-1\t0\t0\n' "$name" >>"$RESULTS/steps.tsv"
        echo "step $name: skipped, the budget is spent" >&2
        return 0
    fi
    local t0 rc status
    t0=$(date +%s.%N)
    export ATTNFORGE_GPU_DEADLINE=$(($(date +%s) + limit - 5))
    limited "$limit" "$@" >"$RESULTS/logs/$name.log" 2>&1
    rc=$?
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        126 | 127) status=missing ;;
        *) status=failed ;;
    esac
    local secs
    secs=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$secs" "$limit" >>"$RESULTS/steps.tsv"
    echo "step $name: $status (exit $rc, ${secs}s of ${limit}s)" >&2
}

step env 15 bash -c '
    echo "== uname"; uname -a
    echo "== os"; cat /etc/os-release 2>/dev/null
    echo "== glibc"; ldd --version 2>&1 | head -1
    echo "== the runner needs"; ldd "$0" 2>&1
    echo "== nvidia-smi"; nvidia-smi 2>&1
    echo "== nvcc"; nvcc --version 2>&1 || /usr/local/cuda/bin/nvcc --version 2>&1
    echo "== python"; "$2" --version 2>&1; "$2" -c "import torch; print(\"torch\", torch.__version__, torch.version.cuda, torch.cuda.is_available())" 2>&1
    echo "== CUDA_PATH=${CUDA_PATH:-} runner LD_LIBRARY_PATH=$3 ATTNFORGE_CACHE_DIR=$ATTNFORGE_CACHE_DIR"
    echo "== scratch"; df -h "$1" 2>&1' "$BIN" "$SCRATCH" "$PY" "$RUNNER_LD"
step device 15 bash -c 'nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader >"$0"' \
    "$RESULTS/device.csv"
if [ "$DRIVER" = cuda ]; then
    step compile 60 "${RUN[@]}" compile "$PACK" "$RESULTS"
fi
step correctness 150 "${RUN[@]}" check "$PACK" "$SCRATCH" "$RESULTS" --driver "$DRIVER" --isolate --group-seconds 60
step speed 100 "${RUN[@]}" speed "$PACK" "$SCRATCH" "$RESULTS" --driver "$DRIVER"
step torch 100 "$PY" "$PACK/python/reference.py" "$PACK" "$SCRATCH" "$RESULTS"
SANITIZER="$(command -v compute-sanitizer || true)"
[ -z "$SANITIZER" ] && [ -x /usr/local/cuda/bin/compute-sanitizer ] && SANITIZER=/usr/local/cuda/bin/compute-sanitizer
if [ -n "$SANITIZER" ]; then
    san=(env LD_LIBRARY_PATH="$RUNNER_LD" "$SANITIZER" --error-exitcode 3 --print-limit 20)
    step memcheck 45 "${san[@]}" --tool memcheck "$BIN" sanitize --driver "$DRIVER"
    step racecheck 45 "${san[@]}" --tool racecheck "$BIN" sanitize --driver "$DRIVER"
else
    printf 'memcheck\tmissing (no compute-sanitizer)\t127\t0\t0\nracecheck\tmissing (no compute-sanitizer)\t127\t0\t0\n' \
        >>"$RESULTS/steps.tsv"
fi
# The report always gets its 15 s, whatever the steps before it used (a
# timed-out step may overrun its limit by timeout's 10 s grace).
BUDGET=$(($(date +%s) - START + 35))
step report 15 "$PY" "$PACK/python/report.py" "$PACK" "$RESULTS" "$SCRATCH"
if [ ! -s "$RESULTS/results.json" ]; then
    # No Python: the steps alone, so that the run still says what happened.
    {
        echo '{"schema": "attnforge-gpu-check/results-1", "note": "report.py did not run", "steps": ['
        awk -F'\t' '{ printf "%s{\"name\": \"%s\", \"status\": \"%s\", \"rc\": %s, \"seconds\": %s, \"limit\": %s}", (NR > 1 ? ",\n" : ""), $1, $2, $3, $4, $5 }' \
            "$RESULTS/steps.tsv"
        echo ']}'
    } >"$RESULTS/results.json"
    {
        echo "# attnforge GPU check: results (report.py did not run)"
        echo
        echo "| step | status | exit | seconds | limit |"
        echo "|---|---|---|---|---|"
        awk -F'\t' '{ printf "| %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5 }' "$RESULTS/steps.tsv"
        echo
        echo "The logs are in logs/; correctness.jsonl and speed.json hold the runner's results."
    } >"$RESULTS/results.md"
fi
if [ "$own_scratch" = 1 ] && [ "${ATTNFORGE_GPU_KEEP_SCRATCH:-0}" != 1 ]; then
    rm -rf "$SCRATCH"
else
    echo "scratch kept in $SCRATCH" >&2
fi
echo "results: $RESULTS/results.md ($(($(date +%s) - START))s)" >&2
exit 0
