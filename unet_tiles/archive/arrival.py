"""Detect images that have *arrived*: stores that are complete and stopped changing.

A microscope or a copy job writes a store file by file, over seconds or hours.
Segmenting it early reads missing chunks (an error, invariant 6) or, worse, a
half-written one. So an image counts as arrived only when

1. nothing under its top-level folder has changed for ``quiet_s`` seconds
   (file events, debounced), and
2. it opens as an image and every chunk its metadata implies is present, and
3. its content signature (every file's size and mtime) is the same on two looks
   ``quiet_s`` apart: a writer that pauses longer than ``quiet_s`` mid-chunk, or a
   network filesystem that reports no events, is caught by this second look.

Each arrival is reported once per signature: a store re-acquired at the same
path arrives again. Events come from watchdog: inotify and friends locally, or
a polling observer for network filesystems (NFS, SMB) where those see nothing.
A remote root (an fsspec URL such as ``s3://bucket/archive/``) has no events at
all: ``PollingTracker`` lists its images every poll interval and applies rules 2
and 3 to each (``watch`` picks it for such roots).

    event ──> mark(top folder) ──> quiet? ──> find images ──> complete? ──> stable? ──> arrived
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from unet_tiles.archive.discover import ImageRef, find_images, is_ignored
from unet_tiles.pipeline.source import is_remote

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StoreState:
    """What a look at a store saw: whether it is whole, and its content signature."""

    complete: bool
    signature: str
    why: str = ""


def look(url: str) -> StoreState:
    """Open the store's metadata and list its chunks; never reads pixels."""
    from unet_tiles.errors import UnetTilesError
    from unet_tiles.pipeline.source import fingerprint, open_source
    from unet_tiles.pipeline.window import missing_chunks

    try:
        source = open_source(url)
        array = source.open()
        missing = missing_chunks(array, tuple(slice(0, s) for s in source.shape))
        signature = fingerprint(source)
    except (UnetTilesError, OSError, ValueError, KeyError) as exc:
        # Metadata not written yet, or a level the multiscales names is still missing.
        return StoreState(False, "", f"not readable yet ({exc})")
    if missing:
        return StoreState(False, signature, f"{len(missing)} chunk(s) still missing")
    return StoreState(True, signature)


@dataclass
class _Candidate:
    signature: str
    since: float


class ArrivalTracker:
    """Debounces file events under ``root`` into arrived images.

    Thread-safe: ``mark`` is called from the observer's thread, ``poll`` from the
    watch loop. ``look`` and ``clock`` are injectable for tests.
    """

    def __init__(self, root: str, quiet_s: float = 5.0, exclude: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic,
                 look: Callable[[str], StoreState] = look) -> None:
        self.root = Path(root).resolve()
        self.quiet_s = quiet_s
        self._exclude = [Path(e).resolve() for e in exclude]
        self._clock = clock
        self._look = look
        self._lock = threading.Lock()
        self._dirty: dict[Path, float] = {}
        self._candidates: dict[str, _Candidate] = {}
        self._reported: dict[str, str] = {}

    def existing(self, *, as_arrivals: bool) -> list[ImageRef]:
        """The images already there at start: recorded as seen (the complete ones
        never arrive unless they change), or ``as_arrivals``: marked, so each
        arrives once it is complete and stable like any new one."""
        images = find_images(str(self.root), exclude=[str(e) for e in self._exclude])
        for image in images:
            if as_arrivals:
                self.mark(image.url)
                continue
            state = self._look(image.url)
            if state.complete:
                self._reported[image.url] = state.signature
        return images

    def mark(self, path: str) -> None:
        """Something changed at ``path``: its top-level folder under root is dirty."""
        try:
            relative = Path(path).resolve().relative_to(self.root)
        except ValueError:
            return
        if not relative.parts or is_ignored(relative.parts[0]):
            # A temporary or hidden copy: its rename to the final name is an
            # event of its own.
            return
        top = self.root / relative.parts[0]
        if len(relative.parts) == 1 and not top.is_dir():
            return  # a loose file in root is no store
        if any(top == e or e in top.parents for e in self._exclude):
            return
        with self._lock:
            self._dirty[top] = self._clock()

    def poll(self) -> list[ImageRef]:
        """Images that arrived since the last poll (each once per content)."""
        now = self._clock()
        with self._lock:
            quiet = [top for top, t in self._dirty.items() if now - t >= self.quiet_s]
            for top in quiet:
                del self._dirty[top]
        arrived = []
        for top in quiet:
            waiting = False
            images = find_images(str(top), exclude=[str(e) for e in self._exclude]) \
                if top.is_dir() else []
            for image in images:
                image = ImageRef(image.url, _relative(top, image.relative, self.root))
                verdict = self._verdict(image, now)
                if verdict == "arrived":
                    arrived.append(image)
                waiting = waiting or verdict == "waiting"
            if waiting:
                # Look again later even if no event comes (a paused writer, NFS).
                with self._lock:
                    self._dirty.setdefault(top, now)
        return arrived

    def _verdict(self, image: ImageRef, now: float) -> str:
        """``arrived``, ``waiting`` (incomplete or not yet stable) or ``unchanged``."""
        return _verdict(self._look(image.url), image, now, self.quiet_s, self._candidates,
                        self._reported)


def _verdict(state: StoreState, image: ImageRef, now: float, quiet_s: float,
             candidates: dict[str, _Candidate], reported: dict[str, str]) -> str:
    """The arrival rule on one look: complete, and the same signature ``quiet_s`` apart."""
    if not state.complete:
        logger.debug("%s is not complete: %s", image.url, state.why)
        candidates.pop(image.url, None)
        return "waiting"
    if reported.get(image.url) == state.signature:
        candidates.pop(image.url, None)
        return "unchanged"
    seen = candidates.get(image.url)
    if seen is None or seen.signature != state.signature:
        candidates[image.url] = _Candidate(state.signature, now)
        return "waiting"
    if now - seen.since < quiet_s:
        return "waiting"
    del candidates[image.url]
    reported[image.url] = state.signature
    return "arrived"


def _forget_listings(url: str) -> None:
    """Drop every cached listing of ``url``'s filesystem class (its instances for
    zarr and for us alike): a poll must see the store as it is now."""
    import fsspec

    fs, _ = fsspec.core.url_to_fs(url)
    for instance in [fs, *list(getattr(type(fs), "_cache", {}).values())]:
        with contextlib.suppress(Exception):
            instance.invalidate_cache()


class PollingTracker:
    """Arrivals under a remote (fsspec URL) root, where no file events exist: each
    ``poll`` lists the images under the root afresh and applies the same rule as
    ``ArrivalTracker`` (complete, and the same content signature on two looks at
    least ``quiet_s`` apart; reported once per signature)."""

    def __init__(self, root: str, quiet_s: float = 5.0, exclude: Iterable[str] = (),
                 clock: Callable[[], float] = time.monotonic,
                 look: Callable[[str], StoreState] = look) -> None:
        self.root = root.rstrip("/")
        self.quiet_s = quiet_s
        self._exclude = list(exclude)
        self._clock = clock
        self._look = look
        self._candidates: dict[str, _Candidate] = {}
        self._reported: dict[str, str] = {}

    def _images(self) -> list[ImageRef]:
        import fsspec

        from unet_tiles.errors import InputError

        _forget_listings(self.root)
        try:
            return find_images(self.root, exclude=self._exclude)
        except InputError:
            # An object store has no empty folders: a prefix nothing was written
            # under yet is an empty root, not an error (its bucket was reachable).
            fs, path = fsspec.core.url_to_fs(self.root)
            if fs.exists(path):
                raise
            return []

    def existing(self, *, as_arrivals: bool) -> list[ImageRef]:
        """The images already there at start; unless ``as_arrivals``, the complete
        ones are recorded as seen and never arrive unless they change."""
        images = self._images()
        if not as_arrivals:
            for image in images:
                state = self._look(image.url)
                if state.complete:
                    self._reported[image.url] = state.signature
        return images

    def poll(self) -> list[ImageRef]:
        """Images that arrived since the last poll (each once per content)."""
        now = self._clock()
        images = self._images()
        return [image for image in images
                if _verdict(self._look(image.url), image, now, self.quiet_s,
                            self._candidates, self._reported) == "arrived"]


def _relative(top: Path, inner: str, root: Path) -> str:
    base = top.relative_to(root).as_posix()
    return f"{base}/{inner}" if inner else base


def watch(root: str, on_arrival: Callable[[ImageRef], None], *, quiet_s: float = 5.0,
          poll_interval_s: float | None = None, exclude: Iterable[str] = (),
          include_existing: bool = False, stop: threading.Event | None = None,
          on_ready: Callable[[], None] | None = None) -> None:
    """Call ``on_arrival`` for each image that arrives under ``root`` until ``stop``.

    Args:
        quiet_s: how long a store must stay unchanged before it counts as arrived.
        poll_interval_s: use watchdog's polling observer with this interval
            (network filesystems); None uses the platform's native events.
        exclude: folders never watched, e.g. an output root inside ``root``.
        include_existing: treat the images already there at start as arrivals.
        on_ready: called once the observer runs (tests wait for it).
    """
    stop = stop or threading.Event()
    if is_remote(root):
        _watch_remote(root, on_arrival, quiet_s=quiet_s, poll_interval_s=poll_interval_s,
                      exclude=exclude, include_existing=include_existing, stop=stop,
                      on_ready=on_ready)
        return
    from watchdog.events import FileSystemEvent, FileSystemEventHandler
    from watchdog.observers import Observer
    from watchdog.observers.polling import PollingObserver

    tracker = ArrivalTracker(root, quiet_s, exclude)

    class Handler(FileSystemEventHandler):
        def on_any_event(self, event: FileSystemEvent) -> None:
            if event.event_type in ("opened", "closed_no_write"):
                return  # reads (ours included) change nothing
            tracker.mark(str(event.src_path))
            if getattr(event, "dest_path", ""):
                tracker.mark(str(event.dest_path))

    observer = PollingObserver(timeout=poll_interval_s) if poll_interval_s else Observer()
    observer.schedule(Handler(), str(tracker.root), recursive=True)
    observer.start()
    try:
        existing = tracker.existing(as_arrivals=include_existing)
        logger.info("watching %s (%d image(s) already there)", tracker.root, len(existing))
        if on_ready is not None:
            on_ready()
        # Poll often relative to quiet_s so an arrival is reported promptly.
        tick = min(1.0, quiet_s / 4)
        while not stop.wait(tick):
            for image in tracker.poll():
                on_arrival(image)
    finally:
        observer.stop()
        observer.join(timeout=10)


def _watch_remote(root: str, on_arrival: Callable[[ImageRef], None], *, quiet_s: float,
                  poll_interval_s: float | None, exclude: Iterable[str],
                  include_existing: bool, stop: threading.Event,
                  on_ready: Callable[[], None] | None) -> None:
    """``watch`` for an fsspec root: list it every ``poll_interval_s`` (by default a
    quarter of ``quiet_s``, 1 to 30 s); a failed listing is logged and retried."""
    from unet_tiles.errors import UnetTilesError

    tracker = PollingTracker(root, quiet_s, exclude)
    existing = tracker.existing(as_arrivals=include_existing)
    logger.info("polling %s (%d image(s) already there)", tracker.root, len(existing))
    if on_ready is not None:
        on_ready()
    tick = poll_interval_s or min(30.0, max(1.0, quiet_s / 4))
    while not stop.wait(tick):
        try:
            arrived = tracker.poll()
        except (UnetTilesError, OSError) as exc:
            logger.warning("cannot list %s (%s); trying again in %.0f s", root, exc, tick)
            continue
        for image in arrived:
            on_arrival(image)


__all__ = ["ArrivalTracker", "PollingTracker", "StoreState", "look", "watch"]
