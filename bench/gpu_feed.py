"""Can one worker's host path keep a fast GPU busy? Simulated on CPU, no GPU needed.

    python bench/gpu_feed.py [--gpu-mpxs 593] [--threads 1 2] [--size 16384]
                             [--block-sizes 2048 4096] [--rounds 2]

A GPU worker (``engine.cluster._local_cuda``: one process, ``T`` threads, ``T`` units
of the ``GPU`` resource, one per block task) runs the engine's own ``run_plan`` /
``process_block`` on a real zarr input into a real output made by ``Run.prepare``.
Only the device is simulated: in the worker process ``predict.predict_block`` is
replaced by one that holds a process-wide lock (the engine's ``device_lock``) for the
block's GPU time, ``block pixels / --gpu-mpxs``, sleeping as a CUDA synchronisation
does (the GIL released), and hands back the labels a class argmax on the device and
one copy back would give (the window's centre thresholded: real, compressible data).
Reading and decoding the chunks, the mirror gather, encoding and writing the chunks,
the done-markers and dask's scheduling stay real.

Each thread count runs with the workers' malloc settings as distributed leaves them
(its nanny sets ``MALLOC_TRIM_THRESHOLD_=65536``) and as unet-tiles' CUDA clusters
set them (``cluster.GPU_WORKER_MALLOC``), alternating. For each, a steady rate over
the blocks after the first ``T`` and before the last ``T`` (each worker thread's
first and last block are the run's start and tail, which a long run amortises), its
ratio to distributed's defaults, and:

* ``device busy``: that rate over ``--gpu-mpxs``, the ratio issue 12's GPU target
  asks of the real run (end to end against model-only; at least 0.5 for the demo
  model, whose H100 model-only rate, 593 Mpx/s with float16 autocast, is the
  default here: bench/README.md, "The CUDA path");
* the host's CPU per block in the worker process (what each thread must do between
  forward passes), and the rate with ``--gpu-mpxs 0`` (no device time at all): what
  the host path alone delivers with ``T`` threads on this machine.

With several ``--block-sizes`` each is run the same way, interleaved with the others,
and the host's CPU per megapixel is given against the first size's: the per-block
costs (the chunk check, the done-marker, scheduling, every store request's thread
hops) spread over more pixels in a larger block.

Thread counts above this machine's cores show what the GIL and zarr's I/O loop allow
when the cores run out, not what a GPU host with more cores gets. The real GPU path
also pins the window and copies it over (``predict_block``), about a millisecond
for a 2048 px block's uint8 window, not simulated here.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from common import bench_model, simulated_result, synthetic_input, workdir

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np

    from unet_tiles.pipeline.plan import Block


def install_simulated_device(gpu_mpxs: float) -> None:
    """Replace ``predict_block`` (and the model load) in this worker process."""
    from unet_tiles.pipeline import predict

    device = threading.Lock()

    def no_model(model_dir: str, model_hash: str, device: str,
                 channels_last: bool = False) -> None:
        return None

    def simulated_predict_block(model: Any, window: np.ndarray, block: Block,
                                **_: Any) -> predict.BlockResult:
        gpu_s = block.write.size / (gpu_mpxs * 1e6) if gpu_mpxs else 0.0
        with device:
            time.sleep(gpu_s)
            # Inside the lock, as predict_block copies the labels back under it.
            result: predict.BlockResult = simulated_result(window, block)
        return result

    predict.cached_model = no_model  # type: ignore[assignment]
    predict.predict_block = simulated_predict_block  # type: ignore[assignment]


def _process_cpu() -> float:
    times = os.times()
    return times.user + times.system


def steady_rate(stamps: list[float], pixels_per_block: int, skip: int) -> float:
    """Mpx/s between the ``skip``-th completion and the ``skip``-th from the end."""
    inner = stamps[skip:len(stamps) - skip]
    if len(inner) < 2:
        raise SystemExit(f"only {len(stamps)} blocks: pass a larger --size or a smaller "
                         "--block-size")
    return (len(inner) - 1) * pixels_per_block / (inner[-1] - inner[0]) / 1e6


@contextlib.contextmanager
def simulated_cluster(run: Any, gpu_mpxs: float, environ: dict[str, str] | None,
                      **cluster: Any) -> Iterator[Any]:
    """A client of a fresh local cluster of worker processes (``cluster``: LocalCluster's
    sizes) whose device is simulated, warmed for ``run``; ``environ`` for the workers."""
    from distributed import Client, LocalCluster

    from unet_tiles.engine.cluster import _local_config
    from unet_tiles.engine.warm import warm_workers

    with _local_config(environ), LocalCluster(
            processes=True, host="127.0.0.1", dashboard_address=None,
            **cluster) as local, Client(local) as client:
        client.run(install_simulated_device, gpu_mpxs)
        # torch and the engine imported before the first block; no forward pass to warm.
        warm_workers(client, replace(run.job, warm_tile=None))
        yield client


def one_run(image: str, model: str, work: Any, threads: int, gpu_mpxs: float,
            block: int, environ: dict[str, str] | None = None,
            read_cache_bytes: int | None = None) -> tuple[float, float]:
    """(steady Mpx/s, worker CPU s per block) of one run on a fresh one-worker cluster;
    ``read_cache_bytes``: the workers' cache of decoded input chunks (None: the
    engine's default)."""
    from unet_tiles.engine.blocks import run_plan
    from unet_tiles.engine.run import SegmentRequest, validate

    output = work / "out.zarr"
    shutil.rmtree(output, ignore_errors=True)
    run = validate(SegmentRequest(input=image, output=str(output), model_dir=model,
                                  block_size=block, device="cpu"))
    if read_cache_bytes is not None:
        run.job = replace(run.job, read_cache_bytes=read_cache_bytes)
    with simulated_cluster(run, gpu_mpxs, environ, n_workers=1, threads_per_worker=threads,
                           resources={"GPU": threads}) as client:
        stamps: list[float] = []
        with run.locked():
            run.prepare()
            cpu_before = next(iter(client.run(_process_cpu).values()))
            run_plan(client, run.plan, run.job, progress=False, resources={"GPU": 1},
                     on_block=lambda done, total: stamps.append(time.perf_counter()))
            cpu = next(iter(client.run(_process_cpu).values())) - cpu_before
    shutil.rmtree(output, ignore_errors=True)
    return steady_rate(stamps, block * block, threads), cpu / len(run.plan)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpu-mpxs", type=float, default=593.0,
                        help="the model-only rate simulated (default: the demo model on "
                             "an H100, float16)")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--size", type=int, default=16384)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[2048])
    parser.add_argument("--rounds", type=int, default=2, help="best of this many")
    parser.add_argument("--model", default=None)
    args = parser.parse_args(argv)

    from unet_tiles.engine.cluster import GPU_WORKER_MALLOC

    # The workers' malloc settings: distributed's own (its nanny's trim threshold) and
    # what unet-tiles' CUDA clusters give their workers (engine/cluster.py).
    environs: dict[str, dict[str, str] | None] = {
        "distributed's defaults": None, "unet-tiles' GPU workers": GPU_WORKER_MALLOC}
    work = workdir("unet-tiles-gpu-feed-")
    try:
        image = synthetic_input(work, args.size)
        model = bench_model(args.model, work)
        cores = len(os.sched_getaffinity(0))
        gpu_ms = {b: b**2 / (args.gpu_mpxs * 1e6) * 1e3 for b in args.block_sizes}
        print(f"{args.size} x {args.size} uint8, blocks of "
              f"{', '.join(f'{b} px ({(args.size // b) ** 2})' for b in args.block_sizes)}, "
              f"labels; simulated device {args.gpu_mpxs:g} Mpx/s ("
              f"{', '.join(f'{ms:.1f}' for ms in gpu_ms.values())} ms per block); {cores} "
              f"cores; best of {args.rounds}, settings interleaved")
        settings = [(b, t, e, g) for b in args.block_sizes for t in args.threads
                    for e in environs for g in (args.gpu_mpxs, 0.0)]
        results: dict[tuple[int, int, str, float], list[tuple[float, float]]] = {
            s: [] for s in settings}
        for _ in range(args.rounds):
            for block, threads, name, gpu in settings:
                results[(block, threads, name, gpu)].append(one_run(
                    image, model, work, threads, gpu, block, environs[name]))
        print(f"{'workers':24s} block threads  Mpx/s  ratio  device busy  host CPU ms/block"
              "  CPU/Mpx vs first block  host alone Mpx/s")
        for block in args.block_sizes:
            for threads in args.threads:
                base = max(r for r, _ in results[(block, threads, next(iter(environs)),
                                                  args.gpu_mpxs)])
                for name in environs:
                    runs = results[(block, threads, name, args.gpu_mpxs)]
                    rate = max(r for r, _ in runs)
                    cpu = statistics.median(c for _, c in runs)
                    first = statistics.median(c for _, c in results[
                        (args.block_sizes[0], threads, name, args.gpu_mpxs)])
                    per_mpx = (cpu / block**2) / (first / args.block_sizes[0] ** 2)
                    alone = max(r for r, _ in results[(block, threads, name, 0.0)])
                    print(f"{name:24s} {block:5d} {threads:7d} {rate:6.1f} {rate / base:6.2f} "
                          f"{rate / args.gpu_mpxs:12.2f} {cpu * 1e3:18.1f} {per_mpx:23.2f} "
                          f"{alone:17.1f}")
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)


if __name__ == "__main__":
    main()
