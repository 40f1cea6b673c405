"""Every error unet-tiles raises on purpose, under two roots.

``UnetTilesError``: the request cannot be done as given (bad input, usage, model
or output). The CLI prints its one line and exits 2; nothing was written that a
rerun would trust.

``RunFailedError``: the request was valid but the run did not finish (blocks
failed, images of an archive failed, a disk filled up). The CLI exits 1; what
was done is kept and a rerun resumes.

Messages name parameters by their Python names in backticks (`` `block_size` ``):
the front end spells them for its users (``--block-size`` on the command line,
``block_size`` in a flow run; see ``spell_parameters``).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class UnetTilesError(Exception):
    """Root of the errors caused by the user's input, usage, models or outputs (exit 2)."""


class InputError(UnetTilesError):
    """The input image cannot be segmented as given."""


class InputIncompleteError(InputError):
    """A chunk of the input is missing or unreadable: never read as background."""


class ModelFormatError(UnetTilesError):
    """A model directory is missing, corrupt, or does not match its config."""


class OutputConflictError(UnetTilesError):
    """The output exists with other parameters, is locked, or overlaps the input."""


class UsageError(UnetTilesError):
    """A parameter is out of range or options contradict each other."""


class RunFailedError(Exception):
    """Root of the failures of a valid run (exit 1): what finished is kept."""


class BlockFailedError(RunFailedError):
    """Some blocks failed; the rest of the store is complete and resumable."""

    def __init__(self, message: str, failures: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.failures = failures


class DiskFullError(RunFailedError):
    """The output's disk or quota is full."""


class ArchiveFailedError(RunFailedError):
    """Some images of an archive failed; every other image was segmented or skipped.

    ``outcomes`` are the archive's per-image outcomes (``flows.archive.Outcome``).
    """

    def __init__(self, message: str, outcomes: Sequence[object]) -> None:
        super().__init__(message)
        self.outcomes = outcomes


_PARAMETER = re.compile(r"`([a-z][a-z0-9_]*)`")


def spell_parameters(message: str, spell: Callable[[str], str | None]) -> str:
    """``message`` with each `` `name` `` replaced by ``spell(name)`` (kept where None)."""

    def replace(match: re.Match[str]) -> str:
        spelled = spell(match.group(1))
        return match.group(0) if spelled is None else spelled

    return _PARAMETER.sub(replace, message)


__all__ = [
    "ArchiveFailedError",
    "BlockFailedError",
    "DiskFullError",
    "InputError",
    "InputIncompleteError",
    "ModelFormatError",
    "OutputConflictError",
    "RunFailedError",
    "UnetTilesError",
    "UsageError",
    "spell_parameters",
]
