"""--split: touching cells split by a seeded watershed (pipeline/split.py), the same
whatever the blocks, with its object table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from instance_helpers import same_up_to_ids, segment_classes
from scipy import ndimage

from unet_tiles.pipeline.split import LEVELS

if TYPE_CHECKING:
    from pathlib import Path


def whole_image_flood(classes: np.ndarray, probability: np.ndarray, split: str,
                      connectivity: str, distance: int, seed_probability: float = 0.9
                      ) -> np.ndarray:
    """The same flood written out pixel by pixel on the whole image: step by step,
    each unreached instance-class pixel next to a reached one takes the cell of its
    reached neighbour of highest probability (then lowest index in the image)."""
    import itertools

    dims = classes.ndim
    structure = ndimage.generate_binary_structure(dims, 1 if connectivity == "1" else dims)
    flood = classes > 0
    seeds_mask = classes == 1 if split == "border" else flood & (probability >= seed_probability)
    labels, _ = ndimage.label(seeds_mask, structure)
    p = probability.astype(np.float16).astype(np.float64)
    level = np.rint((1 - np.clip(p, 0, 1)) * (LEVELS - 1)).astype(np.int64)
    steps = [s for s in itertools.product((-1, 0, 1), repeat=dims)
             if any(s) and structure[tuple(i + 1 for i in s)]]
    for _ in range(distance):
        before = labels.copy()
        for at in zip(*np.nonzero(flood & (before == 0)), strict=True):
            best = None
            for step in steps:
                q = tuple(a + s for a, s in zip(at, step, strict=True))
                if all(0 <= i < n for i, n in zip(q, classes.shape, strict=True)) and before[q]:
                    rank = (level[q], np.ravel_multi_index(q, classes.shape))
                    if best is None or rank < best[0]:
                        best = (rank, before[q])
            if best is not None:
                labels[at] = best[1]
    return labels


def touching_cells(shape: tuple[int, ...], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Discs that touch and overlap, a probability falling off from their centres,
    and a border class (2) where two discs meet."""
    rng = np.random.default_rng(seed)
    grids = np.indices(shape).astype(np.float64)
    count = max(2, int(np.prod(shape) / 150))
    centres = rng.uniform(0, 1, (count, len(shape))) * np.array(shape)
    radius = rng.uniform(3, 6, count)
    distance = np.stack([np.sqrt(((grids - c.reshape(-1, *([1] * len(shape)))) ** 2).sum(0))
                         / r for c, r in zip(centres, radius, strict=True)])
    inside = distance < 1
    probability = np.clip(1.2 - distance.min(axis=0), 0, 1) * rng.uniform(0.97, 1, shape)
    classes = inside.any(axis=0).astype(np.uint8)
    classes[inside.sum(axis=0) > 1] = 2
    return classes, probability.astype(np.float32)


@pytest.mark.slow
@pytest.mark.parametrize("split", ["border", "probability"])
@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_split_equals_the_whole_image_flood_whatever_the_blocks(
        tmp_path_factory: pytest.TempPathFactory, split: str, data: st.DataObject) -> None:
    dims = data.draw(st.sampled_from([2, 3]))
    shape = tuple(data.draw(st.integers(8, 48 if dims == 2 else 14)) for _ in range(dims))
    blocks = tuple(data.draw(st.integers(3, n)) for n in shape)
    connectivity = data.draw(st.sampled_from(["1", "full"]))
    distance = data.draw(st.integers(1, 4))
    classes, probability = touching_cells(shape, data.draw(st.integers(0, 2**16)))
    probabilities = np.stack([1 - probability, probability, np.zeros_like(probability)])
    url = str(tmp_path_factory.mktemp("split") / "out.zarr")
    ours, table, count = segment_classes(
        url, classes, blocks, dims, probabilities=probabilities, connectivity=connectivity,
        wanted=(1, 2), split=split, border_classes=(2,) if split == "border" else (),
        split_distance=distance)
    expected = whole_image_flood(classes, probability, split, connectivity, distance)
    assert same_up_to_ids(ours, expected)
    assert count == len(np.unique(expected)) - 1 == table.num_rows
    sizes = np.bincount(ours.ravel())[1:]
    assert table.column("count").to_pylist() == sizes[sizes > 0].tolist()


def test_border_split_separates_touching_cells_that_plain_components_merge(
        tmp_path: Path) -> None:
    classes, probability = touching_cells((64, 64), 3)
    probabilities = np.stack([1 - probability, probability, np.zeros_like(probability)])
    merged, _, few = segment_classes(str(tmp_path / "a.zarr"), classes, (16, 16), 2,
                                     probabilities=probabilities, wanted=(1, 2))
    split, table, many = segment_classes(
        str(tmp_path / "b.zarr"), classes, (16, 16), 2, probabilities=probabilities,
        wanted=(1, 2), split="border", border_classes=(2,), split_distance=3)
    assert many > few
    # Every border pixel within reach of a seed belongs to a cell.
    assert (split[classes == 1] > 0).all()
    assert ((split > 0) <= (classes > 0)).all()
    from skimage.measure import regionprops

    rows = {r["id"]: r for r in table.to_pylist()}
    for region in regionprops(split.astype(np.int64), intensity_image=probability):
        row = rows[region.label]
        assert row["count"] == region.area
        assert row["centroid_y"] == pytest.approx(region.centroid[0])
        assert (row["bbox_start_y"], row["bbox_start_x"], row["bbox_stop_y"],
                row["bbox_stop_x"]) == region.bbox
        assert row["mean_probability"] == pytest.approx(region.intensity_mean, rel=2e-3)
    del merged
