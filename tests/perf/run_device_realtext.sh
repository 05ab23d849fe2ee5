#!/usr/bin/env bash
# Real-text figures of issue 13 (tests/perf/results/realtext-*.json): `bench --real-text` on one H200,
# random weights of the real Qwen3-Embedding shapes + the real Qwen3 tokenizer, ours compiled vs the
# sentence-transformers peer in the same process.  Stage first, here: `bash tests/perf/stage_device.sh
# realtext`, then carry `.devsite`.  Argument: smoke, 0.6b, 4b, 8b, fp8-smoke or 4b-fp8; each fits one
# device call (< 9 min).  4b-fp8 (`--dtype fp8`, workers/bench/fp8_bench.py): ours compiled in bf16 and in
# FP8 on the same 4B weights (FP8_BF16_BLOCKS leading blocks kept in bf16, default 0), tokens/s, every
# chunk's cosine, top-10 agreement of 200 corpus queries, and an eager sweep of the cosines over 0, 1, 2, 4,
# 8, 12 bf16 blocks and of bf16 against float32 (512 chunks); about 6 minutes (two compilations of
# ~100 s).  fp8-smoke: the same on 0.6B, 4 documents a language, eager, in about a minute.  On a CPU
# both stop at the refusal (exit 2).  in-flight-0.6b, in-flight-4b: ours (two batches in flight, the
# default), ours with one batch in flight and the peer, taking turns over ROUNDS rounds (default 3), at
# the token budget BUDGET (default 16384); LONG_DOC=0 skips the 32,000-token document.  fused-0.6b,
# fused-4b: ours (q/k/v and gate/up projections fused, the default), ours_unfused (model.fuse_projections
# off) and the peer (STRATEGIES overrides the three), taking turns the same way.
# Results go to $OUT when set (the device tool), else to tests/perf/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/device_env.sh
results=${OUT:-tests/perf/results}
corpus=.cache/realtext-corpus.jsonl
bench=(python3 -m pipeline bench --real-text "$corpus")
# The warm-up covers torch.compile's compilation (about 100 s a model), which stays out of the timing.
compiled=(--compile --warmup-chunks 256)
fp8=(--dtype fp8 --long-doc-tokens 0 --fp8-bf16-blocks "${FP8_BF16_BLOCKS:-0}")
case ${1:?smoke, 0.6b, 4b, 8b, fp8-smoke, 4b-fp8, in-flight-0.6b, in-flight-4b, fused-0.6b or fused-4b} in
smoke)
    nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
    python3 -c 'import torch, transformers, sentence_transformers as st; print(torch.__version__, transformers.__version__, st.__version__)'
    "${bench[@]}" --random qwen3-0.6b --limit-docs 4 --out "$results/realtext-smoke.json"
    ;;
0.6b) "${bench[@]}" --random qwen3-0.6b "${compiled[@]}" --out "$results/realtext-qwen3-0.6b-$GPU_TAG.json" ;;
4b) "${bench[@]}" --random qwen3-4b "${compiled[@]}" --out "$results/realtext-qwen3-4b-$GPU_TAG.json" ;;
8b) "${bench[@]}" --random qwen3-8b "${compiled[@]}" --out "$results/realtext-qwen3-8b-$GPU_TAG.json" ;;
fp8-smoke) "${bench[@]}" --random qwen3-0.6b "${fp8[@]}" --limit-docs 4 --fp8-sweep 0,2 --out "$results/realtext-smoke-fp8.json" ;;
4b-fp8)
    "${bench[@]}" --random qwen3-4b "${fp8[@]}" "${compiled[@]}" --accuracy-sample 512 --fp8-sweep 0,1,2,4,8,12 \
        --out "$results/realtext-qwen3-4b-fp8-$GPU_TAG.json"
    ;;
in-flight-0.6b | in-flight-4b)
    shape=${1#in-flight-} budget=${BUDGET:-16384}
    "${bench[@]}" --random "qwen3-$shape" "${compiled[@]}" --max-batch-tokens "$budget" \
        --strategies ours,ours_one_batch_in_flight,sentence_transformers --rounds "${ROUNDS:-3}" \
        --long-doc-tokens "${LONG_DOC:-32000}" --out "$results/realtext-qwen3-$shape-in-flight-$budget-$GPU_TAG.json"
    ;;
fused-0.6b | fused-4b)
    shape=${1#fused-} budget=${BUDGET:-16384}
    "${bench[@]}" --random "qwen3-$shape" "${compiled[@]}" --max-batch-tokens "$budget" \
        --strategies "${STRATEGIES:-ours,ours_unfused,sentence_transformers}" --rounds "${ROUNDS:-3}" \
        --long-doc-tokens "${LONG_DOC:-32000}" --out "$results/realtext-qwen3-$shape-fused-$budget-$GPU_TAG.json"
    ;;
*) echo "unknown step $1" >&2; exit 2 ;;
esac
