"""The provenance record: what run wrote an output, and what a new run should do with it.

Stored as the output group's attribute ``unet_tiles``::

    {"format_version": 1, "version": "0.1.0", "model_hash": "9f2c...",
     "parameters": {"output": "labels", "block_shape": [2048, 2048], ...},
     "input": {"url": ..., "shape": [...], ..., "fingerprint": "51ab..."},
     "status": "running" | "complete",
     "configuration": {"block_size": 2048, "workers": null, ...}}   # as started

One comparison, ``Provenance.compare``, answers for every caller (the CLI, the
flows, the archive, the watcher) whether an existing output is to be skipped,
resumed, redone or refused, and why. It only compares; the run decides what to
do with the answer (``engine.run.Run.decide``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, Literal

from unet_tiles.errors import OutputConflictError

FORMAT_VERSION = 1
ATTRS_KEY = "unet_tiles"
STATUSES = ("running", "complete")

Action = Literal["new", "skip", "resume", "redo", "refuse"]


@dataclass(frozen=True)
class Decision:
    """What to do with an output, and why (the reason completes "output X ...").

    ``new``: nothing there yet; ``skip``: complete and identical; ``resume``:
    identical but unfinished; ``redo``: written by unet-tiles from another model,
    parameters or input content; ``refuse``: not written by unet-tiles. ``cause``
    says what differs for ``redo``: ``model``, ``parameters`` or ``input``.
    """

    action: Action
    reason: str
    cause: Literal["model", "parameters", "input"] | None = None


@dataclass(frozen=True)
class Provenance:
    """Tool version, model hash, parameters and input identity of one run."""

    version: str
    model_hash: str
    parameters: dict[str, Any] = field(hash=False)
    input: dict[str, Any] = field(hash=False)
    status: str = "running"
    format_version: int = FORMAT_VERSION
    # The options the run was started with (command line and --config merged), for
    # the record only: ``compare`` never looks at them (another --workers resumes).
    configuration: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)

    @property
    def fingerprint(self) -> str | None:
        value = self.input.get("fingerprint")
        return value if isinstance(value, str) else None

    @property
    def complete(self) -> bool:
        return self.status == "complete"

    def with_status(self, status: str) -> Provenance:
        return replace(self, status=_parse_status(status))

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": self.format_version,
            "version": self.version,
            "model_hash": self.model_hash,
            "parameters": dict(self.parameters),
            "input": dict(self.input),
            "status": self.status,
            "configuration": dict(self.configuration),
        }

    @classmethod
    def from_dict(cls, data: Any, where: str = "output") -> Provenance:
        """Parse a stored record; a malformed one is an ``OutputConflictError``."""

        def bad(what: str) -> OutputConflictError:
            return OutputConflictError(
                f"{where} has a malformed unet-tiles provenance record ({what}); "
                "pass `overwrite` to replace it or choose another output path"
            )

        if not isinstance(data, dict):
            raise bad("not an object")
        # Records written before format 1 had no format_version and the same fields.
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise bad(f"format_version {version!r} is not an integer")
        if version > FORMAT_VERSION:
            raise OutputConflictError(
                f"{where} was written by a newer unet-tiles (provenance format {version}, "
                f"this one reads {FORMAT_VERSION}); upgrade unet-tiles or choose another "
                "output path"
            )
        for name, kind in (("version", str), ("model_hash", str), ("parameters", dict),
                           ("input", dict), ("status", str)):
            if not isinstance(data.get(name), kind):
                raise bad(f"{name!r} missing or not a {kind.__name__}")
        try:
            status = _parse_status(data["status"])
        except ValueError as exc:
            raise bad(str(exc)) from None
        configuration = data.get("configuration", {})
        if not isinstance(configuration, dict):
            raise bad("'configuration' is not an object")
        return cls(data["version"], data["model_hash"], dict(data["parameters"]),
                   dict(data["input"]), status, version, dict(configuration))

    def compare(self, stored: Provenance | None, *, exists: bool) -> Decision:
        """What to do with an output holding ``stored`` (None: no record), for this run."""
        if not exists:
            return Decision("new", "does not exist yet")
        if stored is None:
            return Decision("refuse", "exists and was not written by unet-tiles")
        if stored.model_hash != self.model_hash:
            return Decision("redo", "was written with a different model", "model")
        if stored.parameters != self.parameters:
            old, new = stored.parameters, self.parameters
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            return Decision("redo", f"was written with other parameters ({', '.join(changed)})",
                            "parameters")
        if stored.fingerprint != self.fingerprint:
            return Decision("redo", "was written from different input content", "input")
        if not stored.complete:
            return Decision("resume", "is an unfinished run of this model, parameters and input")
        return Decision("skip", "is complete with this model, parameters and input")

    def same_input_metadata(self, other: Provenance) -> bool:
        """The inputs' metadata agree (shape, dtype, chunks, axes, ...), content aside."""

        def metadata(record: Provenance) -> dict[str, Any]:
            return {k: v for k, v in record.input.items() if k != "fingerprint"}

        return metadata(self) == metadata(other)


def _parse_status(status: str) -> str:
    if status not in STATUSES:
        raise ValueError(f"status {status!r} is not one of {STATUSES}")
    return status


__all__ = ["ATTRS_KEY", "FORMAT_VERSION", "Action", "Decision", "Provenance"]
