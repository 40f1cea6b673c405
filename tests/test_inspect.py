"""``unet-tiles inspect`` (pipeline/inspect.py, cli/inspect.py) on real stores: plain and
sharded arrays, OME-Zarr 0.4 and 0.5 groups written by hand, and real outputs of
unet-tiles, finished, partly done and with pyramid done-markers."""

from __future__ import annotations

import json
import re
import shutil
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import write_zarr

from unet_tiles import __version__
from unet_tiles.cli import main
from unet_tiles.cli.inspect import format_report
from unet_tiles.errors import InputError
from unet_tiles.model.files import model_hash
from unet_tiles.pipeline.inspect import ProgressReport, inspect_store
from unet_tiles.pipeline.provenance import ATTRS_KEY
from unet_tiles.pipeline.writer import read_record, write_record

if TYPE_CHECKING:
    from pathlib import Path

# A 96 x 128 image in blocks of 32: a 3 x 4 grid of blocks.
SHAPE = (96, 128)
GRID = (3, 4)


@pytest.fixture(scope="module")
def segmented(tmp_path_factory: pytest.TempPathFactory, make_model: Any) -> dict[str, str]:
    """A real input and its finished output, made once by the serial path (in process)."""
    from unet_tiles.engine.run import SegmentRequest, validate

    root = tmp_path_factory.mktemp("segmented")
    image = np.random.default_rng(0).integers(0, 255, SHAPE).astype(np.uint8)
    src = write_zarr(root / "in.zarr", image, (32, 32), dimension_names=("y", "x"))
    out = str(root / "out.zarr")
    model = str(make_model())
    summary = validate(SegmentRequest(src, out, model, block_size=32)).segment()
    assert summary.blocks_done == GRID[0] * GRID[1]
    return {"input": src, "output": out, "model": model}


@pytest.fixture
def output(segmented: dict[str, str], tmp_path: Path) -> str:
    """A copy of the finished output this test may change."""
    return str(shutil.copytree(segmented["output"], tmp_path / "out.zarr"))


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["inspect", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _fields(text: str) -> dict[str, str]:
    """The listing's ``key  value`` lines as a dict (first line of each key)."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        match = re.match(r"^(\S(?:.*?\S)?)\s{2,}(\S.*)$", line)
        if match:
            fields.setdefault(match.group(1), match.group(2))
    return fields


def _value_column(text: str) -> set[int]:
    """Where the values start, on every line (continuation lines included)."""
    return {len(line) - len(line.lstrip()) if line.startswith(" ")
            else re.match(r"^\S(?:.*?\S)?\s{2,}", line).end()  # type: ignore[union-attr]
            for line in text.splitlines()}


# --- inputs ---------------------------------------------------------------------------------


def test_plain_zarr_v2_array(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "v2.zarr", np.zeros((30, 40), dtype=np.uint16), (10, 20),
                     zarr_format=2)
    report = inspect_store(src)
    assert (report.node, report.zarr_format, report.ome_version) == ("array", 2, None)
    assert report.image is not None
    assert (report.image.shape, report.image.dtype, report.image.chunks) == (
        (30, 40), "uint16", (10, 20))
    assert report.image.shards is None
    assert report.axes is None  # zarr v2 stores no dimension names
    assert report.output is None
    text = format_report(report)
    fields = _fields(text)
    assert fields["zarr"] == "v2 array"
    assert fields["shape"] == "30 x 40"
    assert fields["chunks"] == "10 x 20"
    assert fields["shards"] == "none"
    assert fields["OME-Zarr"] == "no"
    assert fields["axes"].startswith("unnamed")
    assert len(_value_column(text)) == 1, text


def test_plain_zarr_v3_array_with_dimension_names(tmp_path: Path) -> None:
    src = write_zarr(tmp_path / "v3.zarr", np.zeros((2, 30, 40), dtype=np.float32),
                     (1, 30, 20), dimension_names=("c", "y", "x"))
    report = inspect_store(src)
    assert (report.node, report.zarr_format) == ("array", 3)
    assert report.axes == ("c", "y", "x")
    assert report.image is not None
    assert (report.image.shape, report.image.dtype, report.image.chunks) == (
        (2, 30, 40), "float32", (1, 30, 20))
    fields = _fields(format_report(report))
    assert fields["axes"] == "cyx"
    assert fields["zarr"] == "v3 array"


def test_sharded_v3_array(tmp_path: Path) -> None:
    path = str(tmp_path / "sharded.zarr")
    zarr.create_array(path, shape=(64, 96), chunks=(8, 16), shards=(32, 48), dtype="uint8",
                      dimension_names=("y", "x"))
    report = inspect_store(path)
    assert report.image is not None
    assert report.image.chunks == (8, 16)  # the inner chunks
    assert report.image.shards == (32, 48)
    fields = _fields(format_report(report))
    assert fields["shards"] == "32 x 48"
    assert fields["chunks"] == "8 x 16"


def _ome_04(path: Path) -> str:
    group = zarr.open_group(str(path), mode="w", zarr_format=2)
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space",
                                                     "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [
            {"path": "0", "coordinateTransformations": [{"type": "scale",
                                                         "scale": [1.0, 0.5, 0.5]}]},
            {"path": "1", "coordinateTransformations": [{"type": "scale",
                                                         "scale": [1.0, 1.0, 1.0]}]},
            {"path": "2", "coordinateTransformations": [{"type": "scale",
                                                         "scale": [1.0, 2.0, 2.0]}]},
        ],
    }]
    group.create_array("0", shape=(2, 64, 80), chunks=(1, 32, 32), dtype="uint16")
    group.create_array("1", shape=(2, 32, 40), chunks=(1, 32, 32), dtype="uint16")
    group.create_array("2", shape=(2, 16, 20), chunks=(1, 16, 20), dtype="uint16")
    labels = group.create_group("labels")
    labels.attrs["labels"] = ["cells", "nuclei"]
    labels.create_group("cells")
    labels.create_group("nuclei")
    return str(path)


def test_ome_zarr_04_group(tmp_path: Path) -> None:
    report = inspect_store(_ome_04(tmp_path / "image.ome.zarr"))
    assert (report.node, report.zarr_format, report.ome_version) == ("group", 2, "0.4")
    assert report.axes == ("c", "y", "x")
    assert [(lv.path, lv.shape, lv.scale) for lv in report.levels] == [
        ("0", (2, 64, 80), (1.0, 0.5, 0.5)),
        ("1", (2, 32, 40), (1.0, 1.0, 1.0)),
        ("2", (2, 16, 20), (1.0, 2.0, 2.0)),
    ]
    assert report.image is not None
    assert (report.image.path, report.image.shape, report.image.chunks) == (
        "0", (2, 64, 80), (1, 32, 32))
    assert report.labels == ("cells", "nuclei")
    assert report.problems == ()
    text = format_report(report)
    fields = _fields(text)
    assert fields["OME-Zarr"] == "0.4"
    assert fields["axes"] == "cyx"
    assert fields["labels"] == "cells, nuclei"
    assert fields["levels"] == "0  2 x 64 x 80  scale 1 x 0.5 x 0.5"
    assert "    2  2 x 16 x 20  scale 1 x 2 x 2" in text
    assert len(_value_column(text)) == 1, text


def test_ome_zarr_05_group_with_a_missing_level(tmp_path: Path) -> None:
    path = tmp_path / "image.zarr"
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": "z", "type": "space"}, {"name": "y", "type": "space"},
                 {"name": "x", "type": "space"}],
        "datasets": [{"path": "s0", "coordinateTransformations": [
                         {"type": "scale", "scale": [2.0, 0.25, 0.25]}]},
                     {"path": "s1"}],
    }]}
    group.create_array("s0", shape=(8, 64, 64), chunks=(4, 32, 32), shards=(8, 64, 64),
                       dtype="uint8", dimension_names=("z", "y", "x"))
    labels = group.create_group("labels")
    labels.attrs["ome"] = {"version": "0.5", "labels": ["mask"]}
    report = inspect_store(str(path))
    assert (report.zarr_format, report.ome_version) == (3, "0.5")
    assert report.axes == ("z", "y", "x")
    assert [(lv.path, lv.shape, lv.scale) for lv in report.levels] == [
        ("s0", (8, 64, 64), (2.0, 0.25, 0.25)), ("s1", None, None)]
    assert report.image is not None
    assert (report.image.path, report.image.shards) == ("s0", (8, 64, 64))
    assert report.labels == ("mask",)
    assert report.problems == ("multiscales level 's1' is listed but not in the store",)
    text = format_report(report)
    assert "    s1  missing" in text
    assert _fields(text)["problems"].startswith("multiscales level 's1'")


def test_a_group_of_several_arrays_names_no_image(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("b10", shape=(4,), chunks=(2,), dtype="int8")
    group.create_array("b2", shape=(6, 6), chunks=(3, 3), dtype="int8")
    report = inspect_store(str(tmp_path / "g.zarr"))
    assert report.image is None
    assert [a.path for a in report.arrays] == ["b2", "b10"]  # natural order
    text = format_report(report)
    assert "shape" not in _fields(text)
    assert "labels" not in _fields(text)  # not an OME image


# --- outputs --------------------------------------------------------------------------------


def test_finished_output(segmented: dict[str, str]) -> None:
    report = inspect_store(segmented["output"])
    out = report.output
    assert out is not None
    record = read_record(segmented["output"])
    assert record is not None
    assert out.version == __version__
    assert out.model_hash == model_hash(segmented["model"])
    assert out.status == "complete"
    assert out.input_url == segmented["input"]
    assert out.input_fingerprint == record.fingerprint
    assert out.input_fingerprint is not None
    assert len(out.input_fingerprint) == 64
    assert out.parameters == record.parameters
    assert out.parameters["block_shape"] == [32, 32]
    assert out.blocks == ProgressReport("", 12, 12)
    assert out.pyramid == ()
    assert out.complete
    assert report.image is not None
    assert (report.image.path, report.image.shape, report.image.chunks) == (
        "labels", SHAPE, (32, 32))
    assert report.axes == ("y", "x")
    assert {a.path: a.shape for a in report.arrays}["done"] == GRID


def test_partly_done_output(output: str) -> None:
    done = zarr.open_array(output, path="done", mode="r+")
    done[0, 1] = 0
    done[2, 3] = 0
    done[1, 0] = 0
    report = inspect_store(output)
    assert report.output is not None
    assert report.output.blocks == ProgressReport("", 9, 12)
    # Marked complete, but blocks are missing: not complete.
    assert report.output.status == "complete"
    assert not report.output.complete


def test_a_running_output_is_not_complete(output: str) -> None:
    record = read_record(output)
    assert record is not None
    write_record(output, record.with_status("running"))
    report = inspect_store(output)
    assert report.output is not None
    assert report.output.blocks == ProgressReport("", 12, 12)
    assert report.output.status == "running"
    assert not report.output.complete


def test_pyramid_progress(output: str) -> None:
    group = zarr.open_group(output, mode="r+")
    pyramid = group.create_group("pyramid")
    pyramid.create_array("1", shape=(2, 2), chunks=(1, 1), dtype="uint8", fill_value=0)[...] = 1
    level2 = pyramid.create_array("2", shape=(1, 3), chunks=(1, 1), dtype="uint8",
                                  fill_value=0)
    level2[0, 0] = 1
    report = inspect_store(output)
    assert report.output is not None
    assert report.output.pyramid == (ProgressReport("1", 4, 4), ProgressReport("2", 1, 3))
    assert not report.output.complete  # level 2 unfinished
    text = format_report(report)
    assert _fields(text)["pyramid"] == "level 1  4 / 4 done (100 %)"
    assert "level 2  1 / 3 done (33 %)" in text
    level2[...] = 1
    finished = inspect_store(output).output
    assert finished is not None
    assert finished.complete


def test_only_metadata_and_done_markers_are_read(output: str, tmp_path: Path) -> None:
    # Every labels chunk replaced by junk: reading any pixel would fail.
    chunks = [p for p in (tmp_path / "out.zarr" / "labels").rglob("*") if p.is_file()
              and p.name != "zarr.json"]
    assert len(chunks) == 12
    for chunk in chunks:
        chunk.write_bytes(b"not a chunk")
    with pytest.raises(Exception):  # noqa: B017, PT011 - zarr's decode error, whatever it is
        zarr.open_array(output, path="labels", mode="r")[...]
    report = inspect_store(output)
    assert report.output is not None
    assert report.output.complete


def test_a_malformed_record_is_a_problem_not_a_crash(output: str) -> None:
    zarr.open_group(output, mode="r+").attrs[ATTRS_KEY] = {"version": 1}
    report = inspect_store(output)
    assert report.output is None
    assert len(report.problems) == 1
    assert "malformed unet-tiles provenance record" in report.problems[0]


# --- the command ----------------------------------------------------------------------------


def test_cli_listing_of_a_partial_output(output: str, capsys: pytest.CaptureFixture[str]
                                         ) -> None:
    done = zarr.open_array(output, path="done", mode="r+")
    done[0, 0] = 0
    code, out, err = _cli(capsys, output)
    assert (code, err) == (0, "")
    fields = _fields(out)
    assert fields["store"] == output
    assert fields["zarr"] == "v3 group"
    assert fields["image"] == "labels"
    assert fields["shape"] == "96 x 128"
    assert fields["unet-tiles"] == "output, provenance format 1"
    assert fields["version"] == __version__
    assert fields["status"] == "complete"
    assert fields["blocks"] == "11 / 12 done (91 %)"
    assert fields["complete"] == "no"
    assert fields["parameters"].startswith("allow_missing_chunks = False")
    assert "             block_shape = 32 x 32" in out
    assert len(_value_column(out)) == 1, out
    assert out.endswith("\n")
    assert not out.endswith("\n\n")


def test_cli_json(segmented: dict[str, str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _cli(capsys, "--json", segmented["output"])
    assert (code, err) == (0, "")
    data = json.loads(out)
    assert data == json.loads(json.dumps(inspect_store(segmented["output"]).to_dict()))
    assert data["node"] == "group"
    assert data["image"]["shape"] == list(SHAPE)
    assert data["output"]["blocks"] == {"name": "", "done": 12, "total": 12}
    assert data["output"]["complete"] is True
    assert data["output"]["model_hash"] == model_hash(segmented["model"])
    assert data["output"]["input_url"] == segmented["input"]


def test_cli_json_of_an_input(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _cli(capsys, _ome_04(tmp_path / "image.zarr"), "--json")
    assert code == 0
    data = json.loads(out)
    assert (data["ome_version"], data["output"]) == ("0.4", None)
    assert [level["shape"] for level in data["levels"]] == [[2, 64, 80], [2, 32, 40],
                                                            [2, 16, 20]]
    assert data["labels"] == ["cells", "nuclei"]


@pytest.mark.parametrize("kind", ["missing", "file", "empty directory", "not zarr"])
def test_a_path_that_is_not_a_zarr_store(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                         kind: str) -> None:
    path = tmp_path / "thing"
    if kind == "file":
        path.write_text("hello")
    elif kind == "empty directory":
        path.mkdir()
    elif kind == "not zarr":
        path.mkdir()
        (path / "image.tif").write_bytes(b"II*\0")
    with pytest.raises(InputError, match=re.escape(repr(str(path)))):
        inspect_store(str(path))
    code, out, err = _cli(capsys, str(path))
    assert code == 2
    assert out == ""
    assert err.startswith("unet-tiles: error: ")
    assert err.count("\n") == 1
    assert not path.exists() or kind != "missing"


def test_unreadable_metadata_is_an_input_error(tmp_path: Path) -> None:
    path = tmp_path / "broken.zarr"
    path.mkdir()
    (path / "zarr.json").write_text("{ not json")
    with pytest.raises(InputError, match="unreadable zarr metadata"):
        inspect_store(str(path))
