"""Model-only speed and memory per tile size, in a CPU worker's conditions, several models.

    python bench/tile_sizes.py [--seconds 2] [--rounds 3] [--tiles 256 512 768 1024 1536]
                               [--tiles-3d 64 96 128] [--models NAME ...]

For the demo model, a depth-3 16-channel U-Net, the paper's (depth 4, 64 channels)
and a 3D model (depth 3, 8 channels): output megapixels (voxels in 3D) per second of
one valid tile of each output size, in a fresh process with one torch thread, the
engine's tensor layout (channels-last on CPU) and the CPU workers' malloc settings
(``engine.benchmark.parallel_rate``, the same measurement as ``unet-tiles bench``'s
scan). Tile sizes alternate within each round so a drifting machine hits every size
alike; each size's median over the rounds is printed with its ratio to the smallest
size's. Then, per size, the memory one forward pass adds to a fresh process under the
same malloc settings (the rise of its peak RSS: what a worker's heap must hold for
that tile), and the engine's default for the model (``engine.run.default_tile``).
How the default tiles were chosen (bench/README.md).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics

from common import DEMO_MODEL, workdir

from unet_tiles.engine.benchmark import environ, parallel_rate
from unet_tiles.engine.run import default_tile

MODELS = {"depth 3, 16 ch": {"depth": 3, "base_channels": 16},
          "paper (depth 4, 64 ch)": {"depth": 4, "base_channels": 64},
          "3D (depth 3, 8 ch)": {"depth": 3, "base_channels": 8, "dims": 3}}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))


def forward_peak_mib(model_dir: str, size_in: int) -> float:
    """MiB this process's peak RSS rises by in its first forward pass of a tile."""
    import torch

    from unet_tiles.pipeline.predict import cached_model, channels_last_on, in_layout

    torch.set_num_threads(1)
    channels_last = channels_last_on("cpu")
    model = cached_model(model_dir, "", "cpu", channels_last)
    dims, channels = model.config.dims, model.config.in_channels
    with torch.inference_mode():
        small = model.valid_size(2 * model.halo[0] + model.divisor)
        model(in_layout(torch.rand(1, channels, *(small,) * dims), channels_last))  # kernels
        x = in_layout(torch.rand(1, channels, *(size_in,) * dims) * 255, channels_last)
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # VmHWM := VmRSS
        before = _status_kib("VmRSS")
        model(x)
        return (_status_kib("VmHWM") - before) / 1024


def fresh_peak_mib(model_dir: str, size_in: int) -> float:
    from unet_tiles.engine.cluster import CPU_WORKER_MALLOC

    with environ(CPU_WORKER_MALLOC), mp.get_context("spawn").Pool(1) as pool:
        return float(pool.apply(forward_peak_mib, (model_dir, size_in)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="per sample")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 768, 1024, 1536])
    parser.add_argument("--tiles-3d", type=int, nargs="+", default=[64, 96, 128])
    parser.add_argument("--models", nargs="+", default=None,
                        help="names to measure (default: all): demo, '16 ch', paper, 3D")
    args = parser.parse_args()
    from unet_tiles.model.files import load_model, save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = workdir("unet-tiles-tiles-")
    model_dirs = {"demo (depth 3, 8 ch)": str(DEMO_MODEL)}
    for name, architecture in MODELS.items():
        model_dirs[name] = str(save_model(
            build_unet(UNetConfig(**architecture), seed=0), work / name.split(" (")[0]))
    for name, model_dir in model_dirs.items():
        if args.models and not any(wanted in name for wanted in args.models):
            continue
        model = load_model(model_dir)
        tiles = sorted(args.tiles_3d if model.config.dims == 3 else args.tiles)
        sizes_in = [model.valid_size(tile + 2 * model.halo[0]) for tile in tiles]
        samples: dict[int, list[float]] = {tile: [] for tile in tiles}
        for _ in range(args.rounds):
            for tile, size_in in zip(tiles, sizes_in, strict=True):
                samples[tile].append(parallel_rate(model_dir, size_in, 1, 1, args.seconds) / 1e6)
        medians = {tile: statistics.median(rates) for tile, rates in samples.items()}
        first = medians[tiles[0]]
        print(f"{name}, default tile {default_tile(model.config)} px; per tile: "
              "Mpx/s out (ratio), MiB one forward pass adds", flush=True)
        for tile, size_in in zip(tiles, sizes_in, strict=True):
            print(f"  tile {tile:5d} (in {size_in:4d}): {medians[tile]:6.3f} "
                  f"({medians[tile] / first:.2f}), {fresh_peak_mib(model_dir, size_in):7.0f} MiB",
                  flush=True)


if __name__ == "__main__":
    main()
