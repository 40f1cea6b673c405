"""The U-Net paper's training recipe, each part switchable.

One step: sample a batch of augmented valid-convolution tiles (``augment``),
weigh each output pixel's softmax cross-entropy by the precomputed weight map
(``weightmap``), take an optimiser step at the scheduled learning rate. Every
random choice of step ``s`` comes from ``(seed, s)``, so a resumed run repeats
the steps an uninterrupted one would have taken.

Input normalisation (mean / std of the training pixels) is fixed into the model
config before the first step: inference applies exactly the same function to
every tile.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from unet_tiles import __version__
from unet_tiles.errors import OutputConflictError, UsageError
from unet_tiles.training.augment import AugmentConfig, sample_tile
from unet_tiles.training.weightmap import (
    class_weights,
    instances_to_classes,
    separated_objects,
    weight_map,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    import torch

    from unet_tiles.model.unet import UNet
    from unet_tiles.training.data import Pair

logger = logging.getLogger(__name__)

MASK_KINDS = ("instances", "classes")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """The recipe: architecture, targets, loss, augmentation and optimisation."""

    dims: int = 2
    depth: int = 4
    base_channels: int = 64
    padding: str = "valid"
    norm: str = "none"
    dropout: float = 0.5
    mask_kind: str = "instances"
    border_class: bool = False
    class_names: tuple[str, ...] = ()
    class_balance: bool = True
    w0: float = 10.0
    sigma_px: float = 5.0
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    tile_px: int = 256
    batch_size: int = 4
    steps: int = 2000
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.99
    schedule: str = "cosine"
    warmup_steps: int = 100
    val_every: int = 100
    seed: int = 0

    def __post_init__(self) -> None:
        for name, value, allowed in (
            ("mask_kind", self.mask_kind, MASK_KINDS),
            ("optimizer", self.optimizer, OPTIMIZERS),
            ("schedule", self.schedule, SCHEDULES),
        ):
            if value not in allowed:
                raise UsageError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("tile_px", "batch_size", "steps", "val_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise UsageError(f"lr must be positive, got {self.lr}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["class_names"] = list(self.class_names)
        data["augment"] = self.augment.to_dict()
        data["augment"]["gain"] = list(self.augment.gain)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        values = dict(data)
        values["class_names"] = tuple(values.get("class_names", ()))
        values["augment"] = AugmentConfig.from_dict(values.get("augment", {}))
        return cls(**values)


@dataclass(frozen=True)
class Prepared:
    """Training targets computed once per image (the paper precomputes weight maps)."""

    images: list[np.ndarray]
    classes: list[np.ndarray]
    weights: list[np.ndarray]
    instances: list[np.ndarray] | None


def _targets(pairs: Sequence[Pair], config: TrainConfig) -> tuple[list[np.ndarray],
                                                                   list[np.ndarray] | None]:
    if config.mask_kind == "instances":
        return [instances_to_classes(p.mask, config.border_class) for p in pairs], [
            p.mask for p in pairs
        ]
    return [p.mask.astype(np.uint8) for p in pairs], None


def class_count(config: TrainConfig, classes: Sequence[np.ndarray]) -> int:
    if config.mask_kind == "instances":
        return 3 if config.border_class else 2
    return max(2, max(int(c.max()) for c in classes) + 1)


def prepare(pairs: Sequence[Pair], config: TrainConfig, classes_n: int,
            per_class: np.ndarray) -> Prepared:
    classes, instances = _targets(pairs, config)
    weights = []
    for pair, target in zip(pairs, classes, strict=True):
        if config.mask_kind == "instances":
            objects = separated_objects(pair.mask)
        else:
            objects = instances_from_mask(target)
        weights.append(weight_map(target, objects, per_class, config.w0, config.sigma_px))
    return Prepared([p.image for p in pairs], classes, weights, instances)


def instances_from_mask(classes: np.ndarray) -> np.ndarray:
    """Objects of a class mask: connected components of the non-background pixels."""
    from scipy import ndimage

    labels, _ = ndimage.label(classes > 0)
    return np.asarray(labels)


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant or cosine decay to 1% of ``lr``."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    progress = (step - config.warmup_steps) / max(config.steps - config.warmup_steps, 1)
    return config.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    import torch

    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def batch(data: Prepared, model: UNet, config: TrainConfig, step: int,
          intensity_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch of step ``step``: a pure function of (seed, step)."""
    rng = np.random.default_rng([config.seed, step])
    size = model.valid_size(config.tile_px + 2 * model.halo[0])
    out = model.output_size(size)
    assert out is not None
    in_shape, out_shape = (size,) * config.dims, (out,) * config.dims
    # Images are picked in proportion to their area, so every pixel is equally likely.
    areas = np.array([c.size for c in data.classes], dtype=np.float64)
    tiles = []
    for _ in range(config.batch_size):
        k = int(rng.choice(len(areas), p=areas / areas.sum()))
        tiles.append(sample_tile(data.images[k], data.classes[k], data.weights[k], in_shape,
                                 out_shape, rng, config.augment, intensity_scale))
    return (np.stack([t.image for t in tiles]), np.stack([t.classes for t in tiles]),
            np.stack([t.weights for t in tiles]))


def weighted_loss(logits: torch.Tensor, classes: torch.Tensor,
                  weights: torch.Tensor) -> torch.Tensor:
    """Pixel-wise softmax cross-entropy weighted by the weight map (paper eq. 1)."""
    import torch.nn.functional as F

    per_pixel = F.cross_entropy(logits.float(), classes, reduction="none")
    return (per_pixel * weights).mean()


@dataclass(frozen=True)
class TrainResult:
    directory: Path
    steps: int
    best_step: int
    best: dict[str, float]
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("`device` cuda asked for but no CUDA device is available; use cpu")
    return name


def train(
    output: str | Path,
    train_pairs: Sequence[Pair],
    val_pairs: Sequence[Pair],
    config: TrainConfig,
    *,
    device: str = "auto",
    amp: bool = True,
    overwrite: bool = False,
    progress: bool = False,
    data_names: dict[str, Any] | None = None,
    stop_at: int | None = None,
) -> TrainResult:
    """Train a U-Net into the model directory ``output`` (resuming a matching run).

    Args:
        output: Model directory: best model as ``config.json`` + ``weights.safetensors``,
            resume state under ``checkpoint/``.
        train_pairs: Training images and masks.
        val_pairs: Validation images and masks (may be empty: the last step is kept).
        config: The recipe.
        device: ``auto``, ``cpu`` or ``cuda[:N]``.
        amp: Mixed precision (float16 autocast) when on a GPU.
        overwrite: Start afresh even if ``output`` holds another run.
        progress: Show a progress bar with loss and validation metrics.
        data_names: Recorded in the config (where the data came from).
        stop_at: Checkpoint and return after this step (time-sliced jobs); rerun to go on.
    """
    import torch

    from unet_tiles.model.files import save_model
    from unet_tiles.model.unet import UNetConfig, build_unet
    from unet_tiles.training.data import load_checkpoint, normalization, read_state, save_checkpoint
    from unet_tiles.training.metrics import predict_classes, score

    started = time.perf_counter()
    out_dir = Path(output)
    device = _device(device)
    use_amp = amp and device.startswith("cuda")
    if not train_pairs:
        raise UsageError("no training images; give `images` and `masks`")
    for pair in (*train_pairs, *val_pairs):
        if pair.mask.ndim != config.dims:
            raise UsageError(f"{pair.name}: mask is {pair.mask.ndim}D but `dims` is {config.dims}")

    classes_train, _ = _targets(train_pairs, config)
    classes_n = class_count(config, classes_train)
    counts = np.zeros(classes_n, np.int64)
    for c in classes_train:
        counts += np.bincount(c.ravel(), minlength=classes_n)[:classes_n]
    per_class = class_weights(counts) if config.class_balance else np.ones(classes_n, np.float32)
    offset, scale = normalization(train_pairs)
    names = config.class_names or (
        ("background", "object", "border")[:classes_n] if config.mask_kind == "instances"
        else tuple(f"class{k}" for k in range(classes_n))
    )
    if len(names) != classes_n:
        raise UsageError(f"{len(names)} class names for {classes_n} classes in the masks")
    model_config = UNetConfig(
        dims=config.dims, in_channels=train_pairs[0].image.shape[0], classes=classes_n,
        depth=config.depth, base_channels=config.base_channels, padding=config.padding,
        norm=config.norm, dropout=config.dropout, input_offset=offset, input_scale=scale,
        class_names=tuple(names),
    )
    recipe = config.to_dict()
    model = build_unet(model_config, seed=config.seed).to(device)
    optimizer = make_optimizer(model, config)
    state: dict[str, Any] = {"step": 0, "best": None, "best_step": 0, "history": []}
    previous = read_state(out_dir)
    if previous is not None and not overwrite:
        if previous.get("recipe") != recipe:
            raise OutputConflictError(
                f"{out_dir} holds a training run with another recipe; rerun with `overwrite` "
                "or choose another directory"
            )
        state = load_checkpoint(out_dir, model, optimizer)
        logger.info("resuming %s at step %d", out_dir, state["step"])
    elif (out_dir / "config.json").exists() and not overwrite:
        raise OutputConflictError(f"{out_dir} already holds a model; rerun with `overwrite`")

    data = prepare(train_pairs, config, classes_n, per_class)
    val = prepare(val_pairs, config, classes_n, per_class) if val_pairs else None
    intensity_scale = float(1 / scale[0])
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)

    def validate() -> dict[str, float]:
        assert val is not None
        model.eval()
        predicted = [predict_classes(model, image, device=device) for image in val.images]
        return score(val.classes, predicted, classes_n, val.instances)

    def record(step: int, metrics: dict[str, float] | None) -> None:
        is_best = metrics is None or state["best"] is None or (
            metrics["mean_iou"] >= state["best"]["mean_iou"]
        )
        if metrics is not None:
            state["history"].append({"step": step, **metrics})
        if is_best:
            state["best"], state["best_step"] = metrics or {}, step
            _save_best(step)
        state["step"] = step
        save_checkpoint(out_dir, model, optimizer, {**state, "recipe": recipe})

    def _save_best(step: int) -> None:
        model.config = model_config.with_(training=training_record(step))
        cpu = build_unet(model.config).eval()
        cpu.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
        save_model(cpu, out_dir)

    def training_record(step: int) -> dict[str, Any]:
        return {
            "tool": f"unet-tiles {__version__}",
            "recipe": recipe,
            "class_weights": [float(w) for w in per_class],
            "normalization": "mean/std of the training pixels",
            "data": data_names or {"train": [p.name for p in train_pairs],
                                   "validation": [p.name for p in val_pairs]},
            "step": step,
            "metrics": {"best_step": state["best_step"], "best": state["best"],
                        "history": state["history"][-50:]},
            "device": device,
        }

    from tqdm import tqdm

    bar = tqdm(total=config.steps, initial=state["step"], disable=not progress,
               desc="train", unit="step", dynamic_ncols=True)
    smooth = None
    for step in range(state["step"], config.steps):
        model.train()
        torch.manual_seed(config.seed * 1_000_003 + step)  # dropout of this step
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, step)
        x, y, w = (torch.from_numpy(a).to(device) for a in batch(data, model, config, step,
                                                                  intensity_scale))
        with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=use_amp):
            logits = model(x)
        loss = weighted_loss(logits, y, w)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        value = float(loss.detach())
        smooth = value if smooth is None else 0.9 * smooth + 0.1 * value
        bar.update(1)
        done = step + 1
        if done % config.val_every == 0 or done == config.steps or done == stop_at:
            metrics = validate() if val is not None else None
            record(done, metrics)
            if metrics:
                bar.set_postfix(loss=f"{smooth:.3f}", **{
                    k: f"{v:.3f}" for k, v in metrics.items() if k in ("iou_1", "mean_iou", "ap50")
                })
        else:
            bar.set_postfix(loss=f"{smooth:.3f}")
        if done == stop_at:
            break
    bar.close()
    return TrainResult(out_dir, state["step"], state["best_step"], state["best"] or {},
                       time.perf_counter() - started, state["history"])

