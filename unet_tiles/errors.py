"""Errors a user can act on.

Every error below ``UnetTilesError`` carries a one-line message that names the
object at fault and what to do about it; ``cli.py`` prints it and exits 2.
Anything else is an internal failure (exit 1).
"""

from __future__ import annotations


class UnetTilesError(Exception):
    """Root of the errors caused by the user's input, models or outputs."""


class InputError(UnetTilesError):
    """The input image cannot be segmented as given."""


class InputIncompleteError(InputError):
    """A chunk of the input is missing or unreadable: never read as background."""


class ModelFormatError(UnetTilesError):
    """A model directory is missing, corrupt, or does not match its config."""


class OutputConflictError(UnetTilesError):
    """The output exists with other parameters, is locked, or overlaps the input."""


class UsageError(UnetTilesError):
    """A command-line option or parameter is out of range."""


class BlockFailedError(Exception):
    """Some blocks failed; the rest of the store is complete and resumable.

    Not a ``UnetTilesError``: the run itself was valid, so the CLI exits 1.
    """

    def __init__(self, message: str, failures: list[dict[str, object]]) -> None:
        super().__init__(message)
        self.failures = failures
