"""``unet-tiles segment INPUT OUTPUT --model DIR``: segment one image."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_tiles.cli.options import (
    add_cluster_options,
    add_config_option,
    add_no_progress,
    add_prefect,
    add_request_options,
    cluster_options,
    progress_option,
    request_options,
)

if TYPE_CHECKING:
    import argparse

    from unet_tiles.engine.blocks import RunSummary
    from unet_tiles.engine.cluster import ClusterInfo
    from unet_tiles.engine.run import SegmentRequest


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "segment", help="segment one zarr / OME-Zarr image",
        description="Segment INPUT (a zarr array, group or OME-Zarr image; local path or "
        "fsspec URL) into the zarr v3 group OUTPUT. Rerunning the same command resumes.",
    )
    p.add_argument("input", metavar="INPUT")
    p.add_argument("output", metavar="OUTPUT",
                   help="the output store; with --into-source INPUT/labels/NAME (or '')")
    add_request_options(p)
    add_cluster_options(p)
    p.add_argument("--overwrite", action="store_true",
                   help="replace an output written with another model or parameters")
    p.add_argument("--preview", metavar="PNG", default=None,
                   help="after the run, write a PNG: an overview of the whole image with the "
                   "labels overlaid, beside a full-resolution crop across a block corner")
    add_no_progress(p)
    add_prefect(p, "run as a tracked Prefect flow run")
    add_config_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.engine.run import SegmentRequest
    from unet_tiles.flows import api_configured

    request = SegmentRequest(input=args.input, output=args.output, overwrite=args.overwrite,
                             **request_options(args))
    check_preview_path(args.preview)
    from unet_tiles.engine.run import plate_requests

    fields = plate_requests(request)
    if fields is not None:
        return _segment_plate(args, fields)
    # A one-off run without a Prefect server pays no server start-up (bench/README.md).
    if args.prefect or api_configured():
        from unet_tiles.flows import allow_slow_server_start

        allow_slow_server_start()
        from unet_tiles.flows.segment import run_tracked

        # The flow writes the preview (and links it in its summary artifact).
        summary = run_tracked(request, preview=args.preview, **cluster_options(args))
    else:
        from unet_tiles.engine.run import segment

        def show_dashboard(info: ClusterInfo) -> None:
            line = dashboard_line(info, verbose=bool(getattr(args, "verbose", False)))
            if line:
                print(line, file=sys.stderr, flush=True)

        summary = segment(request, progress=progress_option(args), on_cluster=show_dashboard,
                          preview=args.preview, **cluster_options(args))
    # stdout holds this one line only: scripts read it.
    print(format_summary(summary, args.output))
    if args.preview is None:
        return 0
    if not Path(args.preview).exists():
        print(f"unet-tiles: preview {args.preview} not written (see the flow run's log)",
              file=sys.stderr)
        return 1
    print(f"preview: {args.preview}", file=sys.stderr)
    return 0


def _segment_plate(args: argparse.Namespace, fields: list[SegmentRequest]) -> int:
    """An HCS plate: each field image is one run (one output each), on one cluster."""
    from unet_tiles.engine.run import segment_all
    from unet_tiles.errors import UsageError

    if args.preview is not None or args.prefect:
        raise UsageError("`preview` and `prefect` take one image; for a plate use "
                         "'unet-tiles archive' (a flow run per field)")
    summaries = segment_all(fields, progress=progress_option(args), **cluster_options(args))
    for field, summary in zip(fields, summaries, strict=True):
        print(format_summary(summary, field.output))
    return 0


def check_preview_path(path: str | None) -> None:
    """A preview that could not be written is known before the run, not after it."""
    from unet_tiles.errors import UsageError

    if path is None:
        return
    folder = Path(path).resolve().parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise UsageError(f"`preview` {path!r}: folder {str(folder)!r} does not exist or is "
                         "not writable")


def dashboard_line(info: ClusterInfo, *, verbose: bool = False, stream: Any = None) -> str | None:
    """The line ``dashboard: URL`` for a person watching (``stream``, default stderr,
    is a terminal, or ``verbose``); None without a dashboard or anyone to read it."""
    from unet_tiles.engine.progress import is_terminal

    if not info.dashboard:
        return None
    if not (verbose or is_terminal(sys.stderr if stream is None else stream)):
        return None
    return f"dashboard: {info.dashboard}"


def format_summary(summary: RunSummary, output: str) -> str:
    return (
        f"segmented {summary.pixels / 1e6:.2f} Mpx in {summary.blocks_done} blocks "
        f"({summary.blocks_skipped} already done) in {summary.seconds:.1f} s = "
        f"{summary.megapixels_per_s:.2f} Mpx/s"
        + ("" if summary.objects is None else f", {summary.objects} objects")
        + f" -> {output}"
    )
