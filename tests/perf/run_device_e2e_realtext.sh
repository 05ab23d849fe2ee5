#!/usr/bin/env bash
# Issue 13's end-to-end figure on real text, one GPU: Tansu -> worker -> one compiled embedder actor
# (random weights of a real Qwen3-Embedding shape + the real Qwen3 tokenizer) -> Milvus Lite replicas
# native/1024/256/64, against the same actor fed directly, in one run, with the breakdown of where the
# pipeline's time went.  Needs both .devsite/site.tar.xz (`bash tests/perf/stage_device.sh`) and
# .devsite/realtext.tar.xz (`bash tests/perf/stage_device.sh realtext`) carried as ".devsite".
# Argument: the shape, 4b or 0.6b (tiny-real: a CPU rehearsal); DOCS: documents sent (the
# 484-document corpus round and round); TAG: a suffix of the result's name (e.g. "ids" for a run with
# PIPELINE_CONSUMER__SEND_TOKEN_IDS=true, the consumer's token ids sent with the texts).  The in-flight
# budget is the default, adaptive one; PIPELINE_CONSUMER__MAX_INFLIGHT_TOKENS fixes it.
# Results go to $OUT when set (the device tool), else to tests/perf/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
results=${OUT:-tests/perf/results}
shape=${1:?4b, 0.6b or tiny-real}
case $shape in
4b) docs=${DOCS:-1500} shape_name=qwen3-4b ;;
0.6b) docs=${DOCS:-3000} shape_name=qwen3-0.6b ;;
tiny-real) docs=${DOCS:-60} shape_name=tiny-real ;;
*) echo "unknown shape $shape: 4b, 0.6b or tiny-real" >&2; exit 2 ;;
esac
if [[ $shape == tiny-real ]]; then
    # CPU rehearsal of the wiring (two tiny layers over the real vocabulary and tokenizer), eager:
    # its rates measure nothing; replicas 64 (native)/32/16/8.  PYTHON names the venv whose `ray`
    # and `milvus-lite` the stack starts.
    python=${PYTHON:-python3}
    PATH=$(dirname "$python"):$PATH
    export PATH PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    export PIPELINE_MODEL__COMPILE=false GPU_TAG=cpu-rehearsal PIPELINE_REPLICAS__DIMS="[32, 16, 8]"
else
    python=python3
    source tests/perf/device_env.sh
    nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
fi
mkdir -p "$results"
# One folder per shape: a later call for another shape on the same machine must not reuse it.  It is
# built beside and renamed into place, so a build cut off half-way is never taken for a folder.
folder=/tmp/qwen3-realtext-$shape
if [[ ! -d $folder ]]; then
    rm -rf "$folder.building"
    "$python" -m workers.bench.qwen3_folder "$shape_name" "$folder.building"
    mv "$folder.building" "$folder"
fi
export PIPELINE_MODEL__NAME_OR_PATH=$folder
config=tests/perf/pipeline-qwen3-realtext.toml
# Cleanup only: a failed `down` is reported, and never changes the script's own exit status.
stop_stack() { "$python" -m pipeline --config "$config" down >/dev/null 2>&1 || echo "warning: stack down failed" >&2; }
trap stop_stack EXIT
"$python" -m pipeline --config $config bench --end-to-end --real-text .cache/realtext-corpus.jsonl \
    --docs "$docs" --min-seconds "${MIN_SECONDS:-30}" --out "$results/pipeline-realtext-qwen3-$shape${TAG:+-$TAG}-$GPU_TAG.json"
