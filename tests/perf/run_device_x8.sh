#!/usr/bin/env bash
# Issue 15's figures on one host of eight H200s: the pool's scaling (bar: >= 7.5x at eight) and the whole
# pipeline against the pool fed directly with eight embedder actors (bar: >= 85%).  NOT YET RUN on GPUs.
#
#   step scaling: `bench --scaling 1,2,4,8`, random Qwen3-Embedding-4B, compiled, one GPU an actor
#   step e2e:     `bench --end-to-end --actors 8 --consumer-actors 8`: Kafka (Tansu) -> 8 consumer actors
#                 -> 8 embedder actors -> Milvus Lite 2560/1024/256, vs the same pool fed directly
#
# Each step is one device call of under 9 minutes.  Stage first, here: `bash tests/perf/stage_device.sh`
# (and `bash tests/perf/stage_device.sh realtext` for REAL_TEXT=1), then, with the `run` tool:
#   kind nvidia-h200-x8, carry [".devsite"], timeout_s 590,
#   command: bash tests/perf/run_device_x8.sh scaling        (then: ... e2e)
# On four GPUs (kind nvidia-h200-x4): `GPUS=4 bash tests/perf/run_device_x8.sh scaling` (counts 1,2,4).
#
# Knobs (environment): GPUS (8: counts 1,2,4,8 and 8 actors), COUNTS (the scaling counts, default
# 1,2,..,GPUS), CONSUMERS (consumer actors, default GPUS), PARTITIONS (default 2 x CONSUMERS), DOCS,
# MIN_SECONDS, COMPILE=false, REAL_TEXT=1 or REAL_TEXT=FILE (scaling on a JSONL corpus, default
# .cache/realtext-corpus.jsonl, with random weights behind the real Qwen3 tokenizer; e2e ignores it).
#
# CPU rehearsal (no GPU; proves the commands run end to end, NOT a performance figure):
#   SHAPE=tiny GPUS=4 CONSUMERS=2 PYTHON=.venv/bin/python bash tests/perf/run_device_x8.sh scaling
#   SHAPE=tiny GPUS=4 CONSUMERS=2 PYTHON=.venv/bin/python bash tests/perf/run_device_x8.sh e2e
# runs the tiny random Qwen3 shape with GPUS CPU "GPUs" (embedder actors of a quarter CPU each,
# tests/perf/pipeline-cpu-rehearsal.toml) and its own local stack (own ports and folder).
#
# Results (JSON with its exact command, and the log) go to $OUT when set (the device tool), else to
# tests/perf/results.
set -euo pipefail
cd "$(dirname "$0")/../.."
step=${1:?scaling or e2e}
gpus=${GPUS:-8}
shape=${SHAPE:-4b}
results=${OUT:-tests/perf/results}
mkdir -p "$results"
if [[ $shape == tiny ]]; then
    python=${PYTHON:-python3}
    PATH=$(dirname "$python"):$PATH  # the local stack starts `ray` and `milvus-lite` from the venv
    export PATH PYTHONPATH=$PWD PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
    config=tests/perf/pipeline-cpu-rehearsal.toml
    model=/tmp/embedstream-tiny-random
    label=tiny-${gpus}xcpu-rehearsal
    docs=${DOCS:-300}
    max_words=(--max-words 400)
    min_seconds=${MIN_SECONDS:-0}
    warmup=(--warmup-docs 16)
else
    python=python3
    source tests/perf/device_env.sh
    nvidia-smi --query-gpu=index,name,driver_version,memory.used --format=csv
    config=tests/perf/pipeline-qwen3-4b-x8.toml
    model=/tmp/qwen3-4b-random
    label=qwen3-4b-${gpus}xh200
    docs=${DOCS:-}
    max_words=()
    min_seconds=${MIN_SECONDS:-30}
    warmup=()
fi
if [[ ${COMPILE:-} == false ]]; then
    export PIPELINE_MODEL__COMPILE=false
    label=$label-eager
fi
corpus=
if [[ -n ${REAL_TEXT:-} ]]; then
    # The real-text corpus needs the real Qwen3 tokenizer: random weights of the same shape behind it
    # (workers.bench.qwen3_folder; the tokenizer from .cache/qwen3-tokenizer, `make tokenizer`).
    corpus=$([[ $REAL_TEXT == 1 ]] && echo .cache/realtext-corpus.jsonl || echo "$REAL_TEXT")
    real_shape=$([[ $shape == tiny ]] && echo tiny-real || echo "qwen3-$shape")
    model=/tmp/embedstream-$real_shape-realtok
    [[ -d $model ]] || "$python" -m workers.bench.qwen3_folder "$real_shape" "$model"
    export PIPELINE_MODEL__NAME_OR_PATH=$model
    label=$label-realtext
elif [[ ! -d $model ]]; then
    if [[ $shape == tiny ]]; then
        "$python" -m pipeline bench --random tiny --save-model "$model" --device cpu
    else
        "$python" -m pipeline bench --random "qwen3-$shape" --save-model "$model"
    fi
fi
bench=("$python" -m pipeline --config "$config" bench)
counts=1  # default 1,2,4,..,GPUS: the powers of two below GPUS, and GPUS
for ((n = 2; n < gpus; n *= 2)); do counts+=",$n"; done
((gpus > 1)) && counts+=",$gpus"
counts=${COUNTS:-$counts}
case $step in
scaling)
    workload=()
    [[ -z $corpus ]] || workload=(--real-text "$corpus")
    # 12,000 mixed documents are about 4.9M tokens: ~70 s on one compiled 4B actor, ~9 s on eight.
    "${bench[@]}" --scaling "$counts" --docs "${docs:-12000}" "${max_words[@]}" "${warmup[@]}" "${workload[@]}" \
        --out "$results/scaling-$label.json" 2>&1 | tee "$results/scaling-$label.log"
    ;;
e2e)
    consumers=${CONSUMERS:-$gpus}
    # Cleanup only: a failed `down` is reported, and never changes the script's own exit status.
    stop_stack() { "$python" -m pipeline --config "$config" down >/dev/null 2>&1 || echo "warning: stack down failed" >&2; }
    # Which stage saturates: every 5 s the busiest processes (consumer and embedder actors are
    # ray::ConsumerActor / ray::EmbedderActor, then milvus and the broker) and, on GPUs, each GPU's use.
    samplers=()
    if command -v top >/dev/null; then
        top -b -c -w 200 -d 5 > >(awk '/^top -/ { n = 0 } ++n <= 20' >"$results/pipeline-$label-top.log") &
        samplers+=($!)
    fi
    if [[ $shape != tiny ]]; then
        nvidia-smi dmon -s u -d 5 >"$results/pipeline-$label-gpu.log" &
        samplers+=($!)
    fi
    stop_all() {
        local pid
        for pid in ${samplers[@]+"${samplers[@]}"}; do  # a sampler that already exited needs no stopping
            if kill -0 "$pid" 2>/dev/null; then kill "$pid"; fi
        done
        stop_stack
    }
    trap stop_all EXIT
    # 40,000 mixed documents are about 16M tokens: ~30 s for eight compiled 4B actors fed directly.
    "${bench[@]}" --end-to-end --actors "$gpus" --consumer-actors "$consumers" \
        --partitions "${PARTITIONS:-$((2 * consumers))}" --docs "${docs:-40000}" "${max_words[@]}" \
        "${warmup[@]}" --min-seconds "$min_seconds" --out "$results/pipeline-$label.json" 2>&1 |
        tee "$results/pipeline-$label.log"
    ;;
*)
    echo "unknown step $step (scaling or e2e)" >&2
    exit 2
    ;;
esac
if [[ $shape == tiny ]]; then  # say so in the JSON itself: these are not figures of anything
    out=$results/$([[ $step == e2e ]] && echo pipeline || echo scaling)-$label.json
    "$python" -c 'import json, sys; p = sys.argv[1]; r = json.load(open(p))
r = {"label": "CPU rehearsal of tests/perf/run_device_x8.sh: proves the commands run end to end; NOT a performance figure", **r}
open(p, "w").write(json.dumps(r, indent=2) + "\n")' "$out"
fi
