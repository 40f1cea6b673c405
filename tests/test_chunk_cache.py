"""The workers' cache of decoded input chunks: least recently used out first, never more
bytes than its budget, kept arrays read-only, safe from several threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from unet_tiles.pipeline.chunk_cache import ChunkCache


def _chunk(value: int, nbytes: int = 100) -> np.ndarray:
    return np.full(nbytes, value, dtype=np.uint8)


def test_least_recently_used_goes_first_when_the_budget_is_full() -> None:
    cache = ChunkCache(300)
    for key in "abc":
        cache.put(key, _chunk(ord(key)))
    assert (len(cache), cache.nbytes) == (3, 300)
    held = cache.get("a")  # a is now the most recently used: b goes next
    assert held is not None
    assert held[0] == ord("a")
    cache.put("d", _chunk(ord("d")))
    assert cache.get("b") is None
    assert [cache.get(k) is not None for k in "acd"] == [True, True, True]
    assert (len(cache), cache.nbytes) == (3, 300)
    assert (cache.hits, cache.misses) == (4, 1)


def test_a_chunk_larger_than_the_budget_is_not_kept_and_evicts_nothing() -> None:
    cache = ChunkCache(250)
    cache.put("small", _chunk(1))
    cache.put("large", _chunk(2, nbytes=251))
    assert cache.get("large") is None
    assert cache.get("small") is not None
    assert cache.nbytes == 100


def test_the_same_key_put_twice_is_counted_once() -> None:
    # Two threads may decode the same chunk at once; the second put replaces the first.
    cache = ChunkCache(1000)
    cache.put("a", _chunk(1))
    cache.put("a", _chunk(2, nbytes=150))
    assert (len(cache), cache.nbytes) == (1, 150)
    held = cache.get("a")
    assert held is not None
    assert held[0] == 2


def test_kept_arrays_are_read_only() -> None:
    cache = ChunkCache(1000)
    cache.put("a", _chunk(1))
    held = cache.get("a")
    assert held is not None
    with pytest.raises(ValueError, match="read-only"):
        held[0] = 5


def test_a_negative_budget_is_refused() -> None:
    with pytest.raises(ValueError, match="max_bytes must be 0 or more, got -1"):
        ChunkCache(-1)


def test_many_threads_keep_the_byte_count_and_the_budget() -> None:
    cache = ChunkCache(10 * 64)

    def work(thread: int) -> None:
        for i in range(500):
            key = (thread + i) % 37
            if cache.get(key) is None:
                cache.put(key, _chunk(key, nbytes=64))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(work, range(8)))
    assert len(cache) == 10
    assert cache.nbytes == 10 * 64
    assert cache.hits + cache.misses == 8 * 500
    cache.clear()
    assert (len(cache), cache.nbytes) == (0, 0)


def test_scopes_share_the_budget_and_never_each_others_arrays() -> None:
    cache = ChunkCache(300)
    run_a, run_b = cache.scoped("run a"), cache.scoped("run b")
    run_a.put("chunk", _chunk(1))
    assert run_b.get("chunk") is None
    assert "chunk" in run_a
    assert "chunk" not in cache
    run_b.put("chunk", _chunk(2))
    run_b.put("other", _chunk(3))
    run_b.put("third", _chunk(4))  # the budget is the whole cache's: run a's goes first
    assert run_a.get("chunk") is None
    held = run_b.get("chunk")
    assert held is not None
    assert held[0] == 2
    assert (len(cache), cache.nbytes, run_a.nbytes) == (3, 300, 300)
    assert run_a.scoped("x").get("third") is None
