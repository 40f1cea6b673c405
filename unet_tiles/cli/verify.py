"""``unet-tiles verify OUTPUT``: is an output of unet-tiles intact?

Decodes every chunk (zarr v3 outputs carry crc32c checksums) and checks that
every block marked done is fully stored (``pipeline.verify``). Exit 0 with a
summary line, or 1 with one line per damaged chunk, named by block and chunk;
a rerun of the same ``segment`` command redoes the damaged blocks. A path that
is not an output of unet-tiles: one line, exit 2.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "verify", help="check an output's chunks and done blocks",
        description="Read and decode every chunk of OUTPUT, check the crc32c checksums "
        "(zarr v3 outputs) and that every block marked done is fully stored. Prints a "
        "summary and exits 0, or names each damaged chunk by block and exits 1; rerun "
        "the segment command to redo the damaged blocks.",
    )
    p.add_argument("output", metavar="OUTPUT",
                   help="an output of unet-tiles; local path or fsspec URL")
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.pipeline.verify import verify_output

    report = verify_output(args.output)
    if report.ok:
        print(report.summary())
        return 0
    for damage in report.damage:
        print(damage.line())
    print(f"unet-tiles: {len(report.damage)} damaged chunk(s) in {args.output!r}; rerun the "
          "segment command to redo the damaged blocks", file=sys.stderr)
    return 1
