#!/usr/bin/env bash
# Real-text figures of issue 13 (tests/perf/results/realtext-*.json): `bench --real-text` on one H200,
# random weights of the real Qwen3-Embedding shapes + the real Qwen3 tokenizer, ours compiled vs the
# sentence-transformers peer in the same process.  Stage first, here: `bash tests/perf/stage_device.sh
# realtext`, then carry `.devsite`.  Argument: smoke, 0.6b, 4b or 8b; each fits one device call (< 9 min).
# Results go to $OUT when set (the device tool), else to tests/perf/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/device_env.sh
results=${OUT:-tests/perf/results}
corpus=.cache/realtext-corpus.jsonl
bench=(python3 -m pipeline bench --real-text "$corpus")
# The warm-up covers torch.compile's compilation (about 100 s a model), which stays out of the timing.
compiled=(--compile --warmup-chunks 256)
case ${1:?smoke, 0.6b, 4b or 8b} in
smoke)
    nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
    python3 -c 'import torch, transformers, sentence_transformers as st; print(torch.__version__, transformers.__version__, st.__version__)'
    "${bench[@]}" --random qwen3-0.6b --limit-docs 4 --out "$results/realtext-smoke.json"
    ;;
0.6b) "${bench[@]}" --random qwen3-0.6b "${compiled[@]}" --out "$results/realtext-qwen3-0.6b-$GPU_TAG.json" ;;
4b) "${bench[@]}" --random qwen3-4b "${compiled[@]}" --out "$results/realtext-qwen3-4b-$GPU_TAG.json" ;;
8b) "${bench[@]}" --random qwen3-8b "${compiled[@]}" --out "$results/realtext-qwen3-8b-$GPU_TAG.json" ;;
*) echo "unknown step $1" >&2; exit 2 ;;
esac
