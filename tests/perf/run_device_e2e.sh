#!/usr/bin/env bash
# The end-to-end figure of issue 3 on one GPU machine: Kafka (Tansu) -> worker -> one embedder actor on
# the GPU (random Qwen3-Embedding-4B weights, compiled) -> Milvus Lite replicas 2560/1024/256, against
# the same actor fed directly, in one run.  Needs .devsite/site.tar.xz (tests/perf/stage_device.sh)
# carried along.  Results go to $OUT when set (the device tool), else to tests/perf/results.
set -euo pipefail
source tests/perf/device_env.sh
results=${OUT:-tests/perf/results}
nvidia-smi --query-gpu=name,driver_version,memory.used --format=csv
python3 -c 'import ray, aiokafka, pymilvus, milvus_lite, torch, transformers; print("ray", ray.__version__, "torch", torch.__version__, "transformers", transformers.__version__)'
[[ -d /tmp/qwen3-4b-random ]] || python3 -m pipeline bench --random qwen3-4b --save-model /tmp/qwen3-4b-random
config=tests/perf/pipeline-qwen3-4b.toml
# Cleanup only: a failed `down` is reported, and never changes the script's own exit status.
stop_stack() { python3 -m pipeline --config "$config" down >/dev/null 2>&1 || echo "warning: stack down failed" >&2; }
trap stop_stack EXIT
if [[ -n ${SMOKE_DOCS:-} ]]; then  # a quick uncompiled pass first, so a broken set-up fails fast
    PIPELINE_MODEL__COMPILE=false python3 -m pipeline --config $config bench --end-to-end \
        --docs "$SMOKE_DOCS" --warmup-docs 16 --min-seconds 0 --out "$results/smoke.json"
fi
python3 -m pipeline --config $config bench --end-to-end --docs "${DOCS:-12000}" \
    --out "$results/pipeline-qwen3-4b-h200.json" 2>&1 | tee "$results/pipeline-qwen3-4b-h200.log"
