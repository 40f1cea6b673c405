"""The progress bar (engine/progress.py): blocks, Mpx/s and ETA on a terminal, quiet
elsewhere; run_plan's use of it; the dask dashboard in ClusterInfo and on the CLI's stderr."""

from __future__ import annotations

import contextlib
import io
import re
import sys
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from helpers import write_zarr

from unet_tiles.engine.cluster import ClusterInfo, dashboard_link
from unet_tiles.engine.progress import BlockProgress, is_terminal

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path


class FakeTTY(io.StringIO):
    """A stream that says it is a terminal, and keeps what was written."""

    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _last_line(text: str) -> str:
    # tqdm redraws in place with carriage returns; the last draw is what shows.
    return re.split(r"[\r\n]", text.rstrip("\r\n "))[-1]


def test_mpx_per_s_counts_this_runs_pixels_over_its_time() -> None:
    clock, out = Clock(100.0), io.StringIO()
    bar = BlockProgress(5, initial=1, enabled=True, file=out, clock=clock)
    assert bar.megapixels_per_s == 0.0  # no time has passed: no rate, no division by zero
    clock.now = 102.0
    bar.update(3_000_000)
    assert bar.megapixels_per_s == pytest.approx(1.5)
    assert bar.postfix == "1.50 Mpx/s"
    clock.now = 104.0
    bar.update(0)  # a failed block: counted, no pixels
    clock.now = 105.0
    bar.update(1_000_000)
    # 4 Mpx written by this run in 5 s; the skipped block adds no pixels.
    assert bar.megapixels_per_s == pytest.approx(0.8)
    assert (bar.done, bar.pixels) == (4, 4_000_000)
    bar.close()
    final = _last_line(out.getvalue())
    assert "4/5" in final
    assert final.endswith("0.80 Mpx/s]"), final


def test_bar_starts_at_the_skipped_blocks_and_shows_an_eta() -> None:
    out = io.StringIO()
    bar = BlockProgress(4, initial=3, enabled=True, file=out)
    first = out.getvalue()
    assert "3/4" in first
    assert " 75%" in first
    bar.update(10)
    bar.close()
    final = _last_line(out.getvalue())
    assert "4/4" in final
    assert "100%" in final
    # tqdm's own elapsed<remaining and rate, then the Mpx/s postfix.
    assert re.search(r"\[\d\d:\d\d<\d\d:\d\d, .*block.*, \d+\.\d\d Mpx/s\]$", final), final


def test_quiet_off_a_terminal_unless_asked() -> None:
    out = io.StringIO()  # not a terminal
    assert not is_terminal(out)
    bar = BlockProgress(3, initial=1, file=out)
    assert not bar.enabled
    bar.update(5)
    bar.close()
    assert out.getvalue() == ""
    assert (bar.done, bar.pixels) == (2, 5)  # still counted
    forced = io.StringIO()
    with BlockProgress(3, enabled=True, file=forced) as shown:
        shown.update(1)
    assert "1/3" in forced.getvalue()


def test_drawn_on_a_terminal_unless_progress_is_false() -> None:
    tty = FakeTTY()
    assert is_terminal(tty)
    with BlockProgress(2, file=tty) as bar:
        assert bar.enabled
        bar.update(1)
    assert "1/2" in tty.getvalue()
    off = FakeTTY()
    with BlockProgress(2, enabled=False, file=off) as bar:
        bar.update(1)
    assert off.getvalue() == ""


def test_default_stream_is_stderr_at_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    tty = FakeTTY()
    monkeypatch.setattr(sys, "stderr", tty)
    with BlockProgress(7, initial=2) as bar:
        assert bar.enabled
    assert "2/7" in tty.getvalue()
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert not BlockProgress(7).enabled


def test_a_closed_stream_is_not_a_terminal() -> None:
    closed = io.StringIO()
    closed.close()
    with pytest.raises(ValueError, match="closed"):
        closed.isatty()
    assert not is_terminal(closed)
    assert not is_terminal(object())


def test_run_plan_counts_skipped_blocks_and_each_blocks_pixels(
        tmp_path: Path, make_model: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    import zarr
    from distributed import Client, LocalCluster

    from unet_tiles.engine import blocks
    from unet_tiles.engine.run import SegmentRequest, validate

    bars: list[Recorder] = []

    class Recorder(BlockProgress):
        def __init__(self, total: int, initial: int = 0, **kwargs: Any) -> None:
            super().__init__(total, initial, **kwargs)
            self.initial, self.updates, self.closed = initial, [], False
            bars.append(self)

        def update(self, pixels: int = 0) -> None:
            self.updates.append(pixels)
            super().update(pixels)

        def close(self) -> None:
            self.closed = True
            super().close()

    monkeypatch.setattr(blocks, "BlockProgress", Recorder)
    src = write_zarr(tmp_path / "in.zarr", np.arange(80 * 96, dtype=np.uint16).reshape(80, 96),
                     (32, 32))
    out = str(tmp_path / "out.zarr")
    request = SegmentRequest(src, out, str(make_model()), block_size=32)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        run = validate(request)
        with run.locked():
            run.prepare()
            run.execute(client, progress=False)
        done = zarr.open_array(out, path="done", mode="r+")
        assert done.shape == (3, 3)
        done[0, 1] = 0  # two blocks to redo: the resumed bar starts at 7 of 9
        done[2, 2] = 0
        with run.locked():
            run.execute(client, progress=False)
    first, second = bars
    assert (first.total, first.initial, first.enabled) == (9, 0, False)
    assert sorted(first.updates) == sorted([32 * 32] * 6 + [16 * 32] * 3)
    assert sum(first.updates) == 80 * 96
    assert (second.total, second.initial) == (9, 7)
    # Block (0, 1): rows 0-31, cols 32-63; block (2, 2): rows 64-79, cols 64-95.
    assert sorted(second.updates) == [16 * 32, 32 * 32]
    assert first.closed
    assert second.closed


def test_dashboard_link_is_guarded() -> None:
    class Client:
        def __init__(self, link: Any) -> None:
            self.link = link

        @property
        def dashboard_link(self) -> Any:
            if isinstance(self.link, Exception):
                raise self.link
            return self.link

    url = "http://127.0.0.1:8787/status"
    assert dashboard_link(Client(url)) == url  # type: ignore[arg-type]
    assert dashboard_link(Client("")) is None  # type: ignore[arg-type]
    assert dashboard_link(Client(None)) is None  # type: ignore[arg-type]
    # A scheduler started without a dashboard: distributed raises KeyError.
    assert dashboard_link(Client(KeyError("dashboard"))) is None  # type: ignore[arg-type]


def test_cluster_info_equality_ignores_the_dashboard() -> None:
    plain = ClusterInfo("cpu", 1, 1, 2)
    shown = ClusterInfo("cpu", 1, 1, 2, dashboard="http://127.0.0.1:8787/status")
    assert plain.dashboard is None
    assert plain == shown
    assert plain != ClusterInfo("cpu", 2, 1, 2)


def test_dashboard_line_only_for_someone_watching() -> None:
    from unet_tiles.cli.segment import dashboard_line

    url = "http://127.0.0.1:8787/status"
    info = ClusterInfo("cpu", 1, 1, 2, dashboard=url)
    assert dashboard_line(info, stream=FakeTTY()) == f"dashboard: {url}"
    assert dashboard_line(info, stream=io.StringIO()) is None
    assert dashboard_line(info, verbose=True, stream=io.StringIO()) == f"dashboard: {url}"
    assert dashboard_line(ClusterInfo("cpu", 1, 1, 2), stream=FakeTTY()) is None


@pytest.mark.parametrize("terminal", [True, False])
def test_segment_prints_the_dashboard_on_stderr_only(
        tmp_path: Path, make_model: Any, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str], terminal: bool) -> None:
    from unet_tiles.cli import main

    url = "http://127.0.0.1:8787/status"
    connected: list[tuple[Any, ...]] = []

    @contextlib.contextmanager
    def connect(spec: str = "local", workers: int | None = None,
                threads_per_worker: int | None = None) -> Iterator[tuple[Any, ClusterInfo]]:
        connected.append((spec, workers, threads_per_worker))
        # No client: Run.segment runs the blocks here, in order (the serial mode).
        yield None, ClusterInfo("cpu", 1, 1, 1, dashboard=url)

    monkeypatch.setattr("unet_tiles.engine.cluster.connect", connect)
    err = FakeTTY() if terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    src = write_zarr(tmp_path / "in.zarr", np.zeros((64, 64), dtype=np.uint8), (32, 32))
    out = tmp_path / "out.zarr"
    code = main(["segment", src, str(out), "--model", str(make_model()), "--cluster", "cpu",
                 "--workers", "1"])
    assert code == 0, err.getvalue()
    assert connected == [("cpu", 1, None)]
    stdout = capsys.readouterr().out
    assert stdout.startswith("segmented 0.00 Mpx in 1 blocks")
    assert stdout.count("\n") == 1
    assert url not in stdout
    assert (f"dashboard: {url}\n" in err.getvalue()) is terminal
    assert (out / "done").exists()
