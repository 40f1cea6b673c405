#!/usr/bin/env bash
# Reproduce unet_tiles/demo/model: 'unet-tiles train' on generated nuclei images.
# Four 1024 x 1024 training images (seeds 1-4), one 768 x 768 validation image
# (seed 100); the held-out accuracy is measured on seeds 1000+ by bench/accuracy.py.
# About 10 minutes on 2 CPU cores (one torch thread: deterministic, and robust
# on a shared machine).
set -euo pipefail

WORK=${1:-demo-model-work}
OUT=${2:-unet_tiles/demo/model}

for seed in 1 2 3 4; do
    unet-tiles demo --generate-only --size 1024 --seed "$seed" --workdir "$WORK/train$seed"
done
unet-tiles demo --generate-only --size 768 --seed 100 --workdir "$WORK/val"

unet-tiles train "$WORK/model" \
    --images "$WORK"/train{1,2,3,4}/image.zarr --masks "$WORK"/train{1,2,3,4}/truth.zarr \
    --val-images "$WORK/val/image.zarr" --val-masks "$WORK/val/truth.zarr" \
    --class-names background,nucleus \
    --depth 3 --base-channels 8 --dropout 0.1 \
    --tile 96 --batch-size 4 --steps 1200 --lr 2e-3 --val-every 200 \
    --threads 1 --seed 0 --overwrite

# Ship only the model contract, not the resume checkpoint.
mkdir -p "$OUT"
cp "$WORK/model/config.json" "$WORK/model/weights.safetensors" "$OUT/"
python bench/accuracy.py --model "$OUT"
