"""Soak: the archive flow over many small images while workers are SIGKILLed.

    python bench/soak.py [--images 24] [--kill-every 3] [--workers 2] [--passes 1] [--work DIR]

Starts its own ``dask scheduler`` + ``dask worker`` processes on 127.0.0.1,
runs ``flows.archive.segment_archive`` once (``--passes``: more reruns, as a
nightly schedule would, only while images are left) over ``--images`` small
random images while a thread SIGKILLs a random worker process every
``--kill-every`` seconds (the nanny restarts it). After the pass(es) it counts
the blocks not done in each output's ``done`` array (failed blocks) and the
outputs not ``complete``, then segments every image again without kills and
compares every file of every output store byte for byte. Prints::

    24 images, 11 kills, 0 failed blocks, 0 incomplete images, 0 mismatches in 1 pass

and exits 1 on any failed block, incomplete image or mismatch. The failed
images' reasons (the flow's outcome rows) go to stderr. Without Prefect
installed it runs ``unet_tiles.engine.run`` per image on the same cluster instead
of the flow.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np


def make_images(root: Path, count: int, seed: int) -> list[Path]:
    import zarr

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        shape = (int(rng.integers(100, 260)), int(rng.integers(100, 260)))
        path = root / f"img_{i:03d}.zarr"
        array = zarr.create_array(str(path), shape=shape, chunks=(64, 64), dtype="uint8")
        array[...] = rng.integers(0, 255, shape, dtype=np.uint8)
        paths.append(path)
    return paths


def start_cluster(work: Path, workers: int) -> tuple[str, list[subprocess.Popen[bytes]]]:
    dask = str(Path(sys.executable).parent / "dask")
    sched_file = work / "scheduler.json"
    procs = [subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                               "--no-dashboard", "--scheduler-file", str(sched_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)]
    deadline = time.monotonic() + 60
    while not sched_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    address = json.loads(sched_file.read_text())["address"]
    procs.append(subprocess.Popen([dask, "worker", address, "--nworkers", str(workers),
                                   "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                  start_new_session=True))
    return address, procs


class Killer(threading.Thread):
    """SIGKILL a random worker process every ``every`` seconds until stopped."""

    def __init__(self, client: Any, every: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.client, self.every, self.kills = client, every, 0
        self.rng = random.Random(seed)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            try:
                pids = list(self.client.run(os.getpid, wait=True).values())
            except Exception:  # a worker is restarting; try at the next tick
                continue
            if pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.rng.choice(pids), signal.SIGKILL)
                    self.kills += 1


def run_archive(root: Path, out_root: Path, model: str, address: str, images: list[Path],
                block: int) -> dict[str, str]:
    """One pass; the reason of each image that failed, by image name."""
    try:
        from unet_tiles.flows.archive import segment_archive
    except ImportError:
        segment_archive = None  # type: ignore[assignment]
    failed: dict[str, str] = {}
    if segment_archive is not None:
        from unet_tiles.errors import ArchiveFailedError

        try:
            segment_archive(str(root), str(out_root), model, block_size=block, cluster=address,
                            max_concurrent=2)
        except ArchiveFailedError as exc:  # the outcome rows name each failed image
            failed.update({o.relative or o.image: o.reason for o in exc.outcomes  # type: ignore[attr-defined]
                           if o.status == "failed"})  # type: ignore[attr-defined]
        except Exception as exc:  # the flow itself failed: every image counts below
            failed["(flow)"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
        return failed
    from unet_tiles.engine.run import SegmentRequest, segment

    for image in images:
        try:
            segment(SegmentRequest(str(image), str(out_root / image.name), model,
                                   block_size=block), cluster=address, progress=False)
        except Exception as exc:
            failed[image.name] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    return failed


def blocks_not_done(image: Path, out: Path, model: str, block: int) -> int:
    """Blocks of ``image``'s plan without a done-marker in ``out`` (all, if no output)."""
    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.pipeline.writer import done_blocks

    total = len(validate(SegmentRequest(str(image), str(out), model, block_size=block)).plan)
    try:
        return total - int(done_blocks(str(out)).sum())
    except Exception:  # no output, or no done array yet
        return total


def is_complete(out: Path) -> bool:
    try:
        record = json.loads((out / "zarr.json").read_text())["attributes"]["unet_tiles"]
    except (OSError, KeyError, ValueError):
        return False
    return bool(record.get("status") == "complete")


def store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--kill-every", type=float, default=3.0, help="seconds between kills")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--block-size", type=int, default=64)
    parser.add_argument("--passes", type=int, default=1,
                        help="flow runs at most (more only while images are left)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=None, help="working folder (default: a temp dir)")
    args = parser.parse_args(argv)

    from distributed import Client

    from unet_tiles.engine.run import SegmentRequest, validate
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    work = Path(args.work or tempfile.mkdtemp(prefix="unet-tiles-soak-"))
    root, out_root, clean_root = work / "archive", work / "out", work / "clean"
    for d in (root, out_root, clean_root):
        d.mkdir(parents=True, exist_ok=True)
    model = str(save_model(build_unet(UNetConfig(dims=2, in_channels=1, classes=2, depth=2,
                                                 base_channels=4), seed=0), work / "model"))
    images = make_images(root, args.images, args.seed)
    address, procs = start_cluster(work, args.workers)
    reasons: dict[str, str] = {}
    try:
        client = Client(address, timeout="60s")
        client.wait_for_workers(args.workers, timeout=120)
        killer = Killer(client, args.kill_every, args.seed)
        killer.start()
        started = time.monotonic()
        passes = 0
        while passes < args.passes and not all(is_complete(out_root / i.name) for i in images):
            passes += 1
            reasons = run_archive(root, out_root, model, address, images, args.block_size)
        killer.stop.set()
        killer.join()
        seconds = time.monotonic() - started
        failed_blocks = sum(blocks_not_done(i, out_root / i.name, model, args.block_size)
                            for i in images)
        incomplete = [i.name for i in images if not is_complete(out_root / i.name)]
        client.wait_for_workers(args.workers, timeout=120)
        mismatches = []
        for image in images:
            clean = clean_root / image.name
            run = validate(SegmentRequest(str(image), str(clean), model,
                                          block_size=args.block_size))
            run.segment(client, progress=False)
            if store_files(clean) != store_files(out_root / image.name):
                mismatches.append(image.name)
        client.close()
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    print(f"{len(images)} images, {killer.kills} kills, {failed_blocks} failed blocks,"
          f" {len(incomplete)} incomplete images, {len(mismatches)} mismatches"
          f" in {passes} pass{'es' if passes != 1 else ''}"
          f" ({seconds:.0f} s under kills; work in {work})")
    for name, reason in reasons.items():
        print(f"failed {name}: {reason}", file=sys.stderr)
    if incomplete:
        print("incomplete: " + ", ".join(incomplete), file=sys.stderr)
    if mismatches:
        print("mismatched: " + ", ".join(mismatches), file=sys.stderr)
    return 1 if failed_blocks or incomplete or mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
