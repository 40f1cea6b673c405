"""The mirror gather at the image's border: one axis at a time against one np.ix_ gather.

    python bench/mirror_gather.py [--size 16384] [--volume 384] [--rounds 5]

For every block of a 2D plan (a SIZE x SIZE uint8 image, the demo model's halo, the
default 2048 px blocks) and of a 3D plan (a VOLUME^3 uint8 volume, a depth-3 3D
model, the default 192 voxel blocks) whose read window leaves the image, the data
the block reads is gathered at its mirrored indices two ways, alternating, on the
same arrays: ``window.mirrored`` (np.take along each axis that leaves the image, what
``read_window`` does) and one ``data[np.ix_(...)]`` over every axis (what it did
before). Prints the seconds per block of each (best of ``--rounds``), their ratio,
and checks the windows are equal. It is part of every border block's host path,
the path that feeds a GPU (bench/gpu_feed.py).
"""

from __future__ import annotations

import argparse
import shutil
import time
from typing import Any

import numpy as np
from common import bench_model, synthetic_input, workdir


def border_windows(image: str, model: str, work: Any) -> list[tuple[np.ndarray, list[Any]]]:
    """(data as read, mirrored indices) of each block whose window leaves the image."""
    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.pipeline.window import input_region, reads_as_is

    run = validate(SegmentRequest(image, str(work / "out.zarr"), model))
    array = run.job.source.open()
    found = []
    for block in run.plan:
        region, takes = input_region(run.job.source, block)
        data = np.asarray(array[region])[np.newaxis]
        if not all(reads_as_is(t, n) for t, n in zip(takes, data.shape[1:], strict=True)):
            found.append((data, takes))
    return found


def compare(name: str, windows: list[tuple[np.ndarray, list[Any]]], rounds: int) -> None:
    from unet_tiles.pipeline.window import mirrored

    def one_gather(data: np.ndarray, takes: list[Any]) -> np.ndarray:
        return data[(slice(None), *np.ix_(*takes))]

    ways = {"per axis (np.take, now)": mirrored, "one np.ix_ gather (before)": one_gather}
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(rounds):
        for way, gather in ways.items():
            started = time.perf_counter()
            for data, takes in windows:
                gather(data, takes)
            best[way] = min(best[way], (time.perf_counter() - started) / len(windows))
    for data, takes in windows:
        if not np.array_equal(mirrored(data, takes), one_gather(data, takes)):
            raise SystemExit(f"{name}: the two gathers differ")
    now, before = best.values()
    shape = "x".join(str(n) for n in windows[0][0].shape[1:])
    print(f"{name}: {len(windows)} border blocks (first read {shape}); per block "
          + ", ".join(f"{way} {seconds * 1e3:.1f} ms" for way, seconds in best.items())
          + f"; per axis {before / now:.2f}x as fast; the windows are equal")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--volume", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    import zarr

    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = workdir("unet-tiles-mirror-")
    try:
        model = bench_model(None, work)
        compare("2D", border_windows(synthetic_input(work, args.size), model, work),
                args.rounds)
        volume = zarr.create_array(str(work / "volume.zarr"), shape=(args.volume,) * 3,
                                   chunks=(128,) * 3, dtype="uint8")
        volume[...] = np.random.default_rng(0).integers(0, 255, volume.shape, dtype=np.uint8)
        model_3d = save_model(build_unet(UNetConfig(depth=3, base_channels=8, dims=3),
                                         seed=0), work / "model-3d")
        compare("3D", border_windows(str(work / "volume.zarr"), str(model_3d), work),
                args.rounds)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
