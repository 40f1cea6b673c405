"""Synthetic images: chunk-independent objects, determinism, zarr layout."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from unet_tiles.demo.synth import SPECS, SynthSpec, generate_arrays, generate_image, render
from unet_tiles.errors import UsageError


def test_objects_do_not_depend_on_the_box_they_are_rendered_in() -> None:
    # Ground truth of a 37x53 box equals the same pixels cut from a larger render:
    # objects that cross box borders are the same objects.
    spec = SPECS["nuclei"]
    _, whole = render(spec, 5, (0, 0), (100, 120), (100, 120))
    _, part = render(spec, 5, (31, 47), (37, 53), (100, 120))
    np.testing.assert_array_equal(part, whole[31:68, 47:100])


def test_chunked_store_matches_one_render_and_is_deterministic(tmp_path) -> None:
    shape, chunks = (70, 90), (32, 40)
    generate_image(tmp_path / "a.zarr", tmp_path / "ta.zarr", shape, chunks, seed=3)
    generate_image(tmp_path / "b.zarr", tmp_path / "tb.zarr", shape, chunks, seed=3, workers=1)
    a, b = zarr.open_array(tmp_path / "a.zarr"), zarr.open_array(tmp_path / "b.zarr")
    truth = zarr.open_array(tmp_path / "ta.zarr")
    np.testing.assert_array_equal(a[:], b[:])
    np.testing.assert_array_equal(truth[:], zarr.open_array(tmp_path / "tb.zarr")[:])
    _, labels = render(SPECS["nuclei"], 3, (0, 0), shape, shape)
    np.testing.assert_array_equal(truth[:], labels)
    assert a.dtype == np.uint8
    assert truth.dtype == np.uint32
    assert a.chunks == chunks
    assert a.metadata.dimension_names == ("y", "x")
    # A different seed gives a different specimen.
    generate_image(tmp_path / "c.zarr", tmp_path / "tc.zarr", shape, chunks, seed=4)
    assert not np.array_equal(zarr.open_array(tmp_path / "tc.zarr")[:], truth[:])


def test_image_looks_like_nuclei_on_background() -> None:
    image, labels = generate_arrays((256, 256), seed=1)
    foreground = labels > 0
    assert 0.1 < foreground.mean() < 0.5
    assert image[foreground].mean() > 3 * image[~foreground].mean()
    # Some objects touch: two different ids are 4-neighbours somewhere.
    right = (labels[:, 1:] != labels[:, :-1]) & (labels[:, 1:] > 0) & (labels[:, :-1] > 0)
    assert right.any()
    ids = np.unique(labels[foreground])
    assert len(ids) > 40


def test_3d_and_uint16(tmp_path) -> None:
    generate_image(tmp_path / "i.zarr", tmp_path / "t.zarr", (24, 40, 36), (16, 16, 16),
                   seed=2, dtype="uint16")
    image = zarr.open_array(tmp_path / "i.zarr")
    truth = zarr.open_array(tmp_path / "t.zarr")
    assert image.dtype == np.uint16
    assert image.metadata.dimension_names == ("z", "y", "x")
    assert 0 < image[:].max() <= 4095
    assert (truth[:] > 0).mean() > 0.03
    _, labels = render(SPECS["nuclei"], 2, (0, 0, 0), (24, 40, 36), (24, 40, 36))
    np.testing.assert_array_equal(truth[:], labels)


def test_cells_kind_is_denser() -> None:
    _, nuclei = generate_arrays((200, 200), seed=0, kind="nuclei")
    _, cells = generate_arrays((200, 200), seed=0, kind="cells")
    assert (cells > 0).mean() > (nuclei > 0).mean()


def test_bad_arguments_are_usage_errors(tmp_path) -> None:
    with pytest.raises(UsageError, match="kind"):
        generate_arrays((10, 10), kind="bacteria")
    with pytest.raises(UsageError, match="dtype"):
        generate_image(tmp_path / "i", tmp_path / "t", (10, 10), dtype="float32")
    with pytest.raises(UsageError, match="cell_px"):
        SynthSpec(cell_px=8)
