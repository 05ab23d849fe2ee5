#!/usr/bin/env bash
# Issue 12, item 2 on one H200: a real CUDA out-of-memory in a forward pass is split and retried, and
# every text still gets the vector it gets alone (workers/bench/oom_recovery.py; no Ray needed).
# Random weights of the Qwen3-Embedding-8B shapes; 64 texts of 4096 tokens submitted at once under a
# budget that holds them all, with this process capped at 28 GiB of GPU memory (the 8B weights take
# ~15 GiB), so the first pass overflows.  OOM_MEMORY_GB=0 lifts the cap (then raise OOM_TEXTS and
# OOM_LENGTH until the whole device overflows).  The result JSON goes to $OUT (the device tool), else
# tests/perf/results.  OOM_SHAPE=tiny runs it on the CPU with the tiny model and an injected OOM, to
# check the script anywhere.  pydantic comes from .devsite (tests/perf/stage_device.sh, carried as
# ".devsite") or .whl/ when the machine lacks it.
set -euo pipefail
if ! python3 -c 'import pydantic' 2>/dev/null; then
    if [[ -f .devsite/site.tar.xz || -f .devsite/realtext.tar.xz ]]; then
        source tests/perf/device_env.sh
    elif compgen -G ".whl/*.whl" >/dev/null; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
        export PYTHONPATH=/tmp/site
    fi
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
results=${OUT:-tests/perf/results}
mkdir -p "$results"
shape=${OOM_SHAPE:-qwen3-8b}
if [[ $shape == tiny ]]; then
    args=(--device cpu --texts "${OOM_TEXTS:-32}" --length "${OOM_LENGTH:-96}" --inject-oom-above 700)
else
    nvidia-smi --query-gpu=name,driver_version,memory.used,memory.total --format=csv
    args=(--texts "${OOM_TEXTS:-64}" --length "${OOM_LENGTH:-4096}" --memory-gb "${OOM_MEMORY_GB:-28}")
fi
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'
python3 -m workers.bench.oom_recovery --shape "$shape" "${args[@]}" --out "$results/oom-recovery-$shape.json"
