"""The output store on disk: its arrays, block writes then done-markers, the record."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
import zarr
from helpers import write_zarr
from strategies import MODELS

from unet_tiles.errors import OutputConflictError
from unet_tiles.pipeline import writer
from unet_tiles.pipeline.plan import make_plan
from unet_tiles.pipeline.predict import BlockResult
from unet_tiles.pipeline.provenance import ATTRS_KEY, Provenance
from unet_tiles.pipeline.writer import (
    OutputSpec,
    create_output,
    done_blocks,
    finalize,
    open_output,
    read_record,
    remove_output,
    remove_partial_files,
    write_block,
    write_record,
)

if TYPE_CHECKING:
    from pathlib import Path

    from unet_tiles.pipeline.plan import BlockPlan

RECORD = Provenance("0.1.0", "ab" * 32, {"output": "both", "block_shape": [32, 32]},
                    {"url": "/in.zarr", "fingerprint": "f" * 64})


def _spec(url: str, axes: str = "yx", classes: int = 3, dims: int = 2,
          labels: bool = True, probabilities: bool = True,
          dtype: str = "float32") -> OutputSpec:
    return OutputSpec(url, axes, dims, classes, (), labels, probabilities, dtype)


def _plan(shape: tuple[int, ...], chunks: tuple[int, ...], blocks: tuple[int, ...],
          dims: int = 2) -> BlockPlan:
    return make_plan(shape, dims, chunks, blocks, MODELS[(1, "valid")], 32)


def _result(plan: BlockPlan, index: tuple[int, ...], classes: int, seed: int) -> BlockResult:
    block = plan.block(index)
    spatial = block.write.spatial(plan.dims).shape
    rng = np.random.default_rng(seed)
    return BlockResult(
        labels=rng.integers(1, classes, spatial).astype(np.uint8),
        probabilities=rng.uniform(0.1, 1.0, (classes, *spatial)).astype(np.float32),
    )


def test_create_output_makes_the_arrays_of_the_plan(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((70, 90), (32, 32), (64, 32))
    assert plan.grid == (2, 3)
    create_output(_spec(url), plan, RECORD)
    group = zarr.open_group(url, mode="r")
    assert group.metadata.zarr_format == 3
    labels, probs, done = group["labels"], group["probabilities"], group["done"]
    assert labels.shape == (70, 90)
    assert labels.chunks == (32, 32)
    assert labels.dtype == np.uint8
    assert labels.metadata.dimension_names == ("y", "x")
    assert probs.shape == (3, 70, 90)
    assert probs.chunks == (3, 32, 32)
    assert probs.dtype == np.float32
    assert probs.metadata.dimension_names == ("c", "y", "x")
    assert done.shape == (2, 3)
    assert done.chunks == (1, 1)
    assert done.dtype == np.uint8
    assert not done_blocks(url).any()
    assert done_blocks(url).dtype == bool
    # Nothing is written yet: no chunk files at all.
    assert not list((tmp_path / "out.zarr").rglob("c"))
    assert group.attrs[ATTRS_KEY]["status"] == "running"
    assert writer.output_exists(url)


def test_iterated_axes_come_before_the_classes(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((2, 3, 40, 50), (1, 1, 32, 32), (1, 1, 32, 32))
    create_output(_spec(url, axes="tzyx", classes=2, dtype="float16"), plan, RECORD)
    group = zarr.open_group(url, mode="r")
    assert group["labels"].shape == (2, 3, 40, 50)
    assert group["labels"].metadata.dimension_names == ("t", "z", "y", "x")
    assert group["probabilities"].shape == (2, 3, 2, 40, 50)
    assert group["probabilities"].chunks == (1, 1, 2, 32, 32)
    assert group["probabilities"].dtype == np.float16
    assert group["probabilities"].metadata.dimension_names == ("t", "z", "c", "y", "x")
    assert group["done"].shape == (2, 3, 2, 2)


@pytest.mark.parametrize(("labels", "probabilities", "arrays"), [
    (True, False, {"labels", "done"}), (False, True, {"probabilities", "done"})])
def test_only_the_outputs_asked_for(tmp_path: Path, labels: bool, probabilities: bool,
                                    arrays: set[str]) -> None:
    url = str(tmp_path / "out.zarr")
    spec = _spec(url, labels=labels, probabilities=probabilities)
    create_output(spec, _plan((40, 40), (32, 32), (32, 32)), RECORD)
    assert set(zarr.open_group(url, mode="r").array_keys()) == arrays
    opened = open_output(spec)
    assert (opened.labels is None) != labels
    assert (opened.probabilities is None) != probabilities


def test_many_classes_need_uint16_labels(tmp_path: Path) -> None:
    assert _spec("x", classes=256).labels_dtype == "uint8"
    assert _spec("x", classes=257).labels_dtype == "uint16"
    url = str(tmp_path / "out.zarr")
    create_output(_spec(url, classes=300, probabilities=False),
                  _plan((40, 40), (32, 32), (32, 32)), RECORD)
    assert zarr.open_group(url, mode="r")["labels"].dtype == np.uint16


def test_write_block_writes_exactly_its_region_then_its_done_chunk(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((70, 90), (32, 32), (32, 32))
    spec = _spec(url)
    create_output(spec, plan, RECORD)
    output = open_output(spec)
    block = plan.block((1, 2))
    assert block.write.to_slices() == (slice(32, 64), slice(64, 90))  # a clipped edge block
    result = _result(plan, (1, 2), 3, seed=0)
    write_block(output, block, result)
    labels = np.asarray(zarr.open_array(url, path="labels", mode="r")[...])
    probs = np.asarray(zarr.open_array(url, path="probabilities", mode="r")[...])
    expected_labels = np.zeros((70, 90), np.uint8)
    expected_labels[32:64, 64:90] = result.labels
    np.testing.assert_array_equal(labels, expected_labels)
    expected_probs = np.zeros((3, 70, 90), np.float32)
    expected_probs[:, 32:64, 64:90] = result.probabilities
    np.testing.assert_array_equal(probs, expected_probs)
    expected_done = np.zeros(plan.grid, bool)
    expected_done[1, 2] = True
    np.testing.assert_array_equal(done_blocks(url), expected_done)
    # Exactly the block's chunks were stored: its labels and probability chunk, one done.
    stored = sorted(str(p.relative_to(tmp_path / "out.zarr"))
                    for p in (tmp_path / "out.zarr").rglob("*") if p.is_file()
                    and p.name != "zarr.json")
    assert stored == ["done/c/1/2", "labels/c/1/2", "probabilities/c/0/1/2"]


def test_write_block_with_iterated_axes(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((2, 3, 40, 50), (1, 1, 32, 32), (1, 1, 32, 32))
    spec = _spec(url, axes="tzyx", classes=2)
    create_output(spec, plan, RECORD)
    output = open_output(spec)
    result = _result(plan, (1, 2, 0, 1), 2, seed=1)
    write_block(output, plan.block((1, 2, 0, 1)), result)
    group = zarr.open_group(url, mode="r")
    labels = np.asarray(group["labels"][...])
    probs = np.asarray(group["probabilities"][...])
    np.testing.assert_array_equal(labels[1, 2, :32, 32:], result.labels)
    np.testing.assert_array_equal(probs[1, 2, :, :32, 32:], result.probabilities)
    assert int((labels != 0).sum()) == result.labels.size
    assert int((probs != 0).sum()) == result.probabilities.size
    assert np.argwhere(done_blocks(url)).tolist() == [[1, 2, 0, 1]]


def test_a_failed_data_write_marks_nothing_done(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((64, 64), (32, 32), (32, 32))
    spec = _spec(url)
    create_output(spec, plan, RECORD)
    good = _result(plan, (0, 0), 3, seed=2)
    # Probabilities of the wrong size: the labels are written, the probabilities fail.
    bad = BlockResult(good.labels, good.probabilities[:, :16])
    with pytest.raises(ValueError, match="reshape"):
        write_block(open_output(spec), plan.block((0, 0)), bad)
    assert not done_blocks(url).any()
    write_block(open_output(spec), plan.block((0, 0)), good)
    assert done_blocks(url)[0, 0]


def test_done_blocks_after_several_writes(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((100, 100), (32, 32), (32, 32))
    spec = _spec(url, probabilities=False)
    create_output(spec, plan, RECORD)
    output = open_output(spec)
    written = [(0, 3), (2, 1), (3, 3)]
    for index in written:
        write_block(output, plan.block(index), _result(plan, index, 3, seed=3))
    assert sorted(map(tuple, np.argwhere(done_blocks(url)).tolist())) == written


def test_read_record(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    assert read_record(url) is None  # no store
    zarr.open_group(url, mode="w")
    assert read_record(url) is None  # a group without a record
    array = write_zarr(tmp_path / "array.zarr", np.zeros((4, 4), np.uint8), (4, 4))
    assert read_record(array) is None  # an array, not a group
    (tmp_path / "folder").mkdir()
    assert read_record(str(tmp_path / "folder")) is None  # a folder, not zarr
    create_output(_spec(url), _plan((40, 40), (32, 32), (32, 32)), RECORD)
    record = read_record(url)
    assert isinstance(record, Provenance)
    assert record == RECORD.with_status("running")
    assert record.parameters == RECORD.parameters
    assert record.fingerprint == "f" * 64
    assert not record.complete


def test_a_malformed_record_is_refused(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    zarr.open_group(url, mode="w").attrs[ATTRS_KEY] = {"version": 3}
    with pytest.raises(OutputConflictError, match=r"output '.*out\.zarr' has a malformed"):
        read_record(url)


def test_write_record_and_finalize(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    create_output(_spec(url), _plan((40, 40), (32, 32), (32, 32)), RECORD)
    changed = Provenance("0.1.0", "cd" * 32, {"output": "labels"}, {"fingerprint": "0" * 64})
    write_record(url, changed)
    assert read_record(url) == changed
    finalize(url)
    record = read_record(url)
    assert record is not None
    assert record.status == "complete"
    assert record.complete
    assert record.model_hash == "cd" * 32
    assert record.parameters == {"output": "labels"}
    assert zarr.open_group(url, mode="r").attrs[ATTRS_KEY]["status"] == "complete"


def test_remove_partial_files(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((64, 64), (32, 32), (32, 32))
    spec = _spec(url)
    create_output(spec, plan, RECORD)
    write_block(open_output(spec), plan.block((0, 0)), _result(plan, (0, 0), 3, seed=4))
    root = tmp_path / "out.zarr"
    leftovers = [root / "labels" / "c" / "1" / "1.partial", root / "done" / "c" / "x.partial",
                 root / "probabilities" / "zarr.json.partial"]
    for path in leftovers:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"half a chunk")
    kept = sorted(p for p in root.rglob("*") if p.is_file() and p not in leftovers)
    remove_partial_files(url)
    assert not any(p.exists() for p in leftovers)
    assert sorted(p for p in root.rglob("*") if p.is_file()) == kept
    assert done_blocks(url)[0, 0]
    remove_partial_files(url)  # nothing left: a no-op


def test_remove_output(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    create_output(_spec(url), _plan((40, 40), (32, 32), (32, 32)), RECORD)
    (tmp_path / "sibling.txt").write_text("kept")
    remove_output(url)
    assert not writer.output_exists(url)
    assert (tmp_path / "sibling.txt").read_text() == "kept"
    remove_output(url)  # already gone: no error


def test_create_output_replaces_what_was_there(tmp_path: Path) -> None:
    url = str(tmp_path / "out.zarr")
    plan = _plan((64, 64), (32, 32), (32, 32))
    spec = _spec(url)
    create_output(spec, plan, RECORD)
    write_block(open_output(spec), plan.block((0, 0)), _result(plan, (0, 0), 3, seed=5))
    create_output(_spec(url, probabilities=False), plan, RECORD)
    assert not done_blocks(url).any()
    assert set(zarr.open_group(url, mode="r").array_keys()) == {"labels", "done"}
    assert not np.asarray(zarr.open_array(url, path="labels", mode="r")[...]).any()
