"""``unet-tiles train OUT --images ... --masks ...``: train a U-Net with the paper's recipe."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse

_ON_OFF = ("elastic", "rotate", "flip", "intensity", "class-balance")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "train",
        help="train a U-Net from annotated images (the U-Net paper's recipe)",
        description="Train a U-Net into model directory OUT. Rerunning the same command "
        "resumes an interrupted run.",
    )
    p.add_argument("output", metavar="OUT", help="model directory to write")
    data = p.add_argument_group("data")
    data.add_argument("--images", nargs="+", required=True,
                      help="image files (TIFF/PNG), zarr stores, or folders of files")
    data.add_argument("--masks", nargs="+", required=True, help="masks, one per image")
    data.add_argument("--val-images", nargs="+", default=None)
    data.add_argument("--val-masks", nargs="+", default=None)
    data.add_argument("--val-fraction", type=float, default=0.2,
                      help="held out when no --val-images (default 0.2)")
    data.add_argument("--mask-kind", choices=("instances", "classes"), default="instances",
                      help="instance ids (converted to classes) or class ids per pixel")
    data.add_argument("--border-class", action="store_true",
                      help="instances: mark touching borders as a third class, not background")
    data.add_argument("--class-names", default=None, help="comma-separated, background first")
    arch = p.add_argument_group("architecture")
    arch.add_argument("--dims", type=int, choices=(2, 3), default=2)
    arch.add_argument("--depth", type=int, default=4)
    arch.add_argument("--base-channels", type=int, default=64)
    arch.add_argument("--padding", choices=("valid", "same"), default="valid")
    arch.add_argument("--norm", choices=("none", "batch"), default="none")
    arch.add_argument("--dropout", type=float, default=0.5,
                      help="at the end of the contracting path (default 0.5)")
    recipe = p.add_argument_group("recipe")
    recipe.add_argument("--tile", type=int, default=256, help="output tile size in px")
    recipe.add_argument("--batch-size", type=int, default=4)
    recipe.add_argument("--steps", type=int, default=2000)
    recipe.add_argument("--optimizer", choices=("adamw", "sgd"), default="adamw")
    recipe.add_argument("--lr", type=float, default=1e-3)
    recipe.add_argument("--weight-decay", type=float, default=1e-4)
    recipe.add_argument("--momentum", type=float, default=0.99, help="SGD only")
    recipe.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    recipe.add_argument("--warmup", type=int, default=100, help="warm-up steps")
    recipe.add_argument("--val-every", type=int, default=100)
    recipe.add_argument("--w0", type=float, default=10.0, help="border weight (0: off)")
    recipe.add_argument("--sigma", type=float, default=5.0, help="border weight width, px")
    recipe.add_argument("--elastic-sigma", type=float, default=10.0, help="px")
    for name in _ON_OFF:
        recipe.add_argument(f"--no-{name}", action="store_true", help=f"switch {name} off")
    run_group = p.add_argument_group("run")
    run_group.add_argument("--seed", type=int, default=0)
    run_group.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    run_group.add_argument("--no-amp", action="store_true", help="no mixed precision on GPU")
    run_group.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    run_group.add_argument("--overwrite", action="store_true", help="start afresh in OUT")
    run_group.add_argument("--no-progress", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.errors import UsageError
    from unet_tiles.training.augment import AugmentConfig
    from unet_tiles.training.data import load_pairs, split_validation
    from unet_tiles.training.train import TrainConfig, train

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    config = TrainConfig(
        dims=args.dims, depth=args.depth, base_channels=args.base_channels,
        padding=args.padding, norm=args.norm, dropout=args.dropout, mask_kind=args.mask_kind,
        border_class=args.border_class,
        class_names=tuple(args.class_names.split(",")) if args.class_names else (),
        class_balance=not args.no_class_balance, w0=args.w0, sigma_px=args.sigma,
        augment=AugmentConfig(
            elastic=not args.no_elastic, elastic_sigma_px=args.elastic_sigma,
            rotate=not args.no_rotate, flip=not args.no_flip, intensity=not args.no_intensity,
        ),
        tile_px=args.tile, batch_size=args.batch_size, steps=args.steps,
        optimizer=args.optimizer, lr=args.lr, weight_decay=args.weight_decay,
        momentum=args.momentum, schedule=args.schedule, warmup_steps=args.warmup,
        val_every=args.val_every, seed=args.seed,
    )
    pairs = load_pairs(args.images, args.masks, args.dims)
    if args.val_images or args.val_masks:
        if not (args.val_images and args.val_masks):
            raise UsageError("give both --val-images and --val-masks, or neither")
        train_pairs, val_pairs = pairs, load_pairs(args.val_images, args.val_masks, args.dims)
    else:
        train_pairs, val_pairs = split_validation(pairs, args.val_fraction)
    result = train(args.output, train_pairs, val_pairs, config, device=args.device,
                   amp=not args.no_amp, overwrite=args.overwrite, progress=not args.no_progress)
    best = ", ".join(f"{k} {v:.3f}" for k, v in result.best.items())
    print(f"wrote {result.directory} (best at step {result.best_step}: {best or 'no validation'};"
          f" {result.seconds:.0f} s)")
    return 0
