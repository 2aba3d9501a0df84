"""Stain normalisation: reads one uint8 RGB H&E tile and the method a model card names, produces
the tile mapped onto a reference stain. The same function serves training and inference when a
model card says ``stain_normalization = "macenko"`` (Macenko et al. 2009).
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

# Macenko reference: H and E optical-density vectors (columns) and their 99th-percentile
# concentrations, from Macenko et al. 2009 as used by most open implementations.
MACENKO_REFERENCE_HE = np.array([[0.5626, 0.2159], [0.7201, 0.8012], [0.4062, 0.5581]])
MACENKO_REFERENCE_MAX_C = np.array([1.9705, 1.0308])
MACENKO_WHITE = 240.0  # transmitted light intensity of glass
MACENKO_MIN_OD = 0.15  # pixels with any channel below this optical density are background
MACENKO_ANGLE_PERCENTILE = 1.0
MACENKO_MIN_PIXELS = 64  # fewer stained pixels than this: the tile is returned unchanged
STAIN_NORMALIZATIONS = ("macenko",)


def check_stain_normalization(method: str | None) -> None:
    """Raise ValueError unless ``method`` is None or a name in STAIN_NORMALIZATIONS."""
    if method is not None and method not in STAIN_NORMALIZATIONS:
        raise ValueError(
            f"stain_normalization={method!r} is not allowed; use none or {', '.join(STAIN_NORMALIZATIONS)}"
        )


def _macenko_stain_matrix(optical_density: NDArray[np.float64]) -> NDArray[np.float64]:
    _, eigenvectors = np.linalg.eigh(np.cov(optical_density.T))
    plane = eigenvectors[:, 1:3]
    projected = optical_density @ plane
    angles = np.arctan2(projected[:, 1], projected[:, 0])
    low = np.percentile(angles, MACENKO_ANGLE_PERCENTILE)
    high = np.percentile(angles, 100.0 - MACENKO_ANGLE_PERCENTILE)
    first = plane @ np.array([math.cos(low), math.sin(low)])
    second = plane @ np.array([math.cos(high), math.sin(high)])
    # Haematoxylin is the vector with the larger red optical density.
    stains = np.stack([first, second], axis=1) if first[0] > second[0] else np.stack([second, first], axis=1)
    stains = stains * np.sign(stains.sum(axis=0, keepdims=True))
    return np.asarray(stains / np.linalg.norm(stains, axis=0, keepdims=True))


def macenko_normalize(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Map a (H, W, 3) uint8 H&E tile onto the Macenko reference stain; same shape and dtype.

    Tiles with fewer than MACENKO_MIN_PIXELS stained pixels (glass, fat) are returned as they
    are, since their stain vectors cannot be estimated.
    """
    pixels = rgb.reshape(-1, 3).astype(np.float64)
    optical_density = -np.log((pixels + 1.0) / MACENKO_WHITE)
    stained = optical_density[np.all(optical_density >= MACENKO_MIN_OD, axis=1)]
    if len(stained) < MACENKO_MIN_PIXELS:
        return rgb
    stains = _macenko_stain_matrix(stained)
    concentrations, *_ = np.linalg.lstsq(stains, optical_density.T, rcond=None)
    max_c = np.percentile(concentrations, 99, axis=1)
    if not np.all(max_c > 1e-6):
        return rgb
    concentrations *= (MACENKO_REFERENCE_MAX_C / max_c)[:, None]
    out = MACENKO_WHITE * np.exp(-(MACENKO_REFERENCE_HE @ concentrations))
    normalized: NDArray[np.uint8] = np.clip(out.T + 0.5, 0, 255).astype(np.uint8)
    return normalized.reshape(rgb.shape)


def normalize_stain(rgb: NDArray[np.uint8], method: str | None) -> NDArray[np.uint8]:
    """Apply the stain normalisation named in a model card (None: unchanged) to one tile."""
    check_stain_normalization(method)
    if method is None:
        return rgb
    return macenko_normalize(rgb)
