#!/usr/bin/env bash
# Packs what the GPU machine lacks for `python -m pipeline bench --end-to-end` into .devsite/site.tar.xz
# (git-ignored through .git/info/exclude; the device tool carries it: `carry: [".devsite"]`).
#
# That machine runs Python 3.12 on x86-64 and reaches no package index, and one call carries at most
# 64 MiB.  Ray's wheel alone is 79 MB, so the packages are installed here for cp312 into one folder,
# trimmed (Ray's Java jars and libraries this project never imports; debug symbols of Ray's binaries)
# and compressed: about 55 MB.  On the device, `source tests/perf/device_env.sh` unpacks and uses it.
set -euo pipefail
cd "$(dirname "$0")/../.."
python=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
target=(--only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}")
"$python" -m pip download -q --no-deps "${target[@]}" -d "$work/wheels" -r tests/perf/device-requirements.txt
"$python" -m pip install -q --no-deps --no-compile "${target[@]}" --target "$work/site" "$work"/wheels/*.whl
rm -rf "$work/site/bin" "$work"/site/ray/{jars,rllib,data,serve,llm,tune,train,cpp}
find "$work/site" -name tests -type d -prune -exec rm -rf {} +
strip --strip-unneeded "$work/site/ray/_raylet.so" "$work/site/ray/core/src/ray/gcs/gcs_server" \
    "$work/site/ray/core/src/ray/raylet/raylet"
mkdir -p .devsite
tar -C "$work" -cf - site | xz -6 -T0 >.devsite/site.tar.xz
grep -qx '/.devsite/' .git/info/exclude 2>/dev/null || echo '/.devsite/' >>"$(git rev-parse --git-common-dir)/info/exclude"
ls -l .devsite/site.tar.xz
