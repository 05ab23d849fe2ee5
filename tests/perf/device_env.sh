# Sourced on the GPU machine (bash): unpacks .devsite/site.tar.xz (see stage_device.sh) into /tmp/site
# once, and puts it, this repository and the console scripts the local stack starts on the paths.
# .devsite/realtext.tar.xz (`stage_device.sh realtext`) adds its packages to /tmp/site and the tokenizer
# and the corpus to .cache/.
if [[ -f .devsite/site.tar.xz && ! -d /tmp/site/ray ]]; then
    xz -dc .devsite/site.tar.xz | tar -C /tmp -xf - || return 1
fi
if [[ -f .devsite/realtext.tar.xz && ! -f .cache/realtext-corpus.jsonl ]]; then
    mkdir -p /tmp/realtext /tmp/site .cache
    xz -dc .devsite/realtext.tar.xz | tar -C /tmp/realtext -xf - || return 1
    cp -r /tmp/realtext/site/. /tmp/site/ && cp -r /tmp/realtext/cache/. .cache/ || return 1
fi
# The GPU's short name for result files, so that a figure names its card ("cpu": no nvidia-smi).
gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1) || gpu_name=""
case $gpu_name in
*H200*) GPU_TAG=h200 ;;
*H100*) GPU_TAG=h100 ;;
"") GPU_TAG=cpu ;;
*) GPU_TAG=gpu ;;
esac
export GPU_TAG
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/site-bin
printf '#!/bin/sh\nexec python3 -c "import sys; from ray.scripts.scripts import main; sys.argv[0] = \\"ray\\"; sys.exit(main())" "$@"\n' >/tmp/site-bin/ray
printf '#!/bin/sh\nexec python3 -c "import sys; from milvus_lite.cmdline import main; sys.argv[0] = \\"milvus-lite\\"; sys.exit(main())" "$@"\n' >/tmp/site-bin/milvus-lite
chmod +x /tmp/site-bin/ray /tmp/site-bin/milvus-lite
export PATH=/tmp/site-bin:$PATH
