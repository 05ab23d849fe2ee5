#!/usr/bin/env bash
# GPU figures of issue 3, as committed under tests/perf/results/: run from the repository root on one
# H200 (python3 with torch, transformers, sentence-transformers).  Wheels in .whl/ (pydantic and
# pydantic-settings with their needs) are installed first when present; results go to $OUT when
# that is set (the device tool), else to tests/perf/results.
set -euo pipefail
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
results=${OUT:-tests/perf/results}
step=${1:-all}  # all, tests, 0.6b, 4b, 8b or compiled (0.6b/4b/8b again with --compile: 4b-compiled, ...)

if [[ $step == all || $step == tests ]]; then
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,memory.used --format=csv
    python3 -c 'import torch, transformers, sentence_transformers as st; print(torch.__version__, transformers.__version__, st.__version__)'
    # The GPU invariants (packed == padded, batched == single) on the flash varlen kernel; the MiniLM
    # case needs the packaged model, which only the CI machine has.
    PYTHONPATH=tests:${PYTHONPATH:-} python3 -m pytest -q -p no:cacheprovider --noconftest \
        tests/workers/model/test_packing.py -k "not fall_back" 2>&1 | tee "$results/gpu-tests.log"
fi
if [[ $step == all || $step == 0.6b ]]; then
    python3 -m pipeline bench --random qwen3-0.6b --workloads mixed --out "$results/qwen3-0.6b-h200.json"
fi
if [[ $step == all || $step == 4b ]]; then
    python3 -m pipeline bench --random qwen3-4b --out "$results/qwen3-4b-h200.json"
fi
if [[ $step == all || $step == 8b ]]; then
    # Plain arrival-order forwards are left out for 8B (the issue has no bar for them; ~1 min more).
    python3 -m pipeline bench --random qwen3-8b --workloads mixed --strategies ours,sentence_transformers \
        --out "$results/qwen3-8b-h200.json"
fi
# Our path under torch.compile, against the peer (the eager runs above already hold the plain forwards).
# The warm-up covers the compilation (about 100 s a model), which stays out of the timing.
compiled=(--compile --warmup-docs 256 --strategies ours,sentence_transformers)
if [[ $step == compiled || $step == 4b-compiled ]]; then
    python3 -m pipeline bench --random qwen3-4b "${compiled[@]}" --out "$results/qwen3-4b-h200-compiled.json"
fi
if [[ $step == compiled || $step == 8b-compiled ]]; then
    python3 -m pipeline bench --random qwen3-8b --workloads mixed "${compiled[@]}" \
        --out "$results/qwen3-8b-h200-compiled.json"
fi
if [[ $step == compiled || $step == 0.6b-compiled ]]; then
    python3 -m pipeline bench --random qwen3-0.6b --workloads mixed "${compiled[@]}" \
        --out "$results/qwen3-0.6b-h200-compiled.json"
fi
