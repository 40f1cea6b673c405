"""Instances over plain labels: extra time and peak memory, at two object densities.

A 16384 x 16384 class image of disks on a jittered grid (dense: ~1.05 million
objects of ~80 px; sparse: ~117 thousand of ~450 px), made block by block on the
workers, is written three ways on one 2-worker local cluster each, each in its own
process so that the peak RSS (summed over the driver, scheduler, nannies and
workers) is that run's:

* ``labels``: the block pass writes the labels (what ``--output labels`` writes
  after the model);
* ``instances dense`` / ``instances sparse``: the block pass also labels each
  block's components and their sums (``engine.instances.label_result``), then the
  faces, merge, relabel and table passes (``make_instances``) run as in a real run.

No model runs: its time is the same with or without instances, and leaving it
out shows the instance passes' own cost. Peak memory must not grow with the
object count (dense / sparse near 1)::

    python bench/instances.py [--size 16384] [--block 2048]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import RssSamples, workdir

# (grid spacing, disk radius) in px.
DENSITIES = {"dense": (16, 5), "sparse": (48, 12)}


def disks(box: Any, spacing: int, radius: int) -> np.ndarray:
    """The class image over ``box``: 1 inside disks, one per grid cell, 0 elsewhere."""
    y = np.arange(box.offset[0], box.end[0])[:, None]
    x = np.arange(box.offset[1], box.end[1])[None, :]
    cy, cx = y // spacing, x // spacing
    # A fixed jitter per cell (a hash, no state): disks stay inside their cells.
    jy = (cy * 73856093 ^ cx * 19349663) % 5 - 2
    jx = (cy * 83492791 ^ cx * 25165843) % 5 - 2
    dy = y - (cy * spacing + spacing // 2 + jy)
    dx = x - (cx * spacing + spacing // 2 + jx)
    return (dy * dy + dx * dx <= radius * radius).astype(np.uint8)


def block_task(spec: Any, plan: Any, index: tuple[int, ...], density: str) -> int:
    from unet_tiles.engine.instances import label_result
    from unet_tiles.pipeline.predict import BlockResult
    from unet_tiles.pipeline.writer import open_output, write_block

    block = plan.block(index)
    classes = disks(block.write, *DENSITIES[density])
    foreground = classes.astype(np.float32)
    probabilities = np.stack([1 - foreground, foreground])
    instances = label_result(spec, plan, block, classes, probabilities) \
        if spec.want_instances else None
    write_block(open_output(spec), block, BlockResult(classes, None), instances)
    return block.write.size


def run_one(mode: str, density: str, out: str, size: int, block: int) -> dict[str, Any]:
    from distributed import wait

    from unet_tiles.engine.cluster import connect
    from unet_tiles.engine.instances import make_instances
    from unet_tiles.pipeline.instances import InstanceSpec
    from unet_tiles.pipeline.plan import BlockPlan
    from unet_tiles.pipeline.provenance import Provenance
    from unet_tiles.pipeline.writer import OutputSpec, create_output

    chunk = 512
    plan = BlockPlan((size, size), (chunk, chunk), (block, block), 2, (0, 0), 1, block, 1)
    spec = OutputSpec(out, "yx", 2, 2, ("background", "cell"), True, False, "float16",
                      instances=InstanceSpec((1,)) if mode == "instances" else None)
    create_output(spec, plan, Provenance("bench", "0" * 64, {}, {}))
    with connect("cpu", 2, 1) as (client, _):
        started = time.perf_counter()
        futures = [client.submit(block_task, spec, plan, b.index, density, pure=False)
                   for b in plan]
        wait(futures)
        for future in futures:
            future.result()
        blocks_s = time.perf_counter() - started
        objects = make_instances(client, spec, plan) if mode == "instances" else 0
        total_s = time.perf_counter() - started
    return {"blocks_s": blocks_s, "total_s": total_s, "objects": objects}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--one", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        mode, density, out = args.one
        print(json.dumps(run_one(mode, density, out, args.size, args.block)))
        return
    work = workdir("unet-tiles-instances-")
    rows = {}
    for mode, density in (("labels", "dense"), ("instances", "dense"), ("instances", "sparse")):
        name = "labels" if mode == "labels" else f"instances {density}"
        out = work / "out.zarr"
        with RssSamples() as rss:
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--size",
                                   str(args.size), "--block", str(args.block), "--one", mode,
                                   density, str(out)], check=True, capture_output=True,
                                  text=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        result["peak_mib"] = rss.peak_bytes / 2**20
        rows[name] = result
        print(f"{name:18s} {result['total_s']:7.1f} s (blocks {result['blocks_s']:6.1f} s)  "
              f"peak RSS {result['peak_mib']:6.0f} MiB  objects {result['objects']:>9,}",
              flush=True)
        shutil.rmtree(out, ignore_errors=True)
    labels, dense, sparse = rows["labels"], rows["instances dense"], rows["instances sparse"]
    print(f"{args.size} x {args.size}, blocks of {args.block}: instances / labels time "
          f"{dense['total_s'] / labels['total_s']:.2f} (dense), "
          f"{sparse['total_s'] / labels['total_s']:.2f} (sparse); peak memory "
          f"{dense['peak_mib'] / labels['peak_mib']:.2f} (dense), "
          f"{sparse['peak_mib'] / labels['peak_mib']:.2f} (sparse); dense / sparse peak "
          f"{dense['peak_mib'] / sparse['peak_mib']:.2f} with "
          f"{dense['objects'] / max(sparse['objects'], 1):.1f}x the objects")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
