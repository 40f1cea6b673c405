"""``unet-tiles watch ROOT --output-root OUT --model DIR``: segment images as they land.

With a Prefect server configured (``PREFECT_API_URL``) each arrived image
becomes an event that the ``segment-on-arrival`` deployment turns into a flow
run on a worker. Without one, the watcher segments arrivals itself, one at a
time, on a dask cluster it keeps for its whole life.
"""

from __future__ import annotations

import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

    from unet_tiles.discover import ImageRef


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "watch", help="segment every image that arrives under a folder",
        description="Watch ROOT; when a zarr / OME-Zarr store under it is complete and has "
        "not changed for --quiet-seconds, segment it into OUT/<its path under ROOT>. "
        "With PREFECT_API_URL set, emit a Prefect event per arrival instead (the "
        "segment-on-arrival deployment runs it). Stop with Ctrl-C.",
    )
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--output-root", required=True, metavar="OUT")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--quiet-seconds", type=float, default=10.0, metavar="S",
                   help="a store must be complete and unchanged this long (default 10)")
    p.add_argument("--poll", type=float, default=None, metavar="S",
                   help="poll the folder every S seconds instead of using file events "
                   "(for NFS/SMB mounts, where file events from other hosts never arrive)")
    p.add_argument("--include-existing", action="store_true",
                   help="also treat images already there at start as arrivals")
    p.add_argument("--output", dest="output_kind", default="labels",
                   choices=("labels", "probabilities", "both"))
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--cluster", default="local",
                   help="without Prefect: local (default), cpu, cuda, or tcp://host:port")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--prefect", action="store_true",
                   help="emit events even if PREFECT_API_URL is not set in the environment "
                   "(it must then be set in the active Prefect profile)")
    return p


def run(args: argparse.Namespace) -> int:
    from flows import api_configured
    from unet_tiles.arrival import watch
    from unet_tiles.errors import UsageError

    if args.quiet_seconds <= 0:
        raise UsageError(f"--quiet-seconds must be positive, got {args.quiet_seconds}")
    if args.poll is not None and args.poll <= 0:
        raise UsageError(f"--poll must be positive, got {args.poll}")
    stop = threading.Event()
    # SIGTERM (systemd, kill, a test's teardown) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    options = {"model_dir": args.model, "output_kind": args.output_kind, "dtype": args.dtype}
    common = {"quiet_s": args.quiet_seconds, "poll_interval_s": args.poll,
              "exclude": [args.output_root], "include_existing": args.include_existing,
              "stop": stop, "on_ready": lambda: print(f"watching {args.root}", flush=True)}
    try:
        if args.prefect or api_configured():
            watch(args.root, _emitter(args, options), **common)
        else:
            with _InProcess(args, options) as segment_one:
                watch(args.root, segment_one, **common)
    except KeyboardInterrupt:
        pass
    print("stopped watching", flush=True)
    return 0


def _emitter(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    from flows.watch import emit_arrival

    def on_arrival(image: ImageRef) -> None:
        output = image.output_url(args.output_root)
        emit_arrival(image.url, image.relative, {"output": output, **options})
        print(f"arrived  {image.relative}: event sent -> {output}", flush=True)

    return on_arrival


class _InProcess:
    """Segment arrivals here, on one dask cluster kept for the watcher's life."""

    def __init__(self, args: argparse.Namespace, options: dict[str, Any]) -> None:
        self.args = args
        self.options = options
        self._connected: Any = None

    def __enter__(self) -> Any:
        from unet_tiles.cluster import connect

        self._connected = connect(self.args.cluster, self.args.workers)
        self.client, self.info = self._connected.__enter__()
        return self.segment

    def __exit__(self, *exc: object) -> None:
        self._connected.__exit__(*exc)

    def segment(self, image: ImageRef) -> None:
        from dataclasses import replace
        from pathlib import Path

        from unet_tiles.discover import check_done
        from unet_tiles.errors import BlockFailedError, UnetTilesError
        from unet_tiles.lock import output_lock
        from unet_tiles.run import SegmentRequest, execute, prepare, validate
        from unet_tiles.writer import read_record

        output = image.output_url(self.args.output_root)
        try:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            run = validate(SegmentRequest(input=image.url, output=output, **self.options))
            check = check_done(read_record(output), run.record)
            if check.action == "skip":
                print(f"skipped  {image.relative} ({check.reason})", flush=True)
                return
            if check.action == "redo":
                run = replace(run, request=replace(run.request, overwrite=True))
            with output_lock(output):
                prepare(run)
                summary = execute(run, self.client, self.info, progress=False)
        except (UnetTilesError, BlockFailedError) as exc:
            # One bad arrival must not stop the watcher.
            print(f"FAILED   {image.relative}: {exc}", file=sys.stderr, flush=True)
            return
        print(f"done     {image.relative} -> {output} ({summary.seconds:.1f} s)", flush=True)


if __name__ == "__main__":
    sys.exit(0)
