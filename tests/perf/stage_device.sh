#!/usr/bin/env bash
# Packs what the GPU machine lacks for `python -m pipeline bench --end-to-end` into .devsite/site.tar.xz
# (git-ignored through .git/info/exclude; the device tool carries it: `carry: [".devsite"]`).
# `stage_device.sh realtext` packs instead what `bench --real-text` needs (tests/perf/run_device_realtext.sh):
# pydantic and pydantic-settings with their needs, Qwen3's tokenizer (`make tokenizer`) and the real-text
# corpus (tests/perf/build_realtext_corpus.py), into .devsite/realtext.tar.xz (about 5 MB).
#
# That machine runs Python 3.12 on x86-64 and reaches no package index, and one call carries at most
# 64 MiB.  Ray's wheel alone is 79 MB, so the packages are installed here for cp312 into one folder,
# trimmed (Ray's Java jars and libraries this project never imports; debug symbols of Ray's binaries)
# and compressed: about 55 MB.  On the device, `source tests/perf/device_env.sh` unpacks and uses it.
set -euo pipefail
cd "$(dirname "$0")/../.."
# The project's venv (make .venv/.installed) when there is one: the corpus builder imports `pipeline`.
default_python=python3
[[ -x .venv/bin/python ]] && default_python=.venv/bin/python
python=${PYTHON:-$default_python}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
    manylinux2014_x86_64 manylinux_2_5_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
target=(--only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}")
if [[ ${1:-} == realtext ]]; then
    [[ -f .cache/qwen3-tokenizer/tokenizer.json ]] || "$python" -m workers.bench.qwen3_tokenizer
    [[ -f .cache/realtext-corpus.jsonl ]] || PYTHONPATH=$PWD "$python" tests/perf/build_realtext_corpus.py
    grep -E '^(pydantic|pydantic-core|pydantic-settings|annotated-types|typing-extensions|typing-inspection|python-dotenv)==' \
        tests/perf/device-requirements.txt >"$work/requirements.txt"
    "$python" -m pip download -q --no-deps "${target[@]}" -d "$work/wheels" -r "$work/requirements.txt"
    "$python" -m pip install -q --no-deps --no-compile "${target[@]}" --target "$work/site" "$work"/wheels/*.whl
    mkdir -p "$work/cache" .devsite
    cp -r .cache/qwen3-tokenizer .cache/realtext-corpus.jsonl "$work/cache/"
    tar -C "$work" -cf - site cache | xz -6 -T0 >.devsite/realtext.tar.xz
    grep -qx '/.devsite/' "$(git rev-parse --git-common-dir)/info/exclude" 2>/dev/null ||
        echo '/.devsite/' >>"$(git rev-parse --git-common-dir)/info/exclude"
    ls -l .devsite/realtext.tar.xz
    exit 0
fi
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
