"""Peak memory of unet-tiles against a plain ``dask.array.map_overlap`` pipeline, one run.

    python bench/memory.py [--size 8192] [--depth 3] [--base-channels 16]
                            [--tile-size N [N ...]] [--read-cache-mb MB [MB ...]]

Both segment the same generated SIZE x SIZE uint8 zarr image with the same seeded
U-Net on a 2-worker, 1-thread-per-worker local cluster, zarr in, labels zarr out:

* ``unet-tiles``: ``unet_tiles.segment`` with its defaults (and once per
  ``--tile-size`` and per ``--read-cache-mb`` given, in the same run);
* ``map_overlap``: ``da.from_zarr(...).map_overlap(model on each overlapped 1024 px
  chunk, padded to a valid size, depth=halo, boundary="reflect").to_zarr(...)``,
  the pipeline users write by hand (not seamless: dask's reflect is numpy's
  symmetric, and chunks are not on the pooling grid; only its memory matters here).

Each runs in a fresh process; the summed RSS of that process and all its children
(driver, scheduler, nannies, workers; not this one, which made the model and the
image) is sampled every 50 ms. Prints both peaks,
where each peak sits (driver with its in-process scheduler, nannies, workers), and
their ratio. (``bench/memory_sizes.py``: unet-tiles' peak for two image sizes.)
"""

from __future__ import annotations

import argparse
import functools
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from common import RssSamples, synthetic_input, workdir


@functools.lru_cache(maxsize=1)
def _model(model_dir: str) -> Any:
    import torch

    from unet_tiles.model.files import load_model

    torch.set_num_threads(1)
    return load_model(model_dir)


def _predict_chunk(block: Any, model_dir: str, halo: int) -> Any:
    import numpy as np
    import torch

    model = _model(model_dir)
    n0, n1 = block.shape
    pads = ((0, model.valid_size(n0) - n0), (0, model.valid_size(n1) - n1))
    x = np.pad(block.astype(np.float32), pads, mode="reflect")
    with torch.inference_mode():
        logits = model(torch.from_numpy(x)[None, None])[0]
    labels = logits.argmax(0).numpy().astype(np.uint8)
    out = np.zeros((n0, n1), np.uint8)  # map_overlap trims the halo afterwards
    out[halo:halo + labels.shape[0], halo:halo + labels.shape[1]] = \
        labels[: n0 - halo, : n1 - halo]
    return out


def run_map_overlap(src: str, out: str, model_dir: str) -> None:
    import dask.array as da
    from distributed import Client, LocalCluster

    from unet_tiles.model.files import read_config
    from unet_tiles.model.unet import UNet

    halo = UNet(read_config(model_dir)).halo[0]
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster):
        image = da.from_zarr(src)
        labels = image.map_overlap(_predict_chunk, depth=halo, boundary="reflect",
                                   dtype="uint8", model_dir=model_dir, halo=halo)
        labels.to_zarr(out, overwrite=True)


def run_unet_tiles(src: str, out: str, model_dir: str, tile: int | None = None,
                   read_cache_mb: int | None = None) -> None:
    from unet_tiles import segment

    segment(src, out, model_dir, cluster="cpu", workers=2, threads_per_worker=1,
            progress=False, tile_size=tile, read_cache_mb=read_cache_mb)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--depth", type=int, default=3)
    parser.add_argument("--base-channels", type=int, default=16)
    parser.add_argument("--tile-size", type=int, nargs="+", default=None,
                        help="unet-tiles' tile sizes to measure as well as its default")
    parser.add_argument("--read-cache-mb", type=int, nargs="+", default=None,
                        help="unet-tiles' read cache budgets to measure as well (0: none)")
    parser.add_argument("--only", choices=("unet-tiles", "map_overlap"), default=None,
                        help="measure one side only")
    parser.add_argument("--mode", choices=("unet-tiles", "map_overlap"), default=None,
                        help=argparse.SUPPRESS)  # one side, in its own process
    parser.add_argument("--paths", nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        src, out, model = args.paths
        if args.mode == "unet-tiles":
            run_unet_tiles(src, out, model, args.tile_size[0] if args.tile_size else None,
                           args.read_cache_mb[0] if args.read_cache_mb else None)
        else:
            run_map_overlap(src, out, model)
        return
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = workdir("unet-tiles-memory-vs-")
    model = str(save_model(build_unet(UNetConfig(depth=args.depth,
                                                 base_channels=args.base_channels,
                                                 input_scale=(1 / 255,)), seed=0),
                           work / "model"))
    src = synthetic_input(work, args.size)
    peaks: dict[str, float] = {}
    runs: list[tuple[str, str, list[str]]] = []
    if args.only != "map_overlap":
        runs.append(("unet-tiles", "unet-tiles", []))
        runs += [(f"tile {tile}", "unet-tiles", ["--tile-size", str(tile)])
                 for tile in args.tile_size or ()]
        runs += [(f"cache {mb} MiB", "unet-tiles", ["--read-cache-mb", str(mb)])
                 for mb in args.read_cache_mb or ()]
    if args.only != "unet-tiles":
        runs.append(("map_overlap", "map_overlap", []))
    for name, mode, tile in runs:
        out = work / f"{mode}.zarr"
        started = time.perf_counter()
        # The children only: this process made the model and the image.
        with RssSamples(include_self=False) as rss:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "--mode", mode,
                            "--paths", src, str(out), model, *tile], check=True)
        peaks[name] = rss.peak_bytes / 2**20
        roles = ", ".join(f"{role} {size / 2**20:.0f}" for role, size in
                          sorted(rss.roles_at_peak().items()) if role != "bench")
        print(f"{name:12s} peak RSS of all processes {peaks[name]:6.0f} MiB "
              f"({time.perf_counter() - started:.0f} s); at the peak, MiB: {roles}", flush=True)
        shutil.rmtree(out, ignore_errors=True)
    if "map_overlap" in peaks:
        for name, peak in peaks.items():
            if name != "map_overlap":
                print(f"{args.size} x {args.size}, depth {args.depth}, {args.base_channels} "
                      f"base channels: {name} / map_overlap peak = "
                      f"{peak / peaks['map_overlap']:.2f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
