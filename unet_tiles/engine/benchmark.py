"""End-to-end throughput against the model-only ceiling, measured side by side.

``unet-tiles bench`` and ``bench/throughput.py`` both measure this way:

1. **Scan**: the model's *output* megapixels/s on tiles already in memory, for
   tile sizes from 256 to 2048, as one process with all cores as torch threads
   and as one single-threaded process per core (each process gets the CPU
   workers' malloc settings, ``cluster.CPU_WORKER_MALLOC``). The best
   configuration is the ceiling's.
2. **Rounds**: the end-to-end job (``engine.run.segment`` with the defaults on a
   generated image, zarr in, zarr out) alternates with the ceiling's
   configuration measured again for as long as the job's blocks took, so both
   see the same load. The maximum of many short scan samples is biased upwards
   by the machine's noise; the paired rounds are not.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing as mp
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from pathlib import Path

TILE_TARGETS = (256, 384, 512, 600, 688, 768, 1024, 1536, 2048)


def tile_rate(model_dir: str, size_in: int, threads: int, seconds: float) -> float:
    """Output pixels (voxels in 3D) per second of this process running tiles of edge
    ``size_in`` back to back."""
    import torch

    from unet_tiles.pipeline.predict import cached_model, channels_last_on, in_layout

    torch.set_num_threads(threads)
    # In the layout the engine's CPU workers run it in (predict.channels_last_on).
    channels_last = channels_last_on("cpu")
    model = cached_model(model_dir, "", "cpu", channels_last)
    dims = model.config.dims
    x = in_layout(torch.rand(1, model.config.in_channels, *(size_in,) * dims) * 255,
                  channels_last)
    out = size_in - 2 * model.halo[0]
    with torch.inference_mode():
        model(x)
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds or count < 2:
            model(x)
            count += 1
        elapsed = time.perf_counter() - started
    return float(count * out**dims / elapsed)


def parallel_rate(model_dir: str, size_in: int, processes: int, threads: int,
                  seconds: float) -> float:
    """Summed rate of ``processes`` fresh processes running tiles at once, under the
    malloc settings of the workers unet-tiles starts (the engine's own conditions)."""
    from unet_tiles.engine.cluster import CPU_WORKER_MALLOC

    # Spawned children read the allocator settings when they start.
    with environ(CPU_WORKER_MALLOC), mp.get_context("spawn").Pool(processes) as pool:
        rates = pool.starmap(tile_rate, [(model_dir, size_in, threads, seconds)] * processes)
    return sum(rates)


@contextlib.contextmanager
def environ(values: dict[str, str]) -> Iterator[None]:
    """``values`` in this process's environment, the previous values back afterwards."""
    from unet_tiles.engine.cluster import preserved_environ

    with preserved_environ(values):
        os.environ.update(values)
        yield


@dataclass(frozen=True)
class ScanRow:
    size_in: int
    size_out: int
    one_process: float
    per_core: float


@dataclass(frozen=True)
class Scan:
    """The scan's rows and its best configuration."""

    rows: tuple[ScanRow, ...]
    best_rate: float
    size_in: int
    size_out: int
    processes: int
    threads: int

    @property
    def configuration(self) -> str:
        return (f"tile in {self.size_in} (out {self.size_out}), {self.processes} process(es) x "
                f"{self.threads} thread(s)")


def scan(model_dir: str, cores: int, seconds: float,
         targets: Sequence[int] = TILE_TARGETS,
         report: Callable[[ScanRow], None] | None = None) -> Scan:
    """Measure each tile size both ways; the best (rate, size, processes, threads)."""
    from unet_tiles.model.files import load_model

    model = load_model(model_dir)
    halo = model.halo[0]
    rows = []
    best: tuple[float, int, int, int] = (0.0, 0, 1, cores)
    for target in targets:
        size_in = model.valid_size(target)
        one = parallel_rate(model_dir, size_in, 1, cores, seconds)
        many = parallel_rate(model_dir, size_in, cores, 1, seconds) if cores > 1 else one
        row = ScanRow(size_in, size_in - 2 * halo, one, many)
        rows.append(row)
        if report is not None:
            report(row)
        for rate, processes, threads in ((one, 1, cores), (many, cores, 1)):
            if rate > best[0]:
                best = (rate, size_in, processes, threads)
    rate, size_in, processes, threads = best
    return Scan(tuple(rows), rate, size_in, size_in - 2 * halo, processes, threads)


def end_to_end(src: str, model_dir: str, out: Path, **options: Any) -> tuple[float, float]:
    """(Mpx/s over the blocks, Mpx/s over the whole call incl. cluster start) of one
    ``segment`` run with ``options`` (SegmentRequest fields and cluster arguments)."""
    from unet_tiles import segment

    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    summary = segment(src, str(out), model_dir, progress=False, **options)
    wall = time.perf_counter() - started
    return summary.megapixels_per_s, summary.pixels / 1e6 / wall


@dataclass
class Rounds:
    """Paired rounds: ceiling and end to end, Mpx/s each."""

    ceilings: list[float] = field(default_factory=list)
    blocks: list[float] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)

    @property
    def ceiling(self) -> float:
        return max(self.ceilings)

    @property
    def ratio(self) -> float:
        """Best end to end over the best ceiling."""
        return max(self.blocks) / self.ceiling

    @property
    def paired(self) -> list[float]:
        return sorted(b / c for b, c in zip(self.blocks, self.ceilings, strict=True))


def paired_rounds(src: str, model_dir: str, work: Path, found: Scan, megapixels: float,
                  rounds: int, report: Callable[[int, Rounds], None] | None = None,
                  **options: Any) -> Rounds:
    """``rounds`` times: the end-to-end job, then the ceiling's configuration for as
    long as the job's blocks took."""
    result = Rounds()
    for round_ in range(1, rounds + 1):
        blocks_rate, wall_rate = end_to_end(src, model_dir, work / "out.zarr", **options)
        seconds = megapixels / blocks_rate
        rate = parallel_rate(model_dir, found.size_in, found.processes, found.threads,
                             seconds) / 1e6
        result.ceilings.append(rate)
        result.blocks.append(blocks_rate)
        result.walls.append(wall_rate)
        if report is not None:
            report(round_, result)
    return result


def native_bfloat16() -> bool:
    """Whether this CPU computes in bfloat16 itself (AVX512-BF16 or AMX, from Linux's
    flags): there ``--precision bfloat16`` runs the model about 3x faster; elsewhere
    torch emulates it, slowly (bench/model_formats.py)."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = info.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass(frozen=True)
class Recommendation:
    """Settings for this machine: the scan's best tile and process layout."""

    tile_size: int
    block_size: int
    workers: int
    threads_per_worker: int

    def flags(self) -> str:
        return (f"--tile-size {self.tile_size} --block-size {self.block_size} "
                f"--workers {self.workers} --threads-per-worker {self.threads_per_worker}")


def recommend(found: Scan, divisor: int, default_block: int) -> Recommendation:
    """The best tile's output edge (on the pooling grid), a block that is a whole
    number of such tiles and at least the default block, and the best layout:
    one process per core means one single-threaded worker per core."""
    tile = max(divisor, found.size_out // divisor * divisor)
    block = tile * max(1, math.ceil(default_block / tile))
    if found.processes > 1:
        return Recommendation(tile, block, found.processes, 1)
    return Recommendation(tile, block, 1, 1)


__all__ = ["TILE_TARGETS", "Recommendation", "Rounds", "Scan", "ScanRow", "end_to_end", "environ",
           "native_bfloat16", "paired_rounds", "parallel_rate", "recommend", "scan",
           "tile_rate"]
