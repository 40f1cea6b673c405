"""Model-only speed per tile size, in a CPU worker's conditions, several models.

    python bench/tile_sizes.py [--seconds 2] [--rounds 3] [--tiles 256 512 768 1024 1536]

For the demo model, a depth-3 16-channel U-Net and the paper's (depth 4, 64
channels): output megapixels per second of one valid tile of each output size, in a
fresh process with one torch thread, the engine's tensor layout (channels-last on
CPU) and the CPU workers' malloc settings (``engine.benchmark.parallel_rate``, the
same measurement as ``unet-tiles bench``'s scan). Tile sizes alternate within each
round so a drifting machine hits every size alike; each size's median over the
rounds is printed with its ratio to the smallest default, 512 px, and the engine's
default for that model is named (``engine.run.default_tile``). How the default 2D
tile was chosen (bench/README.md, "Memory").
"""

from __future__ import annotations

import argparse
import statistics

from common import DEMO_MODEL, workdir

from unet_tiles.engine.benchmark import parallel_rate
from unet_tiles.engine.run import DEFAULT_TILE, default_tile

MODELS = {"depth 3, 16 ch": (3, 16), "paper (depth 4, 64 ch)": (4, 64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per sample")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 768, 1024, 1536])
    parser.add_argument("--models", nargs="+", default=None,
                        help="names to measure (default: all): demo, 'depth 3, 16 ch', ...")
    args = parser.parse_args()
    from unet_tiles.model.files import load_model, save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = workdir("unet-tiles-tiles-")
    model_dirs = {"demo (depth 3, 8 ch)": str(DEMO_MODEL)}
    for name, (depth, base) in MODELS.items():
        model_dirs[name] = str(save_model(
            build_unet(UNetConfig(depth=depth, base_channels=base), seed=0), work / name))
    tiles = sorted({*args.tiles, DEFAULT_TILE[2]})
    for name, model_dir in model_dirs.items():
        if args.models and not any(wanted in name for wanted in args.models):
            continue
        model = load_model(model_dir)
        sizes_in = [model.valid_size(tile + 2 * model.halo[0]) for tile in tiles]
        samples: dict[int, list[float]] = {tile: [] for tile in tiles}
        for _ in range(args.rounds):
            for tile, size_in in zip(tiles, sizes_in, strict=True):
                samples[tile].append(parallel_rate(model_dir, size_in, 1, 1, args.seconds) / 1e6)
        medians = {tile: statistics.median(rates) for tile, rates in samples.items()}
        default = medians[DEFAULT_TILE[2]]
        shown = ", ".join(f"{tile} px {rate:.2f} ({rate / default:.2f})"
                          for tile, rate in medians.items())
        best = max(medians, key=medians.__getitem__)
        print(f"{name:24s} Mpx/s out (ratio to {DEFAULT_TILE[2]} px): {shown}; fastest {best} "
              f"px, the default {default_tile(model.config)} px", flush=True)


if __name__ == "__main__":
    main()
