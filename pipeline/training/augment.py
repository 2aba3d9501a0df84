"""Training: augments batches of tiles.

Reads (B, 3, H, W) float tiles in 0-1; produces tiles of the same shape. Every random draw is
a per-tile scalar taken from an explicit CPU ``torch.Generator``, so a run is repeatable and
the pixel work stays vectorised on whatever device the batch lives on (2 CPU cores suffice).
Stain normalisation, used identically at training and inference, is ``pipeline.slides.stain``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch.nn import functional

# Ruifrok & Johnston stain vectors (rows: haematoxylin, eosin, DAB), as in skimage.color.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]], dtype=np.float64)
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)
# Darkest transmission kept before taking the log (one grey level).
MIN_TRANSMISSION = 1.0 / 255.0


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
    """Random changes applied to each training tile.

    flip: random horizontal flip. rotate90: random multiple of 90°.
    hed_scale: haematoxylin/eosin/DAB concentrations are multiplied by 1 + U(-s, s).
    hed_shift: and shifted by U(-s, s) optical-density units.
    brightness: added U(-b, b) (fraction of full scale). contrast: scaled by 1 + U(-c, c).
    blur_probability: fraction of tiles blurred; blur_max_sigma_px: their Gaussian sigma is
    U(0.1, max) px at the model resolution.
    resample_probability: fraction of tiles shrunk to U(resample_min_scale, 1) of their size
    and brought back, each with bilinear or area resampling at random: readers bring slide
    pixels to the model's µm/px in different ways (OpenSlide levels, TIAToolbox, scanners'
    own pyramids), and the scores must not depend on which.
    """

    flip: bool = True
    rotate90: bool = True
    hed_scale: float = 0.05
    hed_shift: float = 0.02
    brightness: float = 0.05
    contrast: float = 0.1
    blur_probability: float = 0.1
    blur_max_sigma_px: float = 1.0
    resample_probability: float = 0.0
    resample_min_scale: float = 0.5

    def __post_init__(self) -> None:
        for name, high in (
            ("hed_scale", 0.9),
            ("hed_shift", 0.5),
            ("brightness", 0.5),
            ("contrast", 0.9),
            ("blur_probability", 1.0),
            ("blur_max_sigma_px", 8.0),
            ("resample_probability", 1.0),
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and 0.0 <= value <= high):
                raise ValueError(f"{name}={value!r} is out of range; allowed 0 to {high}")
        if not (isinstance(self.resample_min_scale, (int, float)) and 0.25 <= self.resample_min_scale <= 1.0):
            raise ValueError(
                f"resample_min_scale={self.resample_min_scale!r} is out of range; allowed 0.25 to 1"
            )


NO_AUGMENTATION = AugmentConfig(
    flip=False,
    rotate90=False,
    hed_scale=0.0,
    hed_shift=0.0,
    brightness=0.0,
    contrast=0.0,
    blur_probability=0.0,
)


def _uniform(generator: torch.Generator, shape: tuple[int, ...], half_width: float) -> torch.Tensor:
    return (torch.rand(shape, generator=generator) * 2.0 - 1.0) * half_width


def flip_rotate(tiles: torch.Tensor, generator: torch.Generator, flip: bool, rotate90: bool) -> torch.Tensor:
    """Random horizontal flips and 90° rotations of square (B, C, H, W) tiles."""
    batch = tiles.shape[0]
    if flip:
        flips = torch.rand(batch, generator=generator) < 0.5
        tiles = torch.where(flips.to(tiles.device).view(-1, 1, 1, 1), tiles.flip(3), tiles)
    if rotate90:
        turns = torch.randint(0, 4, (batch,), generator=generator)
        out = tiles.clone()
        for k in range(1, 4):
            chosen = (turns == k).nonzero().flatten().to(tiles.device)
            if len(chosen):
                out[chosen] = torch.rot90(tiles[chosen], k, dims=(2, 3))
        tiles = out
    return tiles


def hed_jitter(tiles: torch.Tensor, generator: torch.Generator, scale: float, shift: float) -> torch.Tensor:
    """Perturb stain concentrations in HED space: (B, 3, H, W) RGB 0-1 in and out.

    Each tile's HED concentrations become hed * (1 + U(-scale, scale)) + U(-shift, shift);
    the round trip RGB -> HED -> RGB folds into one 3 x 3 matrix and offset per tile. With
    scale = shift = 0 the tiles come back unchanged (up to float rounding and the
    one-grey-level floor of the optical density).
    """
    batch = tiles.shape[0]
    alpha = (1.0 + _uniform(generator, (batch, 3), scale)).to(torch.float64)
    beta = _uniform(generator, (batch, 3), shift).to(torch.float64)
    to_hed = torch.as_tensor(HED_FROM_RGB)
    to_rgb = torch.as_tensor(RGB_FROM_HED)
    # od' = (od @ to_hed * alpha + beta) @ to_rgb = od @ matrix + offset
    matrix = torch.einsum("cd,bd,de->bce", to_hed, alpha, to_rgb).to(tiles)
    offset = (beta @ to_rgb).to(tiles)
    optical_density = -torch.log(tiles.clamp(min=MIN_TRANSMISSION))
    flat = optical_density.flatten(2).transpose(1, 2)  # (B, H*W, 3)
    flat = torch.baddbmm(offset.unsqueeze(1), flat, matrix.to(tiles.device))
    optical_density = flat.transpose(1, 2).reshape(tiles.shape).clamp(min=0.0)
    return torch.exp(-optical_density).clamp(0.0, 1.0)


def brightness_contrast(
    tiles: torch.Tensor, generator: torch.Generator, brightness: float, contrast: float
) -> torch.Tensor:
    """Scale each tile's contrast around its mean grey and shift its brightness."""
    batch = tiles.shape[0]
    gain = (1.0 + _uniform(generator, (batch,), contrast)).to(tiles.device).view(-1, 1, 1, 1)
    offset = _uniform(generator, (batch,), brightness).to(tiles.device).view(-1, 1, 1, 1)
    mean = tiles.mean(dim=(1, 2, 3), keepdim=True)
    return ((tiles - mean) * gain + mean + offset).clamp(0.0, 1.0)


def _gaussian_kernels(sigmas_px: torch.Tensor, radius_px: int) -> torch.Tensor:
    offsets = torch.arange(-radius_px, radius_px + 1, dtype=torch.float32)
    safe = sigmas_px.clamp(min=1e-3).view(-1, 1)
    kernels = torch.exp(-0.5 * (offsets.view(1, -1) / safe) ** 2)
    return kernels / kernels.sum(dim=1, keepdim=True)


def gaussian_blur(
    tiles: torch.Tensor, generator: torch.Generator, probability: float, max_sigma_px: float
) -> torch.Tensor:
    """Blur a random ``probability`` share of tiles with sigma U(0.1, max_sigma_px) px."""
    batch, channels, height, width = tiles.shape
    chosen = torch.rand(batch, generator=generator) < probability
    sigmas = 0.1 + torch.rand(batch, generator=generator) * max(max_sigma_px - 0.1, 0.0)
    picked = chosen.nonzero().flatten()
    if len(picked) == 0 or max_sigma_px <= 0.0:
        return tiles
    radius = max(1, math.ceil(2.5 * max_sigma_px))
    kernels = _gaussian_kernels(sigmas[picked], radius).to(tiles)
    # One group per (tile, channel): a separable blur with a per-tile kernel, in two convs.
    weights = kernels.repeat_interleave(channels, dim=0)
    n_groups = len(picked) * channels
    index = picked.to(tiles.device)
    flat = tiles[index].reshape(1, n_groups, height, width)
    flat = functional.pad(flat, (radius, radius, radius, radius), mode="reflect")
    flat = functional.conv2d(flat, weights.view(-1, 1, 1, 2 * radius + 1), groups=n_groups)
    flat = functional.conv2d(flat, weights.view(-1, 1, 2 * radius + 1, 1), groups=n_groups)
    out = tiles.clone()
    out[index] = flat.view(len(picked), channels, height, width)
    return out


def resample(
    tiles: torch.Tensor, generator: torch.Generator, probability: float, min_scale: float
) -> torch.Tensor:
    """Shrink a random ``probability`` share of (B, C, H, W) tiles to U(min_scale, 1) of their
    size and enlarge them back, by bilinear (no antialiasing) or area resampling at random."""
    batch, _, height, width = tiles.shape
    chosen = torch.rand(batch, generator=generator) < probability
    scales = min_scale + torch.rand(batch, generator=generator) * (1.0 - min_scale)
    modes = torch.rand(batch, generator=generator) < 0.5
    out = tiles.clone()
    for index in chosen.nonzero().flatten().tolist():
        size = (max(2, round(height * float(scales[index]))), max(2, round(width * float(scales[index]))))
        mode = "area" if bool(modes[index]) else "bilinear"
        small = functional.interpolate(tiles[index : index + 1], size=size, mode=mode)
        out[index : index + 1] = functional.interpolate(
            small, size=(height, width), mode="bilinear", align_corners=False
        ).clamp(0.0, 1.0)
    return out


def augment_batch(tiles: torch.Tensor, config: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Augmented copy of (B, 3, H, W) float RGB tiles in 0-1 (square tiles for rotate90).

    Draws every random number from ``generator`` (a CPU generator), in a fixed order.
    """
    tiles = flip_rotate(tiles, generator, config.flip, config.rotate90)
    if config.hed_scale > 0.0 or config.hed_shift > 0.0:
        tiles = hed_jitter(tiles, generator, config.hed_scale, config.hed_shift)
    if config.brightness > 0.0 or config.contrast > 0.0:
        tiles = brightness_contrast(tiles, generator, config.brightness, config.contrast)
    if config.blur_probability > 0.0:
        tiles = gaussian_blur(tiles, generator, config.blur_probability, config.blur_max_sigma_px)
    if config.resample_probability > 0.0:
        tiles = resample(tiles, generator, config.resample_probability, config.resample_min_scale)
    return tiles
