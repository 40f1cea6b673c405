"""Decoded input chunks kept in a worker for the next blocks, within a byte budget.

A block's read window is its write region grown by the model's halo, so it reaches
into the chunks of the blocks around it, and a stored chunk decodes only whole. Read
block by block, an interior 2048 px block of a 1024 px-chunked image decodes 16
chunks (16 Mpx) for its 4.4 Mpx window, and each chunk is decoded (on object storage,
fetched) by up to four blocks. Kept here, each is decoded once while it stays within
the budget (``window.read_region``)::

    +------+------+------+------+     block (0, 0) writes chunks A B E F, and its
    |  A   |  B   |  C   |  D   |     window reaches C G and I J K; block (0, 1)
    +------+------+------+------+     (C D G H) needs B C F G J K of them again,
    |  E   |  F   |  G   |  H   |     block (1, 0) (I J) E F G I J K: decoded once,
    +------+------+------+------+     taken from here after.
    |  I   |  J   |  K   |  L   |
    +------+------+------+------+

Least recently used chunks go first. A worker keeps one cache for all the runs it
serves (an archive runs several images at once), each run's chunks under its own
scope (``scoped``), so no run reads another's pixels and the budget holds for all.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Hashable

    import numpy as np


class _Entries:
    """The arrays, their bytes and the lookups' counts, shared by a cache's scopes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.items: OrderedDict[Hashable, np.ndarray] = OrderedDict()
        self.nbytes = 0
        self.hits = 0
        self.misses = 0
        self.lock = threading.Lock()


class ChunkCache:
    """A thread-safe LRU of decoded arrays holding at most ``max_bytes`` of them.

    An array larger than the budget is not kept. ``hits`` and ``misses`` count the
    ``get`` calls of every scope, for benchmarks and tests.
    """

    def __init__(self, max_bytes: int) -> None:
        if max_bytes < 0:
            raise ValueError(f"max_bytes must be 0 or more, got {max_bytes}")
        self._entries = _Entries(max_bytes)
        self._scope: Hashable = None

    def scoped(self, scope: Hashable) -> ChunkCache:
        """This cache (its budget and arrays) with keys under ``scope``: one run's array."""
        view = ChunkCache.__new__(ChunkCache)
        view._entries = self._entries
        view._scope = (self._scope, scope)
        return view

    @property
    def max_bytes(self) -> int:
        return self._entries.max_bytes

    @property
    def nbytes(self) -> int:
        """Bytes held now, in every scope."""
        return self._entries.nbytes

    @property
    def hits(self) -> int:
        return self._entries.hits

    @property
    def misses(self) -> int:
        return self._entries.misses

    def __len__(self) -> int:
        return len(self._entries.items)

    def __contains__(self, key: Hashable) -> bool:
        return (self._scope, key) in self._entries.items

    def get(self, key: Hashable) -> np.ndarray | None:
        entries = self._entries
        with entries.lock:
            value = entries.items.get((self._scope, key))
            if value is None:
                entries.misses += 1
                return None
            entries.items.move_to_end((self._scope, key))
            entries.hits += 1
            return value

    def put(self, key: Hashable, value: np.ndarray) -> None:
        entries = self._entries
        if value.nbytes > entries.max_bytes:
            return
        # Kept arrays are shared by the blocks that read them: never written to.
        value.flags.writeable = False
        with entries.lock:
            old = entries.items.pop((self._scope, key), None)
            if old is not None:  # two threads decoded the same chunk at once
                entries.nbytes -= old.nbytes
            entries.items[(self._scope, key)] = value
            entries.nbytes += value.nbytes
            while entries.nbytes > entries.max_bytes:
                _key, dropped = entries.items.popitem(last=False)
                entries.nbytes -= dropped.nbytes

    def clear(self) -> None:
        """Drop every array, of every scope."""
        entries = self._entries
        with entries.lock:
            entries.items.clear()
            entries.nbytes = 0
