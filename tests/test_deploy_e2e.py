"""End to end, no mocks: a real Prefect server and worker run deploy/prefect.yaml.

One module-scoped deployment (server, work pool, ``prefect deploy``, a process
worker) serves three scenarios, in order:

1. the nightly archive deployment over three images: three outputs; a rerun
   skips all three; after a fourth image lands, only it is processed;
2. the watcher sees a store copied in chunk by chunk: exactly one on-arrival
   run, started only after the copy completed, and its output;
3. an archive holding a corrupt image: the other finishes, the run is Failed
   and names the bad one;
4. the nightly deployment's CANCEL_NEW limit: a second run while one is Running
   is Cancelled; the first is cancelled mid-way, and the next night's run skips
   the images the first finished and does the rest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from prefect_fixtures import (  # noqa: F401
    REPO,
    PrefectServer,
    free_port,
    prefect_env,
    prefect_server,
    spawn,
    stop,
    using,
)

from unet_tiles.pipeline.writer import read_record

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.timeout(420)]

POOL = "unet-tiles-local"
RUN_TIMEOUT_S = 180


def write_image(path: Path, seed: int) -> None:
    array = zarr.create_array(str(path), shape=(64, 80), chunks=(32, 40), dtype="uint8",
                              fill_value=0, zarr_format=3)
    array[:] = np.random.default_rng(seed).integers(0, 255, (64, 80), dtype=np.uint8)


def make_model(path: Path) -> None:
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    save_model(build_unet(UNetConfig(dims=2, in_channels=1, classes=2, depth=2,
                                     base_channels=4), seed=0), path)


class Deployed:
    def __init__(self, server: PrefectServer, root: Path) -> None:
        self.server = server
        self.root = root
        self.model = root / "model"
        self.archive = root / "archive"
        self.out = root / "out"
        self.logs = root / "logs"

    def env(self, **extra: str) -> dict[str, str]:
        return prefect_env(self.server.url, self.server.home, **extra)

    def prefect(self, *args: str, **extra: str) -> None:
        result = subprocess.run([sys.executable, "-m", "prefect", *args], env=self.env(**extra),
                                cwd=REPO, capture_output=True, text=True, timeout=180)
        assert result.returncode == 0, f"prefect {' '.join(args)}:\n{result.stdout}{result.stderr}"

    def run(self, name: str, timeout: float = RUN_TIMEOUT_S, **parameters: Any) -> Any:
        from prefect.deployments import run_deployment

        with using(self.server):
            return run_deployment(name, parameters=parameters, timeout=timeout)

    def wait_for(self, flow_run_id: Any, done: Any, timeout_s: float = RUN_TIMEOUT_S) -> Any:
        """Poll the flow run until ``done(state)``; the flow run."""
        from prefect.client.orchestration import get_client

        deadline = time.monotonic() + timeout_s
        with using(self.server), get_client(sync_client=True) as client:
            while True:
                flow_run = client.read_flow_run(flow_run_id)
                if flow_run.state is not None and done(flow_run.state):
                    return flow_run
                assert time.monotonic() < deadline, f"{flow_run.name}: {flow_run.state}"
                time.sleep(0.5)

    def state_types(self, flow_run_id: Any) -> list[str]:
        """The flow run's state history, oldest first: ["SCHEDULED", "PENDING", ...]."""
        from prefect.client.orchestration import get_client

        with using(self.server), get_client(sync_client=True) as client:
            return [str(s.type.value) for s in client.read_flow_run_states(flow_run_id)]

    def cancel(self, flow_run_id: Any) -> None:
        """What ``prefect flow-run cancel`` does: propose Cancelling."""
        from prefect.client.orchestration import get_client
        from prefect.states import Cancelling

        with using(self.server), get_client(sync_client=True) as client:
            client.set_flow_run_state(flow_run_id, Cancelling(message="stopped by the test"))

    def flow_runs(self, deployment: str) -> list[Any]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

        with using(self.server), get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(deployment)
            return client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=FlowRunFilterDeploymentId(any_=[dep.id])))

    def outcome_table(self, flow_run_id: Any) -> dict[str, str]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            ArtifactFilter,
            ArtifactFilterFlowRunId,
            ArtifactFilterType,
        )

        with using(self.server), get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]),
                type=ArtifactFilterType(any_=["table"])))
        assert len(artifacts) == 1
        rows = json.loads(artifacts[0].data)
        return {row["image"]: row["status"] for row in rows}


@pytest.fixture(scope="module")
def deployed(prefect_server: PrefectServer,  # noqa: F811
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    d = Deployed(prefect_server, tmp_path_factory.mktemp("e2e"))
    for folder in (d.archive, d.out, d.logs):
        folder.mkdir()
    make_model(d.model)
    d.prefect("work-pool", "create", POOL, "--type", "process", "--overwrite")
    d.prefect("--no-prompt", "deploy", "--all", "--prefect-file", "deploy/prefect.yaml",
              UNET_TILES_REPO=str(REPO), UNET_TILES_ARCHIVE=str(d.archive),
              UNET_TILES_OUTPUT=str(d.out), UNET_TILES_MODEL=str(d.model))
    # Every flow run joins one existing dask cluster (the deployment setting for
    # SLURM/Kubernetes clusters): its single worker stays warm between runs,
    # which keeps the 2-core CI box from starting a LocalCluster per run.
    address = f"tcp://127.0.0.1:{free_port()}"
    processes = [
        spawn([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
               "--port", address.rsplit(":", 1)[1], "--dashboard-address", "127.0.0.1:0"],
              d.env(), d.logs / "scheduler.log"),
        spawn([sys.executable, "-m", "distributed.cli.dask_worker", address, "--nworkers", "1",
               "--nthreads", "1", "--no-dashboard", "--local-directory", str(d.root / "dask")],
              d.env(), d.logs / "dask-worker.log"),
    ]
    try:
        # The worker's environment reaches every flow run it starts.
        processes.append(spawn(
            [sys.executable, "-m", "prefect", "worker", "start", "--pool", POOL,
             "--type", "process"],
            d.env(UNET_TILES_CLUSTER=address, PREFECT_WORKER_QUERY_SECONDS="1",
                  PREFECT_WORKER_PREFETCH_SECONDS="1"),
            d.logs / "worker.log", cwd=d.root))
        yield d
    finally:
        for proc in reversed(processes):
            stop(proc)


def _complete(output: Path) -> bool:
    record = read_record(str(output))
    return record is not None and record.complete


def test_nightly_archive_segments_skips_and_picks_up_new_images(deployed: Deployed) -> None:
    d = deployed
    write_image(d.archive / "a.zarr", 1)
    write_image(d.archive / "day2" / "b.zarr", 2)
    write_image(d.archive / "day2" / "c", 3)

    first = d.run("segment-archive/nightly")
    assert first.state.is_completed(), first.state.message
    outputs = [d.out / "a.zarr", d.out / "day2" / "b.zarr", d.out / "day2" / "c.zarr"]
    assert all(_complete(o) for o in outputs)
    assert d.outcome_table(first.id) == {"a.zarr": "done", "day2/b.zarr": "done",
                                         "day2/c": "done"}
    stamps = [(o / "zarr.json").stat().st_mtime_ns for o in outputs]

    second = d.run("segment-archive/nightly")
    assert second.state.is_completed(), second.state.message
    assert set(d.outcome_table(second.id).values()) == {"skipped"}
    assert [(o / "zarr.json").stat().st_mtime_ns for o in outputs] == stamps

    write_image(d.archive / "day3" / "d.zarr", 4)
    third = d.run("segment-archive/nightly")
    assert third.state.is_completed(), third.state.message
    assert d.outcome_table(third.id) == {"a.zarr": "skipped", "day2/b.zarr": "skipped",
                                         "day2/c": "skipped", "day3/d.zarr": "done"}
    assert _complete(d.out / "day3" / "d.zarr")


def _copy_slowly(source: Path, target: Path, gap_s: float, pause_s: float) -> None:
    """Metadata first, then chunk by chunk, with one long pause halfway."""
    files = sorted((p for p in source.rglob("*") if p.is_file()),
                   key=lambda p: (p.name != "zarr.json", str(p)))
    for i, path in enumerate(files):
        dest = target / path.relative_to(source)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
        time.sleep(pause_s if i == len(files) // 2 else gap_s)


def test_watcher_triggers_exactly_one_run_after_the_copy(deployed: Deployed) -> None:
    d = deployed
    watched, out = d.root / "incoming", d.root / "incoming-out"
    watched.mkdir()
    staging = d.root / "staging" / "e.zarr"
    write_image(staging, 5)
    log = d.logs / "watch.log"
    watcher = spawn([sys.executable, "-m", "unet_tiles.cli", "watch", str(watched),
                     "--output-root", str(out), "--model", str(d.model),
                     "--quiet-seconds", "1.5"], d.env(), log)
    try:
        deadline = time.monotonic() + 60
        while "watching" not in log.read_text():
            assert watcher.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)
        # The pause (6 s) is far above the quiet time (1.5 s): only the
        # completeness check keeps the half-copied store from counting.
        _copy_slowly(staging, watched / "e.zarr", gap_s=0.3, pause_s=6.0)
        copied = time.time()
        assert d.flow_runs("segment-image/on-arrival") == []

        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (runs := d.flow_runs("segment-image/on-arrival")) or not all(
                r.state.is_final() for r in runs):
            assert time.monotonic() < deadline, f"no finished run:\n{log.read_text()}"
            time.sleep(1)
        time.sleep(5)  # a second (wrong) trigger would show up by now
        runs = d.flow_runs("segment-image/on-arrival")
    finally:
        stop(watcher)
    assert len(runs) == 1, [r.name for r in runs]
    assert runs[0].state.is_completed(), runs[0].state.message
    assert runs[0].created.timestamp() >= copied
    assert runs[0].parameters["input"] == str(watched.resolve() / "e.zarr")
    assert _complete(out / "e.zarr")
    assert "arrived  e.zarr" in log.read_text()


def test_corrupt_image_fails_alone_and_is_named(deployed: Deployed) -> None:
    d = deployed
    root, out = d.root / "corrupt", d.root / "corrupt-out"
    write_image(root / "good.zarr", 6)
    write_image(root / "bad.zarr", 7)
    (root / "bad.zarr" / "c" / "1" / "1").write_bytes(b"not a zstd frame")
    flow_run = d.run("segment-archive/nightly", root=str(root), output_root=str(out))
    assert flow_run.state.is_failed()
    assert "bad.zarr" in flow_run.state.message
    assert "good.zarr" not in flow_run.state.message
    assert _complete(out / "good.zarr")
    assert d.outcome_table(flow_run.id) == {"bad.zarr": "failed", "good.zarr": "done"}


def test_second_nightly_run_is_cancelled_and_the_next_night_picks_up(
        deployed: Deployed) -> None:
    d = deployed
    root, out = d.root / "nights", d.root / "nights-out"
    names = [f"n{i:02d}.zarr" for i in range(10)]
    for i, name in enumerate(names):
        write_image(root / name, 10 + i)
    # 8 px blocks: 80 per image, a few seconds each on the one dask worker; the
    # cancel below takes effect a few images later (4 of 6 here), 10 leave room.
    params = {"root": str(root), "output_root": str(out), "block_size": 8}

    first = d.run("segment-archive/nightly", timeout=0, **params)
    d.wait_for(first.id, lambda s: s.is_running() or s.is_final(), timeout_s=60)
    second = d.run("segment-archive/nightly", timeout=0, **params)
    second = d.wait_for(second.id, lambda s: s.is_final(), timeout_s=60)
    # prefect 3.8.8 rejects the second run's Pending with Cancelled: it never starts.
    assert second.state.is_cancelled(), second.state
    assert second.state.message == "Deployment concurrency limit reached."
    assert "RUNNING" not in d.state_types(second.id)
    running = d.wait_for(first.id, lambda s: True)
    assert running.state.is_running(), f"the first run ended too soon: {running.state}"

    # Stop the first night once it has finished an image, long before the last.
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while not any(_complete(out / n) for n in names):
        assert time.monotonic() < deadline, "no image finished"
        time.sleep(0.5)
    d.cancel(first.id)
    first = d.wait_for(first.id, lambda s: s.is_final(), timeout_s=60)
    assert first.state.is_cancelled(), first.state
    finished = {n for n in names if _complete(out / n)}
    assert 0 < len(finished) < len(names), finished

    third = d.run("segment-archive/nightly", **params)
    assert third.state.is_completed(), third.state.message
    assert d.outcome_table(third.id) == {
        n: "skipped" if n in finished else "done" for n in names}
    assert all(_complete(out / n) for n in names)
