#!/usr/bin/env bash
# The GPU check, on a machine with a CUDA device, in under ~8 minutes: the CUDA tests, the
# kernel benchmark and the population rollout benchmark on the device. Everything it prints
# goes to the folder given as $1 (or $OUT): device.txt, tests.txt, kernels.txt, rollout.txt,
# summary.txt, and the kernel path choices measured on the device (cache/paths/*.json).
#
#   scripts/gpu_check.sh OUT_DIR
#
# Python: .venv when its torch is a CUDA build; else a venv that reuses the CUDA torch the
# system Python has (no download; .venv-cuda when .venv holds a CPU torch); else .venv with
# torch 2.13.0's CUDA build installed (several GB; TORCH_INDEX_URL picks the wheel index,
# PyPI's Linux wheel is a CUDA build). The other dependencies come from a package index or,
# in the reusing venv, from the system Python. Each step has its own limit within BUDGET_S.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-${OUT:-}}"
if [ -z "$out" ]; then
    echo "usage: $0 OUT_DIR (or set OUT)" >&2
    exit 2
fi
mkdir -p "$out"
out="$(cd "$out" && pwd)"
PYTHON="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-450}"
start=$(date +%s)

if ! command -v nvidia-smi > /dev/null 2>&1 && [ ! -e /dev/nvidia0 ]; then
    echo "no CUDA device on this machine (no nvidia-smi, no /dev/nvidia0): nothing to check," \
        "nothing installed" | tee "$out/summary.txt"
    exit 1
fi

cuda_torch() {  # whether this Python's torch is a CUDA build that sees a device
    "$1" -c 'import sys, torch; sys.exit(0 if torch.version.cuda and torch.cuda.is_available() else 1)' \
        2>/dev/null
}

venv=.venv
if [ -x .venv/bin/python ] && cuda_torch .venv/bin/python; then
    echo "python: .venv (its torch is a CUDA build)"
elif cuda_torch "$PYTHON"; then
    [ -x .venv/bin/python ] && venv=.venv-cuda
    echo "python: $venv, reusing the CUDA torch of $PYTHON"
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv --system-site-packages "$venv" || exit 1
else
    echo "python: .venv with torch 2.13.0's CUDA build (no CUDA torch found to reuse)"
    [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv || exit 1
    .venv/bin/python -m pip uninstall -q -y torch 2>/dev/null
    .venv/bin/python -m pip install -q "torch==2.13.0" \
        ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} || exit 1
fi
PY="$venv/bin/python"
stamp="$venv/.rwkv-swarm-gpu-installed"
if [ ! -e "$stamp" ]; then  # torch>=2.2 is met by the CUDA torch: pip leaves it alone
    "$PY" -m pip install -q -e ".[test]" && touch "$stamp" \
        || echo "warning: pip install -e .[test] failed; running from src/ with what is there"
fi
if ! cuda_torch "$PY"; then
    echo "no CUDA: $("$PY" -c 'import torch; print(torch.__version__, torch.version.cuda)')" \
        | tee "$out/summary.txt"
    exit 1
fi

export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export RWKV_SWARM_CACHE="$out/cache"  # the paths measured here come back with the figures
{
    nvidia-smi 2>&1 || true
    "$PY" -c 'import torch; print("torch", torch.__version__, "CUDA", torch.version.cuda,
"device", torch.cuda.get_device_name())'
    uptime
} > "$out/device.txt"

failed=()
step() {  # step NAME LIMIT_S COMMAND...: within LIMIT_S and what is left of BUDGET_S
    local name=$1 limit=$2
    shift 2
    local left=$((BUDGET_S - ($(date +%s) - start)))
    [ "$left" -lt "$limit" ] && limit=$left
    if [ "$limit" -le 10 ]; then
        echo "$name: skipped, the time budget is spent" | tee "$out/$name.txt"
        failed+=("$name(skipped)")
        return
    fi
    echo "== $name (limit ${limit}s)"
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    tail -n 3 "$out/$name.txt"
    [ "$rc" -eq 0 ] || failed+=("$name(rc=$rc)")
}

step tests 150 "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_kernels_cuda.py \
    tests/test_device.py
step kernels 170 "$PY" benchmarks/kernels.py --device cuda --rounds 3
step rollout 120 "$PY" benchmarks/rollout.py --device cuda --rounds 2 --warm 5

{
    echo "device: $(grep '^torch' "$out/device.txt")"
    echo "seconds: $(($(date +%s) - start)) of a budget of $BUDGET_S"
    echo "failed: ${failed[*]:-none}"
    for f in kernels rollout; do
        echo "$f: $(grep '^{' "$out/$f.txt" | tail -n 1)"
    done
} | tee "$out/summary.txt"
[ ${#failed[@]} -eq 0 ]
