#!/usr/bin/env bash
# One short GPU check (< 8 min on one GPU, no network): prints the device, runs the CUDA unit tests
# (tests/unit/test_cuda.py and any test named cuda/nccl/gpu), then the training-step benchmark and
# the learner benchmark (in-memory: no Kafka) on CUDA, printing their figures.
# Exit codes: 0 all passed, 1 a step failed (the others still run), 3 no CUDA device.
#   bash scripts/gpu_check.sh             # on a GPU machine
#   bash scripts/gpu_check.sh --dry-run   # checks the device, prints the steps, runs none (3: no GPU)
#   PYTHON=/usr/bin/python3 bash scripts/gpu_check.sh   # another interpreter (default: .venv's)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

DRY_RUN=0
[[ "${1:-}" == "--dry-run" ]] && DRY_RUN=1
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PAPEREC_DEV_MODE=1 PYTHONUNBUFFERED=1
# Kafka and ClickHouse are not needed (and not reachable there): the benchmarks run in memory.
export PAPEREC_SKIP_INTEGRATION=1

echo "== gpu_check: $(date -u +%FT%TZ) on $(hostname), python: $PYTHON"
if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
else
    echo "nvidia-smi: not found"
fi
gpu=1
"$PYTHON" - <<'EOF' || gpu=0
import sys

import torch

print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}, available: {torch.cuda.is_available()}")
if not torch.cuda.is_available():
    sys.exit(1)
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i} {p.name}, {p.total_memory / 2**30:.1f} GiB, capability {p.major}.{p.minor}")
print(f"NCCL available: {torch.distributed.is_nccl_available()}")
EOF
if [[ $gpu -eq 0 ]]; then
    echo "gpu_check: no CUDA device visible to torch: nothing to check here (exit 3)" >&2
    [[ $DRY_RUN -eq 1 ]] || exit 3
fi

failed=()
# step NAME SECONDS COMMAND...: run one step under a time limit, report it, go on either way.
step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit}s): $*"
    if [[ $DRY_RUN -eq 1 ]]; then
        return 0
    fi
    local start=$SECONDS
    timeout --signal=TERM --kill-after=10 "$limit" "$@"
    local rc=$?
    echo "== $name: exit $rc after $((SECONDS - start)) s"
    [[ $rc -eq 0 ]] || failed+=("$name (exit $rc)")
}

step "CUDA unit tests" 150 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/unit -k "cuda or nccl or gpu" -rs
step "train-step benchmark (cuda)" 150 \
    "$PYTHON" -m benchmarks.train_step --device cuda --batch-size 256 --list-len 20 --steps 30
step "learner benchmark (cuda, in memory)" 150 \
    "$PYTHON" -m benchmarks.learner --device cuda --pairs 3 --block-s 3 --snapshots 3

echo
if [[ $DRY_RUN -eq 1 ]]; then
    echo "gpu_check: dry run, nothing run"
    [[ $gpu -eq 1 ]] || exit 3
elif [[ ${#failed[@]} -gt 0 ]]; then
    printf 'gpu_check: FAILED: %s\n' "${failed[@]}" >&2
    exit 1
else
    echo "gpu_check: all steps passed in $SECONDS s"
fi
