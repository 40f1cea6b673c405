"""Model directories: ``config.json`` + ``weights.safetensors``, never pickles.

``config.json``::

    {"format_version": 1,
     "architecture": {"dims": 2, "in_channels": 1, "classes": 2, "depth": 4,
                      "base_channels": 64, "padding": "valid", "norm": "none",
                      "dropout": 0.0},
     "normalization": {"offset": [0.0], "scale": [1.0]},
     "class_names": ["background", "foreground"],
     "training": {...}}          # optional: recipe, metrics (free-form)

The model hash is the SHA-256 of the canonical config (without ``training``)
and the weights' tensors, so re-saving the same model gives the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from unet_tiles.errors import ModelFormatError

if TYPE_CHECKING:
    from unet_tiles.model.config import UNetConfig
    from unet_tiles.model.unet import UNet

FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "weights.safetensors"
MAX_CONFIG_BYTES = 1 << 20
MAX_WEIGHTS_BYTES = 8 << 30
_ARCH_FIELDS: dict[str, type | tuple[type, ...]] = {
    "dims": int,
    "in_channels": int,
    "classes": int,
    "depth": int,
    "base_channels": int,
    "padding": str,
    "norm": str,
    "dropout": (int, float),
}
_TOP_FIELDS = {"format_version", "architecture", "normalization", "class_names", "training"}


def config_to_dict(config: UNetConfig) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "architecture": {name: getattr(config, name) for name in _ARCH_FIELDS},
        "normalization": {"offset": list(config.input_offset), "scale": list(config.input_scale)},
        "class_names": list(config.class_names),
        "training": dict(config.training),
    }


def config_from_dict(data: Any, where: str = "config.json") -> UNetConfig:
    """Parse and check a config dict; every problem is one ``ModelFormatError`` line."""
    from unet_tiles.model.config import UNetConfig

    def bad(what: str) -> ModelFormatError:
        return ModelFormatError(f"{where}: {what}")

    if not isinstance(data, dict):
        raise bad("expected a JSON object at the top level")
    unknown = set(data) - _TOP_FIELDS
    if unknown:
        raise bad(f"unknown field(s) {sorted(unknown)}; expected only {sorted(_TOP_FIELDS)}")
    version = data.get("format_version")
    if not isinstance(version, int):
        raise bad("missing integer 'format_version'")
    if version > FORMAT_VERSION:
        raise bad(
            f"format_version {version} is newer than this unet-tiles understands "
            f"({FORMAT_VERSION}); upgrade unet-tiles"
        )
    arch = data.get("architecture")
    if not isinstance(arch, dict):
        raise bad("missing object 'architecture'")
    missing = set(_ARCH_FIELDS) - set(arch)
    if missing:
        raise bad(f"architecture is missing field(s) {sorted(missing)}")
    unknown = set(arch) - set(_ARCH_FIELDS)
    if unknown:
        raise bad(f"architecture has unknown field(s) {sorted(unknown)}")
    for name, kind in _ARCH_FIELDS.items():
        if not isinstance(arch[name], kind) or isinstance(arch[name], bool):
            raise bad(f"architecture.{name} has the wrong type: {arch[name]!r}")
    norm = data.get("normalization", {"offset": [0.0], "scale": [1.0]})
    if not isinstance(norm, dict) or set(norm) != {"offset", "scale"}:
        raise bad("'normalization' must be an object with 'offset' and 'scale' lists")
    for key in ("offset", "scale"):
        values = norm[key]
        if not isinstance(values, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in values
        ):
            raise bad(f"normalization.{key} must be a list of numbers")
    names = data.get("class_names", [])
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise bad("'class_names' must be a list of strings")
    training = data.get("training", {})
    if not isinstance(training, dict):
        raise bad("'training' must be an object")
    try:
        return UNetConfig(
            **{name: arch[name] for name in _ARCH_FIELDS},
            input_offset=tuple(float(v) for v in norm["offset"]),
            input_scale=tuple(float(v) for v in norm["scale"]),
            class_names=tuple(names),
            training=training,
        )
    except ModelFormatError as exc:
        raise bad(str(exc)) from None


def save_model(model: UNet, directory: str | os.PathLike[str]) -> Path:
    """Write ``config.json`` and ``weights.safetensors``, each atomically."""
    from safetensors.torch import save_file

    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tmp_weights = path / f".{WEIGHTS_NAME}.tmp"
    save_file(tensors, str(tmp_weights), metadata={"format": "pt"})
    os.replace(tmp_weights, path / WEIGHTS_NAME)
    tmp_config = path / f".{CONFIG_NAME}.tmp"
    tmp_config.write_text(json.dumps(config_to_dict(model.config), indent=2) + "\n")
    os.replace(tmp_config, path / CONFIG_NAME)
    return path


def read_config(directory: str | os.PathLike[str]) -> UNetConfig:
    path = Path(directory)
    if not path.is_dir():
        raise ModelFormatError(
            f"model directory {str(path)!r} does not exist; create one with "
            "'unet-tiles init-model DIR' or 'unet-tiles train'"
        )
    config_path = path / CONFIG_NAME
    if not config_path.is_file():
        raise ModelFormatError(f"{config_path}: missing; a model directory needs {CONFIG_NAME}")
    if config_path.stat().st_size > MAX_CONFIG_BYTES:
        raise ModelFormatError(f"{config_path}: larger than {MAX_CONFIG_BYTES} bytes")
    try:
        data = json.loads(config_path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelFormatError(f"{config_path}: not valid JSON ({exc})") from None
    return config_from_dict(data, str(config_path))


# Bytes per element of the safetensors dtypes a model's weights may use.
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
                "U8": 1, "BOOL": 1}
MAX_HEADER_BYTES = 100 << 20


def check_model(directory: str | os.PathLike[str]) -> UNetConfig:
    """What ``load_model`` checks, without torch and without reading the weights:
    the config, and the weights file's header (names, shapes, byte ranges) against
    the architecture (``model/geometry.expected_tensors``). The driver plans and
    validates a run from this; the workers load the model."""
    from unet_tiles.model.geometry import expected_tensors

    path = Path(directory)
    config = read_config(path)
    weights_path = path / WEIGHTS_NAME
    if not weights_path.is_file():
        raise ModelFormatError(f"{weights_path}: missing; a model directory needs {WEIGHTS_NAME}")
    size = weights_path.stat().st_size
    if size > MAX_WEIGHTS_BYTES:
        raise ModelFormatError(f"{weights_path}: larger than {MAX_WEIGHTS_BYTES} bytes")
    _check_tensors(weights_path, _safetensors_shapes(weights_path, size),
                   expected_tensors(config))
    return config


def _check_tensors(weights_path: Path, shapes: dict[str, tuple[int, ...]],
                   expected: dict[str, tuple[int, ...]]) -> None:
    """The weights' names and shapes are the architecture's, or one line saying not."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ModelFormatError(
            f"{weights_path}: weights do not match config.json "
            f"(missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "the files belong to different models"
        )
    for name, shape in shapes.items():
        if shape != expected[name]:
            raise ModelFormatError(
                f"{weights_path}: tensor {name!r} has shape {shape}, config.json "
                f"implies {expected[name]}; the files belong to different models"
            )


def _safetensors_shapes(path: Path, size: int) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors header (8-byte length, then JSON)."""
    def corrupt(why: str) -> ModelFormatError:
        return ModelFormatError(f"{path}: corrupt or truncated safetensors file ({why}); "
                                "re-export the model")

    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise corrupt("no header")
        length = int.from_bytes(head, "little")
        if length > min(size - 8, MAX_HEADER_BYTES):
            raise corrupt(f"header of {length} bytes in a file of {size}")
        try:
            header = json.loads(handle.read(length))
        except (ValueError, UnicodeDecodeError) as exc:
            raise corrupt(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise corrupt("header is not a JSON object")
    data_bytes = size - 8 - length
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(int(n) for n in entry["shape"])
            begin, end = (int(n) for n in entry["data_offsets"])
            itemsize = _DTYPE_BYTES[entry["dtype"]]
        except (KeyError, TypeError, ValueError):
            raise corrupt(f"bad header entry for {name!r}") from None
        count = 1
        for n in shape:
            count *= n
        if not 0 <= begin <= end <= data_bytes or end - begin != count * itemsize:
            raise corrupt(f"tensor {name!r} lies outside the file")
        shapes[name] = shape
    return shapes


def load_model(directory: str | os.PathLike[str], device: str = "cpu") -> UNet:
    """Load a model directory into a ``UNet`` in eval mode. Never unpickles."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from unet_tiles.model.unet import UNet

    path = Path(directory)
    config = read_config(path)
    weights_path = path / WEIGHTS_NAME
    if not weights_path.is_file():
        raise ModelFormatError(f"{weights_path}: missing; a model directory needs {WEIGHTS_NAME}")
    if weights_path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise ModelFormatError(f"{weights_path}: larger than {MAX_WEIGHTS_BYTES} bytes")
    try:
        tensors = load_file(str(weights_path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(
            f"{weights_path}: corrupt or truncated safetensors file ({exc}); re-export the model"
        ) from None
    model = UNet(config)
    _check_tensors(weights_path, {k: tuple(v.shape) for k, v in tensors.items()},
                   {k: tuple(v.shape) for k, v in model.state_dict().items()})
    model.load_state_dict(tensors)
    return model.to(device).eval()


def model_hash(directory: str | os.PathLike[str]) -> str:
    """SHA-256 identifying a model: canonical architecture + normalisation + weights bytes."""
    path = Path(directory)
    config = config_to_dict(read_config(path))
    config.pop("training", None)
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode())
    weights_path = path / WEIGHTS_NAME
    try:
        with weights_path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise ModelFormatError(f"{weights_path}: cannot be read ({exc})") from None
    return digest.hexdigest()
