"""``unet-tiles archive ROOT --output-root OUT --model DIR``: one nightly-style run.

Runs the ``segment-archive`` Prefect flow once: tracked on the server
``PREFECT_API_URL`` names, else on Prefect's temporary local server.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unet_tiles.cli.options import (
    add_cluster_options,
    add_config_option,
    add_request_options,
    cluster_options,
    request_options,
)

if TYPE_CHECKING:
    import argparse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "archive", help="segment every image under a folder that is not segmented yet",
        description="Find zarr / OME-Zarr images under ROOT (a folder or fsspec URL, "
        "recursively), skip those whose output in OUT already records the same model, "
        "parameters and input content, and segment the rest on one dask cluster. "
        "Exit status 1 if some image failed (all others are still done).",
    )
    p.add_argument("root", metavar="ROOT")
    p.add_argument("--output-root", required=True, metavar="OUT",
                   help="outputs go to OUT/<path of the image under ROOT>")
    add_request_options(p)
    # None: the flow's default, $UNET_TILES_CLUSTER of the worker, else local.
    add_cluster_options(p, default=None)
    p.add_argument("--max-concurrent", type=int, default=2, metavar="N",
                   help="images segmented at once on the shared cluster (default 2)")
    p.add_argument("--previews", action="store_true",
                   help="write OUTPUT.preview.png beside each segmented image's output "
                   "(named in the report)")
    add_config_option(p)
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.errors import ArchiveFailedError, UsageError

    if args.max_concurrent < 1:
        raise UsageError(f"`max_concurrent` must be at least 1, got {args.max_concurrent}")
    from unet_tiles.flows import allow_slow_server_start

    allow_slow_server_start()
    from unet_tiles.flows.archive import segment_archive

    _quiet_after_prefect_import(args)
    state = segment_archive(
        root=args.root, output_root=args.output_root, **request_options(args),
        **cluster_options(args), max_concurrent=args.max_concurrent,
        previews=args.previews, return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, ArchiveFailedError):
        rows = [o.row() for o in result.outcomes]  # type: ignore[attr-defined]
    elif isinstance(result, BaseException):
        raise result
    else:
        rows = result
    for row in rows:
        print(format_row(row))
    failed = sum(row["status"] == "failed" for row in rows)
    print(f"{len(rows)} image(s): {sum(r['status'] == 'done' for r in rows)} segmented, "
          f"{sum(r['status'] == 'skipped' for r in rows)} skipped, {failed} failed")
    return 1 if failed else 0


def _quiet_after_prefect_import(args: argparse.Namespace) -> None:
    import logging

    # Importing Prefect applies its logging config, which resets the levels the
    # CLI set; distributed's per-worker INFO lines are noise to a user.
    if not getattr(args, "verbose", False):
        for name in ("distributed", "dask_cuda"):
            logging.getLogger(name).setLevel(logging.WARNING)


def format_row(row: dict[str, Any]) -> str:
    if row["status"] == "done":
        preview = f"; preview {row['preview']}" if row.get("preview") else ""
        return f"done     {row['image']} -> {row['output']} ({row['seconds']:.1f} s{preview})"
    if row["status"] == "skipped":
        return f"skipped  {row['image']} ({row['reason']})"
    return f"FAILED   {row['image']}: {row['reason']}"
