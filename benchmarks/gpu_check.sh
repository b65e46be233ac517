#!/usr/bin/env bash
# The performance check of issue 17, on the first GPU it meets (< 8 minutes on one H100), or with --smoke on the CPU
# with tiny models (the same code paths; a test runs it).
#
#   benchmarks/gpu_check.sh            # GPU: writes benchmarks/results/perf_check_<card>.json
#   benchmarks/gpu_check.sh --smoke    # CPU, tiny models: writes benchmarks/results/perf_check_smoke_cpu.json
#
# Needs torch, transformers, accelerate, timm and open_clip_torch. On a machine without a registry (the lent GPU
# machines), carry open_clip's wheels in .whl/ (benchmarks/fetch_wheels.sh fetches them here): they are installed
# into /tmp/site, and the project itself with --no-deps (falling back to the checkout on PYTHONPATH).
# Extra arguments go to benchmarks/perf_check.py (e.g. --only clip, --budget-s 300, --output path).
set -uo pipefail
cd "$(dirname "$0")/.."
SMOKE=()
if [[ "${1:-}" == "--smoke" ]]; then SMOKE=(--smoke); shift; fi
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing the carried wheels failed" >&2; exit 2; }
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the project itself, without its dependencies (the GPU image has torch / transformers / accelerate / timm); the
# smoke run (and a failed install) uses the checkout
if [[ ${#SMOKE[@]} -eq 0 ]] && $PY -m pip install -q --no-deps --no-build-isolation --no-index --upgrade \
    --target /tmp/site . >/tmp/gpu_check_install.log 2>&1; then
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
(cd / && $PY -c "import vlmrobust") || { echo "gpu_check: vlmrobust does not import" >&2; exit 2; }
$PY -c "import open_clip" || { echo "gpu_check: open_clip is missing: carry its wheels in .whl/ (benchmarks/fetch_wheels.sh)" >&2; exit 2; }
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
command -v nvidia-smi >/dev/null && [[ ${#SMOKE[@]} -eq 0 ]] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
# 470 s hard limit: the script stops starting rows at --budget-s (default 420 s) and always writes its JSON
exec timeout 470 $PY benchmarks/perf_check.py "${SMOKE[@]}" "$@"
