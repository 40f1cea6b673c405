"""The scheduler's behaviour at scale, simulated with many lightweight workers.

    python bench/scaling.py [--workers 16 32 64 128 256] [--block-sizes 512 1024]
                            [--sleep 0.15 | --gpu-mpxs 583] [--duration 20] [--quick]

A real dask scheduler in its own process and N workers (one thread each) run
the engine's own ``run_plan`` / ``process_block`` (``unet_tiles/engine/blocks.py``)
on a real zarr input and into a real output made by ``Run.prepare``. Only the
model is simulated: in the worker processes ``pipeline.predict.predict_block``
is replaced by a function that sleeps for the per-block GPU time (``--sleep``
seconds, or the block's pixels at ``--gpu-mpxs`` Mpx/s) and returns labels of
the block's shape (the window's centre thresholded, so the chunks written are
real, compressible data, not fill values zarr would skip). The read
(``window.read_window``, with its missing-chunk check) and the write
(``writer.write_block``: chunks, then the done-marker) stay real.

Layout: the scheduler alone in one process, as in a deployment, so its CPU is
its own; the N workers are ``distributed.Worker`` objects, no nannies, hosted
``--hosts`` to a process on one event loop each. One process per worker
(``LocalCluster(processes=True)``) would be 256 Python processes with torch
imported (``process_block`` imports it), several GiB and more processes than 2
cores can switch between; ``processes=False`` would put the scheduler, every
worker and the client on one event loop under one GIL, so the scheduler's CPU
could not be told apart and the GIL would be the limit, not the scheduler.

Each point measures blocks/s over ``--duration`` seconds after ``--warm``
seconds, beside the ideal ``N / sleep`` and their ratio, and the CPU of the
scheduler, the client (this process) and the worker hosts over the same
window, as a share of one core and in ms per block, plus the machine's busy
share of all cores: whichever is at its limit is what saturates.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common import bench_model, simulated_result

if TYPE_CHECKING:
    from collections.abc import Iterator

    import numpy as np
    from distributed import Client

    from unet_tiles.pipeline.plan import Block

HERE = Path(__file__).resolve()
DEFAULT_WORK = Path("/tmp/unet-tiles-scaling")
# Event-loop housekeeping as in the engine's local clusters
# (unet_tiles/engine/cluster.py LOCAL_CLUSTER_CONFIG), for every process here.
DASK_ENV = {
    "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
    "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s",
    "DASK_DISTRIBUTED__ADMIN__SYSTEM_MONITOR__INTERVAL": "5s",
    "DASK_LOGGING__DISTRIBUTED": "error",
    # One process hosts many workers: fewer OpenMP/BLAS threads than workers.
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


# --- the simulated model (runs in the worker hosts) ---------------------------

def install_fake_model(sleep_s: float, gpu_mpxs: float | None) -> None:
    """Replace ``predict_block`` (and the model load) in this process."""
    from unet_tiles.pipeline import predict

    def fake_cached_model(model_dir: str, model_hash: str, device: str,
                          channels_last: bool = False) -> None:
        return None

    def fake_predict_block(model: Any, window: np.ndarray, block: Block, **_: Any) \
            -> predict.BlockResult:
        started = time.perf_counter()
        result: predict.BlockResult = simulated_result(window, block)
        gpu = block.write.size / (gpu_mpxs * 1e6) if gpu_mpxs else sleep_s
        time.sleep(max(0.0, gpu - (time.perf_counter() - started)))
        return result

    predict.cached_model = fake_cached_model  # type: ignore[assignment]
    predict.predict_block = fake_predict_block  # type: ignore[assignment]


async def _host(address: str, n: int, first: int, sleep_s: float,
                gpu_mpxs: float | None) -> None:
    import asyncio

    from distributed import Worker

    install_fake_model(sleep_s, gpu_mpxs)
    workers = [Worker(address, nthreads=1, name=f"sim-{first + i}", host="127.0.0.1",
                      memory_limit=0, silence_logs=logging.CRITICAL)
               for i in range(n)]
    await asyncio.gather(*workers)
    await asyncio.gather(*(w.finished() for w in workers))


async def _scheduler(address_file: str) -> None:
    from distributed import Scheduler

    async with Scheduler(host="127.0.0.1", port=0, dashboard=False) as scheduler:
        Path(address_file).write_text(scheduler.address)
        await scheduler.finished()


def _role(argv: list[str]) -> None:
    """Entry point of the scheduler and worker-host processes started below."""
    import asyncio

    logging.basicConfig(level=logging.CRITICAL)
    logging.getLogger("distributed").setLevel(logging.CRITICAL)
    if argv[0] == "scheduler":
        asyncio.run(_scheduler(argv[1]))
    else:
        _, address, n, first, sleep_s, gpu = argv
        asyncio.run(_host(address, int(n), int(first), float(sleep_s),
                          float(gpu) or None))


# --- processes ----------------------------------------------------------------

def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **DASK_ENV}
    env["PYTHONPATH"] = os.pathsep.join(
        [str(HERE.parent), str(HERE.parent.parent), env.get("PYTHONPATH", "")])
    with log.open("ab") as out:
        return subprocess.Popen([sys.executable, str(HERE), "--role", *args],
                                stdout=out, stderr=subprocess.STDOUT, env=env)


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in procs:
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def simulated_cluster(n: int, hosts: int, sleep_s: float, gpu_mpxs: float | None,
                      work: Path) -> Iterator[tuple[Client, Any, list[Any]]]:
    """(client, scheduler process, host processes) of a fresh scheduler and N workers."""
    import psutil
    from distributed import Client

    log = work / "processes.log"
    address_file = work / "scheduler-address"
    address_file.unlink(missing_ok=True)
    procs = [_spawn(["scheduler", str(address_file)], log)]
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() or not address_file.read_text():
            if time.monotonic() > deadline or procs[0].poll() is not None:
                raise RuntimeError(f"the scheduler did not start; see {log}")
            time.sleep(0.1)
        address = address_file.read_text()
        hosts = max(1, min(hosts, n))
        first = 0
        for h in range(hosts):
            count = n // hosts + (1 if h < n % hosts else 0)
            procs.append(_spawn(["host", address, str(count), str(first), str(sleep_s),
                                 str(gpu_mpxs or 0)], log))
            first += count
        with Client(address, timeout=60) as client:
            client.wait_for_workers(n, timeout=300)
            yield client, psutil.Process(procs[0].pid), [psutil.Process(p.pid)
                                                         for p in procs[1:]]
    finally:
        _stop(procs[1:])
        _stop(procs[:1])


# --- input --------------------------------------------------------------------

def big_input(work: Path, size: int, chunk: int) -> str:
    """A ``size`` x ``size`` uint8 zarr v3 image: a generated 4096 px nuclei image
    tiled (every chunk written, realistic compression), made once per ``work``."""
    import numpy as np
    import zarr

    from unet_tiles.demo.synth import generate_image

    path = work / f"input{size}-c{chunk}.zarr"
    if (path / "done").exists():
        return str(path)
    patch_size = 4096
    patch_path = work / "patch.zarr"
    if not (patch_path / "zarr.json").exists():
        generate_image(patch_path, work / "patch-truth.zarr", (patch_size, patch_size),
                       chunks=(chunk, chunk))
    patch = np.asarray(zarr.open_array(patch_path, mode="r")[...])
    shutil.rmtree(path, ignore_errors=True)
    array = zarr.create_array(path, shape=(size, size), chunks=(chunk, chunk),
                              dtype="uint8", fill_value=0, dimension_names=("y", "x"))
    reps = -(-size // patch_size)
    strip = np.tile(patch, (1, reps))[:, :size]
    print(f"writing the {size} x {size} input once ({work})", flush=True)
    for y in range(0, size, patch_size):
        rows = min(patch_size, size - y)
        array[y:y + rows, :] = strip[:rows]
    (path / "done").write_text("")
    return str(path)


# --- one point ----------------------------------------------------------------

class _Enough(Exception):
    """Raised from ``run_plan``'s ``on_block`` to end a point's measurement."""


@dataclass
class Point:
    workers: int
    block: int
    sleep_s: float
    blocks: int
    seconds: float
    scheduler_cpu: float
    client_cpu: float
    hosts_cpu: float
    machine_busy: float
    ran_out: bool
    load: float = 0.0

    @property
    def rate(self) -> float:
        return self.blocks / self.seconds if self.seconds > 0 else 0.0

    @property
    def ideal(self) -> float:
        return self.workers / self.sleep_s

    @property
    def mpxs(self) -> float:
        return self.rate * self.block * self.block / 1e6

    def row(self) -> str:
        def ms(cpu: float) -> str:
            return f"{1000 * cpu / self.blocks:.2f}" if self.blocks else "-"

        wall = self.seconds or 1.0
        return (f"| {self.workers} | {self.block} | {1000 * self.sleep_s:.2f} "
                f"| {self.ideal:.0f} | {self.rate:.1f}{' *' if self.ran_out else ''} "
                f"| {self.rate / self.ideal:.2g} | {self.mpxs:.1f} "
                f"| {100 * self.scheduler_cpu / wall:.0f} ({ms(self.scheduler_cpu)}) "
                f"| {100 * self.client_cpu / wall:.0f} ({ms(self.client_cpu)}) "
                f"| {100 * self.hosts_cpu / wall:.0f} ({ms(self.hosts_cpu)}) "
                f"| {100 * self.machine_busy:.0f} | {self.load:.1f} |")


HEADER = ("| workers | block px | sleep ms | ideal blocks/s | blocks/s | efficiency | Mpx/s "
          "| scheduler % of a core (ms/block) | client % (ms/block) "
          "| worker hosts % (ms/block) | machine busy % | load (1 min) |\n"
          "|---|---|---|---|---|---|---|---|---|---|---|---|")


def _cpu(proc: Any) -> float:
    times = proc.cpu_times()
    return float(times.user + times.system)


def _snapshot(scheduler: Any, hosts: list[Any]) -> dict[str, Any]:
    import psutil

    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0)
    return {"t": time.perf_counter(), "scheduler": _cpu(scheduler),
            "client": _cpu(psutil.Process()), "hosts": sum(_cpu(h) for h in hosts),
            "idle": idle, "total": sum(machine)}


def measure(client: Client, scheduler: Any, hosts: list[Any], n: int, block: int,
            sleep_s: float, gpu_mpxs: float | None, image: str, model: str, work: Path,
            warm: float, duration: float) -> Point:
    from unet_tiles.engine.blocks import run_plan
    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.engine.warm import warm_workers

    output = work / f"out-{n}-{block}.zarr"
    shutil.rmtree(output, ignore_errors=True)
    run = validate(SegmentRequest(input=image, output=str(output), model_dir=model,
                                  block_size=block))
    # As Run.execute does: import torch and "load the model" (here the fake's
    # no-op) on every worker before the first block.
    warm_workers(client, run.job)
    in_flight = 2 * n  # run_plan's default: 2 per worker thread
    last_full = len(run.plan) - in_flight  # afterwards fewer blocks are in flight
    state: dict[str, Any] = {"start": None, "end": None, "first": 0, "count": 0}
    started = time.perf_counter()

    def on_block(done: int, total: int) -> None:
        now = time.perf_counter()
        if state["start"] is None and now - started >= warm:
            state["start"], state["first"] = _snapshot(scheduler, hosts), done
        if state["start"] is not None and (now - started >= warm + duration
                                           or done >= last_full):
            state["end"], state["count"] = _snapshot(scheduler, hosts), done
            raise _Enough

    with run.locked():
        run.prepare()
        # Blocks are whole output chunks of the block size (plan.output_chunks).
        with contextlib.suppress(_Enough):
            run_plan(client, run.plan, run.job, on_block=on_block, progress=False)
    begin, end = state["start"], state["end"]
    # Release what is left (the raise dropped run_plan's futures) and let the
    # blocks already running finish before the next point.
    gc.collect()
    deadline = time.monotonic() + 120
    while client.run_on_scheduler(_task_count) and time.monotonic() < deadline:
        time.sleep(0.2)
    shutil.rmtree(output, ignore_errors=True)
    if begin is None or end is None:
        raise RuntimeError(f"the {block} px image of {len(run.plan)} blocks ran out during "
                           "the warm-up; pass a larger --size")
    total = end["total"] - begin["total"]
    busy = 1.0 - (end["idle"] - begin["idle"]) / total if total > 0 else 0.0
    actual = (block / (gpu_mpxs * 1e6)) * block if gpu_mpxs else sleep_s
    return Point(n, block, actual, state["count"] - state["first"], end["t"] - begin["t"],
                 end["scheduler"] - begin["scheduler"], end["client"] - begin["client"],
                 end["hosts"] - begin["hosts"], busy, state["count"] >= last_full,
                 os.getloadavg()[0])


def _task_count(dask_scheduler: Any) -> int:
    return len(dask_scheduler.tasks)


# --- main ---------------------------------------------------------------------

def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[512, 1024])
    parser.add_argument("--sleep", type=float, default=0.15,
                        help="simulated GPU seconds per block, any block size (default 0.15)")
    parser.add_argument("--gpu-mpxs", type=float, default=None,
                        help="instead of --sleep: GPU time = block pixels / this rate "
                             "(583: the demo model on an H100, bench/README.md)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds measured")
    parser.add_argument("--warm", type=float, default=3.0, help="seconds before measuring")
    parser.add_argument("--hosts", type=int, default=4, help="worker-host processes")
    parser.add_argument("--size", type=int, default=40960, help="input edge in px")
    parser.add_argument("--chunk", type=int, default=512, help="input chunk edge in px")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK,
                        help="folder for the input (kept between runs) and outputs")
    parser.add_argument("--quick", action="store_true",
                        help="a ~2 minute check: 16 and 256 workers, 8 s per point")
    parser.add_argument("--json", type=Path, default=None, help="also write the points here")
    args = parser.parse_args(argv)
    if args.quick:
        args.workers, args.duration, args.warm = [16, 256], 8.0, 2.0
    for name in DASK_ENV:
        os.environ.setdefault(name, DASK_ENV[name])
    logging.getLogger("distributed").setLevel(logging.ERROR)
    args.work.mkdir(parents=True, exist_ok=True)
    import psutil

    model = bench_model(None, args.work)
    image = big_input(args.work, args.size, args.chunk)
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; scheduler in "
          f"its own process, workers in {args.hosts} host processes; "
          + (f"GPU time = block px / {args.gpu_mpxs} Mpx/s" if args.gpu_mpxs
             else f"GPU time {args.sleep} s per block"), flush=True)
    points: list[Point] = []
    for n in args.workers:
        started = time.perf_counter()
        with simulated_cluster(n, args.hosts, args.sleep, args.gpu_mpxs, args.work) \
                as (client, scheduler, hosts):
            print(f"{n} workers up in {time.perf_counter() - started:.1f} s", flush=True)
            for block in args.block_sizes:
                point = measure(client, scheduler, hosts, n, block, args.sleep,
                                args.gpu_mpxs, image, model, args.work, args.warm,
                                args.duration)
                points.append(point)
                print(point.row(), flush=True)
    print("\n" + HEADER)
    for point in sorted(points, key=lambda p: (p.block, p.workers)):
        print(point.row())
    print(f"\n{psutil.cpu_count()} cores; '*': the image ran out before the window "
          "ended (the rate is over the blocks done while all were in flight)")
    if args.json:
        args.json.write_text(json.dumps([{**p.__dict__, "rate": p.rate} for p in points],
                                        indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--role":
        _role(sys.argv[2:])
    else:
        main()
