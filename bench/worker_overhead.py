"""Where a dask worker loses model speed, measured on the same blocks in one run.

    python bench/worker_overhead.py [--size 8192] [--repeats 2]

Every mode runs ``engine.process_block`` (read, predict, write) over all blocks
of a SIZE x SIZE image with one single-threaded process per core:

1. plain processes, blocks on the main thread (the baseline);
2. plain processes, blocks on another thread, glibc's default arenas;
3. as 2 with ``MALLOC_ARENA_MAX=1``;
4. a dask LocalCluster with distributed's default housekeeping;
5. ``unet-tiles``' own local cluster (``cluster.connect("cpu")``).

All get the malloc thresholds of ``cluster.CPU_WORKER_MALLOC``; modes 1-3 and 4
differ from it only in the named setting. Prints Mpx/s, the ratio to mode 1,
the page faults per block (memory given back to the OS and faulted in again)
and, for the dask modes, the CPU seconds of a worker's event-loop thread:
counts that do not drift with the load of a shared machine, as timings do.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import os
import resource
import shutil
import threading
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from common import bench_model, synthetic_input, workdir

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from distributed import Client

    from unet_tiles.engine.blocks import BlockJob
    from unet_tiles.engine.run import Run
    from unet_tiles.pipeline.plan import Block


def _minor_faults() -> int:
    """Page faults of this process so far: tensors freed to the OS fault again."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _main_thread_cpu() -> float:
    """CPU seconds of this process's main thread (a dask worker's event loop)."""
    with open(f"/proc/self/task/{os.getpid()}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _blocks_on_main_thread(job: BlockJob, blocks: list[Block]) -> int:
    from unet_tiles.engine.blocks import process_block

    before = _minor_faults()
    for block in blocks:
        process_block(job, block)
    return _minor_faults() - before


def _blocks_on_a_thread(job: BlockJob, blocks: list[Block]) -> int:
    faults: list[int] = []
    worker = threading.Thread(
        target=lambda: faults.append(_blocks_on_main_thread(job, blocks)))
    worker.start()
    worker.join()
    return faults[0]


def _fresh(work: Path, src: str, model_dir: str) -> Run:
    from unet_tiles.engine.run import SegmentRequest, validate

    out = work / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    run = validate(SegmentRequest(src, str(out), model_dir))
    with run.locked():
        run.prepare()
    return run


# A mode's measurement: seconds for all blocks, page faults, and the mean CPU
# seconds of a dask worker's event-loop thread (None without dask).
Measured = tuple[float, int, float | None]


def pool_mode(target: Callable[[BlockJob, list[Block]], int], environ: dict[str, str],
              run: Run, cores: int) -> Measured:
    """``cores`` spawned processes doing every block, models loaded beforehand."""
    from unet_tiles.engine.warm import warm_worker

    job = replace(run.job, torch_threads=1)
    blocks = list(run.plan)
    from unet_tiles.engine.benchmark import environ as set_environ

    with set_environ(environ), mp.get_context("spawn").Pool(cores) as pool:
        pool.map(warm_worker, [job] * cores)
        started = time.perf_counter()
        faults = pool.starmap(target, [(job, blocks[k::cores]) for k in range(cores)])
        return time.perf_counter() - started, sum(faults), None


def dask_mode(product_cluster: bool, run: Run, cores: int) -> Measured:
    """The engine's blocks phase on a LocalCluster, models loaded beforehand."""
    from unet_tiles.engine.cluster import CPU_WORKER_MALLOC, ClusterInfo, connect
    from unet_tiles.engine.warm import warm_workers

    def measure(client: Client, info: ClusterInfo) -> Measured:
        warm_workers(client, replace(run.job, torch_threads=info.torch_threads))
        before = client.run(_minor_faults)
        loop_before = client.run(_main_thread_cpu)
        with run.locked():
            seconds = run.execute(client, info, progress=False).seconds
        loop = client.run(_main_thread_cpu)
        after = client.run(_minor_faults)
        return (seconds, sum(after[w] - before[w] for w in after),
                sum(loop[w] - loop_before[w] for w in loop) / len(loop))

    if product_cluster:
        with connect("cpu") as (client, info):
            return measure(client, info)
    import dask
    from distributed import Client, LocalCluster

    environ = {**dask.config.get("distributed.nanny.pre-spawn-environ"), **CPU_WORKER_MALLOC}
    with dask.config.set({"distributed.nanny.pre-spawn-environ": environ}), LocalCluster(
        n_workers=cores, threads_per_worker=1, host="127.0.0.1", dashboard_address=None,
        silence_logs=logging.CRITICAL,
    ) as cluster, Client(cluster) as client:
        return measure(client, ClusterInfo("cpu", cores, 1, 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=8192)
    parser.add_argument("--model", default=None)
    parser.add_argument("--repeats", type=int, default=2, help="best of this many rounds")
    args = parser.parse_args()
    from unet_tiles.engine.cluster import CPU_WORKER_MALLOC, usable_cores

    cores = usable_cores()
    work = workdir("unet-tiles-overhead-")
    model_dir = bench_model(args.model, work)
    src = synthetic_input(work, args.size)
    arenas = {k: v for k, v in CPU_WORKER_MALLOC.items() if k != "MALLOC_ARENA_MAX"}
    modes: list[tuple[str, Callable[[Run], Measured]]] = [
        ("processes, main thread", lambda r: pool_mode(
            _blocks_on_main_thread, CPU_WORKER_MALLOC, r, cores)),
        ("processes, a thread, default arenas", lambda r: pool_mode(
            _blocks_on_a_thread, arenas, r, cores)),
        ("processes, a thread, MALLOC_ARENA_MAX=1", lambda r: pool_mode(
            _blocks_on_a_thread, CPU_WORKER_MALLOC, r, cores)),
        ("dask LocalCluster, default housekeeping", lambda r: dask_mode(False, r, cores)),
        ("unet-tiles local cluster", lambda r: dask_mode(True, r, cores)),
    ]
    print(f"{args.size} x {args.size} uint8, {cores} processes x 1 thread, "
          f"best of {args.repeats}, modes interleaved")
    best: dict[str, float] = {}
    faults: dict[str, list[int]] = {}
    loop_cpu: dict[str, list[float]] = {}
    for _ in range(args.repeats):
        for name, measure in modes:
            run = _fresh(work, src, model_dir)
            seconds, count, loop = measure(run)
            best[name] = min(best.get(name, float("inf")), seconds)
            faults.setdefault(name, []).append(count)
            loop_cpu.setdefault(name, []).extend([] if loop is None else [loop])
    base = best[modes[0][0]]
    blocks = len(run.plan)
    print(f"{'mode':42s} {'Mpx/s':>6s}  ratio  page faults per block | worker event-loop "
          "CPU s (each round)")
    for name, _ in modes:
        per_block = ", ".join(f"{count / blocks:.0f}" for count in faults[name])
        loop = ", ".join(f"{s:.2f}" for s in loop_cpu[name]) or "-"
        print(f"{name:42s} {args.size**2 / 1e6 / best[name]:6.2f}  {base / best[name]:5.2f}"
              f"  {per_block} | {loop}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
