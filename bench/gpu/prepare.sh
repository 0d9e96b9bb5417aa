#!/usr/bin/env bash
# Issue 8 §5, step 1 of 2, on this (CPU) machine: what a lent GPU machine needs and cannot fetch.
#
# The GPU image has Python 3.12 with torch 2.11, torchvision, numpy, PIL, yaml, tqdm, regex and
# matplotlib (KINDS.md of the device tool), but no open_clip, soundfile or their needs, and it
# reaches no package index: their wheels go in .gpu/whl. The short training runs on the tiny
# profile's world (its clips and CLIP, ~40 MB), made here.
# Then, with the device tool: run `bash bench/gpu/run.sh` with carry
# [".gpu", "runs/tiny/data", "runs/tiny/models/clip"] and timeout_s 420 (bench/gpu/README.md).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=.venv/bin/python
export HF_HUB_OFFLINE=1
mkdir -p .gpu/whl
# cp312 manylinux wheels, no dependencies resolved: each one the image lacks is named
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d .gpu/whl \
    open_clip_torch==3.3.0 ftfy wcwidth soundfile cffi pycparser
for stage in world ingest validate pretrain-clip; do  # each skips when its inputs are unchanged
    .venv/bin/clipsep "$stage" --profile tiny >/dev/null
done
du -sh .gpu runs/tiny/data runs/tiny/models/clip
echo "prepared: now run bench/gpu/run.sh on the device (bench/gpu/README.md)"
