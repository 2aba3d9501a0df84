"""Test data: what a synthetic slide is asked to be (``SynthConfig``, ``PlantedDeposit``).

Reads the caller's settings; produces a validated, frozen request (size, µm/px, seed, planted
deposits, TIFF layout, texture) and the pyramid levels it will have, or a ValueError naming
the field. The generator modules (``layout``, ``write``,
``synthetic``) read it; it imports only the constants it checks against: the capsule width
from ``scene`` and the real-texture limits from ``texture``, neither of
which imports it back.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Literal

from pipeline.synthetic.scene import CAPSULE_WIDTH_UM
from pipeline.synthetic.texture import MAX_TEXTURE_MPP, TEXTURE_BACKGROUNDS, default_texture_dir

# Resolution used to draw a slide written without mpp metadata (``mpp=None``).
NOMINAL_MPP = 0.25
MIN_DEPOSIT_DIAMETER_MM = 0.02  # about two tumor cells
MAX_DEPOSIT_FRACTION = 0.5  # a deposit's diameter is at most this fraction of the short side
TEXTURES = ("cartoon", "real")
# Pyramid levels halve until the long side is at most this many px.
SMALLEST_LEVEL_MAX_PX = 1024


@dataclasses.dataclass(frozen=True)
class PlantedDeposit:
    """A tumor deposit to plant: its longest diameter (max Feret) in mm."""

    diameter_mm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.diameter_mm) and self.diameter_mm >= MIN_DEPOSIT_DIAMETER_MM):
            raise ValueError(
                f"diameter_mm={self.diameter_mm!r}; expected at least "
                f"{MIN_DEPOSIT_DIAMETER_MM} mm (about two tumor cells)"
            )


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """A synthetic slide.

    width_px, height_px: level-0 size. mpp: µm/px written to the file; None writes no
    resolution metadata (the slide is then drawn at NOMINAL_MPP). seed: all randomness.
    deposits: planted tumor deposits. tile_size_px: TIFF tile side (multiple of 16).
    jpeg_quality: 1-100. format: "tif" (generic TIFF) or "svs" (Aperio). n_levels: pyramid
    levels, None for halving down to <= SMALLEST_LEVEL_MAX_PX on the long side.
    texture: "cartoon" (drawn cells) or "real" (tissue and deposits painted from real H&E
    texture, ``texture``; needs render_mpp <= MAX_TEXTURE_MPP). texture_dir: the
    reference data folder for "real" (None: DEFAULT_TEXTURE_DIR, ../shared/data beside the
    repository); checked when the slide is generated. texture_background: the lymph-node
    tiles "real" tissue may be painted from, "any" or "negative-node" (only the tile of the
    node labelled negative; the others come from an ITC and a macro node).
    """

    width_px: int = 8000
    height_px: int = 6000
    mpp: float | None = 0.25
    seed: int = 0
    deposits: tuple[PlantedDeposit, ...] = ()
    tile_size_px: int = 256
    jpeg_quality: int = 85
    format: Literal["tif", "svs"] = "tif"
    n_levels: int | None = None
    texture: Literal["cartoon", "real"] = "cartoon"
    texture_dir: Path | None = None
    texture_background: Literal["any", "negative-node"] = "any"

    def __post_init__(self) -> None:
        _check_int("width_px", self.width_px, 256, 500_000)
        _check_int("height_px", self.height_px, 256, 500_000)
        if self.mpp is not None and not (0.1 <= self.mpp <= 2.0):
            raise ValueError(f"mpp={self.mpp!r} is out of range; allowed 0.1 to 2.0 µm/px")
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("tile_size_px", self.tile_size_px, 16, 4096)
        if self.tile_size_px % 16:
            raise ValueError(f"tile_size_px={self.tile_size_px} is not a multiple of 16")
        _check_int("jpeg_quality", self.jpeg_quality, 1, 100)
        if self.format not in ("tif", "svs"):
            raise ValueError(f"format={self.format!r} is not allowed; use tif or svs")
        if self.n_levels is not None:
            _check_int("n_levels", self.n_levels, 1, len(self.max_level_dimensions()))
        self._check_texture()
        object.__setattr__(self, "deposits", tuple(self.deposits))
        for index, deposit in enumerate(self.deposits):
            self._check_fits(index, deposit)

    def _check_texture(self) -> None:
        if self.texture not in TEXTURES:
            raise ValueError(f"texture={self.texture!r} is not allowed; use cartoon or real")
        if self.texture_dir is not None:
            if self.texture != "real":
                raise ValueError(f"texture_dir={str(self.texture_dir)!r} is only used with texture='real'")
            object.__setattr__(self, "texture_dir", Path(self.texture_dir))
        if self.texture_background not in TEXTURE_BACKGROUNDS:
            raise ValueError(
                f"texture_background={self.texture_background!r} is not allowed; use any or negative-node"
            )
        if self.texture_background != "any" and self.texture != "real":
            raise ValueError(
                f"texture_background={self.texture_background!r} is only used with texture='real'"
            )
        if self.texture == "real" and self.render_mpp > MAX_TEXTURE_MPP:
            raise ValueError(
                f"mpp={self.mpp!r} is too coarse for texture='real'; allowed up to "
                f"{MAX_TEXTURE_MPP} µm/px (a real tumor patch is 62 µm across)"
            )

    @property
    def texture_folder(self) -> Path:
        """The reference data folder real texture is read from."""
        return self.texture_dir if self.texture_dir is not None else default_texture_dir()

    def _check_fits(self, index: int, deposit: PlantedDeposit) -> None:
        if not isinstance(deposit, PlantedDeposit):
            raise ValueError(f"deposits[{index}]={deposit!r} is not a PlantedDeposit")
        short_mm = min(self.width_px, self.height_px) * self.render_mpp / 1000
        limit_mm = MAX_DEPOSIT_FRACTION * short_mm - 2 * CAPSULE_WIDTH_UM / 1000
        if deposit.diameter_mm > limit_mm:
            raise ValueError(
                f"deposits[{index}].diameter_mm={deposit.diameter_mm:g} does not fit in the "
                f"tissue of a {self.width_px} x {self.height_px} px slide at "
                f"{self.render_mpp:g} µm/px (at most {limit_mm:.3g} mm); use a larger "
                "width/height or a smaller deposit"
            )

    @property
    def render_mpp(self) -> float:
        """µm/px the slide is drawn at."""
        return self.mpp if self.mpp is not None else NOMINAL_MPP

    def max_level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of every possible level, halving (rounding up) down to 1 px."""
        dims = [(self.width_px, self.height_px)]
        while max(dims[-1]) > 1:
            w, h = dims[-1]
            dims.append(((w + 1) // 2, (h + 1) // 2))
        return dims

    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of the levels written."""
        dims = self.max_level_dimensions()
        if self.n_levels is not None:
            return dims[: self.n_levels]
        count = next(i for i, (w, h) in enumerate(dims) if max(w, h) <= SMALLEST_LEVEL_MAX_PX)
        return dims[: count + 1]


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ValueError(f"{name}={value!r} is out of range; allowed integers {low} to {high}")
