"""Instance ids across blocks (pipeline/instances.py, engine/instances.py): the
whole image's connected components, whatever the blocks, and its object table."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instance_helpers import (
    block_pass,
    instance_output,
    same_up_to_ids,
    segment_classes,
)
from scipy import ndimage

from unet_tiles.engine.instances import make_instances
from unet_tiles.errors import UsageError
from unet_tiles.pipeline.instances import (
    ID_DTYPE,
    MAX_CONSECUTIVE,
    BlockFaces,
    InstanceSpec,
    merge,
    merge_pairs,
    neighbour_offsets,
    parse_classes,
    stats_dtype,
    touching_pairs,
)
from unet_tiles.pipeline.writer import RELABELLED, WORK, block_file

if TYPE_CHECKING:
    from pathlib import Path


def reference(classes: np.ndarray, dims: int, connectivity: str,
              wanted: tuple[int, ...] = (1,)) -> tuple[np.ndarray, int]:
    """scipy on the whole image, plane by plane over leading axes."""
    structure = ndimage.generate_binary_structure(dims, 1 if connectivity == "1" else dims)
    mask = np.isin(classes, wanted)
    lead = classes.shape[:classes.ndim - dims]
    out = np.zeros(classes.shape, dtype=np.int64)
    total = 0
    for at in np.ndindex(*lead):
        labels, n = ndimage.label(mask[at], structure)
        out[at] = np.where(labels > 0, labels + total, 0)
        total += n
    return out, total


@st.composite
def class_images(draw: st.DrawFn, dims: int) -> tuple[np.ndarray, tuple[int, ...]]:
    shape = tuple(draw(st.integers(1, 32 if dims == 2 else 12)) for _ in range(dims))
    density = draw(st.floats(0.1, 0.8))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    classes = (rng.random(shape) < density).astype(np.uint8)
    # A second foreground class, sometimes: instances of both are asked for.
    classes[rng.random(shape) < 0.1] = 2
    # Blocks of one pixel too, but mostly more: every block is a few files.
    blocks = tuple(draw(st.integers(min(2, n), max(1, n))) for n in shape)
    return classes, blocks


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("connectivity", ["1", "full"])
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_instances_equal_scipy_label_of_the_whole_image(tmp_path_factory: pytest.TempPathFactory,
                                                         dims: int, connectivity: str,
                                                         data: st.DataObject) -> None:
    classes, blocks = data.draw(class_images(dims))
    url = str(tmp_path_factory.mktemp("instances") / "out.zarr")
    ours, table, count = segment_classes(url, classes, blocks, dims, connectivity=connectivity,
                                         wanted=(1, 2))
    expected, n = reference(classes, dims, connectivity, (1, 2))
    assert count == n
    assert same_up_to_ids(ours, expected)
    # Consecutive: exactly 1..N, in the table's order.
    assert sorted(np.unique(ours[ours > 0]).tolist()) == list(range(1, n + 1))
    assert table.column("id").to_pylist() == list(range(1, n + 1))
    # Every row is the whole image's measurement of its object (regionprops).
    from skimage.measure import regionprops

    axes = "zyx"[3 - dims:]
    rows = {r["id"]: r for r in table.to_pylist()}
    for region in regionprops(ours.astype(np.int64)):
        row = rows[region.label]
        assert row["count"] == region.area
        for k, axis in enumerate(axes):
            assert row[f"centroid_{axis}"] == pytest.approx(region.centroid[k], abs=1e-9)
            assert row[f"bbox_start_{axis}"] == region.bbox[k]
            assert row[f"bbox_stop_{axis}"] == region.bbox[dims + k]


def test_one_pixel_diagonal_bridges_across_block_corners(tmp_path: Path) -> None:
    # A staircase crossing the corner of four 4x4 blocks, and one through a 3D corner.
    classes = np.zeros((8, 8), dtype=np.uint8)
    for k in range(8):
        classes[k, k] = 1
    classes[0, 7] = classes[1, 6] = 1  # a second diagonal, touching the first nowhere
    ours, _, count = segment_classes(str(tmp_path / "a.zarr"), classes, (4, 4), 2,
                                     connectivity="full")
    assert count == 2
    assert same_up_to_ids(ours, reference(classes, 2, "full")[0])
    _, _, faces_count = segment_classes(str(tmp_path / "b.zarr"), classes, (4, 4), 2)
    assert faces_count == 10  # faces only: every pixel is its own object
    volume = np.zeros((4, 4, 4), dtype=np.uint8)
    volume[1, 1, 1] = volume[2, 2, 2] = 1
    ours, _, count = segment_classes(str(tmp_path / "c.zarr"), volume, (2, 2, 2), 3,
                                     connectivity="full")
    assert count == 1
    assert len(np.unique(ours[volume == 1])) == 1


def test_an_object_spanning_every_block_and_the_image_border(tmp_path: Path) -> None:
    # A comb: one object through all 7 x 5 blocks, its teeth reaching the border.
    classes = np.zeros((50, 41), dtype=np.uint8)
    classes[0, :] = 1
    classes[:, ::4] = 1
    ours, table, count = segment_classes(str(tmp_path / "o.zarr"), classes, (8, 9), 2)
    assert count == 1
    assert set(np.unique(ours).tolist()) == {0, 1}
    row = table.to_pylist()[0]
    assert (row["bbox_start_y"], row["bbox_stop_y"], row["bbox_start_x"],
            row["bbox_stop_x"]) == (0, 50, 0, 41)


def test_object_table_equals_regionprops_of_the_whole_image(tmp_path: Path) -> None:
    from skimage.measure import regionprops

    rng = np.random.default_rng(7)
    classes = (ndimage.gaussian_filter(rng.random((96, 80)), 2) > 0.52).astype(np.uint8)
    probability = rng.uniform(0.5, 1.0, classes.shape).astype(np.float32)
    probabilities = np.stack([1 - probability, probability, np.zeros_like(probability)])
    ours, table, count = segment_classes(str(tmp_path / "o.zarr"), classes, (20, 24), 2,
                                         probabilities=probabilities)
    assert count > 10
    rows = {r["id"]: r for r in table.to_pylist()}
    for region in regionprops(ours, intensity_image=probability):
        row = rows[region.label]
        assert row["count"] == region.area
        assert row["centroid_y"] == pytest.approx(region.centroid[0], abs=1e-9)
        assert row["centroid_x"] == pytest.approx(region.centroid[1], abs=1e-9)
        assert (row["bbox_start_y"], row["bbox_start_x"], row["bbox_stop_y"],
                row["bbox_stop_x"]) == region.bbox
        assert row["mean_probability"] == pytest.approx(region.intensity_mean, rel=1e-6)
    # The table also as CSV, the same rows.
    import pyarrow.csv as pcsv

    csv = pcsv.read_csv(str(tmp_path / "o.zarr" / "objects.csv"))
    assert csv.column("id").to_pylist() == table.column("id").to_pylist()
    del ours


def test_min_size_drops_small_objects_wherever_they_lie(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    classes = (rng.random((60, 60)) < 0.45).astype(np.uint8)
    ours, table, count = segment_classes(str(tmp_path / "o.zarr"), classes, (16, 16), 2,
                                         min_size=5)
    expected, _ = reference(classes, 2, "1")
    sizes = np.bincount(expected.ravel())
    big = np.where(sizes[expected] >= 5, expected, 0)
    big[expected == 0] = 0
    assert same_up_to_ids(ours, big)
    assert count == int((sizes[1:] >= 5).sum())
    assert min(table.column("count").to_pylist()) >= 5
    assert ours.max() == count


def test_sparse_ids_without_consecutive(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    classes = (rng.random((30, 30)) < 0.5).astype(np.uint8)
    ours, table, count = segment_classes(str(tmp_path / "o.zarr"), classes, (8, 8), 2,
                                         consecutive=False)
    assert ours.dtype == np.uint64
    assert same_up_to_ids(ours, reference(classes, 2, "1")[0])
    assert sorted(table.column("id").to_pylist()) == sorted(np.unique(ours[ours > 0]).tolist())
    assert count == table.num_rows


def test_planes_of_a_stack_are_labelled_each_on_its_own(tmp_path: Path) -> None:
    # t, z, y, x through a 2D model: a column of pixels through every plane is one
    # object per plane, never one object through the stack.
    classes = np.zeros((2, 3, 10, 10), dtype=np.uint8)
    classes[:, :, 4:6, 4:6] = 1
    ours, table, count = segment_classes(str(tmp_path / "o.zarr"), classes, (1, 1, 5, 5), 2)
    assert count == 6
    assert same_up_to_ids(ours, reference(classes, 2, "1")[0])
    assert sorted(table.column("bbox_start_t").to_pylist()) == [0, 0, 0, 1, 1, 1]


def test_resume_after_each_pass_is_byte_identical(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    classes = (rng.random((40, 50)) < 0.5).astype(np.uint8)
    probabilities = np.stack([classes == k for k in range(3)]).astype(np.float32)
    whole = str(tmp_path / "whole.zarr")
    spec, plan = instance_output(whole, classes.shape, (16, 16), 2)
    block_pass(spec, plan, classes, probabilities)
    make_instances(None, spec, plan)

    # Interrupted: half the faces found, then half the blocks relabelled.
    part = str(tmp_path / "part.zarr")
    spec2, plan2 = instance_output(part, classes.shape, (16, 16), 2)
    block_pass(spec2, plan2, classes, probabilities)
    make_instances(None, spec2, plan2)
    done = zarr.open_array(part, path=RELABELLED, mode="r+")
    done[0, :] = 0
    zarr.open_array(part, path="instances", mode="r+")[:16] = 0
    for index in [(1, 0), (2, 2), (0, 1)]:
        (tmp_path / "part.zarr" / block_file("faces", index)).unlink()
    (tmp_path / "part.zarr" / "objects.parquet").unlink()
    make_instances(None, spec2, plan2)
    for name in ("instances", "objects.parquet"):
        assert _files(tmp_path / "whole.zarr" / name) == _files(tmp_path / "part.zarr" / name)


def test_passes_run_on_a_dask_cluster_the_same(tmp_path: Path, client: Any) -> None:
    rng = np.random.default_rng(6)
    classes = (rng.random((64, 48)) < 0.5).astype(np.uint8)
    here, _, n_here = segment_classes(str(tmp_path / "here.zarr"), classes, (16, 16), 2,
                                      connectivity="full")
    there, _, n_there = segment_classes(str(tmp_path / "there.zarr"), classes, (16, 16), 2,
                                        client=client, connectivity="full")
    assert n_here == n_there
    assert np.array_equal(here, there)
    assert _files(tmp_path / "here.zarr" / "objects.parquet") == \
        _files(tmp_path / "there.zarr" / "objects.parquet")
    assert (tmp_path / "there.zarr" / WORK).exists()  # removed by Run.finalize only


def test_consecutive_ids_beyond_uint32_are_refused_not_wrapped() -> None:
    def faces(kept: int) -> BlockFaces:  # a block of objects that cross no border
        return BlockFaces(np.zeros((0, 2), ID_DTYPE), np.zeros(0, stats_dtype(2)),
                          np.zeros(0, np.int64), kept)

    def block_of(ids: np.ndarray) -> np.ndarray:
        return np.zeros(len(ids), dtype=np.int64)

    half = (MAX_CONSECUTIVE + 1) // 2
    fits = merge([faces(half), faces(half - 1)], 0, True, block_of)
    assert fits.objects == MAX_CONSECUTIVE
    assert fits.relabels[1].base + (half - 1) - 1 == MAX_CONSECUTIVE  # its last id
    with pytest.raises(UsageError, match=r"4294967296 objects do not fit the uint32 ids .*"
                                         r"--no-consecutive"):
        merge([faces(half), faces(half)], 0, True, block_of)
    merge([faces(half), faces(half)], 0, False, block_of)  # uint64 ids: no limit here


def test_touching_pairs_and_their_merge() -> None:
    region = np.array([[1, 1, 5],
                       [0, 0, 5],
                       [9, 0, 0]], dtype=np.uint64)
    faces = touching_pairs(region, 2, "1", (0, 4))
    assert faces.tolist() == [[1, 5]]
    full = touching_pairs(region, 2, "full", (4, 8))
    assert full.tolist() == [[1, 5]]
    assert touching_pairs(region, 2, "full", (10, 20)).shape == (0, 2)
    ids, roots = merge_pairs(np.array([[5, 9], [1, 5], [20, 30]], dtype=np.uint64))
    assert ids.tolist() == [1, 5, 9, 20, 30]
    assert roots.tolist() == [1, 1, 1, 20, 20]
    assert len(neighbour_offsets(2, "1")) == 2
    assert len(neighbour_offsets(2, "full")) == 4
    assert len(neighbour_offsets(3, "full")) == 13


def test_instance_classes_and_bad_settings() -> None:
    names = ("background", "cell", "border")
    assert parse_classes(None, names, 3) == (1, 2)
    assert parse_classes("cell", names, 3) == (1,)
    assert parse_classes("2,cell", names, 3) == (1, 2)
    with pytest.raises(UsageError, match="'nucleus' is not a class of the model"):
        parse_classes("nucleus", names, 3)
    with pytest.raises(UsageError, match="`instance_class` 3 is not a class"):
        parse_classes("3", names, 3)
    with pytest.raises(UsageError, match="is the background"):
        parse_classes("0", names, 3)
    with pytest.raises(UsageError, match="instances need a foreground class"):
        parse_classes(None, ("background",), 1)
    with pytest.raises(UsageError, match="`min_size` must be 0 or more"):
        InstanceSpec((1,), min_size=-1)


def _files(path: Path) -> dict[str, bytes]:
    if path.is_file():
        return {path.name: path.read_bytes()}
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}
