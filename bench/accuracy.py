"""Held-out accuracy of a model trained by ``unet-tiles train`` on generated images.

Scores the model (default: the shipped demo model, trained on synthetic nuclei
seeds 1-4) on other generated images of the same kind (default seeds 1000+),
which it has never seen, with the seamless whole-image prediction of
``unet_tiles.training.metrics``. The target of issue 4 is a foreground IoU of at least 0.9.
Each image is also segmented by ``unet-tiles`` itself with ``--output instances``
(blocks of 256 px, so objects cross block borders): its object count against the
generated one and its AP@0.5 against the generated instances.

    python bench/accuracy.py [--model DIR] [--count 4] [--size 1024] [--seed 1000]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

TARGET_IOU = 0.9


def segmented_instances(image: np.ndarray, model_dir: str) -> np.ndarray:
    """``unet-tiles segment --output instances`` of ``image``, in this process."""
    import tempfile

    import zarr

    from unet_tiles.engine.run import SegmentRequest, validate

    with tempfile.TemporaryDirectory() as work:
        array = zarr.create_array(f"{work}/in.zarr", shape=image.shape, chunks=(256, 256),
                                  dtype=image.dtype)
        array[...] = image
        validate(SegmentRequest(f"{work}/in.zarr", f"{work}/out.zarr", model_dir,
                                output_kind="instances", block_size=256)).segment()
        return np.asarray(zarr.open_array(f"{work}/out.zarr", path="instances", mode="r")[...])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model directory (default: demo model)")
    parser.add_argument("--count", type=int, default=4, help="held-out images")
    parser.add_argument("--size", type=int, default=1024, help="image edge in px")
    parser.add_argument("--seed", type=int, default=1000, help="seed of the first image")
    parser.add_argument("--kind", default="nuclei", choices=("nuclei", "cells"))
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import torch

    from unet_tiles.demo.images import demo_model_dir
    from unet_tiles.demo.synth import generate_arrays
    from unet_tiles.model.files import load_model
    from unet_tiles.training.metrics import match_counts, predict_classes, score

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = args.model or str(demo_model_dir())
    model = load_model(model_dir)
    truths, preds, instances = [], [], []
    counts = np.zeros(3, dtype=np.int64)
    objects = true_objects = 0
    started = time.perf_counter()
    for seed in range(args.seed, args.seed + args.count):
        image, labels = generate_arrays((args.size, args.size), seed=seed, kind=args.kind)
        predicted = predict_classes(model, image[None].astype(np.float32), tile_px=512)
        # Foreground = any non-background class; truth = any object pixel.
        predicted = (predicted > 0).astype(np.uint8)
        one = score([(labels > 0).astype(np.uint8)], [predicted], 2, [labels])
        ours = segmented_instances(image, model_dir)
        tp, fp, fn = match_counts(labels, ours)
        counts += (tp, fp, fn)
        found, made = int(ours.max()), len(np.unique(labels)) - 1
        objects, true_objects = objects + found, true_objects + made
        print(f"seed {seed}: foreground IoU {one['iou_foreground']:.4f}, AP@0.5 {one['ap50']:.4f};"
              f" unet-tiles instances: {found} objects ({made} generated), "
              f"AP@0.5 {tp / max(tp + fp + fn, 1):.4f}")
        truths.append((labels > 0).astype(np.uint8))
        preds.append(predicted)
        instances.append(labels)
    total = score(truths, preds, 2, instances)
    seconds = time.perf_counter() - started
    tp, fp, fn = (int(c) for c in counts)
    print(f"unet-tiles --output instances: {objects} objects ({true_objects} generated), "
          f"AP@0.5 {tp / max(tp + fp + fn, 1):.4f} over {args.count} images")
    verdict = "meets" if total["iou_foreground"] >= TARGET_IOU else "MISSES"
    print(f"model {model_dir}: held-out foreground IoU {total['iou_foreground']:.4f}, "
          f"AP@0.5 {total['ap50']:.4f} over {args.count} {args.kind} images of "
          f"{args.size} x {args.size} (seeds {args.seed}-{args.seed + args.count - 1}); "
          f"{verdict} the {TARGET_IOU} target; {seconds:.0f} s")
    return 0 if total["iou_foreground"] >= TARGET_IOU else 1


if __name__ == "__main__":
    sys.exit(main())
