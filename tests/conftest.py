"""Shared fixtures: tiny seeded models on disk and a real dask cluster (helpers.py: functions)."""

from __future__ import annotations

import os
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: the cores this process may use (its affinity, a container's CPU
    quota), as the local cluster counts them; xdist would count the host's cores."""
    from unet_tiles.engine.cluster import usable_cores

    return usable_cores()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The files with the most slow tests first, each file's tests in their own order.

    Under ``-n auto --dist loadfile --no-loadscope-reorder`` (the README's test command)
    each file goes whole to the next free worker in this order: a long file handed out
    last would keep one worker busy alone at the end (longest first).
    """
    slow = Counter(item.path for item in items if item.get_closest_marker("slow"))
    first_seen = {path: i for i, path in enumerate(dict.fromkeys(item.path for item in items))}
    items.sort(key=lambda item: (-slow[item.path], first_seen[item.path]))


@pytest.fixture(scope="session")
def make_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Write (once per config) a seeded tiny model directory and return its path."""
    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    made: dict[tuple[Any, ...], Path] = {}

    def make(**kwargs: Any) -> Path:
        kwargs = {"depth": 2, "base_channels": 4, "classes": 3, "seed": 0, **kwargs}
        key = tuple(sorted(kwargs.items()))
        if key not in made:
            seed = kwargs.pop("seed")
            model = build_unet(UNetConfig(**kwargs), seed=seed)
            made[key] = save_model(model, tmp_path_factory.mktemp("model"))
        return made[key]

    return make


@pytest.fixture(scope="session")
def client() -> Iterator[Any]:
    """A real LocalCluster with two worker processes, shared by the session."""
    from unet_tiles.engine.cluster import connect

    with connect("cpu", workers=2, threads_per_worker=1) as (dask_client, _info):
        yield dask_client
