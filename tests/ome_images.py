"""OME-Zarr inputs for the tests: real images written by ``ome-zarr`` (NGFF 0.4 on
zarr v2, 0.5 on zarr v3), hand-built HCS plates, and attribute dicts to break.

``write_ome_image`` uses ``ome_zarr.writer.write_image``: its pyramids halve y and
x per level and never z, with a scale and translation per level, as real
acquisition software writes them. The plates are written by hand with zarr (plate
and well attributes from ``plate_attrs`` / ``well_attrs``), their fields by
``write_ome_image``; ``write_plate_with_ome_zarr`` writes the same plate's
metadata with ome-zarr's own plate and well writers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence
    from pathlib import Path

VERSIONS = ("0.4", "0.5")
ZARR_FORMAT = {"0.4": 2, "0.5": 3}
AXIS_TYPES = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _fmt(version: str) -> Any:
    from ome_zarr.format import FormatV04, FormatV05

    return FormatV04() if version == "0.4" else FormatV05()


def write_ome_image(path: Path | str, data: np.ndarray, axes: str, version: str = "0.5",
                    levels: int = 3, scale: dict[str, float] | None = None,
                    units: dict[str, str] | None = None,
                    chunks: tuple[int, ...] | None = None) -> str:
    """``data`` as an OME-Zarr image of ``levels`` levels (y, x halved per level)."""
    import zarr
    from ome_zarr.scale import Methods
    from ome_zarr.writer import write_image

    group = zarr.open_group(str(path), mode="w", zarr_format=ZARR_FORMAT[version])
    if chunks is None:
        chunks = tuple(min(n, 32) if a in "yx" else 1 for a, n in zip(axes, data.shape,
                                                                        strict=True))
    write_image(data, group, scale_factors=[2**i for i in range(1, levels)],
                method=Methods.NEAREST, fmt=_fmt(version), axes=list(axes), scale=scale,
                axes_units=units, storage_options={"chunks": chunks})
    return str(path)


def ramp(shape: Sequence[int], dtype: str = "uint16") -> np.ndarray:
    """Distinct pixel values, so a wrong level or axis shows in the data."""
    return (np.arange(int(np.prod(shape))) % 60_000).astype(dtype).reshape(tuple(shape))


# --- attribute dicts ------------------------------------------------------------------


def multiscales_attrs(version: str, axes: str, scales: Sequence[Sequence[float]],
                      paths: Sequence[str] | None = None,
                      translations: Sequence[Sequence[float]] | None = None,
                      units: dict[str, str] | None = None,
                      outer: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The group attributes of a multiscale image, as NGFF ``version`` stores them."""
    units = units or {}
    paths = paths or [str(i) for i in range(len(scales))]
    datasets = []
    for i, (path, scale) in enumerate(zip(paths, scales, strict=True)):
        transforms: list[dict[str, Any]] = [{"type": "scale", "scale": list(scale)}]
        if translations is not None:
            transforms.append({"type": "translation", "translation": list(translations[i])})
        datasets.append({"path": path, "coordinateTransformations": transforms})
    axis_entries = []
    for a in axes:
        entry = {"name": a, "type": AXIS_TYPES[a]}
        if a in units:
            entry["unit"] = units[a]
        axis_entries.append(entry)
    entry: dict[str, Any] = {"name": "img", "axes": axis_entries, "datasets": datasets}
    if outer is not None:
        entry["coordinateTransformations"] = outer
    return _wrap(version, "multiscales", [entry])


def plate_attrs(version: str, rows: Sequence[str], columns: Sequence[str],
                wells: Sequence[str]) -> dict[str, Any]:
    plate: dict[str, Any] = {
        "name": "test plate",
        "rows": [{"name": r} for r in rows],
        "columns": [{"name": c} for c in columns],
        "wells": [{"path": w, "rowIndex": list(rows).index(w.split("/")[0]),
                   "columnIndex": list(columns).index(w.split("/")[1])} for w in wells],
        "field_count": 2,
    }
    return _wrap(version, "plate", plate)


def well_attrs(version: str, fields: Sequence[str]) -> dict[str, Any]:
    return _wrap(version, "well", {"images": [{"path": f} for f in fields]})


def _wrap(version: str, key: str, value: Any) -> dict[str, Any]:
    """0.5 keeps NGFF metadata under "ome" with the version; 0.4 at the top, with
    the version inside the entry."""
    if version == "0.5":
        return {"ome": {"version": "0.5", key: value}}
    if isinstance(value, list):
        return {key: [{**value[0], "version": version}, *value[1:]]}
    return {key: {**value, "version": version}}


# --- plates ---------------------------------------------------------------------------

WELLS = ("A/1", "B/2")
FIELDS = ("0", "1")


def write_plate(path: Path | str, version: str, wells: Sequence[str] = WELLS,
                fields: Sequence[str] = FIELDS, shape: tuple[int, int] = (32, 40)) -> str:
    """A hand-built HCS plate: ``wells`` (rows A, B; columns 1, 2) of ``fields``
    yx images each, two levels per field."""
    import zarr

    fmt = ZARR_FORMAT[version]
    plate = zarr.open_group(str(path), mode="w", zarr_format=fmt)
    plate.attrs.update(plate_attrs(version, ["A", "B"], ["1", "2"], wells))
    for n, well in enumerate(wells):
        group = zarr.open_group(f"{path}/{well}", mode="w", zarr_format=fmt)
        group.attrs.update(well_attrs(version, fields))
        for m, field in enumerate(fields):
            data = np.full(shape, 10 * n + m, np.uint8)
            write_ome_image(f"{path}/{well}/{field}", data, "yx", version, levels=2)
    return str(path)


def write_plate_with_ome_zarr(path: Path | str, version: str) -> str:
    """The plate of ``write_plate``, its plate and well metadata written by ome-zarr."""
    import zarr
    from ome_zarr.writer import write_plate_metadata, write_well_metadata

    write_plate(path, version)
    fmt = ZARR_FORMAT[version]
    plate = zarr.open_group(str(path), mode="r+", zarr_format=fmt)
    plate.attrs.clear()
    write_plate_metadata(plate, ["A", "B"], ["1", "2"], list(WELLS), fmt=_fmt(version),
                         field_count=len(FIELDS), name="ome-zarr plate")
    for well in WELLS:
        group = zarr.open_group(f"{path}/{well}", mode="r+", zarr_format=fmt)
        group.attrs.clear()
        write_well_metadata(group, [{"path": f} for f in FIELDS], fmt=_fmt(version))
    return str(path)
