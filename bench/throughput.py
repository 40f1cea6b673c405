"""End-to-end throughput against the model-only ceiling, measured in one run.

    python bench/throughput.py [--size 8192] [--model DIR] [--sweep]

Ceiling: the model's best *output* megapixels/s over valid tile sizes from 256
to 2048 on tiles already in memory, using all cores, as the better of one
process with all cores as torch threads and one single-threaded process per
core. End to end: ``unet-tiles segment`` with default settings on a generated
SIZE x SIZE uint8 zarr image, zarr in, zarr out. Prints both and their ratio.
``--sweep`` also runs the end-to-end job under other worker/thread/tile
settings (how the defaults were chosen).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import time
from typing import TYPE_CHECKING

from common import bench_model, synthetic_input, workdir

if TYPE_CHECKING:
    from pathlib import Path

TILE_TARGETS = (256, 384, 512, 600, 688, 768, 1024, 1536, 2048)


def _tile_rate(model_dir: str, size_in: int, threads: int, seconds: float) -> float:
    """Output pixels per second of one process running ``size_in`` tiles back to back."""
    import torch

    from unet_tiles import load_model

    torch.set_num_threads(threads)
    model = load_model(model_dir)
    x = torch.rand(1, model.config.in_channels, size_in, size_in) * 255
    out = size_in - 2 * model.halo[0]
    with torch.inference_mode():
        model(x)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or count < 2:
            model(x)
            count += 1
        elapsed = time.perf_counter() - started
    return count * out * out / elapsed


def _parallel_rate(model_dir: str, size_in: int, processes: int, threads: int,
                   seconds: float) -> float:
    """Summed rate of ``processes`` fresh processes running tiles at once.

    They get the same malloc settings as the workers unet-tiles starts, so the
    ceiling is the model's best under the engine's own conditions.
    """
    from unet_tiles.cluster import CPU_WORKER_MALLOC

    os.environ.update(CPU_WORKER_MALLOC)
    ctx = mp.get_context("spawn")
    with ctx.Pool(processes) as pool:
        rates = pool.starmap(_tile_rate, [(model_dir, size_in, threads, seconds)] * processes)
    return sum(rates)


def ceiling(model_dir: str, cores: int, seconds: float) -> tuple[float, str]:
    from unet_tiles import load_model

    model = load_model(model_dir)
    best, best_what = 0.0, ""
    for target in TILE_TARGETS:
        size_in = model.valid_size(target)
        one = _parallel_rate(model_dir, size_in, 1, cores, seconds)
        many = _parallel_rate(model_dir, size_in, cores, 1, seconds) if cores > 1 else one
        print(f"  tile in {size_in:5d} (out {size_in - 2 * model.halo[0]:5d}): "
              f"1 process x {cores} threads {one / 1e6:6.2f} Mpx/s, "
              f"{cores} processes x 1 thread {many / 1e6:6.2f} Mpx/s", flush=True)
        for rate, what in ((one, f"1x{cores}"), (many, f"{cores}x1")):
            if rate > best:
                best, best_what = rate, f"tile in {size_in}, {what}"
    return best, best_what


def end_to_end(src: str, model_dir: str, work: Path, **options: object) -> tuple[float, float]:
    """(Mpx/s over the blocks phase, Mpx/s over the whole command incl. cluster start)."""
    from unet_tiles.cli.segment import execute

    out = work / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = execute(src, str(out), model_dir, progress=False, **options)  # type: ignore[arg-type]
    wall = time.perf_counter() - started
    return summary.megapixels_per_s, summary.pixels / 1e6 / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seconds", type=float, default=3.0, help="per ceiling measurement")
    parser.add_argument("--sweep", action="store_true")
    parser.add_argument("--repeats", type=int, default=2,
                        help="best of this many end-to-end runs (other load only slows)")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = workdir("unet-tiles-bench-")
    model_dir = bench_model(args.model, work)
    print(f"model {model_dir}, {cores} cores, image {args.size} x {args.size} uint8")
    src = synthetic_input(work, args.size)
    print("model-only ceiling (tiles in memory):")
    best, what = ceiling(model_dir, cores, args.seconds)
    print(f"ceiling: {best / 1e6:.2f} Mpx/s ({what})")
    runs: list[tuple[str, dict[str, object]]] = [("defaults", {})]
    if args.sweep:
        runs += [
            ("1 worker x 1 thread", {"workers": 1, "threads_per_worker": 1}),
            ("1 worker x 2 threads", {"workers": 1, "threads_per_worker": 2}),
            ("block 1024", {"block_size": 1024}),
            ("tile 688", {"tile_size": 688}),
            ("tile 1024", {"tile_size": 1024}),
        ]
    for name, options in runs:
        rates = [end_to_end(src, model_dir, work, **options) for _ in range(args.repeats)]
        blocks_rate, wall_rate = max(r[0] for r in rates), max(r[1] for r in rates)
        print(f"end to end ({name}, best of {args.repeats}): "
              f"{blocks_rate:.2f} Mpx/s over the blocks, "
              f"{wall_rate:.2f} Mpx/s including cluster start | ratio to ceiling "
              f"{blocks_rate * 1e6 / best:.2f} (blocks), {wall_rate * 1e6 / best:.2f} (wall)",
              flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
