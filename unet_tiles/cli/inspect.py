"""``unet-tiles inspect PATH``: what unet-tiles sees in a zarr store.

An input's format, axes, shape, dtype, chunks, shards, OME levels and labels;
an output's provenance record and how many blocks are done. Reads metadata
only (``pipeline.inspect``); ``--json`` prints the same report as JSON.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

    from unet_tiles.pipeline.inspect import ArrayReport, OutputReport, StoreReport


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "inspect", help="show what is in a zarr store (input or output)",
        description="Show what unet-tiles sees in PATH: for an input its zarr format, "
        "OME-Zarr version, axes, shape, dtype, chunks, shards, levels and labels; for an "
        "output of unet-tiles also its provenance and how many blocks are done. Reads "
        "metadata only.",
    )
    p.add_argument("path", metavar="PATH", help="a zarr array or group; local path or fsspec URL")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.pipeline.inspect import inspect_store

    report = inspect_store(args.path)
    print(report.to_json() if args.json else format_report(report))
    return 0


def format_report(report: StoreReport) -> str:
    """The report as an aligned listing: one field a line, tables indented under it."""
    rows: list[tuple[str, list[str]]] = [
        ("store", [report.url]),
        ("zarr", [f"v{report.zarr_format} {report.node}"]),
        ("OME-Zarr", [report.ome_version or "no"]),
        ("axes", [_axes(report.axes)]),
    ]
    image = report.image
    if image is not None:
        if report.node == "group":
            rows.append(("image", [image.path]))
        rows += [
            ("shape", [_dims(image.shape)]),
            ("dtype", [image.dtype]),
            ("chunks", [_dims(image.chunks)]),
            ("shards", [_dims(image.shards) if image.shards else "none"]),
        ]
    if report.levels:
        rows.append(("levels", _table([
            [level.path, _dims(level.shape) if level.shape else "missing",
             f"scale {_dims(level.scale)}" if level.scale else ""]
            for level in report.levels])))
    if report.ome_version or report.labels:
        rows.append(("labels", [", ".join(report.labels) or "none"]))
    if report.arrays:
        rows.append(("arrays", _table([_array_row(a) for a in report.arrays])))
    if report.output is not None:
        rows += _output_rows(report.output)
    if report.problems:
        rows.append(("problems", list(report.problems)))
    width = max(len(key) for key, _ in rows) + 2
    lines = []
    for key, values in rows:
        for i, value in enumerate(values or [""]):
            lines.append(f"{key if i == 0 else '':<{width}}{value}".rstrip())
    return "\n".join(lines)


def _output_rows(output: OutputReport) -> list[tuple[str, list[str]]]:
    rows: list[tuple[str, list[str]]] = [
        ("unet-tiles", [f"output, provenance format {output.format_version}"]),
        ("version", [output.version]),
        ("model hash", [output.model_hash]),
        ("status", [output.status]),
    ]
    if output.blocks is not None:
        rows.append(("blocks", [_progress(output.blocks.done, output.blocks.total)]))
    if output.pyramid:
        rows.append(("pyramid", _table([[f"level {level.name}",
                                         _progress(level.done, level.total)]
                                        for level in output.pyramid])))
    rows += [
        ("complete", ["yes" if output.complete else "no"]),
        ("input", [output.input_url or "unknown"]),
        ("fingerprint", [output.input_fingerprint or "none"]),
        ("parameters", [f"{name} = {_value(value)}"
                        for name, value in sorted(output.parameters.items())]),
    ]
    return rows


def _array_row(array: ArrayReport) -> list[str]:
    cells = [array.path, _dims(array.shape), array.dtype, f"chunks {_dims(array.chunks)}"]
    if array.shards:
        cells.append(f"shards {_dims(array.shards)}")
    return cells


def _table(rows: list[list[str]]) -> list[str]:
    """Rows of cells with each column padded to its widest cell."""
    widths = [max(len(row[i]) if i < len(row) else 0 for row in rows)
              for i in range(max(len(row) for row in rows))]
    return ["  ".join(f"{cell:<{widths[i]}}" for i, cell in enumerate(row)).rstrip()
            for row in rows]


def _dims(values: Sequence[float] | None) -> str:
    return " x ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values or ())


def _axes(axes: tuple[str, ...] | None) -> str:
    if not axes:
        return "unnamed (guessed from the shape and the model when segmenting)"
    return "".join(axes) if all(len(a) == 1 for a in axes) else ", ".join(axes)


def _progress(done: int, total: int) -> str:
    # Rounded down: 100 % only when every block is done.
    percent = 100 * done // total if total else 100
    return f"{done} / {total} done ({percent} %)"


def _value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return _dims(value) if all(isinstance(v, int) for v in value) else str(list(value))
    return str(value)
