"""The provenance record: its round trip, its checks, and the one comparison."""

from __future__ import annotations

from dataclasses import replace

import pytest

from unet_tiles.errors import OutputConflictError
from unet_tiles.pipeline.provenance import FORMAT_VERSION, Provenance

WANTED = Provenance("0.1.0", "m1", {"output": "labels", "chunks": [64, 80]},
                    {"url": "/a.zarr", "shape": [64, 80], "fingerprint": "f1"})


def test_round_trip_and_format_version() -> None:
    data = WANTED.with_status("complete").to_dict()
    assert data["format_version"] == FORMAT_VERSION
    assert Provenance.from_dict(data) == WANTED.with_status("complete")
    # Records written before the format had a version read as format 1.
    legacy = {k: v for k, v in data.items() if k != "format_version"}
    assert Provenance.from_dict(legacy) == WANTED.with_status("complete")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format_version": FORMAT_VERSION + 1}, "newer unet-tiles"),
        ({"format_version": "1"}, "format_version '1' is not an integer"),
        ({"status": "half-done"}, "status 'half-done' is not one of"),
        ({"parameters": None}, "'parameters' missing or not a dict"),
        ({"model_hash": 7}, "'model_hash' missing or not a str"),
    ],
)
def test_malformed_records_are_refused_with_one_line(change: dict[str, object],
                                                     message: str) -> None:
    with pytest.raises(OutputConflictError, match=message) as failure:
        Provenance.from_dict({**WANTED.to_dict(), **change}, "output 'o.zarr'")
    assert "\n" not in str(failure.value)
    assert str(failure.value).startswith("output 'o.zarr'")


def test_status_is_checked() -> None:
    with pytest.raises(ValueError, match="status 'done'"):
        WANTED.with_status("done")


@pytest.mark.parametrize(
    ("stored", "exists", "action", "cause", "reason"),
    [
        (None, False, "new", None, "does not exist yet"),
        (None, True, "refuse", None, "not written by unet-tiles"),
        (WANTED.with_status("complete"), True, "skip", None, "is complete"),
        (WANTED, True, "resume", None, "unfinished"),
        (replace(WANTED, model_hash="m0"), True, "redo", "model", "different model"),
        (replace(WANTED, parameters={"output": "both", "chunks": [64, 80]}), True, "redo",
         "parameters", "other parameters (output)"),
        (replace(WANTED, parameters={"output": "labels"}), True, "redo", "parameters",
         "other parameters (chunks)"),
        (replace(WANTED, input={**WANTED.input, "fingerprint": "f0"}).with_status("complete"),
         True, "redo", "input", "different input content"),
    ],
)
def test_compare(stored: Provenance | None, exists: bool, action: str, cause: str | None,
                 reason: str) -> None:
    decision = WANTED.compare(stored, exists=exists)
    assert (decision.action, decision.cause) == (action, cause)
    assert reason in decision.reason


def test_a_new_tool_version_alone_changes_nothing() -> None:
    stored = replace(WANTED, version="0.0.9").with_status("complete")
    assert WANTED.compare(stored, exists=True).action == "skip"


def test_input_metadata_is_compared_without_the_fingerprint() -> None:
    other = replace(WANTED, input={**WANTED.input, "fingerprint": "f0"})
    assert WANTED.same_input_metadata(other)
    assert not WANTED.same_input_metadata(replace(WANTED, input={**WANTED.input,
                                                                 "shape": [64, 81]}))
