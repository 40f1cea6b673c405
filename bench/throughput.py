"""End-to-end throughput against the model-only ceiling, measured in one run.

    python bench/throughput.py [--size 8192] [--model DIR] [--rounds 3] [--sweep]

The method is ``unet_tiles.engine.benchmark``'s (``unet-tiles bench`` runs it
too). Ceiling: the model's best *output* megapixels/s over valid tile sizes from 256
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
import shutil
from typing import TYPE_CHECKING

from common import bench_model, synthetic_input, workdir

from unet_tiles.engine.benchmark import end_to_end, paired_rounds, scan
from unet_tiles.engine.cluster import usable_cores

if TYPE_CHECKING:
    from pathlib import Path

    from unet_tiles.engine.benchmark import Rounds, ScanRow

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model", default=None)
    parser.add_argument("--seconds", type=float, default=5.0, help="per scanned tile size")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating ceiling / end-to-end rounds (best of each counts)")
    parser.add_argument("--sweep", action="store_true")
    args = parser.parse_args()
    cores = usable_cores()
    work = workdir("unet-tiles-bench-")
    model_dir = bench_model(args.model, work)
    print(f"model {model_dir}, {cores} cores, image {args.size} x {args.size} uint8")
    src = synthetic_input(work, args.size)
    print("model-only ceiling, scan (tiles in memory):")
    found = scan(model_dir, cores, args.seconds, report=_print_row)
    scanned = found.best_rate
    print(f"scan's best: {scanned / 1e6:.2f} Mpx/s ({found.configuration})")
    rounds = paired_rounds(src, model_dir, work, found, args.size**2 / 1e6, args.rounds,
                           report=_print_round)
    ceiling = rounds.ceiling
    print(f"ceiling (best of {args.rounds}): {ceiling:.2f} Mpx/s; end to end (best of "
          f"{args.rounds}): {max(rounds.blocks):.2f} Mpx/s over the blocks, "
          f"{max(rounds.walls):.2f} Mpx/s including cluster start")
    print(f"ratio to ceiling: {rounds.ratio:.2f} (blocks), {max(rounds.walls) / ceiling:.2f} "
          f"(wall); paired per round: {', '.join(f'{r:.2f}' for r in rounds.paired)}; "
          f"to the scan's best: {max(rounds.blocks) * 1e6 / scanned:.2f}")
    if args.sweep:
        sweep(src, model_dir, work, ceiling, args.rounds)
    shutil.rmtree(work, ignore_errors=True)


def _print_row(row: ScanRow) -> None:
    print(f"  tile in {row.size_in:5d} (out {row.size_out:5d}): 1 process x all threads "
          f"{row.one_process / 1e6:6.2f} Mpx/s, 1 process per core x 1 thread "
          f"{row.per_core / 1e6:6.2f} Mpx/s", flush=True)


def _print_round(number: int, rounds: Rounds) -> None:
    blocks, ceiling = rounds.blocks[-1], rounds.ceilings[-1]
    print(f"round {number}: ceiling {ceiling:.2f} Mpx/s, end to end {blocks:.2f} Mpx/s over "
          f"the blocks ({rounds.walls[-1]:.2f} incl. cluster start) | ratio "
          f"{blocks / ceiling:.2f}", flush=True)


def sweep(src: str, model_dir: str, work: Path, ceiling: float, rounds: int) -> None:
    runs: list[tuple[str, dict[str, object]]] = [
        ("defaults", {}),
        ("1 worker x 1 thread", {"workers": 1, "threads_per_worker": 1}),
        ("1 worker x 2 threads", {"workers": 1, "threads_per_worker": 2}),
        ("block 1024", {"block_size": 1024}),
        ("tile 512", {"tile_size": 512}),
        ("tile 1024", {"tile_size": 1024}),
        ("precision bfloat16", {"precision": "bfloat16"}),
    ]
    best: dict[str, float] = {}
    for _ in range(rounds):  # interleaved, so drifting load hits every setting alike
        for name, options in runs:
            best[name] = max(best.get(name, 0.0),
                             end_to_end(src, model_dir, work / "out.zarr", **options)[0])
    for name, _ in runs:
        print(f"sweep, {name} (best of {rounds}): {best[name]:.2f} Mpx/s over the blocks, "
              f"ratio to ceiling {best[name] / ceiling:.2f}")


if __name__ == "__main__":
    main()
