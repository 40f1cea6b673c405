"""Model-only speed per tile size, one torch thread, tiles in memory, several models.

    python bench/tile_sizes.py [--seconds 4] [--tiles 256 512 1024]

For the demo model's architecture, a depth-3 16-channel U-Net and the paper's
(depth 4, 64 channels): output megapixels per second of one valid tile of each
size, measured back to back in one run. How the default 2D tile (512 px) was
chosen against 1024 px (bench/README.md, "Memory").
"""

from __future__ import annotations

import argparse
import time

MODELS = {"demo (depth 3, 8 ch)": (3, 8), "depth 3, 16 ch": (3, 16),
          "paper (depth 4, 64 ch)": (4, 64)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="per tile size and model")
    parser.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024])
    args = parser.parse_args()
    import torch

    from unet_tiles.model.unet import UNetConfig, build_unet

    torch.set_num_threads(1)
    for name, (depth, base) in MODELS.items():
        model = build_unet(UNetConfig(depth=depth, base_channels=base)).eval()
        rates = []
        for tile in args.tiles:
            size_in = model.valid_size(tile + 2 * model.halo[0])
            size_out = model.output_size(size_in) or 0
            x = torch.zeros(1, 1, size_in, size_in)
            with torch.inference_mode():
                model(x)
                started, count = time.perf_counter(), 0
                while time.perf_counter() - started < args.seconds:
                    model(x)
                    count += 1
            rates.append(size_out**2 * count / (time.perf_counter() - started) / 1e6)
        shown = ", ".join(f"{t} px {r:.2f}" for t, r in zip(args.tiles, rates, strict=True))
        best = args.tiles[max(range(len(rates)), key=rates.__getitem__)]
        print(f"{name:24s} Mpx/s out: {shown}; fastest {best} px", flush=True)


if __name__ == "__main__":
    main()
