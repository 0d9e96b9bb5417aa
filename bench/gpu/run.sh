#!/usr/bin/env bash
# Issue 8 §5, step 2 of 2, on the lent GPU machine (after bench/gpu/prepare.sh here): the
# paper preset's training step and separation forward in fp32 / fp16 AMP at batch 32, then a
# short paper-preset training through `clipsep train`. What each step prints is also written
# under $OUT (the device tool brings that folder back).
#
# A dry run on a CPU:
#   PY=.venv/bin/python DEVICE=cpu BATCH=2 STEPS=4 ROUNDS=1 WORKERS=1 bash bench/gpu/run.sh
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
DEVICE=${DEVICE:-cuda}
BATCH=${BATCH:-32}
STEPS=${STEPS:-300}
ROUNDS=${ROUNDS:-10}
WORKERS=${WORKERS:-4}  # loader processes: the GPU machine has 16 cores
OUT=${OUT:-/tmp/clipsep-gpu-out}
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
if ! "$PY" -c "import open_clip, soundfile" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/clipsep-site .gpu/whl/*.whl || exit 1
    export PYTHONPATH=/tmp/clipsep-site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
THREADS=$(nproc)
if [[ $DEVICE == cuda* ]]; then
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
    FAST="fp16 fp16+channels_last bf16+channels_last"
else
    FAST="bf16+channels_last"
fi
status=0
echo "== bench/train.py: paper preset, batch $BATCH, $DEVICE"
"$PY" bench/train.py --device "$DEVICE" --presets paper --batch-size "$BATCH" \
    --rounds "$ROUNDS" --threads "$THREADS" --variants fp32 channels_last $FAST \
    2>&1 | tee "$OUT/bench_train.txt" || status=1
echo "== bench/separate.py --part forward: paper and cpu presets, batch $BATCH, $DEVICE"
"$PY" bench/separate.py --part forward --device "$DEVICE" --presets paper,cpu \
    --batch "$BATCH" --rounds "$((ROUNDS * 2))" --threads "$THREADS" \
    --variants "eager,channels_last,${FAST// /,}" \
    2>&1 | tee "$OUT/bench_separate.txt" || status=1
echo "== clipsep train: paper preset, $STEPS steps of batch $BATCH, precision auto, $DEVICE"
rm -rf /tmp/clipsep-gpu-train
timeout 180 "$PY" -m clipsep train --profile tiny \
    --set model.preset=paper --set train.device="$DEVICE" --set train.precision=auto \
    --set train.batch_size="$BATCH" --set audio.segment_samples=65535 \
    --set train.steps="$STEPS" --set train.decay_steps="$STEPS" \
    --set train.warmup_steps="$((STEPS / 10))" \
    --set train.validate_every=100 --set train.checkpoint_every=100 --set train.val_mixtures=32 \
    --set train.lr=0.001 --set train.num_workers="$WORKERS" \
    --set paths.checkpoints=/tmp/clipsep-gpu-train \
    --set registry.live_tracking=false \
    2>&1 | tee "$OUT/clipsep_train.txt" || status=1
cp /tmp/clipsep-gpu-train/summary.json /tmp/clipsep-gpu-train/history.csv "$OUT/" 2>/dev/null
exit $status
