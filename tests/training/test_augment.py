"""Augmentation: identity settings change nothing, random ops are repeatable, stain handling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.slides.stain import check_stain_normalization, macenko_normalize, normalize_stain
from pipeline.training.augment import (
    NO_AUGMENTATION,
    RGB_FROM_HED,
    AugmentConfig,
    augment_batch,
    brightness_contrast,
    flip_rotate,
    gaussian_blur,
    hed_jitter,
)


def _tiles(seed: int = 0, batch: int = 6, size: int = 16) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand((batch, 3, size, size), generator=generator) * 0.9 + 0.05


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_no_augmentation_returns_the_tiles_unchanged() -> None:
    tiles = _tiles()
    assert torch.equal(augment_batch(tiles, NO_AUGMENTATION, _gen()), tiles)


def test_hed_jitter_with_zero_strength_is_the_identity() -> None:
    tiles = _tiles()
    out = hed_jitter(tiles, _gen(), scale=0.0, shift=0.0)
    assert torch.allclose(out, tiles, atol=1e-5)


def test_hed_jitter_changes_stain_but_keeps_range_and_shape() -> None:
    tiles = _tiles()
    out = hed_jitter(tiles, _gen(), scale=0.3, shift=0.05)
    assert out.shape == tiles.shape
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert float((out - tiles).abs().mean()) > 0.01


def test_flips_and_rotations_only_rearrange_pixels() -> None:
    tiles = _tiles(batch=32)
    out = flip_rotate(tiles, _gen(3), flip=True, rotate90=True)
    for before, after in zip(tiles, out, strict=True):
        assert torch.equal(before.flatten().sort().values, after.flatten().sort().values)
    assert not torch.equal(out, tiles)  # 32 tiles: some were surely turned


def test_same_generator_seed_gives_the_same_augmentation() -> None:
    config = AugmentConfig(hed_scale=0.2, hed_shift=0.05, brightness=0.1, contrast=0.2, blur_probability=0.5)
    first = augment_batch(_tiles(), config, _gen(7))
    second = augment_batch(_tiles(), config, _gen(7))
    other = augment_batch(_tiles(), config, _gen(8))
    assert torch.equal(first, second)
    assert not torch.equal(first, other)


def test_contrast_keeps_the_mean_of_a_tile_and_brightness_shifts_it() -> None:
    flat = torch.full((4, 3, 8, 8), 0.5)
    assert torch.allclose(brightness_contrast(flat, _gen(), brightness=0.0, contrast=0.5), flat)
    shifted = brightness_contrast(flat, _gen(), brightness=0.2, contrast=0.0)
    offsets = (shifted - flat).mean(dim=(1, 2, 3))
    assert float(offsets.abs().max()) <= 0.2 + 1e-6 and float(offsets.abs().max()) > 0.0
    # one offset per tile: each tile is shifted uniformly
    assert torch.allclose(shifted.std(dim=(1, 2, 3)), torch.zeros(4), atol=1e-6)


def test_blur_smooths_chosen_tiles_and_leaves_others() -> None:
    tiles = _tiles(batch=4, size=32)
    blurred = gaussian_blur(tiles, _gen(), probability=1.0, max_sigma_px=2.0)
    assert blurred.shape == tiles.shape
    assert torch.all(blurred.std(dim=(2, 3)) < tiles.std(dim=(2, 3)))
    assert torch.allclose(blurred.mean(dim=(2, 3)), tiles.mean(dim=(2, 3)), atol=0.02)
    assert torch.equal(gaussian_blur(tiles, _gen(), probability=0.0, max_sigma_px=2.0), tiles)


def test_augment_config_rejects_out_of_range_values_by_name() -> None:
    with pytest.raises(ValueError, match=r"hed_scale=2\.0"):
        AugmentConfig(hed_scale=2.0)
    with pytest.raises(ValueError, match="blur_probability"):
        AugmentConfig(blur_probability=-0.1)


def _he_tile(h_gain: float, e_gain: float, seed: int = 0) -> np.ndarray:
    """A 48 x 48 H&E-like tile by Beer-Lambert from random H and E concentrations."""
    rng = np.random.default_rng(seed)
    h = rng.uniform(0.3, 1.2, (48, 48)) * h_gain
    e = rng.uniform(0.3, 1.0, (48, 48)) * e_gain
    od = h[..., None] * RGB_FROM_HED[0] + e[..., None] * RGB_FROM_HED[1]
    return np.clip(240 * np.exp(-od), 0, 255).astype(np.uint8)


def test_macenko_brings_differently_stained_copies_of_a_tile_together() -> None:
    pale, dark = _he_tile(0.7, 0.7), _he_tile(1.3, 1.2)
    before = np.abs(pale.astype(float) - dark.astype(float)).mean()
    after = np.abs(macenko_normalize(pale).astype(float) - macenko_normalize(dark).astype(float)).mean()
    assert macenko_normalize(pale).shape == pale.shape and macenko_normalize(pale).dtype == np.uint8
    assert after < 0.3 * before


def test_macenko_leaves_blank_glass_alone() -> None:
    glass = np.full((32, 32, 3), 238, dtype=np.uint8)
    assert np.array_equal(macenko_normalize(glass), glass)


def test_stain_normalization_names_are_checked() -> None:
    tile = _he_tile(1.0, 1.0)
    assert normalize_stain(tile, None) is tile
    assert np.array_equal(normalize_stain(tile, "macenko"), macenko_normalize(tile))
    with pytest.raises(ValueError, match="reinhard"):
        check_stain_normalization("reinhard")
