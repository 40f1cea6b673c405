"""The ``unet-tiles`` command.

Each subcommand lives in its own module with ``add_parser(subparsers)`` and
``run(args) -> int``; options several commands share are in ``options``. Heavy
libraries (torch, distributed, prefect) are imported inside ``run`` so ``--help``
stays fast. Errors derived from ``UnetTilesError`` become one line on stderr and
exit status 2, a ``RunFailedError`` one line and exit 1, anything else a
traceback and exit 1. Messages name parameters as the command's flags.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import TYPE_CHECKING

from unet_tiles import __version__
from unet_tiles.cli.config import parse_command_line
from unet_tiles.cli.options import flag_for
from unet_tiles.errors import RunFailedError, UnetTilesError, spell_parameters

if TYPE_CHECKING:
    from collections.abc import Sequence

COMMANDS = ("init_model", "segment", "train", "demo", "archive", "watch", "bench", "inspect",
            "verify")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        # argparse's default prints the whole usage; one line is the contract.
        self.exit(2, f"unet-tiles: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="unet-tiles", description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--version", action="version", version=f"unet-tiles {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMANDS:
        # A command that fails to import is a broken install: let it fail loudly.
        module = importlib.import_module(f"unet_tiles.cli.{name}")
        sub = module.add_parser(subparsers)
        sub.set_defaults(run=module.run, parser=sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        # --config FILE: its options merged in, the command line's flags winning.
        args = parse_command_line(parser, argv)
    except UnetTilesError as exc:
        print(f"unet-tiles: error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # distributed logs every worker start and stop, and warns when it kills a
        # worker slow to stop at shutdown; users need none of it. Its loggers are
        # configured from dask's config when distributed is imported (later).
        os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
        for name in ("distributed", "dask_cuda"):
            logging.getLogger(name).setLevel(logging.ERROR)
        logging.getLogger("prefect").setLevel(logging.WARNING)
    spell = flag_for(getattr(args, "parser", None))
    try:
        return int(args.run(args))
    except UnetTilesError as exc:
        print(f"unet-tiles: error: {spell_parameters(str(exc), spell)}", file=sys.stderr)
        return 2
    except RunFailedError as exc:
        print(f"unet-tiles: {spell_parameters(str(exc), spell)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("unet-tiles: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
