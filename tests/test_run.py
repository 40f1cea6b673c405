"""The Run: validation, the lock around its steps, and its decisions on existing outputs."""

from __future__ import annotations

import os
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import write_zarr

from unet_tiles.engine.run import (
    SegmentRequest,
    _check_model_once,
    default_tile,
    validate,
)
from unet_tiles.errors import OutputConflictError, UsageError

if TYPE_CHECKING:
    from pathlib import Path


def test_model_is_checked_once_and_again_when_its_files_change(
    tmp_path: Path, make_model: Any
) -> None:
    from unet_tiles import load_model
    from unet_tiles.model.files import save_model

    model_dir = save_model(load_model(str(make_model(depth=1))), tmp_path / "model")
    src = write_zarr(tmp_path / "in.zarr", np.zeros((40, 40), dtype="uint8"), (20, 20))
    request = SegmentRequest(src, str(tmp_path / "out.zarr"), str(model_dir))
    first = validate(request)
    loads = _check_model_once.cache_info().misses
    again = validate(request)
    assert _check_model_once.cache_info().misses == loads
    assert again.job.model_hash == first.job.model_hash
    changed = load_model(str(model_dir))
    with __import__("torch").no_grad():
        changed.head.bias.add_(1.0)
    save_model(changed, model_dir)
    os.utime(model_dir / "weights.safetensors", ns=(1, 1))  # a new stamp even within one tick
    assert validate(request).job.model_hash != first.job.model_hash
    assert _check_model_once.cache_info().misses == loads + 1


def _request(tmp_path: Path, make_model: Any, **options: Any) -> SegmentRequest:
    image = (np.random.default_rng(0).random((70, 90)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", image, (32, 32))
    return SegmentRequest(src, str(tmp_path / "out.zarr"), str(make_model()), block_size=32,
                          **options)


def test_steps_run_only_under_the_lock(tmp_path: Path, make_model: Any) -> None:
    run = validate(_request(tmp_path, make_model))
    for step in (run.prepare, run.execute, run.finalize):
        with pytest.raises(RuntimeError, match=r"inside 'with run\.locked\(\):'"):
            step()
    assert not (tmp_path / "out.zarr").exists()
    with run.locked():
        with pytest.raises(RuntimeError, match="already locked"), run.locked():
            pass
        assert run.prepare().action == "new"
        summary = run.execute()  # no client: the serial engine, in this process
        run.finalize()
    assert (summary.blocks_done, summary.blocks_total) == (9, 9)
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["unet_tiles"][
        "status"] == "complete"


def test_decisions_on_an_existing_output(tmp_path: Path, make_model: Any) -> None:
    request = _request(tmp_path, make_model)
    run = validate(request)
    assert run.decide().action == "new"
    with run.locked():
        run.prepare()
        run.execute()  # not finalized: an unfinished run
    assert run.decide().action == "resume"
    assert validate(request).segment().blocks_skipped == 9
    assert validate(request).decide().action == "skip"
    other = validate(_request(tmp_path, make_model, output_kind="both"))
    decision = other.decide()
    assert (decision.action, decision.cause) == ("redo", "parameters")
    with other.locked(), pytest.raises(OutputConflictError,
                                       match=r"other parameters \(output\); pass `overwrite`"):
        other.prepare()


def test_unattended_runs_skip_redo_and_refuse(tmp_path: Path, make_model: Any) -> None:
    request = _request(tmp_path, make_model)
    validate(request).segment()
    skipped, decision = validate(request).unattended()
    assert skipped is None
    assert decision.action == "skip"
    redo, decision = validate(_request(tmp_path, make_model, output_kind="both")).unattended()
    assert redo is not None
    assert (decision.action, redo.request.overwrite) == ("redo", True)
    assert redo.segment().blocks_done == 9
    assert "probabilities" in zarr.open_group(str(tmp_path / "out.zarr"), mode="r")
    foreign = tmp_path / "foreign.zarr"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("someone else's")
    run = validate(SegmentRequest(request.input, str(foreign), request.model_dir))
    with pytest.raises(OutputConflictError, match="not written by unet-tiles; move it away"):
        run.unattended()
    assert (foreign / "notes.txt").exists()


def test_batch_size_and_precision_are_recorded_only_when_given(tmp_path: Path,
                                                               make_model: Any) -> None:
    default = validate(_request(tmp_path, make_model)).record.parameters
    assert "batch_size" not in default  # outputs written before keep their records
    assert "precision" not in default
    request = _request(tmp_path, make_model, batch_size=2, precision="float32")
    given = validate(request)
    assert given.record.parameters["batch_size"] == 2
    assert given.record.parameters["precision"] == "float32"
    given.segment()
    assert validate(request).decide().action == "skip"
    # Another batch rounds the floats otherwise: not resumed into the same output.
    decision = validate(replace(request, batch_size=3)).decide()
    assert (decision.action, decision.cause) == ("redo", "parameters")
    assert "batch_size" in decision.reason


@pytest.mark.parametrize(
    ("architecture", "tile"),
    [
        ({"depth": 3, "base_channels": 8}, 1024),  # the demo model's
        ({"depth": 3, "base_channels": 16}, 768),
        ({"depth": 4, "base_channels": 64}, 512),  # the paper's
        ({"depth": 3, "base_channels": 8, "dims": 3}, 96),
    ],
)
def test_default_tile_is_the_largest_whose_first_level_fits(architecture: dict[str, int],
                                                            tile: int) -> None:
    from unet_tiles.model.config import UNetConfig

    assert default_tile(UNetConfig(**architecture)) == tile


def test_an_output_keeps_the_tile_it_was_begun_with(tmp_path: Path, make_model: Any) -> None:
    # Begun at 512 px (as every output was before the default grew with the model):
    # a rerun without a tile size resumes it at 512, it does not redo it at 1024.
    request = _request(tmp_path, make_model)
    begun = validate(replace(request, tile_size=512))
    with begun.locked():
        begun.prepare()
        begun.execute()
    fresh = validate(replace(request, output=str(tmp_path / "new.zarr")))
    assert fresh.record.parameters["tile_out"] == 1024
    again = validate(request)
    assert again.record.parameters["tile_out"] == 512
    assert again.decide().action == "resume"
    assert again.segment().blocks_skipped == 9
    assert validate(request).decide().action == "skip"
    assert validate(replace(request, overwrite=True)).record.parameters["tile_out"] == 1024
    # An explicit tile size is still the user's: another one is a redo.
    decision = validate(replace(request, tile_size=256)).decide()
    assert (decision.action, decision.cause) == ("redo", "parameters")


@pytest.mark.parametrize(("input_chunk", "output_chunk"), [(64, 64), (128, 96), (256, 192)])
def test_a_3d_default_block_is_two_default_tiles_whatever_the_input_chunks(
        tmp_path: Path, make_model: Any, input_chunk: int, output_chunk: int) -> None:
    volume = np.zeros((16, 384, 384), dtype="uint8")
    src = write_zarr(tmp_path / "in.zarr", volume, (16, input_chunk, input_chunk))
    run = validate(SegmentRequest(src, str(tmp_path / "out.zarr"),
                                  str(make_model(dims=3, classes=2))))
    assert run.record.parameters["chunks"] == [16, output_chunk, output_chunk]
    assert run.record.parameters["block_shape"] == [16, 192, 192]
    block = next(iter(run.plan))
    assert [axis.stride for axis in block.tiles[1:]] == [96, 96]


def test_an_output_keeps_the_block_it_was_begun_with(tmp_path: Path, make_model: Any) -> None:
    # Begun with 128 voxel blocks (the 3D default before it became 192): a rerun without
    # a block size resumes it with 128, it does not redo it with 192.
    volume = (np.random.default_rng(0).random((16, 256, 256)) * 255).astype("uint8")
    src = write_zarr(tmp_path / "in.zarr", volume, (16, 64, 64))
    request = SegmentRequest(src, str(tmp_path / "out.zarr"),
                             str(make_model(dims=3, classes=2)), tile_size=64)
    begun = validate(replace(request, block_size=128))
    assert begun.record.parameters["block_shape"] == [16, 128, 128]
    with begun.locked():
        begun.prepare()
        begun.execute()
    fresh = validate(replace(request, output=str(tmp_path / "new.zarr")))
    assert fresh.record.parameters["block_shape"] == [16, 192, 192]
    again = validate(request)
    assert again.record.parameters["block_shape"] == [16, 128, 128]
    assert again.decide().action == "resume"
    assert again.segment().blocks_skipped == 4
    assert validate(request).decide().action == "skip"
    overwrite = validate(replace(request, overwrite=True))
    assert overwrite.record.parameters["block_shape"] == [16, 192, 192]
    # An explicit block size is still the user's: another one is a redo.
    decision = validate(replace(request, block_size=256)).decide()
    assert (decision.action, decision.cause) == ("redo", "parameters")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"output_kind": "edges"}, "`output_kind` 'edges' must be one of"),
        ({"dtype": "int8"}, "`dtype` 'int8' must be one of"),
        ({"batch_size": 0}, "`batch_size` must be at least 1, got 0"),
        ({"precision": "float16"}, "`precision` 'float16' must be one of auto, float32, "
                                   "bfloat16"),
    ],
)
def test_requests_name_their_parameters(options: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        SegmentRequest("in.zarr", "out.zarr", "model", **options)


@pytest.mark.slow
@pytest.mark.cluster
def test_the_driver_never_imports_torch(tmp_path: Path, make_model: Any) -> None:
    # Only workers load the model: a driver with torch holds ~180 MiB for nothing
    # (bench/memory.py). Checked in a fresh interpreter, through the CLI's path.
    import subprocess
    import sys

    src = write_zarr(tmp_path / "in.zarr", np.zeros((64, 64), dtype="uint8"), (32, 32))
    code = (
        "import sys\n"
        "from unet_tiles.cli import main\n"
        f"assert main(['segment', {src!r}, {str(tmp_path / 'out.zarr')!r}, '--model', "
        f"{str(make_model(depth=1))!r}, '--workers', '1', '--no-progress', "
        "'--output', 'labels,instances']) == 0\n"
        "assert 'torch' not in sys.modules, 'the driver imported torch'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["unet_tiles"][
        "status"] == "complete"
