#!/usr/bin/env bash
# Issue 13's end-to-end figure on real text, one GPU: Tansu -> worker -> one compiled embedder actor
# (random weights of a real Qwen3-Embedding shape + the real Qwen3 tokenizer) -> Milvus Lite replicas
# native/1024/256/64, against the same actor fed directly, in one run, with the breakdown of where the
# pipeline's time went.  Needs both .devsite/site.tar.xz (`bash tests/perf/stage_device.sh`) and
# .devsite/realtext.tar.xz (`bash tests/perf/stage_device.sh realtext`) carried as ".devsite".
# Argument: the shape, 4b or 0.6b; DOCS: documents sent (the 484-document corpus round and round).
# Results go to $OUT when set (the device tool), else to tests/perf/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
source tests/perf/device_env.sh
results=${OUT:-tests/perf/results}
shape=${1:?4b or 0.6b}
case $shape in
4b) docs=${DOCS:-1500} ;;
0.6b) docs=${DOCS:-3000} ;;
*) echo "unknown shape $shape" >&2; exit 2 ;;
esac
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
[[ -d /tmp/qwen3-realtext ]] || python3 -m workers.bench.qwen3_folder "qwen3-$shape" /tmp/qwen3-realtext
config=tests/perf/pipeline-qwen3-realtext.toml
# Cleanup only: a failed `down` is reported, and never changes the script's own exit status.
stop_stack() { python3 -m pipeline --config "$config" down >/dev/null 2>&1 || echo "warning: stack down failed" >&2; }
trap stop_stack EXIT
python3 -m pipeline --config $config bench --end-to-end --real-text .cache/realtext-corpus.jsonl \
    --docs "$docs" --min-seconds "${MIN_SECONDS:-30}" --out "$results/pipeline-realtext-qwen3-$shape-$GPU_TAG.json"
