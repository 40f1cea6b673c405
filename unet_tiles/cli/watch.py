"""``unet-tiles watch ROOT --output-root OUT --model DIR``: segment images as they land.

With a Prefect server configured (``PREFECT_API_URL``) each arrived image
becomes an event that the ``segment-on-arrival`` deployment turns into a flow
run on a worker. Without one, the watcher segments arrivals itself, one at a
time, on a dask cluster it keeps for its whole life.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from unet_tiles.cli.options import (
    add_cluster_options,
    add_config_option,
    add_prefect,
    add_request_options,
    cluster_options,
    flag_for,
    request_options,
)

if TYPE_CHECKING:
    import argparse

    from unet_tiles.archive.discover import ImageRef


# What an arrival event carries (deploy/prefect.yaml maps these to the
# on-arrival deployment's parameters); the other request options are the
# deployment's own.
EVENT_OPTIONS = ("model_dir", "output_kind", "dtype")


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
    p.add_argument("--quiet-seconds", type=float, default=10.0, metavar="S",
                   help="a store must be complete and unchanged this long (default 10)")
    p.add_argument("--poll", type=float, default=None, metavar="S",
                   help="poll the folder every S seconds instead of using file events "
                   "(for NFS/SMB mounts, where file events from other hosts never arrive)")
    p.add_argument("--include-existing", action="store_true",
                   help="also treat images already there at start as arrivals")
    add_request_options(p)
    add_cluster_options(p)
    add_prefect(p, "emit an event per arrival for the on-arrival deployment")
    add_config_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.archive.arrival import watch
    from unet_tiles.errors import UsageError
    from unet_tiles.flows import api_configured

    if args.quiet_seconds <= 0:
        raise UsageError(f"`quiet_seconds` must be positive, got {args.quiet_seconds}")
    if args.poll is not None and args.poll <= 0:
        raise UsageError(f"`poll` must be positive, got {args.poll}")
    options = request_options(args)
    via_prefect = args.prefect or api_configured()
    if via_prefect:
        _check_event_options(args.parser, options)
    stop = threading.Event()
    # SIGTERM (systemd, kill, a test's teardown) stops as cleanly as Ctrl-C.
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    common = {"quiet_s": args.quiet_seconds, "poll_interval_s": args.poll,
              "exclude": [args.output_root], "include_existing": args.include_existing,
              "stop": stop, "on_ready": lambda: print(f"watching {args.root}", flush=True)}
    try:
        if via_prefect:
            watch(args.root, _emitter(args, options), **common)
        else:
            with _InProcess(args, options) as segment_one:
                watch(args.root, segment_one, **common)
    except KeyboardInterrupt:
        pass
    print("stopped watching", flush=True)
    return 0


def _check_event_options(parser: argparse.ArgumentParser, options: dict[str, Any]) -> None:
    from unet_tiles.errors import UsageError

    for name, value in options.items():
        if name not in (*EVENT_OPTIONS, "configuration") and value != parser.get_default(name):
            raise UsageError(
                f"`{name}` is not carried by arrival events; set it among the on-arrival "
                "deployment's parameters (deploy/prefect.yaml) instead"
            )


def _emitter(args: argparse.Namespace, options: dict[str, Any]) -> Any:
    from unet_tiles.flows.watch import emit_arrival

    payload = {name: options[name] for name in EVENT_OPTIONS}

    def on_arrival(image: ImageRef) -> None:
        output = image.output_url(args.output_root)
        emit_arrival(image.url, image.relative, {"output": output, **payload})
        print(f"arrived  {image.relative}: event sent -> {output}", flush=True)

    return on_arrival


class _InProcess:
    """Segment arrivals here, on one dask cluster kept for the watcher's life."""

    def __init__(self, args: argparse.Namespace, options: dict[str, Any]) -> None:
        self.args = args
        self.options = options
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> Any:
        from unet_tiles.engine.cluster import connect

        self.client, self.info = self._stack.enter_context(connect(**cluster_options(self.args)))
        return self.segment

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def segment(self, image: ImageRef) -> None:
        from pathlib import Path

        from unet_tiles.engine.run import SegmentRequest, validate
        from unet_tiles.errors import RunFailedError, UnetTilesError, spell_parameters

        output = image.output_url(self.args.output_root)
        try:
            Path(output).parent.mkdir(parents=True, exist_ok=True)
            run, decision = validate(
                SegmentRequest(input=image.url, output=output, **self.options)).unattended()
            if run is None:
                print(f"skipped  {image.relative} (output {decision.reason})", flush=True)
                return
            summary = run.segment(self.client, self.info, progress=False)
        except (UnetTilesError, RunFailedError) as exc:
            # One bad arrival must not stop the watcher.
            message = spell_parameters(str(exc), flag_for(self.args.parser))
            print(f"FAILED   {image.relative}: {message}", file=sys.stderr, flush=True)
            return
        print(f"done     {image.relative} -> {output} ({summary.seconds:.1f} s)", flush=True)
