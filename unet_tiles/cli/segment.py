"""``unet-tiles segment INPUT OUTPUT --model DIR``: segment one image."""

from __future__ import annotations

import sys
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
    p.add_argument("output", metavar="OUTPUT")
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
    # A one-off run without a Prefect server pays no server start-up (bench/README.md).
    if args.prefect or api_configured():
        from unet_tiles.flows import allow_slow_server_start

        allow_slow_server_start()
        from unet_tiles.flows.segment import run_tracked

        # The flow writes the preview (and links it in its summary artifact).
        summary = run_tracked(request, preview=args.preview, **cluster_options(args))
        tracked = True
    else:
        from unet_tiles.engine.run import segment

        def show_dashboard(info: ClusterInfo) -> None:
            line = dashboard_line(info, verbose=bool(getattr(args, "verbose", False)))
            if line:
                print(line, file=sys.stderr, flush=True)

        summary = segment(request, progress=progress_option(args), on_cluster=show_dashboard,
                          **cluster_options(args))
        tracked = False
    # stdout holds this one line only: scripts read it.
    print(format_summary(summary, args.output))
    if args.preview is None:
        return 0
    return show_preview(request, args.preview, written=tracked)


def show_preview(request: SegmentRequest, path: str, *, written: bool) -> int:
    """Write the preview PNG of the finished output (``written``: the flow has) and
    name it on stderr: stdout keeps the summary line alone."""
    from pathlib import Path

    from unet_tiles.engine.run import validate
    from unet_tiles.pipeline.preview import write_preview

    if not written:
        # validate again for the source, output spec and plan: no pixel is read,
        # and it costs a listing of the input's chunks, not a segmentation.
        run_ = validate(request)
        try:
            write_preview(path, run_.source, run_.job.output, run_.plan)
        except OSError as exc:
            print(f"unet-tiles: preview {path} not written: {exc}", file=sys.stderr)
            return 1
    if not Path(path).exists():
        print(f"unet-tiles: preview {path} not written (see the flow run's log)",
              file=sys.stderr)
        return 1
    print(f"preview: {path}", file=sys.stderr)
    return 0


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
        f"{summary.megapixels_per_s:.2f} Mpx/s -> {output}"
    )
