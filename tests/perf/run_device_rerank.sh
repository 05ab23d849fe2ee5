#!/usr/bin/env bash
# Reranker figures of issue 14 (tests/perf/results/rerank-*.json): `bench --rerank` on one H200, random
# weights of the Qwen3-Reranker-0.6B / -4B shapes + Qwen3's real tokenizer, ours (token-budget batches,
# packed, yes/no rows of the LM head only) vs the model card's plain padded forward, same pairs, same run.
# Stage first, here: `bash tests/perf/stage_device.sh realtext` (pydantic, Qwen3's tokenizer), then carry
# `.devsite`.  Argument: smoke, 0.6b, 4b or 4b-fp32ref; each fits one device call (< 9 min).  `smoke` runs the tiny
# shape and also runs on a CPU-only machine (the rehearsal).  Results go to $OUT when set (the device
# tool), else to tests/perf/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/device_env.sh
results=${OUT:-tests/perf/results}
[[ -f .cache/qwen3-tokenizer/tokenizer.json ]] || {
    echo "Qwen3's tokenizer is missing: run \`bash tests/perf/stage_device.sh realtext\` and carry .devsite" >&2
    exit 2
}
bench=(python3 -m pipeline bench --rerank)
case ${1:?smoke, 0.6b, 4b or 4b-fp32ref} in
smoke)
    if command -v nvidia-smi >/dev/null; then nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv; fi
    python3 -c 'import torch, transformers; print(torch.__version__, transformers.__version__)'
    "${bench[@]}" --random tiny-reranker --queries 4 --docs-per-query 16 --out "$results/rerank-smoke.json"
    ;;
0.6b) "${bench[@]}" --random qwen3-reranker-0.6b --queries 64 --docs-per-query 64 --out "$results/rerank-qwen3-reranker-0.6b-$GPU_TAG.json" ;;
4b) "${bench[@]}" --random qwen3-reranker-4b --queries 64 --docs-per-query 64 --out "$results/rerank-qwen3-reranker-4b-$GPU_TAG.json" ;;
# Ours and plain, each against a float32 copy of the same 4B weights (512 sampled pairs, padded): is their
# disagreement bf16 rounding (both about as far from float32) or a defect of one (that one far)?
4b-fp32ref)
    "${bench[@]}" --random qwen3-reranker-4b --queries 32 --docs-per-query 64 --fp32-reference 512 \
        --out "$results/rerank-qwen3-reranker-4b-fp32ref-$GPU_TAG.json"
    ;;
*) echo "unknown step $1" >&2; exit 2 ;;
esac
