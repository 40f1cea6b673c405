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
