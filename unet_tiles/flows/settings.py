"""Where a flow runs its blocks, and checks of deployment parameters.

A deployment's parameters are fixed when it is deployed; the dask cluster is a
property of the machine the worker runs on. So ``cluster`` and ``workers``
default to the worker's environment (``UNET_TILES_CLUSTER``,
``UNET_TILES_WORKERS``, set as job variables in ``deploy/prefect.yaml``) and a
parameter given to one run overrides them.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unet_tiles.errors import RunFailedError, UnetTilesError, UsageError, spell_parameters
from unet_tiles.pipeline.source import is_remote

if TYPE_CHECKING:
    from collections.abc import Iterator

# '{{ $NAME }}' left in a parameter: prefect deploy leaves an environment
# placeholder as it is when the variable was not set at deploy time.
_PLACEHOLDER = re.compile(r"{{\s*\$?([\w.\-\[\]]+)\s*}}")


@dataclass(frozen=True)
class ClusterChoice:
    """``unet_tiles.engine.cluster.connect`` arguments for one flow run."""

    spec: str
    workers: int | None
    threads_per_worker: int | None


def cluster_choice(cluster: str | None, workers: int | None,
                   threads_per_worker: int | None = None) -> ClusterChoice:
    """Parameters first, then the worker's environment, then ``local``."""
    spec = cluster or _env("UNET_TILES_CLUSTER") or "local"
    if workers is None:
        workers = _env_int("UNET_TILES_WORKERS")
    if threads_per_worker is None:
        threads_per_worker = _env_int("UNET_TILES_THREADS_PER_WORKER")
    return ClusterChoice(spec, workers, threads_per_worker)


def _env(name: str) -> str | None:
    value = os.environ.get(name, "").strip()
    # A job variable whose '{{ $NAME }}' was unset at deploy time means "unset".
    return None if not value or _PLACEHOLDER.fullmatch(value) else value


def _env_int(name: str) -> int | None:
    value = _env(name)
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"environment variable {name}={value!r} must be an integer") from None


def check_filled(**parameters: str | None) -> None:
    """Refuse parameters still holding a ``{{ $VAR }}`` that was never filled in."""
    for name, value in parameters.items():
        if value is not None and (match := _PLACEHOLDER.search(str(value))):
            raise UsageError(
                f"parameter {name} is {value!r}: {match.group(1).lstrip('$')} was not set "
                "when the deployment was made; set it and run 'prefect deploy' again, or pass "
                f"{name} as a parameter of the run"
            )


def make_parent(output: str) -> None:
    """Create the folder an output goes into (local outputs only)."""
    if not is_remote(output):
        Path(output.removeprefix("file://")).parent.mkdir(parents=True, exist_ok=True)


@contextlib.contextmanager
def flow_wording() -> Iterator[None]:
    """Our errors worded for a flow run: parameters by their names (``block_size``),
    where the CLI says ``--block-size``. The error keeps its type and attributes."""
    try:
        yield
    except (UnetTilesError, RunFailedError) as exc:
        if exc.args and isinstance(exc.args[0], str):
            exc.args = (spell_parameters(exc.args[0], lambda name: name), *exc.args[1:])
        raise
