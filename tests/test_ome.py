"""pipeline/ome.py: OME-Zarr 0.4 and 0.5 metadata read and checked (multiscales, levels,
axes, units, HCS plates), and open_source's levels on images written by ome-zarr."""

from __future__ import annotations

import copy
import json
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import zarr
from helpers import write_zarr
from ome_images import (
    FIELDS,
    VERSIONS,
    WELLS,
    multiscales_attrs,
    plate_attrs,
    ramp,
    well_attrs,
    write_ome_image,
    write_plate,
    write_plate_with_ome_zarr,
)

from unet_tiles.errors import InputError
from unet_tiles.pipeline.ome import (
    Multiscale,
    field_paths,
    length_in_um,
    ome_kind,
    parse_multiscales,
    parse_plate,
    parse_well,
    plate_fields,
)
from unet_tiles.pipeline.source import open_source

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

STORE = "/data/img.ome.zarr"


def _shapes(*shapes: tuple[int, ...]) -> Callable[[str], tuple[int, ...] | None]:
    """A ``shape_of`` for datasets "0", "1", ...: no array elsewhere."""
    return {str(i): s for i, s in enumerate(shapes)}.get


def _error(call: Callable[[], Any]) -> str:
    with pytest.raises(InputError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message  # one line: the CLI prints it as it is
    return message


# --- images written by ome-zarr, opened at each level -----------------------------------

# (axes, level-0 shape, scale per spatial axis, units): y, x halve per level, z never.
IMAGES = [
    ("yx", (64, 80), {"y": 0.5, "x": 0.25}, {"y": "micrometer", "x": "micrometer"}),
    ("zyx", (5, 64, 80), {"z": 2.0, "y": 325.0, "x": 325.0},
     {"z": "micrometer", "y": "nanometer", "x": "nanometer"}),
    ("cyx", (3, 64, 80), {"y": 0.001, "x": 0.001}, {"y": "millimeter", "x": "millimeter"}),
    ("tczyx", (2, 2, 3, 64, 80), {"t": 30.0, "z": 1.5, "y": 0.2, "x": 0.2},
     {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"}),
]
# The same sizes in micrometres (level 0), z, y, x as present.
IMAGE_UM = {"yx": (0.5, 0.25), "zyx": (2.0, 0.325, 0.325), "cyx": (1.0, 1.0),
            "tczyx": (1.5, 0.2, 0.2)}


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("axes", "shape", "scale", "units"), IMAGES,
                         ids=[image[0] for image in IMAGES])
def test_ome_zarr_images_open_at_every_level(tmp_path: Path, version: str, axes: str,
                                             shape: tuple[int, ...], scale: dict[str, float],
                                             units: dict[str, str]) -> None:
    data = ramp(shape)
    url = write_ome_image(tmp_path / "img.ome.zarr", data, axes, version, levels=3,
                          scale=scale, units=units)
    first = open_source(url)
    assert first.level == 0
    assert first.array_path == "s0"
    assert first.axes == axes
    assert first.shape == shape
    assert first.ome_version == version
    assert first.zarr_format == (2 if version == "0.4" else 3)
    assert first.pixel_size_um == pytest.approx(IMAGE_UM[axes])
    assert np.array_equal(np.asarray(first.open()[...]), data)
    ms = first.multiscale
    assert ms is not None
    assert ms.version == version
    assert ms.axes == axes
    assert ms.axis_types == tuple(
        {"t": "time", "c": "channel"}.get(a, "space") for a in axes)
    assert ms.axis_units == tuple(units.get(a) for a in axes)
    assert ms.paths == ("s0", "s1", "s2")
    for level in (1, 2):
        source = open_source(url, level=level)
        expected = tuple(-(-n // 2**level) if a in "yx" else n for a, n in zip(axes, shape,
                                                                            strict=True))
        assert source.level == level
        assert source.array_path == f"s{level}"
        assert source.shape == expected
        assert source.open().shape == expected
        assert ms.levels[level].shape == expected
        # z is never downsampled; y and x halve per level.
        factors = tuple(2.0**level if a in "yx" else 1.0 for a in axes)
        assert ms.factors(level) == pytest.approx(factors)
        spatial = [a for a in axes if a in "zyx"]
        assert source.pixel_size_um == pytest.approx(tuple(
            um * (2**level if a in "yx" else 1) for a, um in zip(spatial, IMAGE_UM[axes],
                                                                 strict=True)))
        assert source.multiscale == ms
    record = open_source(url, level=1).to_dict()
    assert json.loads(json.dumps(record)) == record
    assert record["level"] == 1
    assert record["multiscale"]["axes"] == axes
    assert [lv["path"] for lv in record["multiscale"]["levels"]] == ["s0", "s1", "s2"]
    assert record["multiscale"]["levels"][2]["shape"] == list(ms.levels[2].shape)
    assert record["multiscale"]["levels"][1]["factors"] == list(ms.factors(1))
    assert record["multiscale"]["axis_units"] == [units.get(a) for a in axes]
    assert Multiscale.from_dict(record["multiscale"]) == ms


def test_levels_out_of_range_list_the_available_ones(tmp_path: Path) -> None:
    url = write_ome_image(tmp_path / "img.ome.zarr", ramp((64, 80)), "yx", "0.5", levels=2)
    for level in (2, -1):
        message = _error(lambda level=level: open_source(url, level=level))
        assert f"has no `level` {level}; its 2 level(s) are 0 (s0 64x80), 1 (s1 32x40)" \
            in message
        assert repr(url) in message
    plain = write_zarr(tmp_path / "plain.zarr", np.zeros((8, 8), np.uint8), (8, 8))
    assert open_source(plain, level=0).level == 0
    message = _error(lambda: open_source(plain, level=1))
    assert "is not a multiscale OME-Zarr image, so it has level 0 only; `level` 1" in message


def test_given_axes_replace_the_stored_names(tmp_path: Path) -> None:
    url = write_ome_image(tmp_path / "img.ome.zarr", ramp((2, 32, 40)), "cyx", "0.5")
    assert open_source(url, axes="ZYX").axes == "zyx"
    source = open_source(url, axes="zyx")
    assert source.multiscale is not None
    assert source.multiscale.axes == "zyx"
    assert source.pixel_size_um == (1.0, 1.0, 1.0)  # z now counts as spatial
    message = _error(lambda: open_source(url, axes="yx"))
    assert "`axes` 'yx' names 2 axes but input" in message
    assert "has 3 in its OME-Zarr metadata" in message


# --- units ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "unit", "um"),
    [(0.325, None, 0.325), (0.325, "micrometer", 0.325), (325.0, "nanometer", 0.325),
     (2.0, "millimeter", 2000.0), (1.0, "meter", 1e6), (5000.0, "angstrom", 0.5),
     (1.0, "inch", 25400.0), (0.5, "\u00b5m", 0.5), (0.5, "um", 0.5), (250.0, "nm", 0.25),
     (1.0, "Nanometer", 0.001), (2.0, "second", None), (1.0, "pixel", None)],
)
def test_lengths_in_micrometres(value: float, unit: str | None, um: float | None) -> None:
    converted = length_in_um(value, unit)
    if um is None:
        assert converted is None
    else:
        assert converted == pytest.approx(um)
    assert length_in_um(325.0, "nanometer") == 0.325  # exactly, not 0.32500000000000007


def test_unknown_spatial_unit_gives_no_pixel_size(tmp_path: Path) -> None:
    url = write_ome_image(tmp_path / "img.ome.zarr", ramp((32, 40)), "yx", "0.4",
                          scale={"y": 3.0, "x": 3.0}, units={"y": "pixel", "x": "pixel"})
    source = open_source(url)
    assert source.pixel_size_um is None
    assert source.multiscale is not None
    assert source.multiscale.axis_units == ("pixel", "pixel")
    # Without units the stored scale is taken as it is.
    url = write_ome_image(tmp_path / "b.ome.zarr", ramp((32, 40)), "yx", "0.4",
                          scale={"y": 3.0, "x": 0.5})
    assert open_source(url).pixel_size_um == (3.0, 0.5)


# --- parse_multiscales on attribute dicts -------------------------------------------------


def test_multiscale_level_transformations_compose_with_the_datasets() -> None:
    attrs = multiscales_attrs("0.5", "zyx", [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0]],
                              translations=[[0, 0, 0], [0, 0.25, 0.25]],
                              units={"y": "nanometer", "x": "nanometer"},
                              outer=[{"type": "scale", "scale": [2.0, 10.0, 10.0]},
                                     {"type": "translation", "translation": [1.0, 5.0, 5.0]}])
    ms = parse_multiscales(attrs, STORE, _shapes((4, 32, 32), (4, 16, 16)), zarr_format=3)
    assert ms.levels[0].scale == (2.0, 5.0, 5.0)
    assert ms.levels[0].translation == (1.0, 5.0, 5.0)
    assert ms.levels[1].scale == (2.0, 10.0, 10.0)
    assert ms.levels[1].translation == (1.0, 7.5, 7.5)
    assert ms.pixel_size_um(0) == (2.0, 0.005, 0.005)
    assert ms.factors(1) == (1.0, 2.0, 2.0)
    assert ms.name == "img"
    assert ms.axis_dicts() == [{"name": "z", "type": "space"},
                               {"name": "y", "type": "space", "unit": "nanometer"},
                               {"name": "x", "type": "space", "unit": "nanometer"}]
    identity = copy.deepcopy(attrs)
    identity["ome"]["multiscales"][0]["coordinateTransformations"] = [{"type": "identity"}]
    plain = parse_multiscales(identity, STORE, _shapes((4, 32, 32), (4, 16, 16)))
    assert plain.levels[1].scale == (1.0, 1.0, 1.0)


@pytest.mark.parametrize("axes", ["yx", "zy", "cyx", "tyx", "zyx", "czyx", "tcyx", "tzyx",
                                  "tczyx"])
def test_every_ngff_axes_order_is_read(axes: str) -> None:
    ndim = len(axes)
    attrs = multiscales_attrs("0.4", axes, [[1.0] * ndim])
    assert parse_multiscales(attrs, STORE, _shapes((2,) * ndim)).axes == axes


def test_kind_of_group() -> None:
    assert ome_kind(multiscales_attrs("0.4", "yx", [[1, 1]])) == "multiscales"
    assert ome_kind(multiscales_attrs("0.5", "yx", [[1, 1]])) == "multiscales"
    assert ome_kind(plate_attrs("0.5", ["A"], ["1"], ["A/1"])) == "plate"
    assert ome_kind(plate_attrs("0.4", ["A"], ["1"], ["A/1"])) == "plate"
    assert ome_kind(well_attrs("0.4", ["0"])) == "well"
    assert ome_kind({"ome": {"version": "0.5", "bioformats2raw.layout": 3}}) is None
    assert ome_kind({"something": 1}) is None


def _attrs05(**changes: Any) -> dict[str, Any]:
    attrs = multiscales_attrs("0.5", "zyx", [[1.0, 0.5, 0.5], [1.0, 1.0, 1.0]])
    attrs["ome"]["multiscales"][0].update(changes)
    return attrs


def _axes(*names: str, types: dict[str, str] | None = None) -> list[dict[str, str]]:
    return [{"name": n, "type": (types or {}).get(n, "space")} for n in names]


def _datasets(*transforms: Any, paths: tuple[str, ...] = ("0", "1")) -> list[dict[str, Any]]:
    return [{"path": p, "coordinateTransformations": t}
            for p, t in zip(paths, transforms, strict=True)]


GOOD_T = [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]
SHAPES = ((4, 32, 32), (4, 16, 16))

MALFORMED: list[tuple[str, dict[str, Any], tuple[tuple[int, ...], ...], str]] = [
    ("no axes", _attrs05(axes=None), SHAPES,
     "has no axes in its OME-Zarr multiscales metadata; add them"),
    ("empty axes", _attrs05(axes=[]), SHAPES, "has no axes"),
    ("axes as strings (0.3)", _attrs05(axes=["z", "y", "x"]), SHAPES,
     "has malformed OME-Zarr axes"),
    ("axis not a letter", _attrs05(axes=_axes("ch", "y", "x", types={"ch": "channel"})), SHAPES,
     "has OME-Zarr axis 'ch', which is not one of t, c, z, y, x; rename it in the metadata "
     "or pass `axes`"),
    ("axis outside tczyx", _attrs05(axes=_axes("q", "y", "x")), SHAPES,
     "axis 'q', which is not one of"),
    ("repeated axis", _attrs05(axes=_axes("y", "y", "x")), SHAPES,
     "names OME-Zarr axis y more than once (yyx)"),
    ("axes out of order", _attrs05(axes=_axes("y", "x", "z")), SHAPES,
     "has OME-Zarr axes 'yxz' out of NGFF's order t, c, z, y, x"),
    ("one spatial axis", _attrs05(axes=_axes("t", "c", "x", types={"t": "time",
                                                                   "c": "channel"})),
     SHAPES, "with fewer than two spatial axes"),
    ("axis of the wrong type", _attrs05(axes=_axes("z", "y", "x", types={"z": "time"})),
     SHAPES, "has OME-Zarr axis 'z' of type 'time'; z is a space axis"),
    ("no datasets", _attrs05(datasets=[]), SHAPES, "has no datasets"),
    ("dataset without a path", _attrs05(datasets=[{"coordinateTransformations": GOOD_T}]),
     SHAPES, "has multiscales dataset 0 without a path"),
    ("dataset path missing", _attrs05(datasets=_datasets(GOOD_T, GOOD_T, paths=("0", "9"))),
     SHAPES, f"has dataset path '9' in its OME-Zarr metadata but no array at {STORE}/9; "
     "fix the path or restore the array"),
    ("dataset path twice", _attrs05(datasets=_datasets(GOOD_T, GOOD_T, paths=("0", "0"))),
     SHAPES, "lists dataset path '0' twice"),
    ("dataset path leaving the image",
     _attrs05(datasets=_datasets(GOOD_T, paths=("../other",))), SHAPES,
     "has dataset path '../other' that leaves the image"),
    ("level of other ndim", _attrs05(), ((4, 32, 32), (16, 16)),
     "level '1' has 2 dimensions (16, 16) but the metadata names 3 axes (zyx)"),
    ("level ndim against axes", _attrs05(), ((1, 4, 32, 32), (1, 4, 16, 16)),
     "level '0' has 4 dimensions"),
    ("level larger than the one before", _attrs05(), ((4, 32, 32), (4, 16, 64)),
     "level '1' (4, 16, 64) is larger than the level before it '0' (4, 32, 32) along x; "
     "levels must go from full resolution down"),
    ("z grows", _attrs05(), ((4, 32, 32), (8, 16, 16)), "along z;"),
    ("no transformations", _attrs05(datasets=[{"path": "0"}]), SHAPES,
     "dataset '0' has malformed or no coordinateTransformations"),
    ("translation first", _attrs05(datasets=_datasets(
        [{"type": "translation", "translation": [0, 0, 0]},
         {"type": "scale", "scale": [1, 1, 1]}], GOOD_T)), SHAPES,
     "has coordinateTransformations ['translation', 'scale']"),
    ("scale of the wrong length", _attrs05(datasets=_datasets(
        [{"type": "scale", "scale": [1, 1]}], GOOD_T)), SHAPES,
     "has a scale of 2 values for 3 axes"),
    ("scale not numbers", _attrs05(datasets=_datasets(
        [{"type": "scale", "scale": ["a", 1, 1]}], GOOD_T)), SHAPES,
     "has a scale that is not a list of numbers"),
    ("scale zero", _attrs05(datasets=_datasets(
        [{"type": "scale", "scale": [0, 1, 1]}], GOOD_T)), SHAPES,
     "every scale must be positive"),
    ("scale in an array", _attrs05(datasets=_datasets(
        [{"type": "scale", "path": "scale.bin"}], GOOD_T)), SHAPES,
     "stores its scale in a separate array ('scale.bin')"),
    ("multiscale transformations malformed", _attrs05(coordinateTransformations=[
        {"type": "translation", "translation": [1, 1, 1]}]), SHAPES,
     f"the multiscales entry of input {STORE!r} has coordinateTransformations "
     "['translation']"),
]


@pytest.mark.parametrize(("attrs", "shapes", "expected"),
                         [case[1:] for case in MALFORMED], ids=[case[0] for case in MALFORMED])
def test_malformed_multiscales_are_one_line_input_errors(
        attrs: dict[str, Any], shapes: tuple[tuple[int, ...], ...], expected: str) -> None:
    message = _error(lambda: parse_multiscales(attrs, STORE, _shapes(*shapes), zarr_format=3))
    assert expected in message
    assert STORE in message


@pytest.mark.parametrize(
    ("attrs", "zarr_format", "expected"),
    [({"ome": {"version": "0.6", "multiscales": []}}, 3,
      "declares OME-Zarr version '0.6', which unet-tiles does not know; it reads 0.4 and 0.5"),
     ({"ome": {"version": 5, "multiscales": []}}, 3, "declares OME-Zarr version 5"),
     ({"multiscales": [{"version": "1.0", "axes": [], "datasets": []}]}, 2,
      "declares OME-Zarr version '1.0'"),
     ({"multiscales": [{"version": "0.3", "axes": ["y", "x"], "datasets": []}]}, 2,
      "is OME-Zarr 0.3, which unet-tiles does not read; convert it to OME-Zarr 0.4 or 0.5"),
     ({"ome": {"multiscales": []}}, 3,
      "has OME-Zarr metadata without a version; add \"version\": \"0.5\""),
     ({"ome": {"version": "0.5", "multiscales": []}}, 2,
      "is OME-Zarr 0.5 in zarr v2, but OME-Zarr 0.5 is stored as zarr v3"),
     (multiscales_attrs("0.4", "yx", [[1, 1]]), 3, "is OME-Zarr 0.4 in zarr v3"),
     ({"ome": "0.5"}, 3, "has an \"ome\" attribute that is not an object"),
     ({"ome": {"version": "0.5", "multiscales": []}}, 3,
      "has an empty or malformed OME-Zarr \"multiscales\" list"),
     ({"multiscales": {"datasets": []}}, 2, "empty or malformed OME-Zarr \"multiscales\""),
     ({"multiscales": ["0"]}, 2, "has a multiscales entry that is not an object")],
)
def test_versions_and_layouts_are_checked(attrs: dict[str, Any], zarr_format: int,
                                          expected: str) -> None:
    if "ome" in attrs and not isinstance(attrs["ome"], dict):
        attrs = {**attrs, "multiscales": []}
    message = _error(lambda: parse_multiscales(attrs, STORE, _shapes((4, 4)), zarr_format))
    assert expected in message
    assert STORE in message


def test_a_04_entry_without_version_is_read_as_04() -> None:
    attrs = multiscales_attrs("0.4", "yx", [[1.0, 1.0]])
    del attrs["multiscales"][0]["version"]
    assert parse_multiscales(attrs, STORE, _shapes((4, 4)), zarr_format=2).version == "0.4"


@pytest.mark.parametrize(("case", "expected"), [
    ("axes", "has OME-Zarr axis 'ch', which is not one of t, c, z, y, x"),
    ("path", "has dataset path '9' in its OME-Zarr metadata but no array at"),
    ("shapes", "is larger than the level before it"),
    ("version", "declares OME-Zarr version '0.9'"),
])
def test_open_source_reports_malformed_metadata(tmp_path: Path, case: str,
                                                expected: str) -> None:
    url = write_ome_image(tmp_path / "img.ome.zarr", ramp((32, 40)), "yx", "0.5", levels=2)
    group = zarr.open_group(url, mode="r+")
    attrs = dict(group.attrs)
    entry = attrs["ome"]["multiscales"][0]
    if case == "axes":
        entry["axes"][0]["name"] = "ch"
    elif case == "path":
        entry["datasets"][1]["path"] = "9"
    elif case == "shapes":
        zarr.create_array(f"{url}/s1", shape=(64, 40), dtype="uint16", overwrite=True)
    else:
        attrs["ome"]["version"] = "0.9"
    group.attrs.put(attrs)
    message = _error(lambda: open_source(url))
    assert expected in message
    assert repr(url) in message


# --- HCS plates -------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_plate_fields_of_a_hand_built_plate(tmp_path: Path, version: str) -> None:
    url = write_plate(tmp_path / "plate.zarr", version)
    fields = plate_fields(url)
    assert fields == [f"{url}/A/1/0", f"{url}/A/1/1", f"{url}/B/2/0", f"{url}/B/2/1"]
    # Each field is an ordinary image, with its own pixels.
    for n, field in enumerate(fields):
        source = open_source(field)
        assert source.ome_version == version
        assert source.axes == "yx"
        assert source.shape == (32, 40)
        assert int(np.asarray(source.open()[0, 0])) == 10 * (n // 2) + n % 2
        assert open_source(field, level=1).shape == (16, 20)


@pytest.mark.parametrize("version", VERSIONS)
def test_plates_and_wells_are_refused_by_open_source(tmp_path: Path, version: str) -> None:
    url = write_plate(tmp_path / "plate.zarr", version)
    message = _error(lambda: open_source(url))
    assert f"input {url!r} is an HCS plate of 4 field image(s) (the first is {url}/A/1/0)" \
        in message
    assert "segment one field at a time, or every field with unet-tiles archive" in message
    message = _error(lambda: open_source(f"{url}/B/2"))
    assert "is an HCS well of 2 field image(s); give one of them (e.g. " in message
    assert f"{url}/B/2/0" in message


@pytest.mark.parametrize("version", VERSIONS)
def test_plates_written_by_ome_zarr(tmp_path: Path, version: str) -> None:
    url = write_plate_with_ome_zarr(tmp_path / "plate.zarr", version)
    assert plate_fields(url) == [f"{url}/{w}/{f}" for w in WELLS for f in FIELDS]
    plate = parse_plate(dict(zarr.open_group(url, mode="r").attrs), url)
    assert plate.version == version
    assert plate.rows == ("A", "B")
    assert plate.columns == ("1", "2")
    assert plate.wells == WELLS
    assert plate.name == "ome-zarr plate"


def test_field_paths_from_attribute_dicts() -> None:
    plate = parse_plate(plate_attrs("0.5", ["A", "B", "C"], ["1", "2", "10"],
                                    ["A/1", "C/10"]), STORE)
    wells = {"A/1": well_attrs("0.5", ["0", "1", "2"]), "C/10": well_attrs("0.5", ["0"])}
    assert field_paths(plate, wells.get, STORE) == ["A/1/0", "A/1/1", "A/1/2", "C/10/0"]
    message = _error(lambda: field_paths(plate, {"A/1": wells["A/1"]}.get, STORE))
    assert f"HCS plate {STORE!r} lists well 'C/10' but there is no group at {STORE}/C/10" \
        in message
    message = _error(lambda: field_paths(plate, {**wells, "C/10": {}}.get, STORE))
    assert f"HCS well '{STORE}/C/10' has no well metadata" in message


def _plate(**changes: Any) -> dict[str, Any]:
    attrs = plate_attrs("0.4", ["A", "B"], ["1", "2"], ["A/1", "B/2"])
    attrs["plate"].update(changes)
    return attrs


@pytest.mark.parametrize(("attrs", "expected"), [
    (_plate(wells=[]), "lists no wells in its plate metadata"),
    (_plate(wells=None), "lists no wells"),
    (_plate(rows=None), "has no or malformed \"rows\" in its plate metadata"),
    (_plate(columns=[{"id": 1}]), "has no or malformed \"columns\""),
    (_plate(rows=[{"name": "A"}, {"name": "A"}]), "repeats a name in its plate rows"),
    (_plate(rows=[{"name": ".."}]), "has plate row name '..'; NGFF allows only letters and"),
    (_plate(wells=[{"path": "A1"}]), "has a well without a \"row/column\" path"),
    (_plate(wells=[{"rowIndex": 0}]), "has a well without a \"row/column\" path"),
    (_plate(wells=[{"path": "C/1"}]), "has well 'C/1' outside its rows ['A', 'B'] and columns"),
    (_plate(wells=[{"path": "A/1"}, {"path": "A/1"}]), "lists well 'A/1' twice"),
    ({"plate": [1]}, "has \"plate\" metadata that is not an object"),
    ({"plate": {"version": "0.2"}}, "is OME-Zarr 0.2, which unet-tiles does not read"),
    ({"ome": {"version": "0.7", "plate": {}}}, "declares OME-Zarr version '0.7'"),
])
def test_malformed_plates(attrs: dict[str, Any], expected: str) -> None:
    message = _error(lambda: parse_plate(attrs, STORE))
    assert expected in message
    assert STORE in message


@pytest.mark.parametrize(("attrs", "expected"), [
    ({"well": {"images": []}}, "lists no field images in its well metadata"),
    ({"well": {}}, "lists no field images"),
    ({"well": [0]}, "lists no field images"),
    ({"well": {"images": [{"acquisition": 0}]}}, "has a field image whose path is not"),
    ({"well": {"images": [{"path": "../../x"}]}}, "has a field image whose path is not"),
    ({"well": {"images": [{"path": "0"}, {"path": "0"}]}}, "lists field '0' twice"),
    ({"ome": {"well": {"images": [{"path": "0"}]}}}, "OME-Zarr metadata without a version"),
])
def test_malformed_wells(attrs: dict[str, Any], expected: str) -> None:
    message = _error(lambda: parse_well(attrs, STORE))
    assert expected in message
    assert STORE in message
    assert parse_well(well_attrs("0.4", ["0", "5"]), STORE) == ("0", "5")


def test_malformed_plate_is_reported_by_open_source_and_plate_fields(tmp_path: Path) -> None:
    url = write_plate(tmp_path / "plate.zarr", "0.5")
    group = zarr.open_group(url, mode="r+")
    attrs = dict(group.attrs)
    attrs["ome"]["plate"]["wells"].append({"path": "B/1"})  # listed, never written
    group.attrs.put(attrs)
    for call in (lambda: open_source(url), lambda: plate_fields(url)):
        message = _error(call)
        assert f"HCS plate {url!r} lists well 'B/1' but there is no group at {url}/B/1" \
            in message
    assert "is not an HCS plate" in _error(lambda: plate_fields(f"{url}/A/1/0"))
