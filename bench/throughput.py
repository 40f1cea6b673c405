"""End-to-end throughput against the model-only ceiling, measured in one run.

    python bench/throughput.py [--size 8192] [--model DIR] [--rounds 3] [--sweep]

Ceiling: the model's best *output* megapixels/s over valid tile sizes from 256
to 2048 on tiles already in memory, using all cores, as the better of one
process with all cores as torch threads and one single-threaded process per
core. End to end: ``unet-tiles segment`` with default settings on a generated
SIZE x SIZE uint8 zarr image, zarr in, zarr out.

A scan over tile sizes picks the ceiling's configuration. The scan's maximum
over many short samples is biased upwards by the machine's noise (the
largest of 18 noisy numbers), so the chosen configuration is then measured
again for as long as an end-to-end run takes, alternating with the end-to-end
runs, ``--rounds`` times: both sides get the same length, repeats and load.
Prints the best of each, their ratio, the paired per-round ratios, and the
ratio to the scan's maximum. ``--sweep`` also runs the end-to-end job under
other worker/thread/tile settings (how the defaults were chosen).
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


def scan(model_dir: str, cores: int, seconds: float) -> tuple[float, int, int, int]:
    """The scan's best (rate, tile input size, processes, threads each)."""
    from unet_tiles import load_model

    model = load_model(model_dir)
    best: tuple[float, int, int, int] = (0.0, 0, 1, cores)
    for target in TILE_TARGETS:
        size_in = model.valid_size(target)
        one = _parallel_rate(model_dir, size_in, 1, cores, seconds)
        many = _parallel_rate(model_dir, size_in, cores, 1, seconds) if cores > 1 else one
        print(f"  tile in {size_in:5d} (out {size_in - 2 * model.halo[0]:5d}): "
              f"1 process x {cores} threads {one / 1e6:6.2f} Mpx/s, "
              f"{cores} processes x 1 thread {many / 1e6:6.2f} Mpx/s", flush=True)
        for rate, processes, threads in ((one, 1, cores), (many, cores, 1)):
            if rate > best[0]:
                best = (rate, size_in, processes, threads)
    return best


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
    parser.add_argument("--seconds", type=float, default=5.0, help="per scanned tile size")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating ceiling / end-to-end rounds (best of each counts)")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    work = workdir("unet-tiles-bench-")
    model_dir = bench_model(args.model, work)
    print(f"model {model_dir}, {cores} cores, image {args.size} x {args.size} uint8")
    src = synthetic_input(work, args.size)
    print("model-only ceiling, scan (tiles in memory):")
    scanned, size_in, processes, threads = scan(model_dir, cores, args.seconds)
    what = f"tile in {size_in}, {processes} process(es) x {threads} thread(s)"
    print(f"scan's best: {scanned / 1e6:.2f} Mpx/s ({what})")
    ceilings, ends, walls = [], [], []
    for round_ in range(1, args.rounds + 1):
        blocks_rate, wall_rate = end_to_end(src, model_dir, work)
        # As long as the end-to-end run's blocks took, so both see the same noise.
        seconds = args.size**2 / 1e6 / blocks_rate
        rate = _parallel_rate(model_dir, size_in, processes, threads, seconds) / 1e6
        ceilings.append(rate)
        ends.append(blocks_rate)
        walls.append(wall_rate)
        print(f"round {round_}: ceiling {rate:.2f} Mpx/s ({seconds:.0f} s), end to end "
              f"{blocks_rate:.2f} Mpx/s over the blocks ({wall_rate:.2f} incl. cluster "
              f"start) | ratio {blocks_rate / rate:.2f}", flush=True)
    ceiling = max(ceilings)
    paired = sorted(e / c for e, c in zip(ends, ceilings, strict=True))
    print(f"ceiling (best of {args.rounds}): {ceiling:.2f} Mpx/s; end to end (best of "
          f"{args.rounds}): {max(ends):.2f} Mpx/s over the blocks, {max(walls):.2f} Mpx/s "
          "including cluster start")
    print(f"ratio to ceiling: {max(ends) / ceiling:.2f} (blocks), {max(walls) / ceiling:.2f} "
          f"(wall); paired per round: {', '.join(f'{r:.2f}' for r in paired)}; "
          f"to the scan's best: {max(ends) * 1e6 / scanned:.2f}")
    if args.sweep:
        sweep(src, model_dir, work, ceiling, args.rounds)
    shutil.rmtree(work, ignore_errors=True)


def sweep(src: str, model_dir: str, work: Path, ceiling: float, rounds: int) -> None:
    runs: list[tuple[str, dict[str, object]]] = [
        ("defaults", {}),
        ("1 worker x 1 thread", {"workers": 1, "threads_per_worker": 1}),
        ("1 worker x 2 threads", {"workers": 1, "threads_per_worker": 2}),
        ("block 1024", {"block_size": 1024}),
        ("tile 512", {"tile_size": 512}),
        ("tile 1024", {"tile_size": 1024}),
    ]
    best: dict[str, float] = {}
    for _ in range(rounds):  # interleaved, so drifting load hits every setting alike
        for name, options in runs:
            best[name] = max(best.get(name, 0.0), end_to_end(src, model_dir, work, **options)[0])
    for name, _ in runs:
        print(f"sweep, {name} (best of {rounds}): {best[name]:.2f} Mpx/s over the blocks, "
              f"ratio to ceiling {best[name] / ceiling:.2f}")


if __name__ == "__main__":
    main()
