"""The flows: their small parts without a server, then segment_image on a real one."""

from __future__ import annotations

import errno
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from prefect_fixtures import PrefectServer, prefect_server, using  # noqa: F401

from unet_tiles.errors import BlockFailedError, InputError, UsageError
from unet_tiles.flows import api_configured
from unet_tiles.flows.report import ThrottledProgress, artifact_key
from unet_tiles.flows.settings import check_filled, cluster_choice
from unet_tiles.flows.steps import is_transient

if TYPE_CHECKING:
    from pathlib import Path


def test_transient_failures_are_told_from_deterministic_ones() -> None:
    assert is_transient(OSError(errno.EIO, "I/O error"))
    assert is_transient(TimeoutError())
    assert is_transient(ConnectionResetError())
    assert not is_transient(FileNotFoundError(errno.ENOENT, "gone"))
    assert not is_transient(PermissionError(errno.EACCES, "denied"))
    assert not is_transient(OSError(errno.ENOSPC, "disk full"))
    assert not is_transient(InputError("bad input"))
    assert not is_transient(BlockFailedError("block 0.0 failed", []))
    assert not is_transient(ValueError("bug"))


def test_progress_is_throttled_but_always_reports_the_end() -> None:
    now = [0.0]
    sent: list[float] = []
    progress = ThrottledProgress(sent.append, min_interval_s=2.0, clock=lambda: now[0])
    for done in range(1, 11):
        now[0] += 0.5
        progress(done, 10)
    assert sent == [10.0, 50.0, 90.0, 100.0]
    assert (progress.updates, progress.last_reported) == (4, 100.0)


def test_progress_failures_never_fail_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    monkeypatch.setattr("unet_tiles.flows.report.get_run_logger", lambda: logging.getLogger("t"))

    def broken(_: float) -> None:
        raise ConnectionError("API down")

    progress = ThrottledProgress(broken)
    progress(1, 1)
    assert (progress.updates, progress.last_reported) == (0, None)


def test_artifact_keys_are_valid() -> None:
    key = artifact_key("segment", "/data/Night 3/Slide_01.ome.zarr")
    assert key == "segment-data-night-3-slide-01-ome-zarr"
    assert artifact_key("x", "///") == "x-image"
    assert len(artifact_key("x", "a" * 500)) <= 62


def test_unfilled_deployment_parameters_are_refused() -> None:
    check_filled(root="/data", cluster=None)
    with pytest.raises(UsageError, match="UNET_TILES_ARCHIVE was not set"):
        check_filled(root="{{ $UNET_TILES_ARCHIVE }}")


def test_cluster_comes_from_parameters_then_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("UNET_TILES_CLUSTER", raising=False)
    monkeypatch.delenv("UNET_TILES_WORKERS", raising=False)
    assert cluster_choice(None, None).spec == "local"
    monkeypatch.setenv("UNET_TILES_CLUSTER", "tcp://sched:8786")
    monkeypatch.setenv("UNET_TILES_WORKERS", "{{ $UNET_TILES_WORKERS }}")  # unset at deploy
    choice = cluster_choice(None, None)
    assert (choice.spec, choice.workers) == ("tcp://sched:8786", None)
    assert cluster_choice("cpu", 3).spec == "cpu"
    monkeypatch.setenv("UNET_TILES_WORKERS", "two")
    with pytest.raises(UsageError, match="UNET_TILES_WORKERS"):
        cluster_choice(None, None)


def test_api_configured_reads_env_and_profile(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("PREFECT_API_URL", "PREFECT_PROFILE", "PREFECT_PROFILES_PATH"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path))
    assert not api_configured()
    (tmp_path / "profiles.toml").write_text(
        'active = "lab"\n[profiles.lab]\nPREFECT_API_URL = "http://prefect:4200/api"\n')
    assert api_configured()
    monkeypatch.setenv("PREFECT_PROFILE", "other")
    assert not api_configured()
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    assert api_configured()


# --- segment_image on a real Prefect server ------------------------------------------


def _image(path: Path) -> None:
    a = zarr.create_array(str(path), shape=(64, 80), chunks=(32, 40), dtype="uint8",
                          fill_value=0, zarr_format=3)
    a[:] = np.random.default_rng(0).integers(0, 255, (64, 80), dtype=np.uint8)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    path = tmp_path_factory.mktemp("model") / "m"
    save_model(build_unet(UNetConfig(dims=2, in_channels=1, classes=2, depth=2,
                                     base_channels=4), seed=0), path)
    return str(path)


def _artifacts(flow_run_id: Any) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(
            flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.type: a for a in found}


@pytest.mark.prefect
@pytest.mark.slow
def test_segment_image_retries_transient_io_and_reports(
        prefect_server: PrefectServer, model_dir: str, tmp_path: Path,  # noqa: F811
        monkeypatch: pytest.MonkeyPatch) -> None:
    from unet_tiles.engine.run import Run
    from unet_tiles.flows import segment, steps
    from unet_tiles.pipeline.writer import read_record

    _image(tmp_path / "in.zarr")
    calls = []
    real_prepare = Run.prepare

    def flaky_prepare(run: Run) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise OSError(errno.EIO, "Input/output error (NFS hiccup)")
        return real_prepare(run)

    monkeypatch.setattr(Run, "prepare", flaky_prepare)
    # Same task, no backoff wait in a test.
    monkeypatch.setattr(segment, "prepare_step",
                        steps.prepare_step.with_options(retry_delay_seconds=0))
    with using(prefect_server):
        state = segment.segment_image(
            input=str(tmp_path / "in.zarr"), output=str(tmp_path / "out.zarr"),
            model_dir=model_dir, cluster="cpu", workers=1, output_kind="labels,instances",
            return_state=True)
        assert state.is_completed(), state.message
        summary = state.result()
        artifacts = _artifacts(state.state_details.flow_run_id)
    assert len(calls) == 2
    assert summary["blocks_done"] == summary["blocks_total"] == 1
    assert summary["pixels"] == 64 * 80
    record = read_record(str(tmp_path / "out.zarr"))
    assert record is not None
    assert record.complete
    (row,) = json.loads(artifacts["table"].data)
    assert row["pixels"] == 64 * 80
    assert row["model hash"] == summary["model_hash"][:12]
    assert {"blocks done", "blocks skipped", "seconds", "Mpx/s"} <= set(row)
    assert artifacts["progress"].data == 100.0
    # The report gives the object count of --output instances: the table's rows.
    import pyarrow.parquet as pq

    objects = pq.read_table(str(tmp_path / "out.zarr" / "objects.parquet")).num_rows
    assert row["objects"] == summary["objects"] == objects


@pytest.mark.prefect
@pytest.mark.slow
def test_segment_image_fails_fast_with_the_cli_message(
        prefect_server: PrefectServer, model_dir: str, tmp_path: Path) -> None:  # noqa: F811
    from unet_tiles.flows.segment import segment_image

    with using(prefect_server), pytest.raises(InputError) as failure:
        segment_image(input=str(tmp_path / "missing.zarr"), output=str(tmp_path / "o.zarr"),
                      model_dir=model_dir)
    assert str(failure.value) == f"input {str(tmp_path / 'missing.zarr')!r} does not exist; " \
        "check the path"
    assert not (tmp_path / "o.zarr").exists()


@pytest.mark.prefect
@pytest.mark.slow
def test_deterministic_block_failure_names_the_block(
        prefect_server: PrefectServer, model_dir: str, tmp_path: Path) -> None:  # noqa: F811
    from unet_tiles.flows.segment import segment_image

    _image(tmp_path / "in.zarr")
    (tmp_path / "in.zarr" / "c" / "1" / "0").write_bytes(b"garbage, not zstd")
    with using(prefect_server), pytest.raises(BlockFailedError) as failure:
        segment_image(input=str(tmp_path / "in.zarr"), output=str(tmp_path / "out.zarr"),
                      model_dir=model_dir, cluster="cpu", workers=1)
    # The image is one block; the message names it with its pixel ranges.
    assert "block 0.0 (y=0:64, x=0:80)" in str(failure.value)


@pytest.mark.parametrize("entry", ["unet_tiles.flows.segment:segment_image",
                                   "unet_tiles.flows.archive:segment_archive"])
def test_flow_parameters_follow_segment_request(entry: str) -> None:
    """A SegmentRequest field added or re-defaulted must reach the flows too."""
    import dataclasses
    import importlib
    import inspect

    from unet_tiles.engine.run import SegmentRequest

    module, name = entry.split(":")
    parameters = inspect.signature(getattr(importlib.import_module(module), name).fn).parameters
    per_image = {"input", "output", "overwrite"} if name == "segment_archive" else set()
    for f in dataclasses.fields(SegmentRequest):
        if f.name in per_image:
            continue
        assert f.name in parameters, f.name
        if f.default is not dataclasses.MISSING:
            assert parameters[f.name].default == f.default, f.name


@pytest.mark.cluster
def test_archive_step_writes_a_preview_beside_the_output(tmp_path: Path, model_dir: str,
                                                         client: Any) -> None:
    from PIL import Image

    from unet_tiles.engine.cluster import ClusterInfo
    from unet_tiles.engine.run import SegmentRequest
    from unet_tiles.flows.archive import Outcome, segment_step

    _image(tmp_path / "in.zarr")
    request = SegmentRequest(str(tmp_path / "in.zarr"), str(tmp_path / "out.zarr"), model_dir)
    info = ClusterInfo("cpu", 2, 1, 1)
    summary = segment_step.fn("in", request, client.scheduler.address, info, preview=True)
    assert summary["preview"] == str(tmp_path / "out.zarr") + ".preview.png"
    with Image.open(summary["preview"]) as png:
        assert png.mode == "RGB"
        assert png.width > png.height > 0
    row = Outcome("in", "in", str(tmp_path / "out.zarr"), "done", "", summary=summary).row()
    assert row["preview"] == summary["preview"]
