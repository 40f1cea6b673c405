"""open_source on real stores: arrays, groups, OME-Zarr 0.4 and 0.5, axes, metadata limits,
and the content fingerprint."""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import write_zarr

from unet_tiles.errors import InputError
from unet_tiles.pipeline.source import fingerprint, open_source

if TYPE_CHECKING:
    from pathlib import Path


def _raw_array(path: Path, shape: list[int], chunks: list[int], dtype: str = "uint8") -> str:
    """A zarr v3 array of which only the metadata exists: nothing may be allocated."""
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps({
        "zarr_format": 3, "node_type": "array", "shape": shape, "data_type": dtype,
        "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": chunks}},
        "chunk_key_encoding": {"name": "default", "configuration": {"separator": "/"}},
        "fill_value": [0.0, 0.0] if dtype.startswith("complex") else 0,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}}],
    }))
    return str(path)


def _multiscales(axes: str, scales: list[list[float]]) -> list[dict[str, Any]]:
    kinds = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}
    return [{
        "axes": [{"name": a, "type": kinds[a]} for a in axes],
        "datasets": [
            {"path": str(level), "coordinateTransformations": [{"type": "scale", "scale": s}]}
            for level, s in enumerate(scales)
        ],
    }]


# --- arrays and groups ------------------------------------------------------------------


def test_v3_array_with_its_metadata(tmp_path: Path) -> None:
    data = np.zeros((40, 50), np.uint16)
    url = write_zarr(tmp_path / "a.zarr", data, (16, 32))
    source = open_source(url)
    assert source.url == url
    assert source.array_path == ""
    assert source.location == url
    assert source.axes == "yx"
    assert source.shape == (40, 50)
    assert source.chunks == (16, 32)
    assert source.dtype == "<u2"
    assert source.zarr_format == 3
    assert source.ome_version is None
    assert source.pixel_size_um is None
    assert source.axis_size("y") == 40
    assert source.axis_size("c") == 1  # absent axes have extent 1
    opened = source.open()
    assert opened.shape == (40, 50)
    assert opened.read_only
    assert source.to_dict() == {
        "url": url, "array_path": "", "axes": "yx", "shape": [40, 50], "dtype": "<u2",
        "chunks": [16, 32], "zarr_format": 3, "ome_version": None, "pixel_size_um": None,
    }
    json.dumps(source.to_dict())  # it goes into the provenance record as it is


def test_v2_array_and_file_url(tmp_path: Path) -> None:
    url = write_zarr(tmp_path / "a.zarr", np.ones((3, 20, 30), np.float32), (1, 10, 10),
                     zarr_format=2)
    source = open_source(f"file://{url}", model_dims=3)
    assert source.zarr_format == 2
    assert source.axes == "zyx"
    assert source.dtype == "<f4"
    assert np.asarray(source.open()[0, :2, :2]).tolist() == [[1.0, 1.0], [1.0, 1.0]]


@pytest.mark.parametrize(
    ("shape", "kwargs", "axes"),
    [((40, 50), {}, "yx"),
     ((3, 40, 50), {"in_channels": 3}, "cyx"),
     ((3, 40, 50), {"in_channels": 1, "model_dims": 2}, "cyx"),
     ((5, 40, 50), {"in_channels": 1, "model_dims": 2}, "zyx"),
     ((3, 40, 50), {"in_channels": 1, "model_dims": 3}, "zyx"),
     ((3, 40, 50), {}, "zyx"),
     ((2, 3, 40, 50), {}, "czyx"),
     ((2, 2, 3, 40, 50), {}, "tczyx")],
)
def test_unnamed_axes_are_guessed(tmp_path: Path, shape: tuple[int, ...],
                                  kwargs: dict[str, int], axes: str) -> None:
    url = write_zarr(tmp_path / "a.zarr", np.zeros(shape, np.uint8), shape)
    assert open_source(url, **kwargs).axes == axes


def test_stored_dimension_names_win_over_guesses(tmp_path: Path) -> None:
    url = write_zarr(tmp_path / "a.zarr", np.zeros((3, 40, 50), np.uint8), (3, 16, 16),
                     dimension_names=("Z", "Y", "X"))
    assert open_source(url, in_channels=3).axes == "zyx"
    # Names that are not axis letters are ignored: the guess is used.
    url = write_zarr(tmp_path / "b.zarr", np.zeros((3, 40, 50), np.uint8), (3, 16, 16),
                     dimension_names=("channel", "row", "col"))
    assert open_source(url, in_channels=3).axes == "cyx"
    # Given axes override stored names.
    assert open_source(str(tmp_path / "a.zarr"), axes="CYX").axes == "cyx"


def test_group_with_one_array_opens_it(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.create_array("raw", shape=(30, 40), chunks=(16, 16), dtype="int16")
    source = open_source(str(tmp_path / "g.zarr"))
    assert source.array_path == "raw"
    assert source.location == f"{tmp_path / 'g.zarr'}/raw"
    assert source.dtype == "<i2"
    assert source.open().shape == (30, 40)


def test_group_with_several_arrays_is_refused_naming_them(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for name in ("raw", "mask", "denoised"):
        group.create_array(name, shape=(30, 40), chunks=(16, 16), dtype="uint8")
    url = str(tmp_path / "g.zarr")
    with pytest.raises(InputError) as caught:
        open_source(url + "/")
    message = str(caught.value)
    assert "holding several arrays (denoised, mask, raw)" in message
    assert f"pick one as {url}/denoised" in message
    # Picking one works.
    assert open_source(f"{url}/mask").shape == (30, 40)


def test_group_with_many_arrays_lists_ten(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    for i in range(12):
        group.create_array(f"a{i:02d}", shape=(4, 4), dtype="uint8")
    with pytest.raises(InputError, match=r"\(a00, a01, .*, a09 \.\.\.\)"):
        open_source(str(tmp_path / "g.zarr"))


def test_empty_group_is_refused(tmp_path: Path) -> None:
    zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    with pytest.raises(InputError, match="zarr group with no arrays; give an array"):
        open_source(str(tmp_path / "g.zarr"))


def test_group_of_groups_names_them(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    group.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}  # no image itself
    for name in ("0", "1"):
        group.create_group(name)
    with pytest.raises(InputError, match=r"zarr group with no arrays \(it holds the groups "
                       r"0, 1: give one of them, or segment them all with unet-tiles archive\)"):
        open_source(str(tmp_path / "g.zarr"))


# --- OME-Zarr ---------------------------------------------------------------------------


def test_ome_zarr_04_level0_axes_and_pixel_sizes(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=2)
    root.attrs["multiscales"] = [{"version": "0.4", **_multiscales(
        "czyx", [[1.0, 2.0, 0.325, 0.325], [1.0, 4.0, 0.65, 0.65]])[0]}]
    root.create_array("0", shape=(2, 5, 64, 80), chunks=(1, 1, 32, 32), dtype="uint16")
    root.create_array("1", shape=(2, 2, 32, 40), chunks=(1, 1, 32, 32), dtype="uint16")
    source = open_source(str(tmp_path / "img.ome.zarr"))
    assert source.array_path == "0"
    assert source.location == f"{tmp_path / 'img.ome.zarr'}/0"
    assert source.shape == (2, 5, 64, 80)
    assert source.axes == "czyx"
    assert source.zarr_format == 2
    assert source.ome_version == "0.4"
    # The spatial axes' (z, y, x) sizes; without units they are taken as micrometres.
    assert source.pixel_size_um == (2.0, 0.325, 0.325)
    record = source.to_dict()
    assert record["pixel_size_um"] == [2.0, 0.325, 0.325]
    assert record["ome_version"] == "0.4"
    assert record["array_path"] == "0"
    json.dumps(record)
    assert source.open().shape == (2, 5, 64, 80)
    # The whole pyramid comes along, for the writer's matching label pyramid.
    assert source.level == 0
    assert source.multiscale is not None
    assert source.multiscale.paths == ("0", "1")
    assert source.multiscale.levels[1].shape == (2, 2, 32, 40)
    assert record["level"] == 0
    assert record["multiscale"] == source.multiscale.to_dict()
    level1 = open_source(str(tmp_path / "img.ome.zarr"), level=1)
    assert (level1.array_path, level1.shape) == ("1", (2, 2, 32, 40))
    assert level1.pixel_size_um == (4.0, 0.65, 0.65)


def test_ome_zarr_05_level0_axes_and_pixel_sizes(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w", zarr_format=3)
    meta = _multiscales("tcyx", [[60.0, 1.0, 500.0, 250.0], [60.0, 1.0, 1000.0, 500.0]])
    for axis in meta[0]["axes"][2:]:
        axis["unit"] = "nanometer"
    root.attrs["ome"] = {"version": "0.5", "multiscales": meta}
    root.create_array("0", shape=(3, 2, 48, 64), chunks=(1, 2, 32, 32), dtype="float32",
                      dimension_names=("t", "c", "y", "x"))
    root.create_array("1", shape=(3, 2, 24, 32), chunks=(1, 2, 32, 32), dtype="float32")
    source = open_source(str(tmp_path / "img.ome.zarr"))
    assert source.array_path == "0"
    assert source.axes == "tcyx"
    assert source.zarr_format == 3
    assert source.ome_version == "0.5"
    assert source.pixel_size_um == (0.5, 0.25)  # nanometres as micrometres
    assert source.to_dict()["pixel_size_um"] == [0.5, 0.25]
    assert source.open().shape == (3, 2, 48, 64)


def test_ome_axes_must_be_axis_letters_unless_given(tmp_path: Path) -> None:
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    meta = _multiscales("cyx", [[1.0, 1.0, 1.0]])
    meta[0]["axes"][0]["name"] = "ch"
    root.attrs["ome"] = {"version": "0.5", "multiscales": meta}
    root.create_array("0", shape=(2, 30, 40), chunks=(2, 16, 16), dtype="uint8")
    url = str(tmp_path / "img.ome.zarr")
    with pytest.raises(InputError, match="has OME-Zarr axis 'ch', which is not one of t, c, z"):
        open_source(url)
    assert open_source(url, axes="cyx").axes == "cyx"
    assert open_source(url, axes="zyx").axes == "zyx"


@pytest.mark.parametrize(("multiscales", "message"), [
    ([], r"empty or malformed OME-Zarr \"multiscales\" list"),
    ([{"axes": ["y", "x"], "datasets": [{"path": "0"}]}], "malformed OME-Zarr axes"),
    ([{"axes": [{"name": "y"}, {"name": "x"}], "datasets": []}], "no datasets"),
    ([{"axes": [{"name": "y"}, {"name": "x"}], "datasets": [{}]}],
     "multiscales dataset 0 without a path"),
    ([{"axes": [{"name": "y"}, {"name": "x"}], "datasets": [
        {"path": "7", "coordinateTransformations": [{"type": "scale", "scale": [1, 1]}]}]}],
     "has dataset path '7' in its OME-Zarr metadata but no array at"),
])
def test_malformed_ome_metadata_is_an_input_error(tmp_path: Path, multiscales: list[Any],
                                                  message: str) -> None:
    root = zarr.open_group(str(tmp_path / "img.ome.zarr"), mode="w")
    root.attrs["ome"] = {"version": "0.5", "multiscales": multiscales}
    root.create_array("0", shape=(30, 40), dtype="uint8")
    with pytest.raises(InputError, match=message):
        open_source(str(tmp_path / "img.ome.zarr"))


# --- axes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "axes", "message"),
    [((40, 50), "yy", "`axes` 'yy' must use each of the letters t,c,z,y,x at most once"),
     ((40, 50), "ab", "`axes` 'ab' must use each of the letters t,c,z,y,x at most once"),
     ((40, 50), "zyx", "`axes` 'zyx' names 3 axes but input .* has 2 \\(40, 50\\)"),
     ((2, 40, 50), "yx", "`axes` 'yx' names 2 axes but input .* has 3 \\(2, 40, 50\\)"),
     ((2, 40, 50), "yxc", "has axes 'yxc'; the last two must be y and x \\(rewrite it"),
     ((40, 50), "xy", "has axes 'xy'; the last two must be y and x")],
)
def test_axes_are_checked(tmp_path: Path, shape: tuple[int, ...], axes: str,
                          message: str) -> None:
    url = write_zarr(tmp_path / "a.zarr", np.zeros(shape, np.uint8), shape)
    with pytest.raises(InputError, match=message):
        open_source(url, axes=axes)


def test_stored_names_must_end_in_yx(tmp_path: Path) -> None:
    url = write_zarr(tmp_path / "a.zarr", np.zeros((30, 40, 2), np.uint8), (16, 16, 2),
                     dimension_names=("y", "x", "c"))
    with pytest.raises(InputError, match="has axes 'yxc'; the last two must be y and x "
                                         "\\(pass `axes` if they are stored wrongly"):
        open_source(url)
    assert open_source(url, axes="zyx").axes == "zyx"


# --- metadata limits and the path itself --------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "chunks", "dtype", "message"),
    [([100_000, 100_000], [100_000, 100_000], "uint8", r"declares chunks of .* GiB each"),
     ([2**20, 2**20, 2**20], [16, 16, 16], "uint16", "PiB; the metadata is corrupt or hostile"),
     ([0, 50], [16, 16], "uint8", r"is empty \(shape \(0, 50\)\)"),
     ([40, 50], [16, 16], "bool", "has dtype bool; convert it"),
     ([40, 50], [16, 16], "complex64", "has dtype complex64"),
     ([50], [16], "uint8", r"has 1 axes \(50,\); unet-tiles needs 2 to 5"),
     ([2] * 6, [2] * 6, "uint8", "has 6 axes")],
)
def test_metadata_limits_are_input_errors(tmp_path: Path, shape: list[int], chunks: list[int],
                                          dtype: str, message: str) -> None:
    url = _raw_array(tmp_path / "a.zarr", shape, chunks, dtype)
    with pytest.raises(InputError, match=message):
        open_source(url)


def test_paths_that_are_no_zarr_store(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        open_source(str(tmp_path / "nothing.zarr"))
    (tmp_path / "image.tif").write_bytes(b"II*\x00")
    with pytest.raises(InputError, match="is a file, not a zarr store"):
        open_source(str(tmp_path / "image.tif"))
    (tmp_path / "folder").mkdir()
    with pytest.raises(InputError, match=r"is not a zarr store \(no zarr.json"):
        open_source(str(tmp_path / "folder"))
    (tmp_path / "broken.zarr").mkdir()
    (tmp_path / "broken.zarr" / "zarr.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable zarr metadata"):
        open_source(str(tmp_path / "broken.zarr"))


# --- fingerprint ------------------------------------------------------------------------


def test_fingerprint_is_stable_and_changes_with_a_chunk(tmp_path: Path) -> None:
    data = np.random.default_rng(0).integers(0, 255, (64, 64)).astype(np.uint8)
    url = write_zarr(tmp_path / "a.zarr", data, (32, 32))
    first = fingerprint(open_source(url))
    assert len(first) == 64
    assert fingerprint(open_source(url)) == first
    chunk = tmp_path / "a.zarr" / "c" / "1" / "0"
    stat = chunk.stat()
    # A chunk rewritten with other pixels (re-acquired in place).
    array = zarr.open_array(url, mode="r+")
    array[32:, :32] = 255 - data[32:, :32]
    assert chunk.stat().st_mtime_ns != stat.st_mtime_ns or chunk.stat().st_size != stat.st_size
    second = fingerprint(open_source(url))
    assert second != first
    # Same bytes back, timestamps restored: the fingerprint is the first one again.
    array[32:, :32] = data[32:, :32]
    os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert chunk.stat().st_size == stat.st_size
    assert fingerprint(open_source(url)) == first
    # A chunk file truncated in place (same mtime): the size differs.
    content = chunk.read_bytes()
    chunk.write_bytes(content[:-1])
    os.utime(chunk, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert fingerprint(open_source(url)) not in (first, second)


def test_fingerprint_covers_the_metadata_and_new_chunks(tmp_path: Path) -> None:
    url = write_zarr(tmp_path / "a.zarr", np.zeros((2, 64, 64), np.uint8), (2, 32, 32),
                     write_empty_chunks=False)
    assert not (tmp_path / "a.zarr" / "c").exists()
    empty = fingerprint(open_source(url, axes="cyx"))
    assert fingerprint(open_source(url, axes="cyx")) == empty
    # The same files read with other axes are another input.
    assert fingerprint(open_source(url, axes="zyx")) != empty
    zarr.open_array(url, mode="r+")[0, 0, 0] = 1  # the first chunk file appears
    assert (tmp_path / "a.zarr" / "c" / "0" / "0" / "0").exists()
    assert fingerprint(open_source(url, axes="cyx")) != empty


def test_fingerprint_of_a_group_member_covers_only_that_array(tmp_path: Path) -> None:
    group = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    raw = group.create_array("raw", shape=(32, 32), chunks=(16, 16), dtype="uint8")
    other = group.create_array("other", shape=(32, 32), chunks=(16, 16), dtype="uint8")
    raw[...] = 1
    url = f"{tmp_path / 'g.zarr'}/raw"
    before = fingerprint(open_source(url))
    other[...] = 2  # a sibling array changes
    assert fingerprint(open_source(url)) == before
    raw[:16, :16] = 3
    assert fingerprint(open_source(url)) != before
