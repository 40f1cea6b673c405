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
import threading
import time

import psutil
from common import bench_model, synthetic_input, workdir


class RssSamples:
    """(time, summed RSS of the process tree) every ``interval_s``, in a thread."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for proc in [me, *me.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            self.samples.append((time.monotonic(), total))
            time.sleep(self.interval_s)

    def peak_between(self, start: float, stop: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= stop), default=0)

    def __enter__(self) -> RssSamples:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


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
