"""The workers' cache of decoded input chunks against reading every window's chunks.

    python bench/read_cache.py [--parts gpu-host workers cpu s3] [--size 16384]
                               [--workers 2 4] [--rounds 3]

A block's read window reaches its neighbours' chunks by the model's halo, so without
the cache a 1024 px-chunked image's chunks are each read and decoded by up to four
2048 px blocks (``pipeline/chunk_cache.py``). Each part runs the same blocks with the
cache off (``read_cache_bytes=0``, the baseline) and on (the engine's default),
alternating, and prints the ratio of the two:

* ``gpu-host``: one GPU worker's host path, the device simulated
  (``bench/gpu_feed.py``: one worker process, 2 threads, a block holds the device for
  its pixels at 593 Mpx/s, the demo model on an H100): steady Mpx/s and the worker's
  CPU per block, on a ``--size`` image (default 16384 x 16384);
* ``workers``: ``--workers`` worker processes of one thread, each with its own device
  simulated as above (several processes per GPU, or a CPU cluster), with the cache
  on, the blocks handed out in plan order to whichever worker dask picks (the
  baseline: neighbouring blocks land on different workers, which each decode the
  chunks they share) and in stripes that follow each worker (``engine/feed.py``, the
  default): Mpx/s over the run and the chunks decoded per block, summed over the
  workers;
* ``cpu``: the default local CPU cluster with the shipped demo model's real forward
  passes, Mpx/s over the blocks, on an 8192 x 8192 image (``--cpu-size``);
* ``s3``: the read windows of every block of the plan in order, in one process, from
  moto's S3 server on loopback (``tests/s3_server.py``; the test extra): ms per block,
  on a ``--s3-size`` image (default 8192).

Every part prints the chunks decoded per block with the cache on, against the chunks
each window touches.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from common import bench_model, synthetic_input, workdir
from gpu_feed import one_run

ON = "cache on"
OFF = "cache off"


def gpu_host(image: str, model: str, work: Path, rounds: int, gpu_mpxs: float) -> None:
    from unet_tiles.engine.blocks import READ_CACHE_BYTES
    from unet_tiles.engine.cluster import GPU_WORKER_MALLOC

    budgets = {OFF: 0, ON: READ_CACHE_BYTES}
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in budgets}
    for _ in range(rounds):
        for name, budget in budgets.items():
            runs[name].append(one_run(image, model, work, 2, gpu_mpxs, 2048,
                                      GPU_WORKER_MALLOC, read_cache_bytes=budget))
    print(f"gpu-host: one worker x 2 threads, device simulated at {gpu_mpxs:g} Mpx/s, "
          f"best of {rounds}")
    print(f"  {'':10s} {'Mpx/s':>7s} {'ratio':>6s} {'device busy':>12s} "
          f"{'host CPU ms/block':>18s} {'CPU ratio':>10s}")
    base_rate = max(r for r, _ in runs[OFF])
    base_cpu = statistics.median(c for _, c in runs[OFF])
    for name, results in runs.items():
        rate = max(r for r, _ in results)
        cpu = statistics.median(c for _, c in results)
        print(f"  {name:10s} {rate:7.1f} {rate / base_rate:6.2f} {rate / gpu_mpxs:12.2f} "
              f"{cpu * 1e3:18.1f} {base_cpu / cpu:10.2f}")
    print("  per-round rates off / on: " + ", ".join(
        f"{a:.1f} / {b:.1f}" for (a, _), (b, _) in zip(runs[OFF], runs[ON], strict=True)))


def workers(image: str, model: str, work: Path, rounds: int, gpu_mpxs: float,
            counts: list[int]) -> None:
    from gpu_feed import simulated_cluster

    from unet_tiles.engine.blocks import READ_CACHE_BYTES, run_plan
    from unet_tiles.engine.cluster import GPU_WORKER_MALLOC
    from unet_tiles.engine.run import SegmentRequest, validate

    def decoded() -> int:
        from unet_tiles.engine.blocks import _input_chunks

        cache = _input_chunks(READ_CACHE_BYTES)
        return cache.misses if cache is not None else 0

    ways = {"plan order": False, "stripes": True}
    results: dict[tuple[int, str], list[tuple[float, float]]] = {
        (n, way): [] for n in counts for way in ways}
    output = work / "workers-out.zarr"
    for _ in range(rounds):
        for n in counts:
            for way, follow in ways.items():
                shutil.rmtree(output, ignore_errors=True)
                run = validate(SegmentRequest(input=image, output=str(output),
                                              model_dir=model, device="cpu"))
                # 8 GiB each: the cache's budget is not cut to a sixteenth of the limit.
                with simulated_cluster(run, gpu_mpxs, GPU_WORKER_MALLOC, n_workers=n,
                                       threads_per_worker=1, memory_limit="8GiB") as client:
                    with run.locked():
                        run.prepare()
                        summary = run_plan(client, run.plan, run.job, progress=False,
                                           follow_workers=follow)
                    chunks = sum(client.run(decoded).values())
                results[(n, way)].append((summary.megapixels_per_s,
                                          chunks / summary.blocks_done))
    shutil.rmtree(output, ignore_errors=True)
    print(f"workers: 1-thread workers, each device simulated at {gpu_mpxs:g} Mpx/s, cache "
          f"on, best of {rounds}")
    print(f"  {'workers':>7s} {'blocks to':>12s} {'Mpx/s':>7s} {'ratio':>6s} "
          f"{'chunks decoded/block':>21s} {'ratio':>6s}")
    for n in counts:
        base_rate = max(r for r, _ in results[(n, "plan order")])
        base_chunks = min(c for _, c in results[(n, "plan order")])
        for way in ways:
            rate = max(r for r, _ in results[(n, way)])
            chunks = min(c for _, c in results[(n, way)])
            print(f"  {n:7d} {way:>12s} {rate:7.1f} {rate / base_rate:6.2f} {chunks:21.2f} "
                  f"{chunks / base_chunks:6.2f}")


def cpu(image: str, model: str, work: Path, rounds: int) -> None:
    from unet_tiles.engine.blocks import READ_CACHE_BYTES
    from unet_tiles.engine.cluster import connect
    from unet_tiles.engine.run import SegmentRequest, validate

    budgets = {OFF: 0, ON: READ_CACHE_BYTES}
    rates: dict[str, list[float]] = {name: [] for name in budgets}
    output = work / "cpu-out.zarr"
    for _ in range(rounds):
        for name, budget in budgets.items():
            shutil.rmtree(output, ignore_errors=True)
            run = validate(SegmentRequest(input=image, output=str(output), model_dir=model))
            run.job = replace(run.job, read_cache_bytes=budget)
            with connect("cpu") as (client, info), run.locked():
                run.prepare()
                summary = run.execute(client, info, progress=False)
            rates[name].append(summary.megapixels_per_s)
            print(f"  {name}: {summary.megapixels_per_s:.2f} Mpx/s over the blocks",
                  flush=True)
    shutil.rmtree(output, ignore_errors=True)
    best_off, best_on = max(rates[OFF]), max(rates[ON])
    paired = [b / a for a, b in zip(rates[OFF], rates[ON], strict=True)]
    print(f"cpu: default local cluster, demo model, best of {rounds}: cache off "
          f"{best_off:.2f}, on {best_on:.2f} Mpx/s, ratio {best_on / best_off:.3f}; paired "
          + ", ".join(f"{r:.3f}" for r in paired))


def s3(image: str, model: str, work: Path, rounds: int) -> None:
    import os

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from s3_server import S3, start_server

    from unet_tiles.engine.blocks import READ_CACHE_BYTES
    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.pipeline.chunk_cache import ChunkCache
    from unet_tiles.pipeline.window import read_window

    with start_server(work / "moto.log") as server:
        bucket = S3(endpoint=server.endpoint, key_id="bench", secret="bench", bucket="bench")
        os.environ.update(bucket.env())
        bucket.fs().mkdir(bucket.bucket)
        url = bucket.upload(image, "image.zarr")
        run = validate(SegmentRequest(input=url, output=str(work / "s3-out.zarr"),
                                      model_dir=model))
        blocks = list(run.plan)
        array = run.source.open()
        best = {OFF: float("inf"), ON: float("inf")}
        decoded = 0
        for _ in range(rounds):
            for name in (OFF, ON):
                cache = ChunkCache(READ_CACHE_BYTES) if name == ON else None
                started = time.perf_counter()
                for block in blocks:
                    read_window(array, run.source, block, cache=cache)
                best[name] = min(best[name], (time.perf_counter() - started) / len(blocks))
                decoded = cache.misses if cache is not None else decoded
        touched = _chunks_touched(run)
    print(f"s3: the windows of {len(blocks)} blocks of 2048 px read in order from moto's "
          f"server on loopback, best of {rounds}")
    for name in (OFF, ON):
        print(f"  {name:10s} {best[name] * 1e3:7.1f} ms/block")
    print(f"  ratio {best[OFF] / best[ON]:.2f}x; chunk GETs and decodes per block: "
          f"{touched:.1f} without the cache, {decoded / len(blocks):.1f} with it")


def _chunks_touched(run: Any) -> float:
    from unet_tiles.pipeline.window import chunk_keys, input_region

    array = run.source.open()
    blocks = list(run.plan)
    return sum(len(chunk_keys(array, input_region(run.source, b)[0])) for b in blocks) / len(
        blocks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--parts", nargs="+", default=["gpu-host", "workers", "cpu", "s3"],
                        choices=["gpu-host", "workers", "cpu", "s3"])
    parser.add_argument("--workers", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--size", type=int, default=16384, help="the gpu-host image")
    parser.add_argument("--cpu-size", type=int, default=8192)
    parser.add_argument("--s3-size", type=int, default=8192)
    parser.add_argument("--gpu-mpxs", type=float, default=593.0)
    parser.add_argument("--rounds", type=int, default=3, help="best of this many")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)
    work = workdir("unet-tiles-read-cache-")
    try:
        model = bench_model(args.model, work)
        if "gpu-host" in args.parts:
            gpu_host(synthetic_input(work, args.size), model, work, args.rounds, args.gpu_mpxs)
        if "workers" in args.parts:
            workers(synthetic_input(work, args.size), model, work, args.rounds, args.gpu_mpxs,
                    args.workers)
        if "cpu" in args.parts:
            cpu(synthetic_input(work, args.cpu_size), model, work, args.rounds)
        if "s3" in args.parts:
            s3(synthetic_input(work, args.s3_size), model, work, args.rounds)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
