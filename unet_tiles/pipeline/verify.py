"""Is an output intact? ``verify_output(url) -> VerifyReport``; the resume's check.

Every chunk of every array of the output is read and decoded, one at a time
(bounded memory: one chunk, or for a sharded array one shard's bytes). zarr v3
outputs carry the crc32c codec (``writer.compressors``), so a flipped bit fails
the decode ("checksum mismatch") instead of reading as wrong pixels. A sharded
array's shard index has its own crc32c, checked here; each inner chunk is then
decoded on its own.

Missing chunks. zarr leaves out chunks equal to the fill value unless told
otherwise; unet-tiles tells it otherwise (``writer._array``), so in an array
carrying the crc32c codec every chunk of a done block is stored, and a missing
one is damage. Arrays without it (NGFF 0.4 outputs, which are zarr v2 and have
no checksum, and outputs of earlier versions) may lack all-fill chunks: there a
missing chunk reads as 0 and is not damage, and verify can only decode what is
stored. Chunks of blocks not marked done may be missing or partly written
whatever the array; they are decoded when present.

Each chunk belongs to one block (blocks are whole chunks and whole shards);
level 0's blocks are marked in ``done/``, a pyramid level's in ``pyramid/<k>``
with the same block shape in pixels. ``damaged_done_blocks`` and
``forget_blocks`` are what ``Run.prepare`` uses on a resume: a done block
whose chunks fail the check loses its done-marker and its damaged objects, so
the run writes it again.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from itertools import product
from typing import TYPE_CHECKING, Any

from unet_tiles.errors import InputError
from unet_tiles.pipeline.ome import level_paths
from unet_tiles.pipeline.provenance import ATTRS_KEY, Provenance
from unet_tiles.pipeline.writer import DONE, INSTANCES, PROBABILITIES, PYRAMID

if TYPE_CHECKING:
    from collections.abc import Sequence

    import zarr

    from unet_tiles.pipeline.plan import BlockPlan

logger = logging.getLogger(__name__)

# A shard index entry (offset, nbytes) of an inner chunk that is not stored.
_EMPTY = 2**64 - 1


@dataclass(frozen=True)
class Damage:
    """One damaged store object (or inner chunk) and the block it belongs to.

    ``level`` 0: the block of ``done/``; k: of ``pyramid/<k>``. ``chunk`` is the
    store key ("labels/c/3/5"), with the inner chunk of a shard after it.
    """

    level: int
    block: tuple[int, ...]
    region: str
    done: bool
    chunk: str
    problem: str
    # Store keys to delete before the block is written again.
    keys: tuple[str, ...] = ()

    def line(self) -> str:
        where = ".".join(str(i) for i in self.block)
        level = f"level {self.level} " if self.level else ""
        state = "" if self.done else ", not done"
        return f"{level}block {where} ({self.region}{state}): chunk {self.chunk}: {self.problem}"


@dataclass(frozen=True)
class VerifyReport:
    """What ``verify_output`` found: chunks decoded, arrays, done blocks, damage."""

    url: str
    arrays: int
    chunks: int
    blocks_done: int
    damage: tuple[Damage, ...]

    @property
    def ok(self) -> bool:
        return not self.damage

    def summary(self) -> str:
        return (f"OK: {self.chunks} chunks of {self.arrays} arrays verified, "
                f"{self.blocks_done} blocks done")


@dataclass(frozen=True)
class DamagedBlock:
    """A done block that failed the check: its level, index and the keys to delete."""

    level: int
    index: tuple[int, ...]
    keys: tuple[str, ...]


def verify_output(url: str) -> VerifyReport:
    """Decode every chunk of the output at ``url``; check every done block is whole.

    Raises ``InputError`` where ``url`` is not an output of unet-tiles (and
    ``OutputConflictError`` for a malformed provenance record).
    """
    return _Scan(url, only_done=False).run()


def damaged_done_blocks(url: str, plan: BlockPlan) -> list[DamagedBlock]:
    """The blocks marked done (of level 0 and of each pyramid level) whose chunks
    are missing or fail to decode; only done blocks' chunks are read."""
    scan = _Scan(url, only_done=True, block_shape=plan.block_shape)
    report = scan.run()
    found: dict[tuple[int, tuple[int, ...]], set[str]] = {}
    for damage in report.damage:
        if damage.done:
            found.setdefault((damage.level, damage.block), set()).update(damage.keys)
    return [DamagedBlock(level, index, tuple(sorted(keys)))
            for (level, index), keys in sorted(found.items())]


def forget_blocks(url: str, blocks: Sequence[DamagedBlock]) -> None:
    """Delete each block's damaged objects, then its done-marker: a run redoes it."""
    import zarr

    group = zarr.open_group(store=url, mode="r+")
    for block in blocks:
        markers: Any = group[_markers_path(block.level)]
        marker = f"{markers.path}/{markers.metadata.encode_chunk_key(block.index)}"
        for key in (*block.keys, marker):
            _delete(group.store, key)


def _markers_path(level: int) -> str:
    return DONE if level == 0 else f"{PYRAMID}/{level}"


class _Scan:
    """One pass over an output's arrays, chunk by chunk."""

    def __init__(self, url: str, *, only_done: bool,
                 block_shape: Sequence[int] | None = None) -> None:
        import zarr

        self.url = url
        self.only_done = only_done
        try:
            self.group = zarr.open_group(store=url, mode="r")
        except (FileNotFoundError, zarr.errors.NodeNotFoundError, zarr.errors.ContainsArrayError,
                ValueError, KeyError) as exc:
            raise InputError(f"{url!r} is not an output of unet-tiles (no zarr group: "
                             f"{type(exc).__name__})") from None
        attrs = dict(self.group.attrs)
        if ATTRS_KEY not in attrs:
            raise InputError(f"{url!r} is not an output of unet-tiles (no "
                             f"{ATTRS_KEY!r} provenance record)")
        self.record = Provenance.from_dict(attrs[ATTRS_KEY], f"output {url!r}")
        params = self.record.parameters
        self.block_shape = tuple(int(b) for b in (block_shape or params["block_shape"]))
        self.axes = str(params.get("axes", "")).replace("c", "")
        self.damage: list[Damage] = []
        self.chunks = 0
        self.arrays = 0
        self.done: dict[int, dict[tuple[int, ...], bool]] = {}

    def run(self) -> VerifyReport:
        data = self._data_arrays()
        shapes = {level: _drop(tuple(array.shape), _class_axis(array, self.group))
                  for array, level in data}
        for level in sorted(shapes):
            self.done[level] = self._markers(level, shapes[level])
        for array, level in data:
            self._array(array, level)
        blocks_done = sum(1 for grid in self.done.values() for done in grid.values() if done)
        return VerifyReport(self.url, self.arrays, self.chunks, blocks_done, tuple(self.damage))

    # -- which arrays ------------------------------------------------------------

    def _data_arrays(self) -> list[tuple[zarr.Array[Any], int]]:
        """(array, level) for the labels, probabilities and instances of every level;
        instances only once complete (the passes after the blocks write them)."""
        fmt = str(self.record.parameters.get("format", "plain"))
        found: list[tuple[zarr.Array[Any], int]] = []
        groups = [PROBABILITIES, *([INSTANCES] if self.record.complete else [])]
        if fmt == "plain":
            for name in ("labels", *groups):
                if name in set(self.group.array_keys()):
                    found.append((self.group[name], 0))  # type: ignore[arg-type]
            return found
        holders: list[tuple[Any, str]] = [(self.group, "")]
        for name in groups:
            if name in set(self.group.group_keys()):
                holders.append((self.group[name], f"{name}/"))
        for holder, _prefix in holders:
            for level, path in enumerate(level_paths(dict(holder.attrs))):
                if path in set(holder.array_keys()):
                    found.append((holder[path], level))
        return found

    # -- done-markers ------------------------------------------------------------

    def _markers(self, level: int, shape: tuple[int, ...]) -> dict[tuple[int, ...], bool]:
        """Each block's done state, reading marker chunks one by one; an
        unreadable marker is damage and counts as done (its block is redone)."""
        path = _markers_path(level)
        try:
            markers: Any = self.group[path]
        except KeyError:
            return {}
        self.arrays += 1
        grid: dict[tuple[int, ...], bool] = {}
        for index in product(*(range(n) for n in markers.shape)):
            key = f"{markers.path}/{markers.metadata.encode_chunk_key(index)}"
            if not _exists(markers.store, key):
                grid[index] = False
                continue
            self.chunks += 1
            try:
                value = markers[tuple(slice(i, i + 1) for i in index)]
                grid[index] = bool(value.any())
            except Exception as exc:
                grid[index] = True
                self._record(level, index, shape, True, key, _problem(exc), (key,))
        return grid

    # -- one array ---------------------------------------------------------------

    def _array(self, array: zarr.Array[Any], level: int) -> None:
        self.arrays += 1
        shards = array.shards
        unit = tuple(shards or array.chunks)
        class_axis = _class_axis(array, self.group)
        checked = _checksummed(array)
        spatial_shape = _drop(tuple(array.shape), class_axis)
        done = self.done.get(level, {})
        for coords in product(*(range(math.ceil(n / u)) for n, u in
                                zip(array.shape, unit, strict=True))):
            start = _drop(tuple(c * u for c, u in zip(coords, unit, strict=True)), class_axis)
            block = tuple(s // b for s, b in zip(start, self.block_shape, strict=True))
            is_done = done.get(block, False)
            if self.only_done and not is_done:
                continue
            key = f"{array.path}/{array.metadata.encode_chunk_key(coords)}"

            def note(chunk: str, problem: str, keys: tuple[str, ...] = (key,),
                     block: tuple[int, ...] = block, is_done: bool = is_done) -> None:
                self._record(level, block, spatial_shape, is_done, chunk, problem, keys)

            if not _exists(array.store, key):
                if is_done and checked:
                    note(key, "missing", ())
                continue
            if shards is None:
                self.chunks += 1
                error = _decode(array, _box(coords, unit, array.shape))
                if error is not None:
                    note(key, error)
                continue
            self._shard(array, key, coords, unit, checked and is_done, note)

    def _shard(self, array: zarr.Array[Any], key: str, coords: tuple[int, ...],
               unit: tuple[int, ...], complete: bool, note: Any) -> None:
        """Check a shard's index, then decode each inner chunk it holds."""
        inner = tuple(array.chunks)
        per = tuple(u // c for u, c in zip(unit, inner, strict=True))
        entries = _shard_index(_get(array.store, key), math.prod(per))
        if isinstance(entries, str):
            note(key, entries)
            return
        for position, offsets in enumerate(product(*(range(p) for p in per))):
            chunk_coords = tuple(c * p + o for c, p, o in zip(coords, per, offsets, strict=True))
            if any(c * i >= n for c, i, n in zip(chunk_coords, inner, array.shape, strict=True)):
                continue  # past the array's edge: never stored
            name = f"{key} inner {'.'.join(str(o) for o in offsets)}"
            if entries[position] is None:
                if complete:
                    note(name, "missing")
                continue
            self.chunks += 1
            error = _decode(array, _box(chunk_coords, inner, array.shape))
            if error is not None:
                note(name, error)

    def _record(self, level: int, block: tuple[int, ...], shape: tuple[int, ...], done: bool,
                chunk: str, problem: str, keys: tuple[str, ...]) -> None:
        names = self.axes if len(self.axes) == len(block) else "".join(
            f"a{i}" for i in range(len(block)))
        region = ", ".join(
            f"{name}={i * b}:{min((i + 1) * b, n)}"
            for name, i, b, n in zip(names, block, self.block_shape, shape, strict=False))
        self.damage.append(Damage(level, block, region, done, chunk, problem, keys))


# -- helpers ----------------------------------------------------------------------


def _class_axis(array: zarr.Array[Any], group: zarr.Group) -> int | None:
    """Where a probabilities array keeps its class axis; None for labels."""
    if not (array.path == PROBABILITIES or array.path.startswith(f"{PROBABILITIES}/")):
        return None
    names = getattr(array.metadata, "dimension_names", None)
    if not names:
        # NGFF 0.4 (zarr v2): the axes are in the probabilities image's multiscales.
        attrs: dict[str, Any] = dict(group[PROBABILITIES].attrs)
        try:
            names = [a["name"] if isinstance(a, dict) else a
                     for a in attrs["multiscales"][0]["axes"]]
        except (KeyError, IndexError, TypeError):
            return None
    names = [str(n) for n in names]
    return names.index("c") if "c" in names else None


def _drop(values: tuple[int, ...], axis: int | None) -> tuple[int, ...]:
    return values if axis is None else values[:axis] + values[axis + 1:]


def _box(coords: tuple[int, ...], unit: tuple[int, ...], shape: tuple[int, ...]
         ) -> tuple[slice, ...]:
    return tuple(slice(c * u, min((c + 1) * u, n)) for c, u, n in
                 zip(coords, unit, shape, strict=True))


def _checksummed(array: zarr.Array[Any]) -> bool:
    """Whether the array's chunks (a shard's inner chunks) carry crc32c."""
    codecs: Any = array.metadata.to_dict().get("codecs") or []
    if codecs and isinstance(codecs[0], dict) and codecs[0].get("name") == "sharding_indexed":
        codecs = codecs[0].get("configuration", {}).get("codecs", [])
    return any(isinstance(c, dict) and c.get("name") == "crc32c" for c in codecs)


def _decode(array: zarr.Array[Any], box: tuple[slice, ...]) -> str | None:
    """Read one chunk's region; what went wrong, or None."""
    try:
        array[box]
    except Exception as exc:
        return _problem(exc)
    return None


def _problem(exc: BaseException) -> str:
    text = str(exc)
    if re.search(r"checksum", text, re.IGNORECASE):
        return "checksum mismatch"
    return f"undecodable ({type(exc).__name__}: {text[:120]})"


def _shard_index(data: bytes | None, count: int) -> list[tuple[int, int] | None] | str:
    """A shard's inner chunks (offset, length), None where not stored; or the problem.

    The index is zarr's default: at the end, ``count`` (offset, nbytes) pairs of
    little-endian uint64, then its crc32c.
    """
    import google_crc32c
    import numpy as np

    size = 16 * count
    if data is None or len(data) < size + 4:
        return "truncated shard (no complete index)"
    index, stored = data[-size - 4:-4], data[-4:]
    if np.uint32(google_crc32c.value(index)).tobytes() != stored:
        return "checksum mismatch (shard index)"
    pairs = np.frombuffer(index, dtype="<u8").reshape(count, 2)
    entries: list[tuple[int, int] | None] = []
    for offset, nbytes in pairs.tolist():
        if offset == _EMPTY and nbytes == _EMPTY:
            entries.append(None)
        elif offset + nbytes > len(data) - size - 4:
            return "truncated shard (an inner chunk past its end)"
        else:
            entries.append((offset, nbytes))
    return entries


def _exists(store: Any, key: str) -> bool:
    from zarr.core.sync import sync

    return bool(sync(store.exists(key)))


def _get(store: Any, key: str) -> bytes | None:
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    buffer = sync(store.get(key, prototype=default_buffer_prototype()))
    return None if buffer is None else buffer.to_bytes()


def _delete(store: Any, key: str) -> None:
    from zarr.core.sync import sync

    sync(store.delete(key))


__all__ = [
    "Damage",
    "DamagedBlock",
    "VerifyReport",
    "damaged_done_blocks",
    "forget_blocks",
    "verify_output",
]
