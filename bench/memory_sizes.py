"""Peak memory of a whole segment run for two image sizes, side by side.

    python bench/memory.py [--sizes 8192 16384] [--model DIR]

Samples the summed resident memory (RSS) of this process and all its children
(scheduler, nannies, workers) every 50 ms while ``unet-tiles segment`` runs
with default settings on generated uint8 images. Bounded memory
(DESIGN.md invariant 2) shows as peaks that do not grow with the image.
"""

from __future__ import annotations

import argparse
import shutil

from common import RssSamples, synthetic_input, workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8192, 16384])
    parser.add_argument("--model", default=None,
                        help="model directory (default: a small depth-2 model, for speed)")
    args = parser.parse_args()
    from unet_tiles import segment
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = workdir("unet-tiles-memory-")
    model = args.model or str(save_model(
        build_unet(UNetConfig(depth=2, base_channels=4, input_scale=(1 / 255,)), seed=0),
        work / "model",
    ))
    results = []
    for size in args.sizes:
        src = synthetic_input(work, size)
        with RssSamples() as peak:
            summary = segment(src, str(work / f"out{size}.zarr"), model, progress=False)
        results.append((size, peak.peak_bytes / 2**20, summary))
        print(f"{size} x {size} ({size * size / 1e6:.0f} Mpx): peak RSS of all processes "
              f"{peak.peak_bytes / 2**20:.0f} MiB, {summary.blocks_done} blocks, "
              f"{summary.seconds:.0f} s", flush=True)
        shutil.rmtree(work / f"out{size}.zarr", ignore_errors=True)
        shutil.rmtree(work / f"image{size}.zarr", ignore_errors=True)
        shutil.rmtree(work / f"truth{size}.zarr", ignore_errors=True)
    (small, small_mib, _), (large, large_mib, _) = results[0], results[-1]
    print(f"peak MiB: {small}^2 -> {small_mib:.0f}, {large}^2 -> {large_mib:.0f}; "
          f"image {large * large / (small * small):.0f}x larger, memory "
          f"{large_mib / small_mib:.2f}x")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
