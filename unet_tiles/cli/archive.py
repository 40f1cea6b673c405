"""``unet-tiles archive ROOT --output-root OUT --model DIR``: one nightly-style run.

Runs the ``segment-archive`` Prefect flow once: tracked on the server
``PREFECT_API_URL`` names, else on Prefect's temporary local server.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

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
    p.add_argument("--model", required=True, metavar="DIR", help="model directory")
    p.add_argument("--output", dest="output_kind", default="labels",
                   choices=("labels", "probabilities", "both"))
    p.add_argument("--dtype", default="float16", choices=("float16", "float32"))
    p.add_argument("--block-size", type=int, default=None, metavar="N")
    p.add_argument("--tile-size", type=int, default=None, metavar="N")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per forward pass (default: 1 on CPU, 8 on GPU)")
    p.add_argument("--axes", default=None)
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--allow-missing-chunks", action="store_true",
                   help="read absent input chunks as the fill value instead of failing")
    p.add_argument("--cluster", default=None,
                   help="local (default), cpu, cuda, or a scheduler address tcp://host:port")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--threads-per-worker", type=int, default=None)
    p.add_argument("--max-concurrent", type=int, default=2, metavar="N",
                   help="images segmented at once on the shared cluster (default 2)")
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.errors import UsageError

    if args.max_concurrent < 1:
        raise UsageError(f"--max-concurrent must be at least 1, got {args.max_concurrent}")
    from flows import allow_slow_server_start

    allow_slow_server_start()
    from flows.archive import ArchiveFailedError, segment_archive

    _quiet_after_prefect_import(args)
    state = segment_archive(
        root=args.root, output_root=args.output_root, model_dir=args.model,
        output_kind=args.output_kind, dtype=args.dtype, block_size=args.block_size,
        tile_size=args.tile_size, batch_size=args.batch_size, axes=args.axes,
        device=args.device, allow_missing_chunks=args.allow_missing_chunks,
        cluster=args.cluster, workers=args.workers,
        threads_per_worker=args.threads_per_worker, max_concurrent=args.max_concurrent,
        return_state=True,
    )
    result = state.result(raise_on_failure=False)
    if isinstance(result, ArchiveFailedError):
        rows = [o.row() for o in result.outcomes]
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
        return f"done     {row['image']} -> {row['output']} ({row['seconds']:.1f} s)"
    if row["status"] == "skipped":
        return f"skipped  {row['image']} ({row['reason']})"
    return f"FAILED   {row['image']}: {row['reason']}"


if __name__ == "__main__":
    sys.exit(0)
