"""3D end to end: voxels/s and peak memory of block and tile sizes, in one run.

    python bench/volume.py [--size 384] [--rounds 2] [--base-channels 8]
                           [--settings default 128:96 192:96 128:128 256:128]

A generated SIZE^3 uint8 nuclei volume (128^3 chunks) is segmented by a 3D U-Net
(depth 3, BASE channels, valid convolutions: a 44 voxel halo) on the default 2-worker
CPU cluster, once per setting per round, settings alternating. ``BLOCK:TILE`` sets
``--block-size`` and ``--tile-size``; ``default`` passes neither. Each run is its own
process, so its peak is the summed RSS of that process and its workers. Prints each
setting's best output Mvoxels/s over the blocks and its ratio to the first setting,
the tile the plan really runs (a block is evened out into equal tiles), and the peak.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from common import RssSamples, workdir


def run_one(src: str, out: str, model: str, setting: str) -> None:
    """One segment run in this process; prints its numbers as JSON on the last line."""
    from unet_tiles import segment
    from unet_tiles.engine.run import SegmentRequest, validate

    block, tile = (None, None) if setting == "default" else map(int, setting.split(":"))
    # The tiles the plan runs: the first block's, evened out over the block.
    plan = validate(SegmentRequest(src, out, model, block_size=block, tile_size=tile)).plan
    tiles = "x".join(str(axis.stride) for axis in next(iter(plan)).tiles)
    summary = segment(src, out, model, cluster="cpu", workers=2, threads_per_worker=1,
                      progress=False, block_size=block, tile_size=tile)
    print(json.dumps({"rate": summary.megapixels_per_s, "tile": tiles,
                      "blocks": summary.blocks_total}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--settings", nargs="+",
                        default=["default", "128:96", "192:96", "128:128", "256:128"])
    parser.add_argument("--one", nargs=4, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one is not None:
        run_one(*args.one)
        return
    from unet_tiles.demo.synth import generate_image
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = workdir("unet-tiles-volume-")
    config = UNetConfig(depth=3, base_channels=args.base_channels, dims=3,
                        input_scale=(1 / 255,))
    model = str(save_model(build_unet(config, seed=0), work / "model"))
    src = str(work / "volume.zarr")
    generate_image(src, work / "truth.zarr", (args.size,) * 3, chunks=(128,) * 3)
    print(f"{args.size}^3 uint8 volume, 3D U-Net depth 3, {args.base_channels} base "
          "channels, 2 CPU workers")
    rates: dict[str, list[float]] = {s: [] for s in args.settings}
    peaks: dict[str, list[float]] = {s: [] for s in args.settings}
    tiles: dict[str, object] = {}
    for round_ in range(1, args.rounds + 1):
        for setting in args.settings:
            out = work / "out.zarr"
            shutil.rmtree(out, ignore_errors=True)
            started = time.perf_counter()
            with RssSamples(include_self=False) as rss:
                done = subprocess.run(
                    [sys.executable, str(Path(__file__).resolve()), "--one", src, str(out),
                     model, setting], capture_output=True, text=True)
            if done.returncode != 0:
                sys.exit(f"{setting}: {done.stderr.strip()}")
            numbers = json.loads(done.stdout.strip().splitlines()[-1])
            rates[setting].append(numbers["rate"])
            peaks[setting].append(rss.peak_bytes / 2**20)
            tiles[setting] = numbers["tile"]
            print(f"round {round_} {setting:>8s}: {numbers['rate']:.3f} Mvox/s, "
                  f"{numbers['blocks']} blocks of tile {numbers['tile']}, peak "
                  f"{rss.peak_bytes / 2**20:.0f} MiB ({time.perf_counter() - started:.0f} s)",
                  flush=True)
    base = max(rates[args.settings[0]])
    print(f"best of {args.rounds}, ratio to {args.settings[0]}:")
    for setting in args.settings:
        print(f"  {setting:>8s} (tile {tiles[setting]}): {max(rates[setting]):.3f} Mvox/s "
              f"= {max(rates[setting]) / base:.2f}x, peak {max(peaks[setting]):.0f} MiB")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
