"""What Prefect adds to a one-off ``unet-tiles segment``: start-up costs, measured.

Runs the same small segmentation (a 512x512 uint8 image, a tiny model, one
local dask worker) three ways, each as a fresh process, as a user would:

  direct    no Prefect API configured: unet_tiles.engine.run called directly
  tracked   PREFECT_API_URL set to a running server: a tracked flow run
  --prefect no server: Prefect's temporary local server, started per command
            (with a fresh PREFECT_HOME, which also creates its database, and
            with a warm one)

and times ``prefect server start`` until /api/health answers. Usage::

    python bench/prefect_startup.py [--repeats 3] [--size 512]

Prints a markdown table of the median wall times. Needs fastapi<0.151 for
prefect 3.8.8 (deploy/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _env(home: Path, api_url: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def _segment(work: Path, env: dict[str, str], *extra: str) -> float:
    out = work / "out.zarr"
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "unet_tiles.cli", "segment", str(work / "in.zarr"),
                    str(out), "--model", str(work / "model"), "--cluster", "cpu",
                    "--workers", "1", "--no-progress", *extra],
                   env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def _start_server(home: Path) -> tuple[subprocess.Popen[bytes], str, float]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host",
                             "127.0.0.1", "--port", str(port)], env=_env(home, None),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    while True:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2):
                return proc, url, time.perf_counter() - started
        except OSError:
            if proc.poll() is not None or time.perf_counter() - started > 300:
                raise RuntimeError("prefect server did not start") from None
            time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _prepare(work: Path, size: int) -> None:
    import numpy as np
    import zarr

    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    save_model(build_unet(UNetConfig(dims=2, in_channels=1, classes=2, depth=2,
                                     base_channels=4), seed=0), work / "model")
    image = zarr.create_array(str(work / "in.zarr"), shape=(size, size), chunks=(256, 256),
                              dtype="uint8", fill_value=0)
    image[:] = np.random.default_rng(0).integers(0, 255, (size, size), dtype=np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, default=512)
    args = parser.parse_args()
    rows: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        _prepare(work, args.size)
        # Untimed: creates the warm PREFECT_HOME's database.
        _segment(work, _env(work / "home-warm", None), "--prefect")
        for i in range(args.repeats):
            rows.setdefault("segment, direct (no API configured)", []).append(
                _segment(work, _env(work / "home-direct", None)))
            rows.setdefault("segment --prefect, temporary server, fresh PREFECT_HOME", []).append(
                _segment(work, _env(work / f"home-fresh-{i}", None), "--prefect"))
            rows.setdefault("segment --prefect, temporary server, warm PREFECT_HOME", []).append(
                _segment(work, _env(work / "home-warm", None), "--prefect"))
            proc, url, startup = _start_server(work / f"home-server-{i}")
            rows.setdefault("prefect server start, until /api/health answers", []).append(
                startup)
            try:
                rows.setdefault("segment, tracked on a running server", []).append(
                    _segment(work, _env(work / f"home-server-{i}", url)))
            finally:
                _stop(proc)
    direct = statistics.median(rows["segment, direct (no API configured)"])
    print(f"| {args.size}x{args.size} px, {os.cpu_count()} CPUs | median s | vs direct |")
    print("|---|---|---|")
    for name, times in rows.items():
        median = statistics.median(times)
        extra = f"+{median - direct:.1f} s" if "segment" in name else ""
        print(f"| {name} | {median:.1f} | {extra} |")


if __name__ == "__main__":
    main()
