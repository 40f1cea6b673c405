"""``--config FILE`` (cli/config.py): options from YAML, checked line by line; flags win."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from helpers import write_zarr

from unet_tiles.cli import build_parser, main
from unet_tiles.cli.config import config_keys, effective_options, parse_command_line
from unet_tiles.cli.options import request_options
from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    import argparse
    from pathlib import Path


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    return parser._subparsers._group_actions[0].choices[name]  # type: ignore[union-attr,no-any-return]


def one_error_line(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("unet-tiles: error: ")
    return err.removeprefix("unet-tiles: error: ").rstrip("\n")


@pytest.fixture
def image(tmp_path: Path) -> str:
    data = (np.random.default_rng(3).random((96, 96)) * 255).astype("uint8")
    return write_zarr(tmp_path / "in.zarr", data, (32, 32))


def record(out: Path) -> dict[str, Any]:
    import zarr

    attrs = zarr.open_group(str(out), mode="r").attrs["unet_tiles"]
    assert isinstance(attrs, dict)
    return attrs


def test_segment_takes_model_block_size_and_output_kind_from_the_file(
        tmp_path: Path, make_model: Any, image: str) -> None:
    import zarr

    config = write(tmp_path / "run.yaml", f"""\
# a segment run
model: {make_model(depth=1)}
block_size: 32
output_kind: both
dtype: float32
workers: 1
no-progress: true
""")
    out = tmp_path / "out.zarr"
    assert main(["segment", image, str(out), "--config", config]) == 0
    group = zarr.open_group(str(out), mode="r")
    assert group["labels"].shape == (96, 96)
    assert group["probabilities"].dtype == np.float32
    assert record(out)["parameters"]["block_shape"] == [32, 32]
    assert record(out)["parameters"]["output"] == "both"


def test_command_line_flags_override_the_file(tmp_path: Path, make_model: Any,
                                              image: str) -> None:
    import zarr

    config = write(tmp_path / "run.yaml", f"""\
model: {make_model(depth=1)}
block_size: 32
output_kind: both
workers: 1
no_progress: true
""")
    out = tmp_path / "out.zarr"
    assert main(["segment", image, str(out), "--config", config,
                 "--block-size", "64", "--output", "labels"]) == 0
    group = zarr.open_group(str(out), mode="r")
    assert "labels" in group
    assert "probabilities" not in group
    assert record(out)["parameters"]["block_shape"] == [64, 64]
    # The effective configuration, file and flags merged, is in the provenance.
    configuration = record(out)["configuration"]
    assert (configuration["block_size"], configuration["output_kind"],
            configuration["workers"], configuration["no_progress"]) == (64, "labels", 1, True)
    assert configuration["output"] == str(out)


def test_flags_before_or_after_config_win_and_positionals_come_from_the_file(
        tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", """\
input: file-in.zarr
output: file-out.zarr
model: file-model
block-size: 128
cluster: cpu
""")
    parser = build_parser()
    args = parse_command_line(parser, ["segment", "--config", config])
    assert (args.input, args.output, args.model_dir, args.block_size, args.cluster) == (
        "file-in.zarr", "file-out.zarr", "file-model", 128, "cpu")
    args = parse_command_line(parser, ["segment", "--block-size", "64", "cli-in.zarr",
                                       f"--config={config}", "--model", "cli-model"])
    assert (args.input, args.output, args.model_dir, args.block_size) == (
        "cli-in.zarr", "file-out.zarr", "cli-model", 64)
    args = parse_command_line(parser, ["segment", "a.zarr", "b.zarr", "--conf", config])
    assert (args.input, args.output, args.block_size) == ("a.zarr", "b.zarr", 128)


def test_the_parser_is_left_as_built(tmp_path: Path) -> None:
    """The file's values are defaults for one parse only: watch compares options
    with the parser's defaults (options not carried by arrival events)."""
    from unet_tiles.cli.watch import _check_event_options

    config = write(tmp_path / "watch.yaml", "model: m\noutput_root: out\nblock_size: 64\n")
    parser = build_parser()
    args = parse_command_line(parser, ["watch", "root", "--config", config])
    watch = subparser(parser, "watch")
    assert watch.get_default("block_size") is None
    assert next(a for a in watch._actions if a.dest == "model_dir").required
    with pytest.raises(UsageError, match="`block_size` is not carried by arrival events"):
        _check_event_options(args.parser, request_options(args))
    with pytest.raises(SystemExit):  # --model is required again without the file
        parser.parse_args(["watch", "root", "--output-root", "out"])


def test_archive_options_from_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "archive.yaml", """\
root: /data/raw
output-root: /data/seg
model: /models/m
max_concurrent: 3
allow-missing-chunks: true
threads_per_worker: 2
""")
    parser = build_parser()
    args = parse_command_line(parser, ["archive", "--config", config, "--max-concurrent", "5"])
    assert (args.root, args.output_root, args.model_dir, args.max_concurrent,
            args.allow_missing_chunks, args.threads_per_worker, args.cluster) == (
        "/data/raw", "/data/seg", "/models/m", 5, True, 2, None)
    assert args.run.__module__ == "unet_tiles.cli.archive"


def test_watch_options_from_the_file(tmp_path: Path) -> None:
    config = write(tmp_path / "watch.yaml", """\
root: /data/raw
output_root: /data/seg
model: /models/m
quiet-seconds: 2
poll: 0.5
include_existing: true
output: probabilities
""")
    args = parse_command_line(build_parser(), ["watch", "/data/other", "--config", config])
    assert (args.root, args.output_root, args.model_dir, args.output_kind,
            args.include_existing, args.poll) == (
        "/data/other", "/data/seg", "/models/m", "probabilities", True, 0.5)
    assert args.quiet_seconds == 2.0
    assert isinstance(args.quiet_seconds, float)


def test_effective_options_are_the_merged_values_and_json(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", "model: m\nblock_size: 32\ndevice: cpu\n")
    parser = build_parser()
    args = parse_command_line(parser, ["segment", "in.zarr", "out.zarr", "--config", config,
                                       "--device", "auto", "--no-progress"])
    options = args.effective_config
    assert options == effective_options(args, args.parser)
    assert json.loads(json.dumps(options)) == options
    assert {"run", "parser", "config", "help", "command"}.isdisjoint(options)
    assert {"input": "in.zarr", "output": "out.zarr", "model_dir": "m", "block_size": 32,
            "device": "auto", "no_progress": True, "output_kind": "labels"}.items() <= \
        options.items()
    plain = parse_command_line(parser, ["segment", "i", "o", "--model", "m"])
    assert plain.effective_config["block_size"] is None
    assert plain.config is None


def test_a_missing_required_option_is_still_an_error(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "run.yaml", "block_size: 32\n")
    with pytest.raises(SystemExit) as exited:
        main(["segment", "in.zarr", "out.zarr", "--config", config])
    assert exited.value.code == 2
    assert "--model" in capsys.readouterr().err


@pytest.mark.parametrize(("text", "line", "message"), [
    ("model: m\n\nblok_size: 3\n", 3, "unknown key 'blok_size' (did you mean 'block_size'?)"),
    ("model: m\nmax_concurrent: 2\n", 2, "unknown key 'max_concurrent'"),
    ("help: true\n", 1, "unknown key 'help'"),
    ("model: m\nconfig: other.yaml\n", 2,
     "'config' cannot be set in a config file (pass --config on the command line)"),
    ("model: m\nblock_size: big\n", 2, "'block_size' must be an integer, got 'big'"),
    ("model: m\nblock-size: 3.5\n", 2, "'block-size' must be an integer, got 3.5"),
    ("model: m\nworkers: true\n", 2, "'workers' must be an integer, got true"),
    ("model: m\noverwrite: 'yes please'\n", 2,
     "'overwrite' must be true or false, got 'yes please'"),
    ("model: m\noutput_kind: masks\n", 2,
     "'output_kind' must be one of labels, probabilities, both, instances, labels,instances, "
     "probabilities,instances, labels,probabilities,instances, got 'masks'"),
    ("model: 12\n", 1, "'model' must be a string, got 12"),
    ("model: null\n", 1, "'model' must be a string, got null"),
    ("model: m\naxes: [y, x]\n", 2, "'axes' must be a string, got a list"),
    ("model: m\nblock_size: 32\nblock-size: 64\n", 3,
     "'block-size' is set twice (first on line 2)"),
    ("model: m\n3: x\n", 2, "keys must be option names, got 3"),
])
def test_a_bad_key_or_value_is_one_line_with_file_and_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, line: int,
        message: str) -> None:
    config = write(tmp_path / "run.yaml", text)
    out = tmp_path / "out.zarr"
    assert main(["segment", "in.zarr", str(out), "--config", config]) == 2
    assert one_error_line(capsys) == f"{config}:{line}: {message}"
    assert not out.exists()


@pytest.mark.parametrize(("text", "line", "problem"), [
    ("model: m\nblock_size: 32\n  workers: 2\n", 3, "mapping values are not allowed here"),
    ("model: m\naxes: 'yx\n", 3, "found unexpected end of stream"),
    ("model: m\n---\nblock_size: 32\n", 2, "but found another document"),
    ("model: !!python/name:os.system\n", 1, "could not determine a constructor"),
])
def test_invalid_yaml_names_its_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     text: str, line: int, problem: str) -> None:
    config = write(tmp_path / "run.yaml", text)
    assert main(["archive", "root", "--config", config]) == 2
    error = one_error_line(capsys)
    assert error.startswith(f"{config}:{line}: invalid YAML: {problem}")


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("missing.yaml", None, "{path}: no such config file"),
    ("list.yaml", "- model\n- m\n", "{path}:1: a config file must be a mapping"),
    ("scalar.yaml", "\n\njust words\n", "{path}:3: a config file must be a mapping"),
    ("folder", "", "{path}: is a directory"),
])
def test_a_file_that_is_not_a_config_is_one_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, text: str | None,
        expected: str) -> None:
    path = tmp_path / name
    if name == "folder":
        path.mkdir()
    elif text is not None:
        path.write_text(text)
    assert main(["watch", "root", "--output-root", "o", "--model", "m",
                 "--config", str(path)]) == 2
    assert one_error_line(capsys).startswith(expected.format(path=path))


def test_an_empty_file_sets_nothing(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", "# everything commented out\n# block_size: 32\n")
    args = parse_command_line(build_parser(), ["segment", "i", "o", "--model", "m",
                                               "--config", config])
    assert args.block_size is None


def test_null_resets_an_option_whose_default_is_none(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml", "model: m\nblock_size: null\nworkers: ~\n")
    args = parse_command_line(build_parser(), ["segment", "i", "o", "--config", config])
    assert (args.block_size, args.workers) == (None, None)


def test_yaml_merge_keys_give_way_to_the_files_own(tmp_path: Path) -> None:
    config = write(tmp_path / "run.yaml",
                   "<<: {model: site-model, block_size: 32}\nblock_size: 64\n")
    args = parse_command_line(build_parser(), ["segment", "i", "o", "--config", config])
    assert (args.model_dir, args.block_size) == ("site-model", 64)


def test_a_later_positional_without_the_earlier_one_is_an_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write(tmp_path / "run.yaml", "model: m\noutput: out.zarr\n")
    assert main(["segment", "--config", config]) == 2
    assert one_error_line(capsys) == (
        f"{config}:2: 'output' needs 'input' too: positional arguments fill from the "
        "first, on the command line and then in the file")


def test_keys_cover_every_option_but_config_and_help() -> None:
    segment = subparser(build_parser(), "segment")
    keys = config_keys(segment)
    assert keys["output"].dest == "output"  # the positional OUTPUT, not --output
    assert keys["output_kind"].dest == "output_kind"
    assert keys["model"].dest == keys["model_dir"].dest == "model_dir"
    assert "config" not in keys
    assert "help" not in keys
    dests = {a.dest for a in segment._actions} - {"help", "config"}
    assert {a.dest for a in keys.values()} == dests
