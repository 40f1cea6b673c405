"""Arrival detection: complete, then unchanged for the quiet time, reported once."""

from __future__ import annotations

import shutil
import threading
import time
from typing import TYPE_CHECKING

import numpy as np
import pytest
import zarr

from unet_tiles.archive.arrival import ArrivalTracker, StoreState, look, watch

if TYPE_CHECKING:
    from pathlib import Path

    from unet_tiles.archive.discover import ImageRef


def _image(path: Path, seed: int = 0) -> None:
    a = zarr.create_array(str(path), shape=(16, 20), chunks=(8, 10), dtype="uint8",
                          fill_value=0, zarr_format=3)
    a[:] = np.random.default_rng(seed).integers(0, 255, (16, 20), dtype=np.uint8)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class FakeLook:
    """What each store looks like, set by the test."""

    def __init__(self) -> None:
        self.states: dict[str, StoreState] = {}

    def __call__(self, url: str) -> StoreState:
        return self.states.get(url.rsplit("/", 1)[-1], StoreState(False, "", "absent"))


@pytest.fixture
def tracked(tmp_path: Path) -> tuple[ArrivalTracker, Clock, FakeLook, Path]:
    clock, fake = Clock(), FakeLook()
    return ArrivalTracker(str(tmp_path), quiet_s=2.0, clock=clock, look=fake), clock, fake, tmp_path


def test_complete_store_arrives_after_two_stable_looks(tracked) -> None:  # type: ignore[no-untyped-def]
    tracker, clock, fake, root = tracked
    _image(root / "a.zarr")
    fake.states["a.zarr"] = StoreState(True, "s1")
    tracker.mark(str(root / "a.zarr" / "zarr.json"))
    clock.now = 1.0
    assert tracker.poll() == []  # not quiet yet
    clock.now = 2.0
    assert tracker.poll() == []  # first look: a candidate
    clock.now = 4.0
    arrived = tracker.poll()
    assert [a.relative for a in arrived] == ["a.zarr"]
    clock.now = 10.0
    assert tracker.poll() == []  # reported once


def test_incomplete_store_never_arrives_however_quiet(tracked) -> None:  # type: ignore[no-untyped-def]
    tracker, clock, fake, root = tracked
    _image(root / "a.zarr")
    fake.states["a.zarr"] = StoreState(False, "s1", "2 chunk(s) still missing")
    tracker.mark(str(root / "a.zarr"))
    for t in range(2, 30, 2):
        clock.now = float(t)
        assert tracker.poll() == []
    # Completed later without a new event (a network filesystem): still found.
    fake.states["a.zarr"] = StoreState(True, "s2")
    clock.now = 32.0
    assert tracker.poll() == []
    clock.now = 34.0
    assert [a.relative for a in tracker.poll()] == ["a.zarr"]


def test_changing_signature_restarts_the_wait(tracked) -> None:  # type: ignore[no-untyped-def]
    tracker, clock, fake, root = tracked
    _image(root / "a.zarr")
    fake.states["a.zarr"] = StoreState(True, "s1")
    tracker.mark(str(root / "a.zarr"))
    clock.now = 2.0
    assert tracker.poll() == []
    fake.states["a.zarr"] = StoreState(True, "s2")  # a chunk rewritten with no event seen
    clock.now = 4.0
    assert tracker.poll() == []
    clock.now = 6.0
    assert len(tracker.poll()) == 1


def test_reacquired_store_arrives_again_and_existing_ones_do_not(tracked) -> None:  # type: ignore[no-untyped-def]
    tracker, clock, fake, root = tracked
    _image(root / "old.zarr")
    fake.states["old.zarr"] = StoreState(True, "s1")
    assert [i.relative for i in tracker.existing(as_arrivals=False)] == ["old.zarr"]
    tracker.mark(str(root / "old.zarr" / "c" / "0" / "0"))  # touched, same content
    for t in (2.0, 4.0, 6.0):
        clock.now = t
        assert tracker.poll() == []
    fake.states["old.zarr"] = StoreState(True, "s2")  # re-acquired
    tracker.mark(str(root / "old.zarr" / "c" / "0" / "0"))
    clock.now = 8.0
    assert tracker.poll() == []
    clock.now = 10.0
    assert [i.relative for i in tracker.poll()] == ["old.zarr"]


def test_temporary_hidden_and_excluded_paths_are_not_marked(tmp_path: Path) -> None:
    clock = Clock()
    tracker = ArrivalTracker(str(tmp_path), quiet_s=1.0, exclude=[str(tmp_path / "out")],
                             clock=clock, look=lambda url: StoreState(True, "s"))
    for name in (".a.zarr/zarr.json", "b.zarr.tmp/zarr.json", "out/c.zarr/zarr.json",
                 "loose-file.txt"):
        tracker.mark(str(tmp_path / name))
    assert tracker._dirty == {}


def test_look_on_real_stores(tmp_path: Path) -> None:
    _image(tmp_path / "a.zarr")
    whole = look(str(tmp_path / "a.zarr"))
    assert whole.complete
    (tmp_path / "a.zarr" / "c" / "1" / "1").unlink()
    partial = look(str(tmp_path / "a.zarr"))
    assert not partial.complete
    assert "1 chunk(s) still missing" in partial.why
    (tmp_path / "b.zarr").mkdir()
    assert not look(str(tmp_path / "b.zarr")).complete


@pytest.mark.slow
@pytest.mark.parametrize("poll", [None, 0.2], ids=["native-events", "polling-observer"])
def test_watch_reports_a_slow_copy_once_after_it_completes(tmp_path: Path,
                                                           poll: float | None) -> None:
    source, root = tmp_path / "src.zarr", tmp_path / "watched"
    root.mkdir()
    _image(source)
    arrivals: list[tuple[float, ImageRef]] = []
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=watch, args=(str(root), lambda i: arrivals.append(
        (time.monotonic(), i))), kwargs={"quiet_s": 0.5, "poll_interval_s": poll, "stop": stop,
                                        "on_ready": ready.set})
    thread.start()
    try:
        assert ready.wait(10)
        files = sorted((p for p in source.rglob("*") if p.is_file()),
                       key=lambda p: (p.name != "zarr.json", str(p)))
        for i, path in enumerate(files):
            dest = root / "new.zarr" / path.relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, dest)
            time.sleep(2.0 if i == 1 else 0.1)  # a pause of 4x the quiet time mid-copy
        done = time.monotonic()
        deadline = done + 10
        while not arrivals and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.5)
    finally:
        stop.set()
        thread.join(10)
    assert [a.relative for _, a in arrivals] == ["new.zarr"]
    assert arrivals[0][0] >= done


@pytest.mark.parametrize("include_existing", [True, False])
def test_watch_include_existing_reports_images_already_there(tmp_path: Path,
                                                             include_existing: bool) -> None:
    root = tmp_path / "watched"
    root.mkdir()
    _image(root / "old.zarr")
    (root / "day").mkdir()
    _image(root / "day" / "older.zarr", seed=1)
    arrivals: list[str] = []
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=watch, args=(str(root), lambda i: arrivals.append(
        i.relative)), kwargs={"quiet_s": 0.3, "stop": stop, "on_ready": ready.set,
                             "include_existing": include_existing})
    thread.start()
    try:
        assert ready.wait(10)
        deadline = time.monotonic() + 5
        while len(arrivals) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # and never again
    finally:
        stop.set()
        thread.join(10)
    assert sorted(arrivals) == (["day/older.zarr", "old.zarr"] if include_existing else [])
