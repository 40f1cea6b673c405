"""Where one block's time goes, stage by stage, measured on the engine's own functions.

    python bench/block_breakdown.py [--size 4096] [--block 2048] [--model DIR] [--threads 1]
                                    [--contiguous] [--precision bfloat16]

Runs the stages of ``engine.blocks.process_block`` one after the other on every
block of a generated SIZE x SIZE uint8 image, in this process, torch on
``--threads`` threads (a CPU worker of the local cluster has one core's worth):

* the missing-chunk check (one ``exists`` per chunk, ``window.missing_chunks``);
* reading and decoding the chunks (``array[region]``);
* the rest of ``window.read_window``: axis moves, the mirror gather at the border,
  dtype handling;
* the model's forward passes alone (timed inside ``predict_block``);
* the rest of ``predict.predict_block``: tile stacking, cropping, the class
  argmax, moving results to numpy, assembling the block;
* encoding and writing the labels chunks (``writer.write_block`` without the
  marker) and the done-marker.

Prints seconds per block and the share of the block for each stage: with the
demo model everything but the forward passes should stay below 10 %.
"""

from __future__ import annotations

import argparse
import shutil
import time
from collections import defaultdict
from typing import Any

from common import bench_model, synthetic_input, workdir


class TimedModel:
    """Wraps a model: calls it and adds the time of each forward pass to ``seconds``."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.seconds = 0.0

    def __call__(self, batch: Any) -> Any:
        started = time.perf_counter()
        out = self.model(batch)
        self.seconds += time.perf_counter() - started
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=4096)
    parser.add_argument("--block", type=int, default=None, help="default: the engine's")
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--precision", default="auto", help="auto, float32 or bfloat16")
    parser.add_argument("--contiguous", action="store_true",
                        help="tiles and weights in the default layout, not channels-last")
    args = parser.parse_args()

    import numpy as np
    import torch

    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.pipeline.predict import cached_model, channels_last_on, predict_block
    from unet_tiles.pipeline.window import input_region, missing_chunks, read_window
    from unet_tiles.pipeline.writer import mark_done, open_output, write_block

    torch.set_num_threads(args.threads)
    work = workdir("unet-tiles-breakdown-")
    model_dir = bench_model(args.model, work)
    src = synthetic_input(work, args.size)
    run = validate(SegmentRequest(src, str(work / "out.zarr"), model_dir,
                                  block_size=args.block))
    with run.locked():
        run.prepare()
    job = run.job
    # The layout the engine's CPU workers use, unless --contiguous asks for the other.
    channels_last = channels_last_on("cpu", False if args.contiguous else None)
    model = TimedModel(cached_model(job.model_dir, job.model_hash, "cpu", channels_last))
    array = job.source.open()
    output = open_output(job.output)
    totals: dict[str, float] = defaultdict(float)
    blocks = list(run.plan)
    with torch.inference_mode():
        predict_block(model, read_window(array, job.source, blocks[0]), blocks[0],  # warm-up
                      want_labels=True, want_probabilities=False, device="cpu",
                      precision=args.precision, channels_last=channels_last)
    model.seconds = 0.0
    for block in blocks:
        region, _ = input_region(job.source, block)
        t0 = time.perf_counter()
        missing_chunks(array, region)
        t1 = time.perf_counter()
        np.asarray(array[region])
        t2 = time.perf_counter()
        window = read_window(array, job.source, block)
        t3 = time.perf_counter()
        forward_before = model.seconds
        result = predict_block(model, window, block, want_labels=True,
                               want_probabilities=False, batch_size=job.batch_size,
                               device="cpu", precision=args.precision,
                               channels_last=channels_last)
        t4 = time.perf_counter()
        done, output.done = output.done, _Discard()
        write_block(output, block, result)
        output.done = done
        t5 = time.perf_counter()
        mark_done(output.done, block.index)
        t6 = time.perf_counter()
        forward = model.seconds - forward_before
        # read_window itself checks the chunks and reads them again: its own
        # remainder is its time minus those two.
        totals["missing-chunk check"] += t1 - t0
        totals["read + decode chunks"] += t2 - t1
        totals["window: axes, mirror gather, dtype"] += max(0.0, (t3 - t2) - (t2 - t0))
        totals["model forward passes"] += forward
        totals["predict: stack, crop, argmax, assemble"] += (t4 - t3) - forward
        totals["encode + write chunks"] += t5 - t4
        totals["done-marker"] += t6 - t5
    block_total = sum(totals.values())
    n = len(blocks)
    print(f"{args.size} x {args.size} image, {n} blocks of {run.plan.block_shape}, tile "
          f"{run.plan.tile_out} px out, model {model_dir}, torch threads {args.threads}, "
          f"{'channels-last' if channels_last else 'contiguous'} tiles, precision "
          f"{args.precision}")
    print(f"{'stage':42s} {'s / block':>10s} {'share':>7s}")
    for stage, seconds in totals.items():
        print(f"{stage:42s} {seconds / n:10.3f} {seconds / block_total:7.1%}")
    print(f"{'block':42s} {block_total / n:10.3f} {1:7.1%}")
    others = max(s for k, s in totals.items() if k != "model forward passes") / block_total
    print(f"largest stage other than the model: {others:.1%} of the block")
    shutil.rmtree(work, ignore_errors=True)


class _Discard:
    """Stands in for the done-marker array so the chunk writes are timed alone."""

    def __setitem__(self, key: object, value: object) -> None:
        del key, value


if __name__ == "__main__":
    main()
