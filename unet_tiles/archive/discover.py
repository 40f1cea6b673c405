"""Find the images of an archive, and tell which ones are already segmented.

An archive is a folder tree, local or behind any fsspec URL, holding zarr v2/v3
and OME-Zarr stores at any depth::

    ROOT/
      2026-07-01/slide-1.zarr/        an image: a zarr array
      2026-07-01/.slide-2.zarr.tmp/   ignored: hidden or temporary (a copy in flight)
      plate.zarr/                     an HCS plate (OME-Zarr "plate" metadata): its
        A/1/0/, A/1/1/, B/3/0/        fields, as its plate and well metadata list them,
                                      are the images (plate.zarr/A/1/0, ...)
      bioformats2raw.zarr/            a container group (no arrays, no multiscales):
        0/                            descended into; 0 is an OME-Zarr image
      link -> /elsewhere              ignored: a symlink that leaves ROOT

A directory holding zarr metadata is an image when it is an array, an OME-Zarr
multiscales group, or a group with arrays directly inside; the search never
descends into an image (its arrays are levels or labels, not more images). An
HCS plate or well is not descended either: its metadata names its fields. A
plate or well whose metadata is malformed is listed as an image itself, so that
segmenting it reports the error against its name.

The output of the image ``ROOT/a/b.zarr`` is ``OUT/a/b.zarr``; a name without a
``.zarr`` suffix gets one. Whether it is already done is the run's question
(``engine.run.Run.unattended``), answered by its provenance record.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from unet_tiles.errors import InputError
from unet_tiles.pipeline.ome import ome_kind, parse_plate, parse_well, well_fields
from unet_tiles.pipeline.source import is_remote

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)

# Copy tools and acquisition software write under these names, then rename:
# a store with such a name is still in flight, never an image.
TEMPORARY_SUFFIXES = (".tmp", ".temp", ".part", ".partial", ".crdownload", ".lock", "~")
ZARR_METADATA = ("zarr.json", ".zarray", ".zgroup")


def is_ignored(name: str) -> bool:
    """Hidden (``.name``), editor/backup (``~name``) and temporary names."""
    return name.startswith((".", "~")) or name.lower().endswith(TEMPORARY_SUFFIXES)


@dataclass(frozen=True)
class ImageRef:
    """One image of an archive: its store URL and its path relative to the root."""

    url: str
    relative: str

    def output_url(self, output_root: str) -> str:
        """``OUT/<relative>``, with a ``.zarr`` suffix added where missing."""
        relative = self.relative or Path(self.url.rstrip("/")).name
        if not relative.endswith(".zarr"):
            relative += ".zarr"
        return f"{output_root.rstrip('/')}/{relative}"


def find_images(root: str, exclude: Iterable[str] = ()) -> list[ImageRef]:
    """Every image under ``root`` (a local path or fsspec URL), sorted by path.

    Args:
        root: the archive's top folder; it may itself be an image.
        exclude: folders to skip, e.g. an output root placed inside ``root``.
    """
    root = str(root)
    if is_remote(root):
        return _find_fsspec(root, exclude)
    path = Path(root[len("file://"):] if root.startswith("file://") else root)
    if not path.is_dir():
        raise InputError(f"archive root {root!r} is not a folder; check the path")
    return _find_local(path, exclude)


def _find_local(root: Path, exclude: Iterable[str]) -> list[ImageRef]:
    real_root = root.resolve()
    skip = {Path(e).resolve() for e in exclude if not is_remote(e)}
    found: list[ImageRef] = []
    visited: set[Path] = set()

    def read(path: Path) -> dict[str, Any] | None:
        return _load_json(path.read_bytes) if path.is_file() else None

    def visit(folder: Path, relative: str) -> None:
        real = folder.resolve()
        # A symlink may point anywhere: follow it only while it stays inside the
        # root, and only once, so a link loop cannot recurse forever.
        if real in visited or real in skip or not real.is_relative_to(real_root):
            return
        visited.add(real)
        kind = _classify(lambda name: read(folder / name), _local_children(folder))
        if kind == "image":
            found.append(ImageRef(str(folder), relative))
            return
        if kind in ("plate", "well"):
            found.extend(_hcs_images(kind, lambda name: read(folder / name), str(folder),
                                     relative))
            return
        for name in _local_children(folder):
            visit(folder / name, f"{relative}/{name}" if relative else name)

    # Start from the resolved root so an image's URL, which its fingerprint
    # includes, is the same however the root was spelled.
    visit(real_root, "")
    return sorted(found, key=lambda ref: ref.relative)


def _local_children(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries if not is_ignored(e.name) and e.is_dir())
    except OSError as exc:
        logger.warning("cannot list %s (%s); skipping it", folder, exc)
        return []


def _find_fsspec(root: str, exclude: Iterable[str]) -> list[ImageRef]:
    import fsspec

    from unet_tiles.pipeline.source import check_remote

    check_remote(root, "archive root")  # unreachable, refused, no bucket: one line
    fs, top = fsspec.core.url_to_fs(root)
    protocol = root.split("://", 1)[0]
    if not fs.isdir(top):
        raise InputError(f"archive root {root!r} is not a folder; check the URL")
    skip = {fsspec.core.url_to_fs(e)[1].rstrip("/") for e in exclude if is_remote(e)}
    found: list[ImageRef] = []

    def children(folder: str) -> list[str]:
        entries = fs.ls(folder, detail=True)
        return sorted(
            e["name"].rstrip("/").rsplit("/", 1)[-1] for e in entries
            if e.get("type") == "directory"
            and not is_ignored(e["name"].rstrip("/").rsplit("/", 1)[-1])
        )

    def read(folder: str, name: str) -> dict[str, Any] | None:
        key = f"{folder}/{name}"
        return _load_json(lambda: fs.cat_file(key)) if fs.isfile(key) else None

    def visit(folder: str, relative: str) -> None:
        if folder.rstrip("/") in skip:
            return
        names = children(folder)
        kind = _classify(lambda name: read(folder, name), names)
        if kind == "image":
            found.append(ImageRef(f"{protocol}://{folder}", relative))
            return
        if kind in ("plate", "well"):
            found.extend(_hcs_images(kind, lambda name: read(folder, name),
                                     f"{protocol}://{folder}", relative))
            return
        for name in names:
            visit(f"{folder}/{name}", f"{relative}/{name}" if relative else name)

    visit(top.rstrip("/"), "")
    return sorted(found, key=lambda ref: ref.relative)


def _load_json(read: Callable[[], bytes]) -> dict[str, Any] | None:
    try:
        value = json.loads(read())
    except (OSError, ValueError) as exc:
        # Unreadable metadata still marks an image: segmenting it will report
        # the error against its name instead of silently skipping it.
        return {"unreadable": str(exc)}
    return value if isinstance(value, dict) else {"unreadable": "not a JSON object"}


def _classify(read: Callable[[str], dict[str, Any] | None], children: list[str]
              ) -> Literal["image", "plate", "well", "container", "folder"]:
    v3 = read("zarr.json")
    if v3 is not None:
        if v3.get("node_type") != "group":
            return "image"  # an array, or metadata too broken to say
        attrs = v3.get("attributes") or {}
        if not isinstance(attrs, dict) or (
                "ome" in attrs and not isinstance(attrs["ome"], dict)):
            return "image"  # broken: segmenting it says how
    elif read(".zarray") is not None:
        return "image"
    elif (v2 := read(".zgroup")) is not None:
        if "unreadable" in v2:
            return "image"
        attrs = read(".zattrs") or {}
        if "unreadable" in attrs:
            return "image"
    else:
        return "folder"
    kind = ome_kind(attrs)
    if kind == "multiscales":
        return "image"
    if kind is not None:
        return kind
    if any(_is_array(read, child) for child in children):
        return "image"
    return "container"


def _group_attrs(read: Callable[[str], dict[str, Any] | None],
                 prefix: str = "") -> tuple[dict[str, Any] | None, int | None]:
    """The attributes and zarr format of the group at ``prefix`` (None: no group)."""
    lead = f"{prefix}/" if prefix else ""
    v3 = read(f"{lead}zarr.json")
    if v3 is not None:
        if v3.get("node_type") != "group":
            return None, None
        attrs = v3.get("attributes")
        return (attrs if isinstance(attrs, dict) else {}), 3
    if read(f"{lead}.zgroup") is not None:
        return read(f"{lead}.zattrs") or {}, 2
    return None, None


def _hcs_images(kind: str, read: Callable[[str], dict[str, Any] | None], url: str,
                relative: str) -> list[ImageRef]:
    """The field images of the plate or well at ``url``, from its metadata.

    A plate or well whose metadata is malformed is one image of its own: segmenting
    it reports the error (``source.open_source`` checks the same metadata)."""

    def ref(path: str) -> ImageRef:
        if not path:
            return ImageRef(url, relative)
        return ImageRef(f"{url}/{path}", f"{relative}/{path}" if relative else path)

    attrs, zarr_format = _group_attrs(read)
    try:
        if kind == "well":
            return [ref(field) for field in parse_well(attrs or {}, url, zarr_format)]
        plate = parse_plate(attrs or {}, url, zarr_format)
    except InputError as exc:
        logger.warning("%s; listing it as one image so its error is reported", exc)
        return [ref("")]
    refs: list[ImageRef] = []
    for well in plate.wells:
        well_attrs, well_format = _group_attrs(read, well)
        try:
            refs.extend(ref(field) for field in
                        well_fields(well, well_attrs, url, well_format or zarr_format))
        except InputError as exc:
            logger.warning("%s; listing the well as one image so its error is reported", exc)
            refs.append(ref(well))
    return refs


def _is_array(read: Callable[[str], dict[str, Any] | None], child: str) -> bool:
    meta = read(f"{child}/zarr.json")
    if meta is not None:
        return meta.get("node_type") == "array"
    return read(f"{child}/.zarray") is not None


__all__ = ["ImageRef", "find_images", "is_ignored"]
