#!/usr/bin/env bash
# Issue 5's 1-vs-2-GPU figure and issue 3's 8B accuracy diagnostic, on a machine with 2 GPUs
# (device kind nvidia-h200-x2).  Needs .devsite/site.tar.xz (tests/perf/stage_device.sh) carried.
# Results go to $OUT when set (the device tool), else to tests/perf/results.
#   step scaling: embedder pool of 1 then 2 actors (one GPU each), random Qwen3-Embedding-4B, eager
#   step accuracy: 8B mixed, ours vs bf16 single-document forwards, with float32 references, with and
#                  without cuBLAS reduced-precision reductions
set -euo pipefail
source tests/perf/device_env.sh
results=${OUT:-tests/perf/results}
step=${1:-all}
nvidia-smi --query-gpu=index,name,driver_version,memory.used --format=csv
if [[ $step == all || $step == scaling ]]; then
    [[ -d /tmp/qwen3-4b-random ]] || python3 -m pipeline bench --random qwen3-4b --save-model /tmp/qwen3-4b-random
    python3 -m pipeline --config tests/perf/pipeline-qwen3-4b-scaling.toml bench --scaling 1,2 \
        --docs "${DOCS:-6000}" --out "$results/scaling-qwen3-4b-2xh200.json" 2>&1 |
        tee "$results/scaling-qwen3-4b-2xh200.log"
fi
if [[ $step == all || $step == accuracy ]]; then
    accuracy=(--random qwen3-8b --workloads mixed --strategies ours,sentence_transformers --fp32-reference)
    # Each run writes its JSON (the figure) before it exits 1 for a missed accuracy bar: run both,
    # then fail the script if either missed it.
    failed=0
    python3 -m pipeline bench "${accuracy[@]}" --out "$results/qwen3-8b-h200-accuracy.json" || failed=1
    python3 -m pipeline bench "${accuracy[@]}" --full-precision-reductions \
        --out "$results/qwen3-8b-h200-accuracy-full-reductions.json" || failed=1
    if ((failed)); then
        echo "accuracy bar missed (figures written to $results)" >&2
        exit 1
    fi
fi
