"""OME-Zarr (NGFF) metadata, read and checked: multiscale images and HCS plates.

Two versions are read, each in its own zarr format::

    NGFF 0.4, zarr v2:  .zattrs  {"multiscales": [{"version": "0.4", "axes": [...],
                                                   "datasets": [...]}]}
                                 {"plate": {"version": "0.4", ...}}  {"well": {...}}
    NGFF 0.5, zarr v3:  zarr.json "attributes": {"ome": {"version": "0.5",
                                                         "multiscales": [...]}}
                                 {"ome": {"version": "0.5", "plate": {...}}}  (and "well")

Everything here except ``plate_fields`` is a pure function of attribute dicts
(and, for the levels' shapes, a lookup the caller passes in): no pixel is read.
Malformed metadata is an ``InputError`` of one line that names the store and
what to fix.

A plate's images are its *fields*: ``<plate>/<row>/<column>/<field>``, e.g.
``plate.zarr/A/1/0``, each an ordinary multiscale image.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from unet_tiles.errors import InputError

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping, Sequence

AXES_ORDER = "tczyx"
SPATIAL = "zyx"
SUPPORTED_VERSIONS = ("0.4", "0.5")
OLD_VERSIONS = ("0.1", "0.2", "0.3")
# The zarr format each NGFF version is stored in.
ZARR_FORMAT = {"0.4": 2, "0.5": 3}
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}

# NGFF's length units as powers of ten of a micrometre; the usual symbols beside them
# (matched exactly: "Mm" is not "mm").
_METRIC_UM = {
    "yoctometer": -18, "zeptometer": -15, "attometer": -12, "femtometer": -9,
    "picometer": -6, "angstrom": -4, "nanometer": -3, "micrometer": 0, "millimeter": 3,
    "centimeter": 4, "decimeter": 5, "meter": 6, "hectometer": 8, "kilometer": 9,
    "megameter": 12, "gigameter": 15, "terameter": 18, "petameter": 21, "exameter": 24,
    "zettameter": 27, "yottameter": 30, "micron": 0,
}
_SYMBOLS_UM = {"pm": -6, "\u00c5": -4, "\u212b": -4, "nm": -3, "\u00b5m": 0, "\u03bcm": 0,
               "um": 0, "mm": 3, "cm": 4, "m": 6}
_IMPERIAL_UM = {"inch": 25_400.0, "foot": 304_800.0, "yard": 914_400.0,
                "mile": 1_609_344_000.0, "parsec": 3.0856775814913673e22}

Kind = Literal["multiscales", "plate", "well"]
# Plate row and column names and field paths: NGFF allows only letters and digits.
_ALPHANUMERIC = re.compile(r"[A-Za-z0-9]+")


def length_in_um(value: float, unit: str | None) -> float | None:
    """``value`` in ``unit`` as micrometres: unchanged without a unit, None for a
    unit that is not a length (or not known)."""
    if unit is None:
        return value
    key = unit.strip()
    exponent = _SYMBOLS_UM.get(key, _METRIC_UM.get(key.lower()))
    if exponent is not None:
        # Divide by exact powers of ten, so 325 nm is exactly float("0.325").
        power: int = 10 ** abs(exponent)
        return value * power if exponent >= 0 else value / power
    if key.lower() in _IMPERIAL_UM:
        return value * _IMPERIAL_UM[key.lower()]
    return None


@dataclass(frozen=True)
class MultiscaleLevel:
    """One dataset of a multiscale image: its array's path and shape, and its scale
    and translation per axis (the dataset's transformations followed by the
    multiscale's own, composed)."""

    path: str
    shape: tuple[int, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "shape": list(self.shape), "scale": list(self.scale),
                "translation": list(self.translation)}


@dataclass(frozen=True)
class Multiscale:
    """A checked NGFF multiscales entry: version, axes and every level.

    ``axes`` are letters of ``tczyx`` in NGFF's order (``yx``, ``zyx``, ``cyx``,
    ``tczyx``, ...); ``axis_types`` and ``axis_units`` are the stored ones (None
    where absent), one per axis.
    """

    version: str
    axes: str
    axis_types: tuple[str | None, ...]
    axis_units: tuple[str | None, ...]
    levels: tuple[MultiscaleLevel, ...]
    name: str | None = None

    @property
    def zarr_format(self) -> int:
        return ZARR_FORMAT[self.version]

    @property
    def paths(self) -> tuple[str, ...]:
        return tuple(level.path for level in self.levels)

    def factors(self, level: int) -> tuple[float, ...]:
        """Scale factor of ``level`` against level 0 per axis (from the scales: 2.0
        for a level of half the resolution)."""
        return tuple(s / s0 for s, s0 in zip(self.levels[level].scale, self.levels[0].scale,
                                             strict=True))

    def pixel_size_um(self, level: int = 0) -> tuple[float, ...] | None:
        """The spatial axes' (z, y, x present) pixel sizes of ``level`` in micrometres;
        None when a spatial axis's unit is not a known length."""
        sizes = []
        for axis, scale, unit in zip(self.axes, self.levels[level].scale, self.axis_units,
                                     strict=True):
            if axis in SPATIAL:
                size = length_in_um(scale, unit)
                if size is None:
                    return None
                sizes.append(size)
        return tuple(sizes)

    def axis_dicts(self) -> list[dict[str, str]]:
        """NGFF ``axes`` entries for these axes (types filled in where none were stored)."""
        entries = []
        for axis, kind, unit in zip(self.axes, self.axis_types, self.axis_units, strict=True):
            entry = {"name": axis, "type": kind or AXIS_TYPES[axis]}
            if unit is not None:
                entry["unit"] = unit
            entries.append(entry)
        return entries

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: what a provenance record stores, ``from_dict`` reads back."""
        return {
            "version": self.version,
            "name": self.name,
            "axes": self.axes,
            "axis_types": list(self.axis_types),
            "axis_units": list(self.axis_units),
            "levels": [{**level.to_dict(), "factors": list(self.factors(i))}
                       for i, level in enumerate(self.levels)],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Multiscale:
        levels = tuple(
            MultiscaleLevel(str(lv["path"]), tuple(int(n) for n in lv["shape"]),
                            tuple(float(s) for s in lv["scale"]),
                            tuple(float(t) for t in lv["translation"]))
            for lv in data["levels"])
        return cls(str(data["version"]), str(data["axes"]), tuple(data["axis_types"]),
                   tuple(data["axis_units"]), levels, data.get("name"))


@dataclass(frozen=True)
class Plate:
    """A checked HCS plate: its version, row and column names and well paths."""

    version: str
    rows: tuple[str, ...]
    columns: tuple[str, ...]
    wells: tuple[str, ...]
    name: str | None = None


# --- where the metadata lives, leniently -------------------------------------------------


def ngff_attrs(attrs: Mapping[str, Any]) -> Mapping[str, Any]:
    """Where a group's NGFF metadata lives: under ``ome`` (0.5), else the attributes
    themselves (0.4). Unchecked: for readers that report rather than refuse."""
    ome = attrs.get("ome")
    return ome if isinstance(ome, dict) else attrs


def level_paths(attrs: Mapping[str, Any]) -> list[str]:
    """The dataset paths of a group's first multiscales; [] where there is none."""
    multiscales: Any = ngff_attrs(attrs).get("multiscales") or attrs.get("multiscales")
    try:
        return [str(d["path"]) for d in multiscales[0]["datasets"]]
    except (KeyError, IndexError, TypeError):
        return []


# --- which kind of OME group ----------------------------------------------------------


def ome_kind(attrs: Mapping[str, Any]) -> Kind | None:
    """What the group with ``attrs`` is: a multiscale image, an HCS plate or well, or
    no OME-Zarr node (a plain group, or a container such as bioformats2raw's)."""
    ome = attrs.get("ome")
    for holder in (ome if isinstance(ome, dict) else {}, attrs):
        for kind in ("multiscales", "plate", "well"):
            if kind in holder:
                return kind
    return None


def _ome_node(attrs: Mapping[str, Any], key: str, store: str,
              zarr_format: int | None) -> tuple[Any, str]:
    """The ``key`` entry (``multiscales``, ``plate``, ``well``) and its NGFF version."""
    ome = attrs.get("ome")
    if ome is not None and not isinstance(ome, dict):
        raise InputError(f"input {store!r} has an \"ome\" attribute that is not an object; "
                         "fix its OME-Zarr metadata")
    if isinstance(ome, dict) and key in ome:
        if "version" not in ome:
            raise InputError(f"input {store!r} has OME-Zarr metadata without a version; "
                             "add \"version\": \"0.5\" to its \"ome\" attributes")
        version, value = ome["version"], ome[key]
    else:
        value = attrs.get(key)
        # NGFF 0.4 keeps the version in the entry itself, where it was optional.
        first = value[0] if isinstance(value, list) and value else value
        version = first.get("version", "0.4") if isinstance(first, dict) else "0.4"
    version = _check_version(version, store, zarr_format)
    return value, version


def _check_version(version: Any, store: str, zarr_format: int | None) -> str:
    text = str(version)
    if text in OLD_VERSIONS:
        raise InputError(
            f"input {store!r} is OME-Zarr {text}, which unet-tiles does not read; convert "
            "it to OME-Zarr 0.4 or 0.5 (e.g. re-export it with ome-zarr-py or bioformats2raw)"
        )
    if text not in SUPPORTED_VERSIONS:
        raise InputError(
            f"input {store!r} declares OME-Zarr version {version!r}, which unet-tiles does "
            f"not know; it reads {' and '.join(SUPPORTED_VERSIONS)}"
        )
    if zarr_format is not None and zarr_format != ZARR_FORMAT[text]:
        raise InputError(
            f"input {store!r} is OME-Zarr {text} in zarr v{zarr_format}, but OME-Zarr {text} "
            f"is stored as zarr v{ZARR_FORMAT[text]}; rewrite it in the right format"
        )
    return text


# --- multiscales ----------------------------------------------------------------------


def parse_multiscales(attrs: Mapping[str, Any], store: str,
                      shape_of: Callable[[str], Sequence[int] | None],
                      zarr_format: int | None = None, axes: str | None = None) -> Multiscale:
    """The group's first multiscales entry, checked.

    Args:
        attrs: the group's attributes.
        store: the group's URL, for messages.
        shape_of: the shape of the array at a dataset path, None where there is none.
        zarr_format: the group's zarr format, checked against the NGFF version.
        axes: the user's axes letters (already checked as letters), replacing the
            stored names; types and units stay those stored.
    """
    value, version = _ome_node(attrs, "multiscales", store, zarr_format)
    where = f"input {store!r}"
    if not isinstance(value, list) or not value:
        raise InputError(f"{where} has an empty or malformed OME-Zarr \"multiscales\" list; "
                         "it needs one entry with axes and datasets")
    entry = value[0]
    if not isinstance(entry, dict):
        raise InputError(f"{where} has a multiscales entry that is not an object; fix its "
                         "OME-Zarr metadata")
    names, types, units = _axes(entry.get("axes"), where, axes)
    ndim = len(names)
    datasets = entry.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise InputError(f"{where} has no datasets in its OME-Zarr multiscales metadata; "
                         "list each level as {\"path\": ..., \"coordinateTransformations\": ...}")
    outer = entry.get("coordinateTransformations")
    outer_scale, outer_shift = (
        _transforms(outer, ndim, f"the multiscales entry of {where}", allow_identity=True,
                    required=False)
        if outer is not None else ((1.0,) * ndim, (0.0,) * ndim))
    levels: list[MultiscaleLevel] = []
    for index, dataset in enumerate(datasets):
        if not isinstance(dataset, dict) or not isinstance(dataset.get("path"), str) \
                or not dataset["path"].strip("/"):
            raise InputError(f"{where} has multiscales dataset {index} without a path; give "
                             "each dataset the path of its array")
        path = dataset["path"].strip("/")
        if any(part in ("", ".", "..") for part in path.split("/")):
            raise InputError(f"{where} has dataset path {path!r} that leaves the image; "
                             "dataset paths are relative paths inside the image group")
        if path in (level.path for level in levels):
            raise InputError(f"{where} lists dataset path {path!r} twice; each level needs "
                             "its own array")
        found = shape_of(path)
        if found is None:
            raise InputError(f"{where} has dataset path {path!r} in its OME-Zarr metadata but "
                             f"no array at {store.rstrip('/')}/{path}; fix the path or restore "
                             "the array")
        shape = tuple(int(n) for n in found)
        if len(shape) != ndim:
            raise InputError(f"{where} level {path!r} has {len(shape)} dimensions {shape} but "
                             f"the metadata names {ndim} axes ({names}); fix the axes or the "
                             "level")
        if levels:
            previous = levels[-1]
            larger = [a for a, n, p in zip(names, shape, previous.shape, strict=True) if n > p]
            if larger:
                raise InputError(
                    f"{where} level {path!r} {shape} is larger than the level before it "
                    f"{previous.path!r} {previous.shape} along {','.join(larger)}; levels must "
                    "go from full resolution down"
                )
        scale, shift = _transforms(dataset.get("coordinateTransformations"), ndim,
                                   f"{where} dataset {path!r}", allow_identity=False,
                                   required=True)
        levels.append(MultiscaleLevel(
            path, shape,
            tuple(s * g for s, g in zip(scale, outer_scale, strict=True)),
            tuple(t * g + u for t, g, u in zip(shift, outer_scale, outer_shift, strict=True)),
        ))
    name = entry.get("name")
    return Multiscale(version, names, types, units, tuple(levels),
                      name if isinstance(name, str) else None)


def _axes(stored: Any, where: str,
          given: str | None) -> tuple[str, tuple[str | None, ...], tuple[str | None, ...]]:
    """Axis letters, types and units from the stored ``axes`` (or the given letters)."""
    if stored is None or stored == []:
        if given is not None:
            return given, (None,) * len(given), (None,) * len(given)
        raise InputError(f"{where} has no axes in its OME-Zarr multiscales metadata; add them "
                         "(e.g. [{\"name\": \"y\", \"type\": \"space\"}, {\"name\": \"x\", "
                         "\"type\": \"space\"}]) or pass `axes`")
    if not isinstance(stored, list) or not all(
            isinstance(a, dict) and isinstance(a.get("name"), str) for a in stored):
        raise InputError(f"{where} has malformed OME-Zarr axes {stored!r:.80}; each axis is "
                         "an object with a \"name\" (NGFF 0.4 and later)")
    types = tuple(a.get("type") if isinstance(a.get("type"), str) else None for a in stored)
    units = tuple(a.get("unit") if isinstance(a.get("unit"), str) else None for a in stored)
    if given is not None:
        if len(given) != len(stored):
            raise InputError(f"`axes` {given!r} names {len(given)} axes but {where} has "
                             f"{len(stored)} in its OME-Zarr metadata")
        return given, types, units
    names = [a["name"].lower() for a in stored]
    for name in names:
        if len(name) != 1 or name not in AXES_ORDER:
            raise InputError(f"{where} has OME-Zarr axis {name!r}, which is not one of "
                             "t, c, z, y, x; rename it in the metadata or pass `axes`")
    if len(set(names)) != len(names):
        repeated = sorted({n for n in names if names.count(n) > 1})
        raise InputError(f"{where} names OME-Zarr axis {','.join(repeated)} more than once "
                         f"({''.join(names)}); fix the axes in the metadata or pass `axes`")
    letters = "".join(names)
    if letters != "".join(a for a in AXES_ORDER if a in letters):
        raise InputError(f"{where} has OME-Zarr axes {letters!r} out of NGFF's order t, c, z, "
                         "y, x; reorder the metadata and arrays, or pass `axes`")
    if sum(a in SPATIAL for a in letters) < 2:
        raise InputError(f"{where} has OME-Zarr axes {letters!r} with fewer than two spatial "
                         "axes (z, y, x); an NGFF image has two or three")
    for letter, kind in zip(letters, types, strict=True):
        expected = AXIS_TYPES[letter]
        if kind is not None and (kind != expected if expected != "channel"
                                 else kind in ("space", "time")):
            raise InputError(f"{where} has OME-Zarr axis {letter!r} of type {kind!r}; "
                             f"{letter} is a {expected} axis, fix its type or pass `axes`")
    return letters, types, units


def _transforms(value: Any, ndim: int, where: str, *, allow_identity: bool,
                required: bool) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(scale, translation) of a coordinateTransformations list: one scale, then at
    most one translation (NGFF 0.4 and 0.5)."""
    fix = ("give it [{\"type\": \"scale\", \"scale\": [...]}] with one value per axis, "
           "optionally followed by a translation")
    if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
        raise InputError(f"{where} has malformed or no coordinateTransformations; {fix}")
    kinds = [t.get("type") for t in value]
    if allow_identity:
        value = [t for t in value if t.get("type") != "identity"]
        kinds = [k for k in kinds if k != "identity"]
        if not value and not required:
            return (1.0,) * ndim, (0.0,) * ndim
    if kinds not in (["scale"], ["scale", "translation"]):
        raise InputError(f"{where} has coordinateTransformations {kinds}; {fix}")
    scale = _vector(value[0], "scale", ndim, where)
    if any(s <= 0 for s in scale):
        raise InputError(f"{where} has scale {list(scale)}; every scale must be positive")
    shift = _vector(value[1], "translation", ndim, where) if len(value) == 2 else (0.0,) * ndim
    return scale, shift


def _vector(transform: dict[str, Any], kind: str, ndim: int, where: str) -> tuple[float, ...]:
    values = transform.get(kind)
    if values is None and "path" in transform:
        raise InputError(f"{where} stores its {kind} in a separate array ({transform['path']!r}),"
                         f" which unet-tiles does not read; write the {kind} values inline")
    if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
            for v in values):
        raise InputError(f"{where} has a {kind} that is not a list of numbers ({values!r:.60});"
                         " fix its coordinateTransformations")
    if len(values) != ndim:
        raise InputError(f"{where} has a {kind} of {len(values)} values for {ndim} axes; give "
                         "one value per axis")
    return tuple(float(v) for v in values)


# --- HCS plates -----------------------------------------------------------------------


def parse_plate(attrs: Mapping[str, Any], store: str,
                zarr_format: int | None = None) -> Plate:
    """The group's ``plate`` metadata, checked: every well ``row/column`` of its
    rows and columns, each listed once."""
    value, version = _ome_node(attrs, "plate", store, zarr_format)
    where = f"HCS plate {store!r}"
    if not isinstance(value, dict):
        raise InputError(f"{where} has \"plate\" metadata that is not an object; fix it")
    rows = _names(value.get("rows"), "rows", where)
    columns = _names(value.get("columns"), "columns", where)
    wells = value.get("wells")
    if not isinstance(wells, list) or not wells:
        raise InputError(f"{where} lists no wells in its plate metadata; add \"wells\" "
                         "[{\"path\": \"A/1\", ...}]")
    paths: list[str] = []
    for well in wells:
        path = well.get("path") if isinstance(well, dict) else None
        if not isinstance(path, str) or path.count("/") != 1:
            raise InputError(f"{where} has a well without a \"row/column\" path ({well!r:.60});"
                             " fix its plate metadata")
        row, column = path.split("/")
        if row not in rows or column not in columns:
            raise InputError(f"{where} has well {path!r} outside its rows {list(rows)} and "
                             f"columns {list(columns)}; fix its plate metadata")
        if path in paths:
            raise InputError(f"{where} lists well {path!r} twice; fix its plate metadata")
        paths.append(path)
    name = value.get("name")
    return Plate(version, rows, columns, tuple(paths), name if isinstance(name, str) else None)


def _names(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(
            isinstance(v, dict) and isinstance(v.get("name"), str) for v in value):
        raise InputError(f"{where} has no or malformed \"{key}\" in its plate metadata; give "
                         f"[{{\"name\": ...}}, ...]")
    for v in value:
        if not _ALPHANUMERIC.fullmatch(v["name"]):
            raise InputError(f"{where} has plate {key[:-1]} name {v['name']!r}; NGFF allows "
                             "only letters and digits, fix its plate metadata")
    names = tuple(v["name"] for v in value)
    if len(set(names)) != len(names):
        raise InputError(f"{where} repeats a name in its plate {key} {list(names)}; fix it")
    return names


def parse_well(attrs: Mapping[str, Any], store: str,
               zarr_format: int | None = None) -> tuple[str, ...]:
    """The field image paths of the well with ``attrs``, relative to the well."""
    value, _ = _ome_node(attrs, "well", store, zarr_format)
    where = f"HCS well {store!r}"
    images = value.get("images") if isinstance(value, dict) else None
    if not isinstance(images, list) or not images:
        raise InputError(f"{where} lists no field images in its well metadata; add \"images\" "
                         "[{\"path\": \"0\"}, ...]")
    paths: list[str] = []
    for image in images:
        path = image.get("path") if isinstance(image, dict) else None
        if not isinstance(path, str) or not _ALPHANUMERIC.fullmatch(path):
            raise InputError(f"{where} has a field image whose path is not letters and digits "
                             f"({image!r:.60}); fix its well metadata")
        if path in paths:
            raise InputError(f"{where} lists field {path!r} twice; fix its well metadata")
        paths.append(path)
    return tuple(paths)


def well_fields(well: str, attrs: Mapping[str, Any] | None, store: str,
                zarr_format: int | None = None) -> list[str]:
    """The fields of the plate ``store``'s well ``well`` (``row/column``) as
    ``row/column/field``; ``attrs`` are the well's attributes, None where the
    well's group is missing."""
    url = f"{store.rstrip('/')}/{well}"
    if attrs is None:
        raise InputError(f"HCS plate {store!r} lists well {well!r} but there is no group "
                         f"at {url}; fix the plate metadata or restore the well")
    if ome_kind(attrs) != "well":
        raise InputError(f"HCS well {url!r} has no well metadata; add \"well\" "
                         "{\"images\": [...]} to its attributes")
    return [f"{well}/{field}" for field in parse_well(attrs, url, zarr_format)]


def field_paths(plate: Plate,
                well_attrs: Callable[[str], Mapping[str, Any] | None],
                store: str, zarr_format: int | None = None) -> list[str]:
    """Every field of ``plate`` as ``row/column/field`` (e.g. ``A/1/0``), in the
    plate's well order; ``well_attrs(path)`` gives a well's attributes (None when
    the well is missing)."""
    fields: list[str] = []
    for well in plate.wells:
        fields.extend(well_fields(well, well_attrs(well), store, zarr_format))
    return fields


def plate_fields(url: str) -> list[str]:
    """The URLs of every field image of the HCS plate at ``url`` (reads only the
    plate's and wells' metadata)."""
    import zarr

    base = url[len("file://"):] if url.startswith("file://") else url
    try:
        plate_group = zarr.open_group(store=base, mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError,
            ValueError, KeyError, TypeError) as exc:
        raise InputError(f"HCS plate {url!r} is not a readable zarr group ({exc})") from None
    attrs = dict(plate_group.attrs)
    if ome_kind(attrs) != "plate":
        raise InputError(f"input {url!r} is not an HCS plate (no \"plate\" metadata)")
    zarr_format = int(plate_group.metadata.zarr_format)
    plate = parse_plate(attrs, url, zarr_format)

    def well_attrs(path: str) -> dict[str, Any] | None:
        try:
            well = plate_group[path]
        except KeyError:
            return None
        return dict(well.attrs) if isinstance(well, zarr.Group) else None

    return [f"{url.rstrip('/')}/{field}"
            for field in field_paths(plate, well_attrs, url, zarr_format)]


__all__ = ["Multiscale", "MultiscaleLevel", "Plate", "field_paths", "length_in_um",
           "level_paths", "ngff_attrs", "ome_kind", "parse_multiscales", "parse_plate",
           "parse_well", "plate_fields", "well_fields"]
