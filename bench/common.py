"""Helpers shared by the benchmarks (not part of the package)."""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DEMO_MODEL = Path(__file__).resolve().parent.parent / "unet_tiles" / "demo" / "model"


def bench_model(model: str | None, work: Path) -> str:
    """The model to measure: ``model``, else the shipped demo model, else one like it."""
    if model:
        return model
    if (DEMO_MODEL / "weights.safetensors").is_file():
        return str(DEMO_MODEL)
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    config = UNetConfig(depth=3, base_channels=8, input_scale=(1 / 255,))
    return str(save_model(build_unet(config, seed=0), work / "model"))


def synthetic_input(work: Path, size: int, chunk: int = 1024) -> str:
    """A generated nuclei image of ``size`` x ``size`` uint8 as a zarr v3 array."""
    from unet_tiles.demo.synth import generate_image

    path = work / f"image{size}.zarr"
    if not (path / "zarr.json").exists():
        generate_image(path, work / f"truth{size}.zarr", (size, size), chunks=(chunk, chunk))
    return str(path)


def simulated_result(window: Any, block: Any) -> Any:
    """What the simulated models of the benches hand back for ``block``: the labels of
    its write region, the window's centre thresholded (real, compressible data, not
    the fill value zarr would skip writing)."""
    import numpy as np

    from unet_tiles.pipeline.predict import BlockResult

    write = block.write.spatial(block.dims)
    read = block.read.spatial(block.dims)
    crop = tuple(slice(w - r, w - r + n) for w, r, n in
                 zip(write.offset, read.offset, write.shape, strict=True))
    labels = (window[0][crop] > 100).astype(np.uint8)
    return BlockResult(labels=labels.reshape(block.write.shape), probabilities=None)


def workdir(prefix: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix))


def _role(proc: Any, me: Any) -> str:
    """What a process is to a benchmark: this one, the run's process (the driver,
    with a LocalCluster's scheduler and nannies, which live in it), the dask
    workers (processes multiprocessing spawned), or multiprocessing's helpers."""
    if proc.pid == me.pid:
        return "bench"
    line = " ".join(proc.cmdline())
    if "spawn_main" in line:
        return "workers"
    if "multiprocessing" in line:
        return "helpers"
    return "driver"


class RssSamples:
    """(time, summed RSS of this process and all its children: scheduler, nannies,
    workers) every ``interval_s``, in a background thread, while in a ``with``."""

    def __init__(self, interval_s: float = 0.05, include_self: bool = True) -> None:
        self.interval_s = interval_s
        self.include_self = include_self
        self.samples: list[tuple[float, int]] = []
        self.roles: list[dict[str, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            by_role: dict[str, int] = {}
            for proc in [me, *me.children(recursive=True)][0 if self.include_self else 1:]:
                try:
                    rss = proc.memory_info().rss
                    role = _role(proc, me)
                except psutil.Error:
                    continue
                total += rss
                by_role[role] = by_role.get(role, 0) + rss
            self.samples.append((time.monotonic(), total))
            self.roles.append(by_role)
            time.sleep(self.interval_s)

    def roles_at_peak(self) -> dict[str, int]:
        """Bytes per kind of process (``_role``) in the sample of the summed peak."""
        if not self.samples:
            return {}
        at = max(range(len(self.samples)), key=lambda i: self.samples[i][1])
        return self.roles[at]

    @property
    def peak_bytes(self) -> int:
        return max((rss for _, rss in self.samples), default=0)

    def peak_between(self, start: float, stop: float) -> int:
        return max((rss for t, rss in self.samples if start <= t <= stop), default=0)

    def __enter__(self) -> RssSamples:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
