"""Slide access: open a whole-slide image with OpenSlide, report its metadata, read at a µm/px.

Reads any file OpenSlide supports (Aperio .svs incl. JPEG 2000, generic and CAMELYON
pyramidal .tif, Hamamatsu .ndpi, MIRAX .mrxs, DICOM). Produces RGB uint8 arrays.
All coordinates are level-0 pixels, (x, y) and (width, height), as in OpenSlide.
``Slide`` reads; it never segments, tiles or draws.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.config import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP
from pipeline.errors import MissingMppError, MppMismatchError, SlideOpenError

if TYPE_CHECKING:
    import openslide

log = logging.getLogger(__name__)

# A target resolution within this relative tolerance of a level's mpp reads that level as is.
MPP_MATCH_TOLERANCE = 0.02
# x and y resolutions further apart than this are treated as broken metadata.
MAX_MPP_ANISOTROPY = 0.05
# A user's µm/px further than this (relative) from the slide's own is refused unless forced.
MPP_OVERRIDE_TOLERANCE = 0.01
DICOM_SUFFIX = ".dcm"
# A reduced level that fails to decode is re-read from level 0 up to this many level-0 pixels.
FALLBACK_MAX_LEVEL0_PX = 64_000_000

# Resolution units of TIFF tags, in µm per unit.
_TIFF_UNIT_UM = {"centimeter": 10_000.0, "cm": 10_000.0, "inch": 25_400.0}


@dataclasses.dataclass(frozen=True)
class SlideInfo:
    """What the slide access layer knows about one slide.

    dimensions: level-0 (width, height) in px. mpp: µm/px at level 0 (mean of x and y).
    mpp_source: "metadata" (the slide's own) or "user" (given with --mpp or --mpp-csv).
    metadata_mpp: the slide's own µm/px, None when it records none (or an unusable one).
    objective_power: None when not recorded.
    """

    path: str
    vendor: str
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float
    mpp_source: str
    objective_power: float | None
    metadata_mpp: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return dataclasses.asdict(self)


def _import_openslide() -> Any:
    try:
        import openslide
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise SlideOpenError(
            "OpenSlide is not available; install micromet with its dependencies "
            "(openslide-python and openslide-bin)"
        ) from exc
    return openslide


def _parse_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _mpp_from_tiff_tags(properties: dict[str, str]) -> tuple[float | None, float | None]:
    """µm/px from raw TIFF resolution tags, for files OpenSlide gives no mpp for."""
    unit = properties.get("tiff.ResolutionUnit", "").lower()
    if unit not in _TIFF_UNIT_UM:
        return None, None
    result: list[float | None] = []
    for tag in ("tiff.XResolution", "tiff.YResolution"):
        pixels_per_unit = _parse_float(properties.get(tag))
        result.append(_TIFF_UNIT_UM[unit] / pixels_per_unit if pixels_per_unit else None)
    return result[0], result[1]


def read_mpp(path: Path, properties: dict[str, str]) -> float:
    """The level-0 µm/px of a slide from its OpenSlide properties.

    Raises MissingMppError, naming the file and the ``--mpp`` override, when the
    value is missing, anisotropic or outside 0.05-20 µm/px.
    """
    mpp_x = _parse_float(properties.get("openslide.mpp-x"))
    mpp_y = _parse_float(properties.get("openslide.mpp-y"))
    if mpp_x is None or mpp_y is None:
        mpp_x, mpp_y = _mpp_from_tiff_tags(properties)
    if mpp_x is None or mpp_y is None:
        raise MissingMppError(
            f"{path}: no microns-per-pixel in the slide metadata; pass the scanner's µm/px "
            "with --mpp (or per slide with --mpp-csv)"
        )
    mpp = (mpp_x + mpp_y) / 2.0
    if abs(mpp_x - mpp_y) > MAX_MPP_ANISOTROPY * mpp:
        raise MissingMppError(
            f"{path}: x and y resolutions differ ({mpp_x:g} vs {mpp_y:g} µm/px); "
            "check the scanner metadata or pass --mpp to override"
        )
    check_mpp(path, mpp)
    return mpp


def check_mpp(path: Path, mpp: float) -> None:
    """Raise MissingMppError if ``mpp`` is not a plausible whole-slide resolution."""
    if not (MIN_PLAUSIBLE_MPP <= mpp <= MAX_PLAUSIBLE_MPP):
        raise MissingMppError(
            f"{path}: implausible resolution {mpp:g} µm/px (expected "
            f"{MIN_PLAUSIBLE_MPP}-{MAX_PLAUSIBLE_MPP}); pass --mpp with the true value"
        )


# Formats whose first TIFF directory is level 0, the one the resolution metadata describes.
_LEVEL0_FIRST_VENDORS = ("generic-tiff", "aperio", "hamamatsu", "philips")


def _first_directory_sizes(path: Path) -> list[tuple[int, int]] | None:
    """(width, height) of every TIFF directory, first first; None if not a readable TIFF."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            pages = [page for page in tif.pages if isinstance(page, tifffile.TiffPage)]
            return [(int(page.imagewidth), int(page.imagelength)) for page in pages]
    except (tifffile.TiffFileError, OSError, ValueError, IndexError, KeyError, AttributeError):
        return None


def _corrupt_level0(path: Path, found: str) -> SlideOpenError:
    return SlideOpenError(
        f"{path}: corrupt level-0 header: {found}, so every size and µm/px would be off; "
        "the file is damaged: copy or export the slide again"
    )


def check_level_sizes(path: Path, level_dimensions: Any, vendor: str) -> None:
    """Raise SlideOpenError if level 0 is smaller than another level or TIFF directory.

    A damaged first directory (e.g. width and height patched to 1) makes OpenSlide take the
    next level as level 0 while keeping level 0's µm/px: sizes would silently halve.
    level_dimensions: OpenSlide's (width, height) per level. vendor: ``openslide.vendor``.
    """
    sizes = [(int(w), int(h)) for w, h in level_dimensions]
    width, height = sizes[0]
    for level, (level_w, level_h) in enumerate(sizes[1:], start=1):
        if level_w > width or level_h > height:
            raise _corrupt_level0(
                path, f"level 0 is {width} x {height} px but level {level} is {level_w} x {level_h} px"
            )
        _check_level_aspect(path, (width, height), level, (level_w, level_h))
    if vendor not in _LEVEL0_FIRST_VENDORS:
        return
    directories = _first_directory_sizes(path)
    if not directories:
        return
    first_w, first_h = directories[0]
    largest_w, largest_h = max([*directories[1:], (width, height)], key=lambda size: size[0] * size[1])
    if first_w < width or first_h < height or first_w * first_h < largest_w * largest_h:
        raise _corrupt_level0(
            path, f"the first TIFF directory (level 0) is {first_w} x {first_h} px but the file holds "
            f"a {largest_w} x {largest_h} px image"
        )


# Levels of one pyramid share their aspect; x and y downsamples further apart than this
# (relative) mean a damaged header. Levels under MIN_ASPECT_CHECK_PX on a side are skipped:
# rounding alone moves their downsamples.
MAX_DOWNSAMPLE_ASPECT_DIFFERENCE = 0.05
MIN_ASPECT_CHECK_PX = 16


def _check_level_aspect(path: Path, level0: tuple[int, int], level: int, size: tuple[int, int]) -> None:
    (width, height), (level_w, level_h) = level0, size
    if min(level_w, level_h) < MIN_ASPECT_CHECK_PX:
        return
    down_x, down_y = width / level_w, height / level_h
    if abs(down_x - down_y) / max(down_x, down_y) > MAX_DOWNSAMPLE_ASPECT_DIFFERENCE:
        raise _corrupt_level0(
            path,
            f"level 0 is {width} x {height} px but level {level} is {level_w} x {level_h} px "
            f"(downsample {down_x:.3g} in x, {down_y:.3g} in y)",
        )


def check_user_mpp(
    path: Path, metadata_mpp: float | None, user_mpp: float | None, force: bool, flag: str = "--mpp"
) -> None:
    """Raise MppMismatchError when a user's µm/px differs from the slide's own by more than
    MPP_OVERRIDE_TOLERANCE (relative) and ``force`` is False. ``flag`` names where the
    value came from (``--mpp`` or ``--mpp-csv``) in the message."""
    if user_mpp is None or metadata_mpp is None or force:
        return
    difference = abs(user_mpp - metadata_mpp) / metadata_mpp
    if difference > MPP_OVERRIDE_TOLERANCE:
        raise MppMismatchError(
            f"{path}: {flag} gives {user_mpp:g} µm/px but the slide records {metadata_mpp:g} µm/px "
            f"({difference:.1%} apart, more than {MPP_OVERRIDE_TOLERANCE:.0%}); drop {flag} to use "
            "the slide's value, or add --force-mpp if the metadata is wrong"
        )


def is_dicom_folder(path: Path) -> bool:
    """True for a folder holding a DICOM WSI series (its files end in .dcm)."""
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and any(p.suffix.lower() == DICOM_SUFFIX for p in files)


def resolve_slide_path(path: Path) -> Path:
    """The file OpenSlide opens for ``path``: the path itself, or for a DICOM series folder its
    first .dcm file (OpenSlide reads the whole series from any one of its files)."""
    if not is_dicom_folder(path):
        return path
    return min(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == DICOM_SUFFIX)


def _open_handle(path: Path) -> Any:
    if not path.exists():
        raise SlideOpenError(f"{path}: file not found; check the path")
    if not path.is_file() and path.suffix.lower() != ".mrxs":
        raise SlideOpenError(
            f"{path}: not a file; pass a slide file (or a folder holding one DICOM series)"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise SlideOpenError(f"{path}: file is empty; the copy or scan may have failed")
    openslide = _import_openslide()
    try:
        return openslide.OpenSlide(str(path))
    except openslide.OpenSlideUnsupportedFormatError as exc:
        raise SlideOpenError(
            f"{path}: OpenSlide cannot read this file: not a supported slide format "
            "(svs, tif, ndpi, mrxs, DICOM, ...) or a truncated copy; check the file"
        ) from exc
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise SlideOpenError(
            f"{path}: cannot open the slide, the file looks truncated or corrupt ({exc})"
        ) from exc


class Slide:
    """An open whole-slide image. Use as a context manager; reads return RGB uint8 arrays."""

    def __init__(self, path: str | Path, mpp_override: float | None = None) -> None:
        self.path = resolve_slide_path(Path(path))
        self._handle: openslide.OpenSlide | None = _open_handle(self.path)
        try:
            self.info = self._read_info(mpp_override)
        except BaseException:
            self.close()
            raise

    def _read_info(self, mpp_override: float | None) -> SlideInfo:
        handle = self._require_handle()
        properties = dict(handle.properties)
        check_level_sizes(self.path, handle.level_dimensions, properties.get("openslide.vendor", ""))
        metadata_mpp: float | None
        if mpp_override is not None:
            check_mpp(self.path, mpp_override)
            mpp, mpp_source = float(mpp_override), "user"
            try:
                metadata_mpp = read_mpp(self.path, properties)
            except MissingMppError:
                metadata_mpp = None
        else:
            mpp, mpp_source = read_mpp(self.path, properties), "metadata"
            metadata_mpp = mpp
        return SlideInfo(
            path=str(self.path),
            vendor=properties.get("openslide.vendor", "unknown"),
            dimensions=(int(handle.dimensions[0]), int(handle.dimensions[1])),
            level_count=int(handle.level_count),
            level_dimensions=tuple((int(w), int(h)) for w, h in handle.level_dimensions),
            level_downsamples=tuple(float(d) for d in handle.level_downsamples),
            mpp=mpp,
            mpp_source=mpp_source,
            objective_power=_parse_float(properties.get("openslide.objective-power")),
            metadata_mpp=metadata_mpp,
        )

    def __enter__(self) -> Slide:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the OpenSlide handle; safe to call twice."""
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def _require_handle(self) -> openslide.OpenSlide:
        if self._handle is None:
            raise SlideOpenError(f"{self.path}: slide is closed")
        return self._handle

    @property
    def mpp(self) -> float:
        """Level-0 resolution in µm/px."""
        return self.info.mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in px."""
        return self.info.dimensions

    def level_mpp(self, level: int) -> float:
        """Resolution of ``level`` in µm/px, from the slide's reported downsample."""
        return self.mpp * self.info.level_downsamples[level]

    def best_level_for_mpp(self, target_mpp: float) -> int:
        """The cheapest (coarsest) level whose resolution is at or finer than ``target_mpp``."""
        best = 0
        for level in range(self.info.level_count):
            fine_enough = self.level_mpp(level) <= target_mpp * (1.0 + MPP_MATCH_TOLERANCE)
            if fine_enough and self.level_mpp(level) >= self.level_mpp(best):
                best = level
        return best

    def read_region_rgb(
        self, x_px: int, y_px: int, level: int, width_px: int, height_px: int
    ) -> NDArray[np.uint8]:
        """Read (height_px, width_px, 3) RGB at ``level``; (x_px, y_px) is the level-0 corner.

        Transparent pixels (outside the scanned area) become white. Raises
        SlideOpenError naming the file if the data cannot be decoded.
        """
        handle = self._require_handle()
        openslide = _import_openslide()
        try:
            rgba = handle.read_region((int(x_px), int(y_px)), level, (width_px, height_px))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            # An OpenSlide handle that raised stays in an error state: discard it.
            self.close()
            fallback = self._read_from_level0(x_px, y_px, level, width_px, height_px, exc)
            if fallback is not None:
                return fallback
            raise SlideOpenError(
                f"{self.path}: cannot read region at ({x_px}, {y_px}) level {level}: "
                f"the file looks truncated or corrupt ({exc})"
            ) from exc
        return rgba_to_rgb(np.asarray(rgba))

    def _read_from_level0(
        self, x_px: int, y_px: int, level: int, width_px: int, height_px: int, error: BaseException
    ) -> NDArray[np.uint8] | None:
        """A failed read of a reduced level, redone from level 0 on a fresh handle and
        resized; None when that fails too or would exceed FALLBACK_MAX_LEVEL0_PX.

        Some converters store a reduced level's edge tiles cut to the image (a DICOM series
        made with ``wsidicomizer --add-missing-levels``), which OpenSlide refuses to decode.
        """
        downsample = self.info.level_downsamples[level] if level < self.info.level_count else 0.0
        width0, height0 = math.ceil(width_px * downsample), math.ceil(height_px * downsample)
        if level == 0 or width0 * height0 == 0 or width0 * height0 > FALLBACK_MAX_LEVEL0_PX:
            return None
        openslide = _import_openslide()
        try:
            self._handle = _open_handle(self.path)
            rgba = self._handle.read_region((int(x_px), int(y_px)), 0, (width0, height0))
        except (SlideOpenError, openslide.OpenSlideError, OSError, ValueError):
            self.close()
            return None
        log.warning(
            "%s: level %d could not be decoded at (%d, %d) (%s); read from level 0 instead",
            self.path, level, x_px, y_px, error,
        )
        return resize_rgb(rgba_to_rgb(np.asarray(rgba)), width_px, height_px)

    def read_region_at_mpp(
        self, x_px: int, y_px: int, width_px: int, height_px: int, target_mpp: float
    ) -> NDArray[np.uint8]:
        """Read a region at a physical resolution.

        (x_px, y_px): top-left corner in level-0 px. (width_px, height_px): output size
        in px at ``target_mpp`` µm/px. Reads the cheapest level at or finer than the
        target and resizes. Returns (height_px, width_px, 3) uint8.
        """
        level = self.best_level_for_mpp(target_mpp)
        scale = target_mpp / self.level_mpp(level)  # level px per output px (>= ~1)
        level_w = max(1, round(width_px * scale))
        level_h = max(1, round(height_px * scale))
        region = self.read_region_rgb(x_px, y_px, level, level_w, level_h)
        if (level_w, level_h) == (width_px, height_px):
            return region
        return resize_rgb(region, width_px, height_px)

    def thumbnail_at_mpp(self, target_mpp: float) -> NDArray[np.uint8]:
        """The whole slide at ``target_mpp`` µm/px, as (rows, cols, 3) uint8."""
        width0, height0 = self.dimensions
        factor = self.mpp / target_mpp
        width_px = max(1, round(width0 * factor))
        height_px = max(1, round(height0 * factor))
        return self.read_region_at_mpp(0, 0, width_px, height_px, target_mpp)


def rgba_to_rgb(rgba: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """Composite an RGBA array onto white (OpenSlide marks unscanned areas transparent)."""
    alpha = rgba[..., 3]
    if bool(np.all(alpha == 255)):
        # Pillow's convert copies the channels several times faster than numpy slicing.
        opaque: NDArray[np.uint8] = np.array(Image.fromarray(rgba, "RGBA").convert("RGB"))
        return opaque
    alpha_f = alpha[..., None].astype(np.float32) / 255.0
    blended = rgba[..., :3].astype(np.float32) * alpha_f + 255.0 * (1.0 - alpha_f)
    composited: NDArray[np.uint8] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return composited


def resize_rgb(image: NDArray[np.uint8], width_px: int, height_px: int) -> NDArray[np.uint8]:
    """Resize an RGB uint8 array to (height_px, width_px) with area-aware filtering."""
    pil = Image.fromarray(image)
    resample = Image.Resampling.BOX if pil.width >= width_px else Image.Resampling.BILINEAR
    resized: NDArray[np.uint8] = np.asarray(pil.resize((width_px, height_px), resample=resample))
    return resized


def open_slide(path: str | Path, mpp_override: float | None = None) -> Slide:
    """Open a slide; raises SlideOpenError or MissingMppError naming the file.

    ``mpp_override`` is used as given (e.g. a value already checked); user input goes through
    ``open_slide_for_user``.
    """
    return Slide(path, mpp_override=mpp_override)


def open_slide_for_user(
    path: str | Path, user_mpp: float | None, force_mpp: bool = False, flag: str = "--mpp"
) -> Slide:
    """Open a slide with a µm/px the user gave (``flag``: --mpp or --mpp-csv), or None.

    Raises MppMismatchError (``check_user_mpp``) when it contradicts the slide's own value
    and ``force_mpp`` is False, besides open_slide's errors.
    """
    slide = Slide(path, mpp_override=user_mpp)
    try:
        check_user_mpp(slide.path, slide.info.metadata_mpp, user_mpp, force_mpp, flag)
    except BaseException:
        slide.close()
        raise
    return slide


def read_mpp_csv(path: Path) -> dict[str, float]:
    """Per-slide µm/px from a CSV with columns ``slide`` and ``mpp`` (``--mpp-csv``).

    Returns slide name -> µm/px. Raises ConfigError naming the file and line for a missing
    file or column, an empty or duplicate slide name, or an mpp that is not a plausible number.
    """
    import csv

    from pipeline.errors import ConfigError

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the --mpp-csv file ({exc}); check the path") from exc
    reader = csv.DictReader(text.splitlines())
    columns = [c.strip() for c in reader.fieldnames or []]
    if "slide" not in columns or "mpp" not in columns:
        raise ConfigError(f"{path}: --mpp-csv needs the columns slide and mpp; found {columns or 'none'}")
    values: dict[str, float] = {}
    for line, row in enumerate(reader, start=2):
        row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
        name, raw = row["slide"], row["mpp"]
        if not name:
            raise ConfigError(f"{path}: line {line}: empty slide name; give every row a slide")
        if name in values:
            raise ConfigError(f"{path}: line {line}: slide {name!r} is listed twice; keep one row per slide")
        mpp = _parse_float(raw)
        if mpp is None:
            raise ConfigError(f"{path}: line {line}: mpp {raw!r} of {name!r} is not a number; give µm/px")
        if not (MIN_PLAUSIBLE_MPP <= mpp <= MAX_PLAUSIBLE_MPP):
            raise ConfigError(
                f"{path}: line {line}: mpp {mpp:g} of {name!r} is not a plausible µm/px "
                f"(expected {MIN_PLAUSIBLE_MPP}-{MAX_PLAUSIBLE_MPP})"
            )
        values[name] = mpp
    return values


def mpp_by_slide_id(csv_path: Path, values: dict[str, float], slide_ids: dict[Path, str]) -> dict[str, float]:
    """Map ``read_mpp_csv`` names onto a batch's slide ids; a name may be the slide id, the file
    (or folder) name, or the path as given. Raises ConfigError for a name matching no slide
    of the batch, listing the slides, or two names for one slide."""
    from pipeline.errors import ConfigError

    by_name: dict[str, str] = {}
    for path, slide_id in slide_ids.items():
        for name in (slide_id, path.name, str(path)):
            by_name.setdefault(name, slide_id)
    result: dict[str, float] = {}
    for name, mpp in values.items():
        match = by_name.get(name) or by_name.get(str(Path(name).resolve()))
        if match is None:
            available = ", ".join(sorted(slide_ids.values())[:20])
            raise ConfigError(
                f"{csv_path}: slide {name!r} is not in this batch; use a slide id or file name "
                f"({available})"
            )
        if match in result:
            raise ConfigError(f"{csv_path}: slide {match!r} is listed twice (as {name!r}); keep one row")
        result[match] = mpp
    return result
