"""The command line: every command registered, shared options, errors in flags."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from helpers import write_zarr

from unet_tiles.cli import COMMANDS, build_parser, main
from unet_tiles.cli.options import REQUEST_FIELDS, flag_for
from unet_tiles.errors import BlockFailedError, UsageError, spell_parameters

if TYPE_CHECKING:
    from pathlib import Path


def test_every_command_is_registered() -> None:
    parser = build_parser()
    choices = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert set(choices) == {name.replace("_", "-") for name in COMMANDS}


def test_a_command_that_fails_to_import_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("unet_tiles.cli.COMMANDS", (*COMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match=r"unet_tiles\.cli\.no_such_command"):
        build_parser()


@pytest.mark.parametrize("command", ["segment", "archive", "watch"])
def test_request_options_are_shared(command: str) -> None:
    args = build_parser().parse_args([command, "a", *(["b"] if command == "segment" else
                                                      ["--output-root", "b"]),
                                      "--model", "m", "--output", "both", "--block-size", "64",
                                      "--allow-missing-chunks", "--cluster", "cpu",
                                      "--workers", "3", "--threads-per-worker", "2"])
    from unet_tiles.cli.options import cluster_options, request_options

    options = request_options(args)
    assert set(options) == set(REQUEST_FIELDS)
    assert (options["model_dir"], options["output_kind"], options["block_size"],
            options["allow_missing_chunks"]) == ("m", "both", 64, True)
    assert cluster_options(args) == {"cluster": "cpu", "workers": 3, "threads_per_worker": 2}


def test_parameters_are_spelled_as_the_commands_flags() -> None:
    parser = build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]  # type: ignore[union-attr]
    spell = flag_for(segment)
    message = "`output_kind` 'x' is wrong; `block_size` 3 too; pass `overwrite`; `not a flag"
    assert spell_parameters(message, spell) == (
        "--output 'x' is wrong; --block-size 3 too; pass --overwrite; `not a flag")


def test_bad_values_name_the_flag(tmp_path: Path, make_model: Any,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    src = write_zarr(tmp_path / "in.zarr", np.zeros((40, 40), dtype="uint8"), (20, 20))
    model = str(make_model())
    code = main(["segment", src, str(tmp_path / "out.zarr"), "--model", model,
                 "--tile-size", "3"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("unet-tiles: error: --tile-size 3 is below the model's pooling grid")
    assert err.count("\n") == 1
    code = main(["segment", src, str(tmp_path / "out.zarr"), "--model", model,
                 "--block-size", "2"])
    assert code == 2
    assert "--block-size 2 is below this model's minimum" in capsys.readouterr().err
    code = main(["segment", src, str(tmp_path / "out.zarr"), "--model", model,
                 "--read-cache-mb", "-1"])
    assert code == 2
    assert capsys.readouterr().err == (
        "unet-tiles: error: --read-cache-mb must be 0 (no cache) or more MiB, got -1\n")
    assert not (tmp_path / "out.zarr").exists()


def test_read_cache_mb_sets_the_workers_budget(tmp_path: Path, make_model: Any) -> None:
    from unet_tiles.engine.blocks import READ_CACHE_BYTES
    from unet_tiles.engine.run import SegmentRequest, validate

    src = write_zarr(tmp_path / "in.zarr", np.zeros((40, 40), dtype="uint8"), (20, 20))
    args = build_parser().parse_args(["segment", src, "out.zarr", "--model",
                                      str(make_model()), "--read-cache-mb", "3"])
    from unet_tiles.cli.options import request_options

    options = request_options(args)
    assert options["read_cache_mb"] == 3
    budget = validate(SegmentRequest(src, str(tmp_path / "o.zarr"), **options))
    assert budget.job.read_cache_bytes == 3 << 20
    default = validate(SegmentRequest(src, str(tmp_path / "o.zarr"), str(make_model())))
    assert default.job.read_cache_bytes == READ_CACHE_BYTES
    # Not a parameter of the output: a rerun with another budget resumes the same store.
    assert budget.record.parameters == default.record.parameters


def test_flows_word_parameters_by_name() -> None:
    from unet_tiles.flows.settings import flow_wording

    with pytest.raises(UsageError) as failure, flow_wording():
        raise UsageError("`block_size` 3 is below 4; use `block_size` 256")
    assert str(failure.value) == "block_size 3 is below 4; use block_size 256"
    failures = [{"block": "block 0.0"}]
    with pytest.raises(BlockFailedError) as failed, flow_wording():
        raise BlockFailedError("rerun with a smaller `block_size`", failures)
    assert str(failed.value) == "rerun with a smaller block_size"
    assert failed.value.failures is failures
