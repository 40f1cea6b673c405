"""Instance ids from the U-Net's classes, exact across blocks (pure numpy/scipy, no I/O).

One id per connected component of the instance classes over the whole image,
in four passes that ``engine/instances.py`` drives::

    1 label    per block, on its worker (with the prediction): components of the
               instance classes, numbered from the block's own offset (its linear
               index x its pixel capacity), so no two blocks can give one id;
               per-object sums (``measure``)
    2 faces    per block: its write box grown by one pixel on every side; the pairs
               of ids that touch across its faces, edges and corners, under the
               chosen connectivity (``touching_pairs``); which of its objects cross
    3 merge    on the client: connected components of all pairs (``merge_pairs``)
               and the combined sums of the objects that cross (``combine``): memory
               grows with the objects that cross a border, not with the image or
               the number of objects
    4 relabel  per block, from its own part of the merge only (``BlockRelabel``):
               provisional -> final ids, and the block's rows of the object table

A block's leading axes (t, z for a 2D model) have extent 1: every plane is
labelled on its own and only the spatial axes connect pixels.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles.errors import UsageError

if TYPE_CHECKING:
    from collections.abc import Sequence

CONNECTIVITIES = ("1", "full")
ID_DTYPE = np.dtype("uint64")


@dataclass(frozen=True)
class InstanceSpec:
    """How instances are made: which classes, which neighbours, which sizes are kept."""

    classes: tuple[int, ...]
    connectivity: str = "1"
    min_size: int = 0
    consecutive: bool = True
    # --split (pipeline/split.py): "none", or seeds flooded into touching cells;
    # "border": seeds are the classes without these (the border class).
    split: str = "none"
    border_classes: tuple[int, ...] = ()
    seed_probability: float = 0.9
    split_distance: int = 10

    def __post_init__(self) -> None:
        from unet_tiles.pipeline.split import SPLITS

        if not self.classes:
            raise UsageError("`instance_class` names no class to make instances of")
        if self.split not in SPLITS:
            raise UsageError(f"`split` {self.split!r} must be one of {', '.join(SPLITS)}")
        if self.split == "border" and not set(self.classes) - set(self.border_classes):
            raise UsageError("`split` border needs an instance class besides the border class")
        if not 0 < self.seed_probability <= 1:
            raise UsageError(f"`seed_probability` must be in (0, 1], got {self.seed_probability}")
        if self.split_distance < 1:
            raise UsageError(f"`split_distance` must be at least 1 px, got "
                             f"{self.split_distance}")
        if self.connectivity not in CONNECTIVITIES:
            raise UsageError(f"`connectivity` {self.connectivity!r} must be one of "
                             f"{CONNECTIVITIES}")
        if self.min_size < 0:
            raise UsageError(f"`min_size` must be 0 or more pixels, got {self.min_size}")

    @property
    def dtype(self) -> str:
        """Final ids: 1..N fit uint32; provisional ones (not consecutive) need uint64."""
        return "uint32" if self.consecutive else "uint64"

    @property
    def splits(self) -> bool:
        return self.split != "none"

    @property
    def flood_classes(self) -> tuple[int, ...]:
        """The classes a split floods (the seeds' and the border's)."""
        return tuple(sorted(set(self.classes) | set(self.border_classes)))

    @property
    def seed_classes(self) -> tuple[int, ...]:
        return tuple(c for c in self.classes if c not in self.border_classes)

    def to_dict(self) -> dict[str, Any]:
        split: dict[str, Any] = {} if not self.splits else {
            "split": self.split, "border_classes": list(self.border_classes),
            "seed_probability": self.seed_probability, "split_distance": self.split_distance}
        return {"classes": list(self.classes), "connectivity": self.connectivity,
                "min_size": self.min_size, "consecutive": self.consecutive, **split}


def parse_classes(given: str | None, class_names: Sequence[str], classes: int) -> tuple[int, ...]:
    """``--instance-class``: names or indices, comma-separated; default every class but
    the background (class 0)."""
    names = list(class_names) or [f"class {k}" for k in range(classes)]
    if classes < 2:
        raise UsageError(f"the model has {classes} class(es): instances need a foreground "
                         "class besides the background (class 0); use a model with one")
    if given is None or not given.strip():
        return tuple(range(1, classes))
    picked: list[int] = []
    for word in (w.strip() for w in given.split(",")):
        if word.isdigit():
            index = int(word)
            if index >= classes:
                raise UsageError(f"`instance_class` {word} is not a class of the model "
                                 f"(0..{classes - 1}: {', '.join(names)})")
        elif word in names:
            index = names.index(word)
        else:
            raise UsageError(f"`instance_class` {word!r} is not a class of the model "
                             f"({', '.join(names)})")
        if index == 0:
            raise UsageError(f"`instance_class` {word!r} is the background (class 0); name "
                             f"foreground classes ({', '.join(names[1:])})")
        if index not in picked:
            picked.append(index)
    return tuple(sorted(picked))


def structure(dims: int, connectivity: str) -> np.ndarray:
    """scipy's structuring element: faces only (``1``) or every neighbour (``full``)."""
    from scipy import ndimage

    return np.asarray(ndimage.generate_binary_structure(dims, 1 if connectivity == "1"
                                                        else dims))


def capacity(block_shape: Sequence[int]) -> int:
    """Ids one block may use: at most one object per pixel."""
    return int(np.prod(block_shape, dtype=np.int64))


def block_offset(index: Sequence[int], grid: Sequence[int], block_shape: Sequence[int]) -> int:
    """The block's first id minus one: its linear index x its capacity."""
    return int(np.ravel_multi_index(tuple(index), tuple(grid))) * capacity(block_shape)


def stats_dtype(ndim: int) -> np.dtype[Any]:
    """One row per object (part): sums that combine exactly across blocks."""
    return np.dtype([("id", ID_DTYPE), ("count", "i8"), ("sum", "f8", (ndim,)),
                     ("start", "i8", (ndim,)), ("stop", "i8", (ndim,)),
                     ("probability", "f8")])


def label_block(mask: np.ndarray, probability: np.ndarray, offset: int,
                origin: Sequence[int], dims: int, connectivity: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Provisional ids of one block (uint64, 0 background) and its objects' sums.

    ``mask``: the instance classes over the block's write box (leading axes of
    extent 1); ``probability``: their summed probability; ``origin``: the box's
    offset in the image.
    """
    from scipy import ndimage

    lead = mask.ndim - dims
    local, count = ndimage.label(mask.reshape(mask.shape[lead:]), structure(dims, connectivity))
    local = local.reshape(mask.shape)
    stats = measure(local, int(count), probability, origin)
    stats["id"] += np.uint64(offset)
    ids = local.astype(ID_DTYPE)
    ids[local > 0] += np.uint64(offset)
    return ids, stats


def measure(local: np.ndarray, count: int, probability: np.ndarray,
            origin: Sequence[int]) -> np.ndarray:
    """Pixel count, coordinate sums, bounding box and probability sum of ids 1..count."""
    from scipy import ndimage

    rows = np.zeros(count, dtype=stats_dtype(local.ndim))
    if count == 0:
        return rows
    flat = local.ravel()
    rows["id"] = np.arange(1, count + 1, dtype=ID_DTYPE)
    rows["count"] = np.bincount(flat, minlength=count + 1)[1:]
    for axis, start in enumerate(origin):
        shape = [1] * local.ndim
        shape[axis] = local.shape[axis]
        coordinate = np.broadcast_to(np.arange(local.shape[axis], dtype=np.float64)
                                     .reshape(shape), local.shape).ravel()
        # Integer sums below 2**53 are exact in float64: a block's coordinates are.
        rows["sum"][:, axis] = np.bincount(flat, weights=coordinate, minlength=count + 1)[1:] \
            + rows["count"] * start
    boxes = ndimage.find_objects(local, max_label=count)
    for k, box in enumerate(boxes):
        rows["start"][k] = [s.start + o for s, o in zip(box, origin, strict=True)]
        rows["stop"][k] = [s.stop + o for s, o in zip(box, origin, strict=True)]
    rows["probability"] = np.bincount(flat, weights=probability.ravel().astype(np.float64),
                                      minlength=count + 1)[1:]
    return rows


def neighbour_offsets(dims: int, connectivity: str) -> list[tuple[int, ...]]:
    """Half of the neighbourhood (the other half is the same pairs reversed)."""
    most = 1 if connectivity == "1" else dims
    offsets = []
    for step in itertools.product((-1, 0, 1), repeat=dims):
        nonzero = [s for s in step if s]
        if nonzero and len(nonzero) <= most and nonzero[0] > 0:
            offsets.append(step)
    return offsets


def touching_pairs(region: np.ndarray, dims: int, connectivity: str,
                   own: tuple[int, int]) -> np.ndarray:
    """``(k, 2)`` sorted unique pairs ``(a, b)``, ``a < b``, of different non-zero ids
    that are neighbours in ``region`` and of which one lies in ``own = (first, last]``.

    Inside one block the ids are components already, so every pair joins two
    blocks' parts of one object.
    """
    lead = region.ndim - dims
    plane = region.reshape(region.shape[lead:])
    low, high = np.uint64(own[0]), np.uint64(own[1])
    found = []
    for step in neighbour_offsets(dims, connectivity):
        sizes: tuple[int, ...] = plane.shape
        here = tuple(slice(max(0, -s), n - max(0, s)) for s, n in zip(step, sizes, strict=True))
        there = tuple(slice(max(0, s), n - max(0, -s)) for s, n in zip(step, sizes, strict=True))
        a, b = plane[here], plane[there]
        touch = (a != b) & (a != 0) & (b != 0)
        if not touch.any():
            continue
        a, b = a[touch], b[touch]
        mine = ((a > low) & (a <= high)) | ((b > low) & (b <= high))
        found.append(np.stack([np.minimum(a, b)[mine], np.maximum(a, b)[mine]], axis=1))
    if not found:
        return np.zeros((0, 2), dtype=ID_DTYPE)
    return np.unique(np.concatenate(found), axis=0)


def merge_pairs(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union-find over the pairs: ``(ids, roots)``, ``ids`` sorted, ``roots[i]`` the
    smallest id of ``ids[i]``'s object. Memory is the pairs', nothing more."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    ids, inverse = np.unique(pairs.ravel(), return_inverse=True)
    if ids.size == 0:
        return ids.astype(ID_DTYPE), ids.astype(ID_DTYPE)
    inverse = inverse.reshape(-1, 2)
    graph = coo_matrix((np.ones(len(inverse), dtype=np.int8), (inverse[:, 0], inverse[:, 1])),
                       shape=(ids.size, ids.size))
    _, component = connected_components(graph, directed=False)
    # ids are sorted: a component's first member is its smallest id.
    _, first = np.unique(component, return_index=True)
    return ids, ids[first][component]


def combine(parts: np.ndarray, roots: np.ndarray) -> np.ndarray:
    """One row per root from the rows of its parts (``parts`` sorted by id, ``roots``
    aligned with it); sums in id order, so the result never depends on timing."""
    if parts.size == 0:
        return parts.copy()
    order = np.argsort(roots, kind="stable")
    parts, roots = parts[order], roots[order]
    starts = np.flatnonzero(np.r_[True, roots[1:] != roots[:-1]])
    rows = np.zeros(starts.size, dtype=parts.dtype)
    rows["id"] = roots[starts]
    rows["count"] = np.add.reduceat(parts["count"], starts)
    rows["sum"] = np.add.reduceat(parts["sum"], starts, axis=0)
    rows["start"] = np.minimum.reduceat(parts["start"], starts, axis=0)
    rows["stop"] = np.maximum.reduceat(parts["stop"], starts, axis=0)
    rows["probability"] = np.add.reduceat(parts["probability"], starts)
    return rows


@dataclass(frozen=True)
class BlockFaces:
    """Pass 2's result for one block: what the merge needs of it, nothing more."""

    pairs: np.ndarray       # (k, 2) touching ids, one of each pair this block's
    crossing: np.ndarray    # stats rows of this block's objects that touch another block
    below: np.ndarray       # per crossing row: this block's kept non-crossing ids below it
    kept: int               # this block's non-crossing objects of at least min_size

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"pairs": self.pairs, "crossing": self.crossing, "below": self.below,
                "kept": np.array([self.kept], dtype=np.int64)}

    @classmethod
    def from_arrays(cls, arrays: Any) -> BlockFaces:
        return cls(arrays["pairs"], arrays["crossing"], arrays["below"], int(arrays["kept"][0]))


def block_faces(pairs: np.ndarray, stats: np.ndarray, min_size: int) -> BlockFaces:
    """Split a block's objects into those that cross (in ``pairs``) and the others."""
    crossing = np.isin(stats["id"], pairs.ravel())
    kept_ids = stats["id"][~crossing & (stats["count"] >= min_size)]
    below = np.searchsorted(kept_ids, stats["id"][crossing]).astype(np.int64)
    return BlockFaces(pairs, stats[crossing], below, int(kept_ids.size))


@dataclass(frozen=True)
class BlockRelabel:
    """One block's part of the merge: its crossing ids' final ids and the merged
    objects it owns (those whose smallest provisional id is its own)."""

    base: int                   # consecutive: its first final id; else 0
    crossing: np.ndarray        # this block's crossing ids, sorted
    crossing_final: np.ndarray  # their final ids (0: dropped by min_size)
    owned_roots: np.ndarray     # the kept merged objects it owns: their provisional ids
    owned: np.ndarray           # and their combined rows, with final ids


@dataclass(frozen=True)
class Merge:
    """Pass 3: every block's ``BlockRelabel`` and the object count."""

    relabels: dict[int, BlockRelabel]
    objects: int


# The most objects consecutive ids can number (uint32).
MAX_CONSECUTIVE = 2**32 - 1


def merge(faces: Sequence[BlockFaces], min_size: int, consecutive: bool,
          block_of: Any) -> Merge:
    """Combine the blocks' faces (in linear block order): final ids for every crossing
    id, the first final id of every block. ``block_of(id)``: an id's linear block."""
    ndim = faces[0].crossing.dtype["sum"].shape[0] if faces else 1
    pairs = np.concatenate([f.pairs for f in faces]) if faces else np.zeros((0, 2), ID_DTYPE)
    ids, roots = merge_pairs(pairs)
    parts = np.concatenate([f.crossing for f in faces]) if faces else \
        np.zeros(0, stats_dtype(ndim))
    below = np.concatenate([f.below for f in faces]) if faces else np.zeros(0, np.int64)
    order = np.argsort(parts["id"], kind="stable")
    parts, below = parts[order], below[order]
    if not np.array_equal(parts["id"], ids):
        raise RuntimeError("the blocks' crossing objects do not match their touching pairs")
    totals = combine(parts, roots)
    kept = totals[totals["count"] >= min_size]
    root_block = block_of(kept["id"])
    kept_blocks = np.bincount(root_block, minlength=len(faces)) if kept.size else \
        np.zeros(len(faces), dtype=np.int64)
    owned_count = np.array([f.kept for f in faces], dtype=np.int64) + kept_blocks
    objects = int(owned_count.sum())
    if consecutive and objects > MAX_CONSECUTIVE:
        # The final ids are uint32 (InstanceSpec.final_dtype): id 2^32 would wrap to 0.
        raise UsageError(f"{objects} objects do not fit the uint32 ids 1..{MAX_CONSECUTIVE} "
                         "of consecutive instances; rerun with --no-consecutive (uint64 ids) "
                         "and --overwrite")
    bases = np.concatenate([[1], 1 + np.cumsum(owned_count)[:-1]]) if consecutive else \
        np.zeros(len(faces), dtype=np.int64)
    if consecutive and kept.size:
        # A merged object's rank among its block's kept objects: the block's kept
        # non-crossing ids below it, plus its block's kept merged objects below it.
        first_of_block = np.searchsorted(root_block, root_block)
        rank = below[np.searchsorted(ids, kept["id"])] + \
            (np.arange(kept.size) - first_of_block)
        kept_final = bases[root_block] + rank
    else:
        kept_final = kept["id"].astype(np.int64)
    final_of_root = np.zeros(totals.size, dtype=np.uint64)
    final_of_root[np.isin(totals["id"], kept["id"])] = kept_final.astype(np.uint64)
    final = final_of_root[np.searchsorted(totals["id"], roots)]
    id_block = block_of(ids)
    relabels: dict[int, BlockRelabel] = {}
    owned = kept.copy()
    owned["id"] = kept_final.astype(ID_DTYPE)
    for b in range(len(faces)):
        lo, hi = np.searchsorted(id_block, [b, b + 1])
        olo, ohi = np.searchsorted(root_block, [b, b + 1])
        relabels[b] = BlockRelabel(int(bases[b]), ids[lo:hi], final[lo:hi],
                                   kept["id"][olo:ohi], owned[olo:ohi])
    return Merge(relabels, int(owned_count.sum()))


def relabel_block(provisional: np.ndarray, stats: np.ndarray, part: BlockRelabel,
                  min_size: int, consecutive: bool, dtype: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """A block's final ids and its rows of the object table (sorted by final id);
    objects below ``min_size`` become background."""
    crossing = np.isin(stats["id"], part.crossing)
    alone = stats[~crossing]
    kept = alone[alone["count"] >= min_size]
    if consecutive:
        # Its rank among the block's kept objects, merged ones included (sorted ids).
        kept_final = part.base + np.arange(kept.size, dtype=np.int64) + \
            np.searchsorted(part.owned_roots, kept["id"]).astype(np.int64)
    else:
        kept_final = kept["id"].astype(np.int64)
    rows = np.concatenate([kept, part.owned])
    rows["id"][:kept.size] = kept_final.astype(ID_DTYPE)
    rows = rows[np.argsort(rows["id"], kind="stable")]
    out = np.zeros(provisional.shape, dtype=dtype)
    if stats.size:
        # A block's provisional ids run first, first + 1, ... (label_block): a table
        # as long as the block's objects maps them, 0 (background) to 0.
        first = stats["id"][0]
        table = np.zeros(stats.size + 1, dtype=dtype)
        table[(kept["id"] - first + 1).astype(np.int64)] = kept_final
        table[(part.crossing - first + 1).astype(np.int64)] = part.crossing_final
        local = np.where(provisional > 0, provisional - (first - np.uint64(1)), np.uint64(0))
        out = table[local.astype(np.int64)]
    return out, rows

