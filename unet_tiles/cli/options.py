"""Options that several commands share, declared once, and how errors spell them.

``segment``, ``archive`` and ``watch`` take the same request options (what to
compute and how) and cluster options (where); ``demo`` takes the cluster
options too, ``bench`` the model option. Each option's ``dest`` is the ``SegmentRequest`` field or
``connect`` argument it sets, so ``request_options`` and ``cluster_options``
read them back without a table of names.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from unet_tiles.engine.run import OUTPUT_FORMATS, OUTPUT_KINDS, PROBABILITY_DTYPES
from unet_tiles.pipeline.predict import PRECISIONS

if TYPE_CHECKING:
    import argparse

DEVICES = ("auto", "cpu", "cuda")
# SegmentRequest fields set by add_request_options (model_dir by add_model).
REQUEST_FIELDS = ("model_dir", "output_kind", "dtype", "block_size", "tile_size", "batch_size",
                  "axes", "device", "precision", "allow_missing_chunks", "output_format",
                  "into_source",
                  "label_name", "level", "shard", "instance_class", "connectivity",
                  "min_size", "consecutive", "objects_csv", "split", "seed_probability",
                  "split_distance", "read_cache_mb", "configuration")


class OutputChoices(tuple[str, ...]):
    """``--output``'s choices: lists ``OUTPUT_KINDS``, admits them in any order
    (``instances,labels``), so argparse and ``--config`` files check it early."""

    def __new__(cls) -> OutputChoices:
        return super().__new__(cls, OUTPUT_KINDS)

    def __contains__(self, value: object) -> bool:
        from unet_tiles.engine.run import canonical_output
        from unet_tiles.errors import UsageError

        if not isinstance(value, str):
            return False
        try:
            canonical_output(value)
        except UsageError:
            return False
        return True


def add_model(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("--model", dest="model_dir", required=required, metavar="DIR",
                   help="model directory (config.json + weights.safetensors)")


def add_request_options(p: argparse.ArgumentParser) -> None:
    """What to compute and how: the ``SegmentRequest`` fields other than paths."""
    add_model(p)
    group = p.add_argument_group("segmentation")
    group.add_argument("--output", dest="output_kind", default="labels",
                       choices=OutputChoices(), metavar="KIND",
                       help="what to write: labels (default), probabilities, both, "
                       "instances, or several joined by commas, e.g. labels,instances")
    group.add_argument("--dtype", default="float16", choices=PROBABILITY_DTYPES,
                       help="dtype of probabilities (default float16)")
    group.add_argument("--block-size", type=int, default=None, metavar="N",
                       help="block edge in pixels, in whole output chunks (default 2048 in 2D, "
                       "192 in 3D; an unfinished output keeps the block it was begun with)")
    group.add_argument("--tile-size", type=int, default=None, metavar="N",
                       help="target tile output edge in pixels (default in 2D: the largest "
                       "of 1024 and 768 whose first-level feature map fits 48 MiB, else 512, "
                       "e.g. 1024 for the demo model; 96 in 3D; an unfinished output keeps "
                       "the tile it was begun with)")
    group.add_argument("--batch-size", type=int, default=None, metavar="N",
                       help="tiles per forward pass (default: 1 on CPU, what half the "
                       "free memory holds on a GPU)")
    group.add_argument("--axes", default=None, help="input axes, e.g. yx, cyx, zyx, tczyx")
    group.add_argument("--device", default="auto", choices=DEVICES)
    group.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="the forward passes' dtype: auto (float16 on a GPU, float32 on "
                       "CPU; default), float32, or bfloat16 (3x faster on CPUs with native "
                       "bfloat16, AVX512-BF16 or AMX; about 0.1-0.3 %% of pixels change class)")
    group.add_argument("--shard", type=int, default=None, metavar="N",
                       help="zarr v3 shards of about N px a side (whole output chunks; blocks "
                       "become whole shards); default: no sharding")
    group.add_argument("--level", type=int, default=0, metavar="N",
                       help="OME-Zarr multiscales level to segment (default 0: full resolution)")
    group.add_argument("--format", dest="output_format", default="auto",
                       choices=OUTPUT_FORMATS,
                       help="output layout: auto (OME-Zarr for an OME-Zarr input, else plain "
                       "zarr), plain, or ome (an NGFF label image with a pyramid); "
                       "docs/output.md")
    group.add_argument("--into-source", action="store_true",
                       help="write the labels into the OME-Zarr input's labels/NAME "
                       "(the image arrays are never touched)")
    group.add_argument("--label-name", default="unet-tiles", metavar="NAME",
                       help="name of the label image with --into-source (default unet-tiles)")
    objects = p.add_argument_group("instances (--output instances)")
    objects.add_argument("--instance-class", default=None, metavar="CLASSES",
                         help="class names or indices whose connected components are "
                         "objects, comma-separated (default: every class but background)")
    objects.add_argument("--connectivity", default="1", choices=("1", "full"),
                         help="neighbours that connect: 1, faces only (default, as "
                         "scipy.ndimage.label), or full (diagonals too)")
    objects.add_argument("--min-size", type=int, default=0, metavar="PX",
                         help="drop objects of fewer pixels (voxels); default 0: keep all")
    objects.add_argument("--no-consecutive", dest="consecutive", action="store_false",
                         help="keep the sparse uint64 ids instead of renumbering them 1..N")
    objects.add_argument("--objects-csv", action="store_true",
                         help="also write the object table as OUTPUT/objects.csv")
    objects.add_argument("--split", default="none", choices=("none", "border", "probability"),
                         help="split touching cells by a seeded watershed (seeds flood by "
                         "geodesic distance, ties to the higher probability): seeds are the "
                         "instance classes without the class named border, or the pixels of "
                         "at least --seed-probability (default none)")
    objects.add_argument("--seed-probability", type=float, default=0.9, metavar="P",
                         help="with --split probability: the seeds' least probability "
                         "(default 0.9)")
    objects.add_argument("--split-distance", type=int, default=10, metavar="PX",
                         help="with --split: the farthest a cell grows from its seed "
                         "(default 10 px)")
    group.add_argument("--read-cache-mb", type=int, default=None, metavar="MB",
                       help="decoded input chunks each worker keeps for the next blocks, "
                       "whose windows reach into them (default 256, at most a sixteenth of "
                       "a worker's memory limit; 0: none)")
    group.add_argument("--allow-missing-chunks", action="store_true",
                       help="read missing input chunks as the fill value (for stores written "
                       "without empty chunks); by default a missing chunk fails its block")


def add_cluster_options(p: argparse.ArgumentParser, default: str | None = "local") -> None:
    """Where the blocks run: ``engine.cluster.connect``'s arguments."""
    group = p.add_argument_group("cluster")
    group.add_argument("--cluster", default=default,
                       help="local (default), cpu, cuda, a scheduler address tcp://host:port, "
                       "or a cluster spec FILE.yaml (kind: slurm, kubernetes or scheduler; "
                       "examples in deploy/cluster-*.yaml)")
    group.add_argument("--workers", type=int, default=None, metavar="N",
                       help="workers of a local cluster")
    group.add_argument("--threads-per-worker", type=int, default=None, metavar="N")


def add_prefect(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--prefect", action="store_true",
                   help=f"{what}; automatic when PREFECT_API_URL is set, else on Prefect's "
                   "temporary local server (slower to start)")


def add_no_progress(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_config_option(p: argparse.ArgumentParser) -> None:
    """``--config FILE``: the command's options from YAML (``cli/config.py``)."""
    p.add_argument("--config", metavar="FILE", default=None,
                   help="read this command's options from a YAML file: keys are the long "
                   "option names (block_size or block-size) and the positional arguments "
                   "by name; flags given on the command line override it")


def request_options(args: argparse.Namespace) -> dict[str, Any]:
    """The ``SegmentRequest`` fields the request options set, and, for a run started
    from a ``--config`` file, the effective configuration (file and flags merged,
    cli/config.py) for the provenance record. Without a file nothing is recorded:
    the same run from the command line, a flow or Python gives the same bytes."""
    options = {name: getattr(args, name) for name in REQUEST_FIELDS if name != "configuration"}
    used_file = getattr(args, "config", None) is not None
    return {**options,
            "configuration": getattr(args, "effective_config", None) if used_file else None}


def cluster_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"cluster": args.cluster, "workers": args.workers,
            "threads_per_worker": args.threads_per_worker}


def progress_option(args: argparse.Namespace) -> bool | None:
    """False with ``--no-progress``, else None: a bar only on a terminal."""
    return False if args.no_progress else None


def flag_for(parser: argparse.ArgumentParser | None) -> Any:
    """``name -> "--flag"`` for the options of ``parser``: how the CLI spells the
    parameter names in error messages (``errors.spell_parameters``)."""
    flags: dict[str, str] = {}
    if parser is not None:
        for action in parser._actions:
            if action.option_strings:
                flags.setdefault(action.dest, max(action.option_strings, key=len))

    def spell(name: str) -> str:
        return flags.get(name) or "--" + name.replace("_", "-")

    return spell
