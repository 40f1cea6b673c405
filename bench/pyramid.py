"""The OME layout's pyramid against the level-0 segmentation, in one run.

    python bench/pyramid.py [--size 16384] [--model DIR]

Segments a generated SIZE x SIZE uint8 image with ``--format ome`` (levels halving
y and x down to 512 px) on the default local cluster and prints, from the same
run: the level-0 blocks' time, the pyramid's time and their ratio, and the peak
resident memory (summed over this process and all its children: scheduler,
nannies, workers) while the blocks ran and while the pyramid ran. The pyramid
is built block by block from level 0, so its peak should stay at about one
block per worker, whatever the image.
"""

from __future__ import annotations

import argparse
import shutil
import time

from common import RssSamples, bench_model, synthetic_input, workdir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--model", default=None)
    args = parser.parse_args()
    from unet_tiles import segment

    work = workdir("unet-tiles-pyramid-")
    model = bench_model(args.model, work)
    src = synthetic_input(work, args.size)
    out = work / "out.zarr"
    with RssSamples() as rss:
        summary = segment(src, str(out), model, output_format="ome", progress=False)
        finished = time.monotonic()
    pyramid_start = finished - summary.pyramid_seconds
    blocks_start = pyramid_start - summary.seconds
    levels = sorted(int(p.name) for p in out.iterdir() if p.name.isdigit())
    mib = 2**20
    print(f"{args.size} x {args.size} ({args.size**2 / 1e6:.0f} Mpx), {len(levels)} levels, "
          f"model {model}")
    print(f"level 0 (segmentation): {summary.seconds:.1f} s, peak RSS "
          f"{rss.peak_between(blocks_start, pyramid_start) / mib:.0f} MiB")
    print(f"pyramid (levels 1-{levels[-1]}): {summary.pyramid_seconds:.1f} s, peak RSS "
          f"{rss.peak_between(pyramid_start, finished) / mib:.0f} MiB")
    print(f"pyramid / level-0 time: {summary.pyramid_seconds / summary.seconds:.3f}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
