"""How busy the workers' threads are with blocks during an end-to-end run.

    python bench/worker_busy.py [--size 8192] [--model DIR] [--rounds 3]

Runs ``unet-tiles segment`` with its defaults on a generated SIZE x SIZE image, on
a local CPU cluster started as the engine starts it, and reads the scheduler's task
stream: for each round, the sum of the blocks' compute time over (threads x the
run's block seconds), and each worker's blocks, first start and last end. A
fraction near 1 says the end-to-end rate is the blocks' own rate: whatever
separates it from the model-only ceiling (bench/throughput.py) is inside the
blocks, not in the scheduling, the feed or the last block's tail.
"""

from __future__ import annotations

import argparse
import shutil
from typing import Any

from common import bench_model, synthetic_input, workdir


def compute_spans(stream: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(start, stop, worker) of every block task's compute."""
    return [(part["start"], part["stop"], task["worker"]) for task in stream
            if str(task["key"]).startswith("block-")
            for part in task["startstops"] if part["action"] == "compute"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model", default=None)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from distributed import get_task_stream

    from unet_tiles import segment
    from unet_tiles.engine.cluster import connect

    work = workdir("unet-tiles-busy-")
    model = bench_model(args.model, work)
    src = synthetic_input(work, args.size)
    out = work / "out.zarr"
    with connect("cpu") as (client, _info):
        threads = sum(client.nthreads().values())
        print(f"model {model}, image {args.size} x {args.size}, {len(client.nthreads())} "
              f"workers, {threads} threads")
        for round_ in range(1, args.rounds + 1):
            shutil.rmtree(out, ignore_errors=True)
            with get_task_stream(client) as stream:
                summary = segment(src, str(out), model, cluster=client.scheduler.address,
                                  progress=False)
            spans = compute_spans(stream.data)
            first = min(start for start, _, _ in spans)
            busy = sum(stop - start for start, stop, _ in spans)
            print(f"round {round_}: {summary.megapixels_per_s:.2f} Mpx/s over the blocks "
                  f"({summary.seconds:.2f} s), {len(spans)} blocks of {busy / len(spans):.2f} s "
                  f"on average: threads busy with blocks {busy / (threads * summary.seconds):.3f}"
                  " of the run's block seconds")
            for worker in sorted({w for _, _, w in spans}):
                mine = [(start, stop) for start, stop, w in spans if w == worker]
                print(f"  {worker}: {len(mine)} blocks, first starts at "
                      f"+{min(s for s, _ in mine) - first:.2f} s, last ends at "
                      f"+{max(e for _, e in mine) - first:.2f} s")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
