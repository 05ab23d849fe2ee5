# Sourced on the GPU machine (bash): unpacks .devsite/site.tar.xz (see stage_device.sh) into /tmp/site
# once, and puts it, this repository and the console scripts the local stack starts on the paths.
if [[ ! -d /tmp/site ]]; then
    xz -dc .devsite/site.tar.xz | tar -C /tmp -xf - || return 1
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/site-bin
printf '#!/bin/sh\nexec python3 -c "import sys; from ray.scripts.scripts import main; sys.argv[0] = \\"ray\\"; sys.exit(main())" "$@"\n' >/tmp/site-bin/ray
printf '#!/bin/sh\nexec python3 -c "import sys; from milvus_lite.cmdline import main; sys.argv[0] = \\"milvus-lite\\"; sys.exit(main())" "$@"\n' >/tmp/site-bin/milvus-lite
chmod +x /tmp/site-bin/ray /tmp/site-bin/milvus-lite
export PATH=/tmp/site-bin:$PATH
