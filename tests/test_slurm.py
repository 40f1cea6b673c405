"""unet-tiles on a real SLURM cluster, through dask-jobqueue.

``unet-tiles segment ... --cluster slurm.yaml`` (a ``kind: slurm`` spec,
engine/cluster_spec.py): the dask workers are SLURM batch jobs of dask-jobqueue's
``SLURMCluster``, one core each. The output must equal a local run
(``--cluster cpu --workers 1``) byte for byte. A second test cancels one of the
two jobs (``scancel``) while blocks are being written: the run finishes on the
remaining job (dask reschedules the lost blocks), or, where it fails, the same
command again resumes; either way the result is the same bytes.

Skipped unless ``sinfo`` is on PATH and answers with a usable node, and
``dask_jobqueue`` is installed, so CI without SLURM skips. On one machine,
``bash deploy/slurm/local-slurm.sh`` starts a one-node cluster for it (root;
``local-slurm.sh stop`` stops it again); bench/README.md "SLURM on one machine"
has the measured runs.

Byte for byte: every file under both stores, by relative path, equal (the
root ``zarr.json`` with the provenance record included).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
import yaml
from helpers import write_zarr

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
BLOCK = 64
# 192 blocks of 64 px: a few seconds on two 1-core jobs, long enough to cancel
# one in the middle.
SHAPE = (768, 1024)
CHUNK = 64
USABLE_STATES = ("idle", "mix", "mixed", "alloc", "allocated", "completing")


def _slurm_answers() -> str | None:
    """None when a SLURM cluster with a usable node answers here; else why not."""
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no SLURM here (sinfo/sbatch not on PATH)"
    try:
        answer = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"sinfo does not answer: {e}"
    if answer.returncode != 0:
        return f"sinfo failed: {answer.stderr.strip()}"
    states = [s.strip().rstrip("*~#!%$@^-").lower() for s in answer.stdout.split()]
    if not any(s in USABLE_STATES for s in states):
        return f"no usable SLURM node (states: {states})"
    return None


_WHY_NOT = _slurm_answers()
if _WHY_NOT is not None:
    pytest.skip(_WHY_NOT, allow_module_level=True)
pytest.importorskip("dask_jobqueue")


# ---------------------------------------------------------------- helpers


def store_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def assert_same_store(out: Path, ref: Path) -> None:
    """Every file under both stores equal, as the module docstring says."""
    fa, fb = store_files(out), store_files(ref)
    assert sorted(fa) == sorted(fb), sorted(set(fa) ^ set(fb))
    differ = [name for name in fa if fa[name] != fb[name]]
    assert not differ, f"{len(differ)} files differ, e.g. {differ[:5]}"
    status = json.loads(fa["zarr.json"])["attributes"]["unet_tiles"]["status"]
    assert status == "complete"


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unet_tiles.cli", *args], cwd=REPO, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout, check=False)


def squeue(name: str) -> dict[str, str]:
    """Job id -> state of this user's jobs named ``name``."""
    answer = subprocess.run(["squeue", "-h", "--me", "-n", name, "-o", "%i %T"],
                            capture_output=True, text=True, timeout=20, check=True)
    return dict(line.split() for line in answer.stdout.splitlines() if line.strip())


def done_count(out: Path) -> int:
    from unet_tiles.pipeline import writer

    try:
        return int(writer.done_blocks(str(out)).sum())
    except Exception:  # not created yet, or a chunk being written: look again
        return -1


def assert_jobs_gone(name: str, timeout: float = 60) -> None:
    """The run's jobs end with it (cancelled as its cluster closes; COMPLETING a while)."""
    deadline = time.monotonic() + timeout
    while (left := squeue(name)) and time.monotonic() < deadline:
        assert set(left.values()) <= {"COMPLETING", "CANCELLED"}, f"jobs left: {left}"
        time.sleep(0.5)
    assert not left, f"jobs left: {left}"


@pytest.fixture
def job_name() -> Iterator[str]:
    """A name for this test's SLURM jobs; whatever is left of them is cancelled."""
    name = f"unet-tiles-test-{os.getpid()}-{time.monotonic_ns() % 10**9}"
    yield name
    subprocess.run(["scancel", "--me", "-n", name], timeout=30, check=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory,
          make_model: Callable[..., Path]) -> tuple[str, str, Path]:
    """(input, model, local reference output): the reference from the real CLI."""
    root = tmp_path_factory.mktemp("slurm-image")
    rng = np.random.default_rng(7)
    src = write_zarr(root / "in.zarr", rng.random(SHAPE, dtype=np.float32), (CHUNK, CHUNK))
    model = str(make_model())
    ref = root / "local.zarr"
    started = time.perf_counter()
    done = cli("segment", src, str(ref), "--model", model, "--cluster", "cpu", "--workers", "1",
               "--block-size", str(BLOCK), "--no-progress")
    assert done.returncode == 0, done.stderr
    print(f"\nlocal run (--cluster cpu --workers 1): {time.perf_counter() - started:.1f} s")
    return src, model, ref


def slurm_yaml(tmp_path: Path, job_name: str, jobs: int) -> str:
    """A ``kind: slurm`` cluster spec (engine/cluster_spec.py): ``jobs`` one-core jobs in
    the partition $UNET_TILES_SLURM_PARTITION (default ``debug``), the scheduler on
    loopback, the job logs in ``tmp_path``."""
    logs = tmp_path / "slurm-logs"
    logs.mkdir(exist_ok=True)
    spec = {
        "kind": "slurm",
        "partition": os.environ.get("UNET_TILES_SLURM_PARTITION", "debug"),
        "cores": 1, "memory": "2GB", "processes": 1, "jobs": jobs, "walltime": "00:20:00",
        "extra": {
            "job_name": job_name,
            "scheduler_options": {"host": "127.0.0.1"},
            "job_extra_directives": [f"--output={logs}/%j.out"],
            # The workers import unet_tiles from this checkout, as the driver does.
            "job_script_prologue": [f"export PYTHONPATH={REPO}"],
            "death_timeout": 60,
        },
    }
    path = tmp_path / "slurm.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


def segment_on_slurm(src: str, out: Path, model: str, spec: str) -> list[str]:
    return [sys.executable, "-m", "unet_tiles.cli", "segment", src, str(out), "--model", model,
            "--cluster", spec, "--block-size", str(BLOCK), "--no-progress"]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO)}


# ---------------------------------------------------------------- tests


def test_segment_on_slurm_equals_local_run(tmp_path: Path, image: tuple[str, str, Path],
                                           job_name: str) -> None:
    src, model, ref = image
    out = tmp_path / "slurm.zarr"
    command = segment_on_slurm(src, out, model, slurm_yaml(tmp_path, job_name, jobs=2))
    started = time.perf_counter()
    seen: dict[str, set[str]] = {}
    with subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        while proc.poll() is None:  # the jobs that ran it, as SLURM saw them
            for job, state in squeue(job_name).items():
                seen.setdefault(job, set()).add(state)
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    assert proc.returncode == 0, stderr
    print(f"slurm run (--cluster slurm.yaml, 2 jobs): {wall:.1f} s; jobs seen: {seen}; "
          f"{stdout.strip()}")
    assert len(seen) == 2, seen
    assert all("RUNNING" in states for states in seen.values()), seen
    assert f"in {(SHAPE[0] // BLOCK) * (SHAPE[1] // BLOCK)} blocks" in stdout
    assert_same_store(out, ref)
    assert_jobs_gone(job_name)


def test_scancel_one_job_mid_run(tmp_path: Path, image: tuple[str, str, Path],
                                 job_name: str) -> None:
    src, model, ref = image
    out = tmp_path / "slurm.zarr"
    total = (SHAPE[0] // BLOCK) * (SHAPE[1] // BLOCK)
    command = segment_on_slurm(src, out, model, slurm_yaml(tmp_path, job_name, jobs=2))
    started = time.perf_counter()
    with subprocess.Popen(command, cwd=REPO, env=cli_env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True) as proc:
        deadline = time.monotonic() + 300
        jobs: dict[str, str] = {}
        # Both jobs running and the first blocks written.
        while proc.poll() is None and time.monotonic() < deadline:
            jobs = squeue(job_name)
            if len(jobs) == 2 and set(jobs.values()) == {"RUNNING"} and done_count(out) >= 1:
                break
            time.sleep(0.05)
        at_cancel = done_count(out)
        assert proc.poll() is None, proc.communicate()
        assert 0 < at_cancel < total, at_cancel
        victim = sorted(jobs)[0]
        subprocess.run(["scancel", victim], timeout=30, check=True)
        cancelled = time.perf_counter()
        print(f"\nscancel {victim} with {at_cancel}/{total} blocks done, "
              f"{cancelled - started:.1f} s into the run")
        (survivor,) = set(jobs) - {victim}
        # Blocks done while the survivor ran alone: the victim gone from squeue (or
        # no longer RUNNING).
        alone: list[int] = []
        while proc.poll() is None:
            now = squeue(job_name)
            if now.get(victim) != "RUNNING" and now.get(survivor) == "RUNNING":
                alone.append(done_count(out))
            time.sleep(0.2)
        stdout, stderr = proc.communicate()
    if proc.returncode == 0:
        assert alone, "the victim's job never left squeue while the run went on"
        assert max(alone) > min(alone), alone
        print(f"finished on the remaining job {survivor} "
              f"{time.perf_counter() - cancelled:.1f} s after scancel: blocks done while it "
              f"ran alone {min(alone)} -> {max(alone)}; {stdout.strip()}")
    else:
        # The run failed with its job: the same command again resumes where it stopped.
        print(f"the run failed after scancel (rc {proc.returncode}): "
              f"{stderr.strip().splitlines()[-1:]}; rerunning")
        again = subprocess.run(command, cwd=REPO, env=cli_env(), capture_output=True,
                               text=True, timeout=600, check=False)
        assert again.returncode == 0, again.stderr
        assert "already done" in again.stdout
        assert "(0 already done)" not in again.stdout
        print(f"resumed by a rerun: {again.stdout.strip()}")
    assert_same_store(out, ref)
    assert_jobs_gone(job_name)
