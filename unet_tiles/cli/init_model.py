"""``unet-tiles init-model DIR``: write a randomly (He-)initialised model directory."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import argparse


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "init-model", help="write a randomly initialised U-Net model directory"
    )
    p.add_argument("directory", metavar="DIR")
    p.add_argument("--dims", type=int, choices=(2, 3), default=2)
    p.add_argument("--in-channels", type=int, default=1)
    p.add_argument("--classes", type=int, default=2)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--base-channels", type=int, default=64)
    p.add_argument("--padding", choices=("valid", "same"), default="valid")
    p.add_argument("--norm", choices=("none", "batch"), default="none")
    p.add_argument("--seed", type=int, default=0)
    return p


def run(args: argparse.Namespace) -> int:
    from unet_tiles.model.files import model_hash, save_model
    from unet_tiles.model.unet import UNetConfig, build_unet

    config = UNetConfig(
        dims=args.dims,
        in_channels=args.in_channels,
        classes=args.classes,
        depth=args.depth,
        base_channels=args.base_channels,
        padding=args.padding,
        norm=args.norm,
    )
    model = build_unet(config, seed=args.seed)
    path = save_model(model, args.directory)
    print(f"wrote {path} (halo {model.halo[0]} px, model hash {model_hash(path)[:12]})")
    return 0
