"""The U-Net's shape arithmetic against its real forward shapes."""

from __future__ import annotations

import pytest
import torch

from unet_tiles.model.unet import UNetConfig, build_unet


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_halo_and_valid_size_match_forward_shapes(dims: int, depth: int, padding: str) -> None:
    model = build_unet(UNetConfig(dims=dims, depth=depth, base_channels=2, padding=padding))
    sizes = range(1, 120, 7) if dims == 2 else range(1, 60, 11)
    for n in sizes:
        m = model.valid_size(n)
        assert m >= n
        out = model(torch.zeros((1, 1) + (m,) * dims))
        expected = m - 2 * model.halo[0] if padding == "valid" else m
        assert tuple(out.shape[2:]) == (expected,) * dims
        # Nothing between n and m is valid: valid_size is the *nearest* valid size.
        for smaller in range(n, m):
            with pytest.raises(ValueError, match="invalid input shape"):
                model(torch.zeros((1, 1) + (smaller,) * dims))


def test_paper_geometry_572_to_388() -> None:
    model = build_unet(UNetConfig(depth=4, base_channels=2))
    assert model.halo == (92, 92)
    assert model.valid_size(572) == 572
    assert model.output_size(572) == 388
    assert model.divisor == 16
    # 388 mod 16 = 4: stride 388 would break the pooling grid; 384 keeps it.
    assert 388 % model.divisor == 4


def test_same_padding_halo_is_receptive_radius() -> None:
    valid = build_unet(UNetConfig(depth=3, base_channels=2))
    same = build_unet(UNetConfig(depth=3, base_channels=2, padding="same"))
    assert same.halo == valid.halo == (44, 44)


def test_input_normalisation_is_part_of_the_model() -> None:
    config = UNetConfig(depth=1, base_channels=2, input_offset=(100.0,), input_scale=(0.5,))
    model = build_unet(config, seed=1)
    plain = build_unet(config.with_(input_offset=(0.0,), input_scale=(1.0,)), seed=1)
    x = torch.rand(1, 1, 38, 38) * 255
    torch.testing.assert_close(model(x), plain((x - 100.0) * 0.5))


def test_seeded_init_is_deterministic_and_he_scaled() -> None:
    a = build_unet(UNetConfig(depth=2, base_channels=8), seed=3)
    b = build_unet(UNetConfig(depth=2, base_channels=8), seed=3)
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    conv = a.encoders[1].layers[0]
    fan_in = conv.weight[0].numel()
    assert abs(conv.weight.std().item() - (2 / fan_in) ** 0.5) < 0.2 * (2 / fan_in) ** 0.5


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"dims": 4}, "dims must be 2 or 3"),
        ({"depth": 0}, "depth must be"),
        ({"classes": 1}, "classes must be at least 2"),
        ({"padding": "reflect"}, "padding must be"),
        ({"input_offset": (1.0, 2.0, 3.0)}, "input_offset needs 1 or 1 values"),
    ],
)
def test_config_checks(changes: dict[str, object], message: str) -> None:
    from unet_tiles.errors import ModelFormatError

    with pytest.raises(ModelFormatError, match=message):
        UNetConfig(**changes)  # type: ignore[arg-type]


def test_class_argmax_equals_torch_argmax_with_ties() -> None:
    from unet_tiles.pipeline.predict import class_argmax

    generator = torch.Generator().manual_seed(0)
    for classes in (2, 3, 7):
        logits = torch.randint(0, 3, (2, classes, 9, 11), generator=generator).float()
        logits = logits[..., 1:-1, 2:]  # cropped, non-contiguous as in predict
        assert torch.equal(class_argmax(logits).long(), logits.argmax(dim=1))


@pytest.mark.parametrize("dims", [2, 3])
@pytest.mark.parametrize("padding", ["valid", "same"])
@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("depth", [1, 2, 4])
def test_torch_free_geometry_and_tensors_are_the_networks(dims: int, padding: str, norm: str,
                                                         depth: int) -> None:
    # The driver plans and checks runs from model/geometry.py alone (no torch):
    # it must be exactly the built network's arithmetic and state_dict.
    from unet_tiles.model.geometry import UNetGeometry, expected_tensors

    config = UNetConfig(dims=dims, padding=padding, norm=norm, depth=depth, base_channels=2,
                        in_channels=2, classes=3)
    model = build_unet(config)
    geometry = UNetGeometry(config)
    assert geometry.halo == model.halo
    assert geometry.divisor == model.divisor
    sizes = range(1, 200)
    outputs = [model.output_size(n) for n in sizes]
    assert [geometry.output_size(n) for n in sizes] == outputs
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        expected_tensors(config)
    # And the arithmetic is what the network does: a valid input of each size.
    n = geometry.valid_size(3 * geometry.divisor)
    with torch.inference_mode():
        out = model.eval()(torch.zeros((1, 2, *(n,) * dims)))
    assert tuple(out.shape[2:]) == (geometry.output_size(n),) * dims


# A child process measures one forward pass's peak memory: with every allocation of
# 64 KiB or more mmapped (MALLOC_MMAP_THRESHOLD_), a freed map goes back to the OS at
# once, so the rise of the peak RSS during the pass (VmHWM, reset through
# clear_refs: the child's ru_maxrss starts at its parent's size) is the most that
# was alive.
_PEAK_SCRIPT = """
import sys, torch
from unet_tiles.model.unet import UNetConfig, build_unet, _center_crop

def holding_forward(model, x):
    # The forward as it was: each level's skip, up-convolution and concatenation
    # stay referenced while its decoder runs (the baseline this test compares with).
    x = (x - model.input_offset) * model.input_scale
    skips = []
    for encoder in list(model.encoders)[:-1]:
        x = encoder(x)
        skips.append(x)
        x = model.pool(x)
    x = model.encoders[-1](x)
    for upconv, decoder, skip in zip(model.upconvs, model.decoders, reversed(skips)):
        x = upconv(x)
        x = decoder(torch.cat([_center_crop(skip, x.shape[2:]), x], dim=1))
    return model.head(x)

def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) for line in lines if line.startswith(field + ":"))

torch.set_num_threads(1)
model = build_unet(UNetConfig(depth=2, base_channels=8), seed=0)
size = model.valid_size(700)
x = torch.rand(1, 1, size, size)
if sys.argv[2] == "channels_last":  # the engine's CPU layout
    model = model.to(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
forward = (lambda t: holding_forward(model, t)) if sys.argv[1] == "holding" else model
with torch.inference_mode():
    forward(x[:, :, :model.valid_size(100), :model.valid_size(100)])  # load the kernels
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")
    before = status("VmRSS")
    forward(x)
    after = status("VmHWM")
print((after - before) * 1024 / (8 * size * size * 4))
"""


def _peak_maps(which: str, layout: str) -> float:
    """The peak memory of one forward pass, in first-level feature maps."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", _PEAK_SCRIPT, which, layout], env=env, check=True,
                          capture_output=True, text=True)
    return float(done.stdout.strip())


@pytest.mark.parametrize("layout", ["channels_last", "contiguous"])
def test_forward_frees_each_levels_maps_as_it_consumes_them(layout: str) -> None:
    # Channels-last, a level's peak is the concatenation's inputs and output: 4
    # maps of its channels, not the 6 of a forward that holds them through the
    # decoder (contiguous tensors add oneDNN's reordered copies on both sides).
    holding, product = _peak_maps("holding", layout), _peak_maps("product", layout)
    assert product < 0.75 * holding
    if layout == "channels_last":
        assert product < 4.5
