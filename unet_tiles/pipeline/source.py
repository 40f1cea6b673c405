"""Open input images: zarr v2/v3 arrays, groups and OME-Zarr, local or fsspec.

Everything here checks the input's *metadata* before any pixel is read or any
buffer allocated, so absurd or hostile metadata is refused cheaply.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.errors import InputError
from unet_tiles.pipeline import ome

if TYPE_CHECKING:
    from collections.abc import Callable

    import zarr

    from unet_tiles.pipeline.ome import Multiscale

logger = logging.getLogger(__name__)

AXES_ORDER = "tczyx"
# One chunk is decompressed whole into memory: refuse chunks larger than this.
MAX_CHUNK_BYTES = 1 << 30
# A petabyte of pixels is beyond any archive we expect; larger metadata is hostile or corrupt.
MAX_IMAGE_BYTES = 1 << 50


@dataclass(frozen=True)
class ImageSource:
    """An input array and what it means: axes, shape, dtype, chunks, pixel sizes.

    For an OME-Zarr image, ``level`` is the multiscales dataset read (``array_path``
    is its path), ``pixel_size_um`` that level's spatial (z, y, x) pixel sizes in
    micrometres, and ``multiscale`` the whole checked description: every level's
    path, shape, scale and translation, the axes' types and units.
    """

    url: str
    array_path: str
    axes: str
    shape: tuple[int, ...]
    dtype: str
    chunks: tuple[int, ...]
    zarr_format: int
    ome_version: str | None = None
    pixel_size_um: tuple[float, ...] | None = None
    level: int = 0
    multiscale: Multiscale | None = None

    @property
    def location(self) -> str:
        return f"{self.url}/{self.array_path}" if self.array_path else self.url

    def open(self) -> zarr.Array[Any]:
        """Open the array read-only (cheap: reads metadata only)."""
        import zarr

        root = zarr.open(store=_store_path(self.url), mode="r", path=self.array_path or None)
        return root  # type: ignore[return-value]

    def axis_size(self, axis: str) -> int:
        return self.shape[self.axes.index(axis)] if axis in self.axes else 1

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly, for the provenance record. ``level`` and ``multiscale`` are
        there for OME-Zarr inputs only: a plain array's record (and so its
        fingerprint) is what it was before they existed."""
        record: dict[str, Any] = {
            "url": self.url,
            "array_path": self.array_path,
            "axes": self.axes,
            "shape": list(self.shape),
            "dtype": self.dtype,
            "chunks": list(self.chunks),
            "zarr_format": self.zarr_format,
            "ome_version": self.ome_version,
            "pixel_size_um": list(self.pixel_size_um) if self.pixel_size_um else None,
        }
        if self.multiscale is not None:
            record["level"] = self.level
            record["multiscale"] = self.multiscale.to_dict()
        return record


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def _store_path(url: str) -> str:
    return url[len("file://") :] if url.startswith("file://") else url


# Object stores whose first path part is a bucket (s3fs, gcsfs, adlfs).
_BUCKETED = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss")


def endpoint_of(fs: Any) -> str:
    """Where a filesystem's requests go, for messages (never its credentials)."""
    kwargs = getattr(fs, "client_kwargs", None) or {}
    endpoint = kwargs.get("endpoint_url") or getattr(fs, "endpoint_url", None) \
        or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return "the provider's default endpoint"
    # An endpoint written as http://user:pass@host keeps its userinfo out of messages.
    scheme, _, rest = str(endpoint).partition("://")
    return f"{scheme}://{rest.rsplit('@', 1)[-1]}" if rest else str(endpoint)


def check_remote(url: str, role: str, error: type[Exception] = InputError) -> None:
    """Reach the bucket of a remote ``url`` once, so an unreachable endpoint, refused
    credentials or a missing bucket is one clear line (``error``) before zarr or a
    lease touches it. Credentials come from the environment (AWS_ACCESS_KEY_ID,
    AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_PROFILE, ...) as in every S3 tool,
    and never appear in the message. A no-op for local paths."""
    if not is_remote(url):
        return
    import fsspec

    protocol = url.split("://", 1)[0].lower()
    try:
        fs, path = fsspec.core.url_to_fs(url)
    except (ImportError, ValueError) as exc:
        hint = " (pip install 'unet-tiles[s3]')" if protocol in ("s3", "s3a") else ""
        raise error(f"{role} {url!r}: cannot open {protocol}:// URLs ({exc}){hint}") from None
    bucket = path.split("/", 1)[0]
    if protocol not in _BUCKETED or not bucket:
        return
    endpoint = endpoint_of(fs)
    try:
        if hasattr(fs, "call_s3"):
            fs.call_s3("head_bucket", Bucket=bucket)
        else:
            fs.ls(bucket, detail=False)
    except PermissionError as exc:
        raise error(
            f"{role} {url!r}: access to bucket {bucket!r} at {endpoint} was refused ({exc}); "
            "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE)"
        ) from None
    except FileNotFoundError:
        raise error(
            f"{role} {url!r}: bucket {bucket!r} does not exist at {endpoint}; check the URL"
        ) from None
    except Exception as exc:
        name = type(exc).__name__
        if "Credential" in name:
            raise error(
                f"{role} {url!r}: no credentials for {endpoint} ({exc}); set "
                "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE"
            ) from None
        detail = " ".join(str(exc).split()) or name
        raise error(
            f"{role} {url!r}: cannot reach the object store at {endpoint} ({detail}); "
            "check AWS_ENDPOINT_URL and the network"
        ) from None


def _looks_like_zarr(path: Path) -> bool:
    return any((path / name).exists() for name in ("zarr.json", ".zarray", ".zgroup"))


def open_source(url: str, axes: str | None = None, in_channels: int | None = None,
                model_dims: int | None = None, level: int = 0) -> ImageSource:
    """Resolve ``url`` to one array and its axes, checking metadata limits.

    Args:
        url: a local path or fsspec URL of a zarr array, group or OME-Zarr image.
            An HCS plate (or well) is refused: its fields are the images
            (``ome.plate_fields``; ``unet-tiles archive`` finds them).
        axes: explicit axes (letters of ``tczyx``), overriding stored names.
        in_channels: the model's input channels, used to guess unnamed axes.
        model_dims: 2 or 3, used to guess unnamed axes.
        level: the OME-Zarr multiscales dataset to read, 0 (full resolution) by
            default; a plain array or group has level 0 only.
    """
    import zarr

    url = str(url)
    if not is_remote(url):
        path = Path(_store_path(url))
        if not path.exists():
            raise InputError(f"input {url!r} does not exist; check the path")
        if not path.is_dir():
            raise InputError(f"input {url!r} is a file, not a zarr store; convert it to zarr first")
        if not os.access(path, os.R_OK | os.X_OK):
            raise InputError(f"input {url!r} is not readable; check its permissions")
        if not _looks_like_zarr(path):
            raise InputError(
                f"input {url!r} is not a zarr store (no zarr.json, .zarray or .zgroup); "
                "give the path of a zarr array or OME-Zarr image"
            )
    else:
        check_remote(url, "input")
    try:
        node = zarr.open(store=_store_path(url), mode="r")
    except (FileNotFoundError, zarr.errors.NodeNotFoundError) as exc:
        raise InputError(f"input {url!r} is not a zarr array or group ({exc})") from None
    except (ValueError, KeyError, TypeError, json.JSONDecodeError) as exc:
        raise InputError(f"input {url!r} has unreadable zarr metadata ({exc})") from None
    given = _check_given_axes(axes)
    array_path = ""
    multiscale: Multiscale | None = None
    if isinstance(node, zarr.Group):
        attrs = dict(node.attrs)
        kind = ome.ome_kind(attrs)
        zarr_format = int(node.metadata.zarr_format)
        if kind == "plate":
            _refuse_plate(url, attrs, zarr_format)
        if kind == "well":
            _refuse_well(url, attrs, zarr_format)
        if kind == "multiscales":
            multiscale = ome.parse_multiscales(attrs, url, _shape_lookup(node, url),
                                               zarr_format, given)
            array_path = _pick_level(url, multiscale, level)
            node = node[array_path]
        else:
            names = sorted(name for name, _ in node.arrays())
            if not names:
                groups = sorted(name for name, _ in node.groups())
                held = (f" (it holds the groups {', '.join(groups[:5])}"
                        f"{' ...' if len(groups) > 5 else ''}: give one of them, or segment "
                        "them all with unet-tiles archive)") if groups else ""
                raise InputError(
                    f"input {url!r} is a zarr group with no arrays{held}; give an array"
                )
            if len(names) > 1:
                listed = ", ".join(names[:10]) + (" ..." if len(names) > 10 else "")
                raise InputError(
                    f"input {url!r} is a zarr group holding several arrays ({listed}); "
                    f"pick one as {url.rstrip('/')}/{names[0]}"
                )
            array_path = names[0]
            node = node[array_path]
    if multiscale is None and level != 0:
        raise InputError(
            f"input {url!r} is not a multiscale OME-Zarr image, so it has level 0 only; "
            f"`level` {level} does not exist"
        )
    array: Any = node
    shape = tuple(int(s) for s in array.shape)
    chunks = tuple(int(c) for c in array.chunks)
    dtype = np.dtype(array.dtype)
    _check_metadata(url, shape, chunks, dtype)
    stored = multiscale.axes if multiscale is not None else _dimension_names(array)
    resolved = _resolve_axes(url, shape, given, stored, in_channels, model_dims)
    pixel_size = None
    if multiscale is not None:
        pixel_size = multiscale.pixel_size_um(level)
        if pixel_size is None:
            logger.warning("%s: a spatial axis's unit %s is not a known length; its pixel "
                           "size is not recorded", url, multiscale.axis_units)
    return ImageSource(
        url=url,
        array_path=array_path,
        axes=resolved,
        shape=shape,
        dtype=dtype.str,
        chunks=chunks,
        zarr_format=int(array.metadata.zarr_format),
        ome_version=multiscale.version if multiscale is not None else None,
        pixel_size_um=pixel_size,
        level=level,
        multiscale=multiscale,
    )


def _shape_lookup(group: Any, url: str) -> Callable[[str], tuple[int, ...] | None]:
    """``path -> shape`` of the arrays of an OME-Zarr group (metadata only)."""
    import zarr

    def shape_of(path: str) -> tuple[int, ...] | None:
        try:
            child = group[path]
        except KeyError:
            return None
        except (ValueError, TypeError, json.JSONDecodeError) as exc:
            raise InputError(
                f"input {url!r} has unreadable zarr metadata at dataset {path!r} ({exc})"
            ) from None
        return tuple(int(n) for n in child.shape) if isinstance(child, zarr.Array) else None

    return shape_of


def _pick_level(url: str, multiscale: Multiscale, level: int) -> str:
    count = len(multiscale.levels)
    if not 0 <= level < count:
        listed = ", ".join(f"{i} ({lv.path} {'x'.join(map(str, lv.shape))})"
                           for i, lv in enumerate(multiscale.levels))
        raise InputError(
            f"input {url!r} has no `level` {level}; its {count} level(s) are {listed}"
        )
    return multiscale.levels[level].path


def _refuse_plate(url: str, attrs: dict[str, Any], zarr_format: int) -> None:
    ome.parse_plate(attrs, url, zarr_format)  # malformed metadata says what is wrong
    fields = ome.plate_fields(url)
    raise InputError(
        f"input {url!r} is an HCS plate of {len(fields)} field image(s) (the first is "
        f"{fields[0]}); segment one field at a time, or every field with unet-tiles archive "
        "(which finds a plate's fields)"
    )


def _refuse_well(url: str, attrs: dict[str, Any], zarr_format: int) -> None:
    fields = ome.parse_well(attrs, url, zarr_format)
    raise InputError(
        f"input {url!r} is an HCS well of {len(fields)} field image(s); give one of them "
        f"(e.g. {url.rstrip('/')}/{fields[0]}), or segment its plate with unet-tiles archive"
    )


def _check_metadata(url: str, shape: tuple[int, ...], chunks: tuple[int, ...],
                    dtype: np.dtype[Any]) -> None:
    if len(shape) < 2 or len(shape) > 5:
        raise InputError(
            f"input {url!r} has {len(shape)} axes {shape}; unet-tiles needs 2 to 5 (of t,c,z,y,x)"
        )
    if dtype.kind not in "uif":
        raise InputError(
            f"input {url!r} has dtype {dtype}; convert it to an integer or float type "
            "(bool, complex, string and object pixels cannot be segmented)"
        )
    if any(s == 0 for s in shape):
        raise InputError(f"input {url!r} is empty (shape {shape}); there is nothing to segment")
    if any(c <= 0 for c in chunks):
        raise InputError(f"input {url!r} has invalid chunk shape {chunks}")
    chunk_bytes = int(np.prod(chunks, dtype=object)) * dtype.itemsize
    if chunk_bytes > MAX_CHUNK_BYTES:
        raise InputError(
            f"input {url!r} declares chunks of {chunks} = {chunk_bytes / 2**30:.1f} GiB each "
            f"(limit {MAX_CHUNK_BYTES >> 30} GiB); rechunk the input"
        )
    image_bytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    if image_bytes > MAX_IMAGE_BYTES:
        raise InputError(
            f"input {url!r} declares shape {shape} = {image_bytes / 2**50:.0f} PiB; "
            "the metadata is corrupt or hostile"
        )


def _dimension_names(array: Any) -> str | None:
    names = getattr(array.metadata, "dimension_names", None)
    if not names or any(n is None for n in names):
        return None
    joined = "".join(str(n).lower() for n in names)
    if all(len(str(n)) == 1 for n in names) and len(set(joined)) == len(joined) and all(
        c in AXES_ORDER for c in joined
    ):
        return joined
    return None


def _check_given_axes(given: str | None) -> str | None:
    if given is None:
        return None
    axes = given.lower()
    if len(set(axes)) != len(axes) or any(c not in AXES_ORDER for c in axes):
        raise InputError(f"`axes` {given!r} must use each of the letters t,c,z,y,x at most once")
    return axes


def _resolve_axes(url: str, shape: tuple[int, ...], given: str | None, stored: str | None,
                  in_channels: int | None, model_dims: int | None) -> str:
    ndim = len(shape)
    if given is not None:
        axes = given
        if len(axes) != ndim:
            raise InputError(
                f"`axes` {given!r} names {len(axes)} axes but input {url!r} has {ndim} {shape}"
            )
    elif stored is not None:
        axes = stored
    elif ndim == 2:
        axes = "yx"
    elif ndim == 3:
        channels_first = in_channels is not None and in_channels > 1 and shape[0] == in_channels
        axes = "cyx" if channels_first or (model_dims == 2 and shape[0] <= 4) else "zyx"
    elif ndim == 4:
        axes = "czyx"
    else:
        axes = "tczyx"
    if not axes.endswith("yx"):
        # NGFF's order too: channels and the rest come before the image plane.
        fix = "rewrite it with y and x last" if given is not None else \
            "pass `axes` if they are stored wrongly, or rewrite it with y and x last"
        raise InputError(
            f"input {url!r} has axes {axes!r}; the last two must be y and x ({fix})"
        )
    return axes


def fingerprint(source: ImageSource) -> str:
    """Identity of the input's content: its metadata plus every chunk file's size and mtime.

    Cheap for gigapixel images (no pixel is read) yet changes whenever an image
    is re-acquired or edited in place at the same path.
    """
    import fsspec

    digest = hashlib.sha256(json.dumps(source.to_dict(), sort_keys=True).encode())
    location = _store_path(source.location)
    fs, root = fsspec.core.url_to_fs(location)
    # Object stores' listings are cached per filesystem instance: look afresh.
    fs.invalidate_cache()
    entries = fs.find(root, detail=True)
    for name in sorted(entries):
        info = entries[name]
        rel = name[len(root) :] if name.startswith(root) else name
        mtime = info.get("mtime") or info.get("LastModified") or info.get("last_modified") or ""
        digest.update(f"{rel}\0{info.get('size')}\0{mtime}\n".encode())
    return digest.hexdigest()
