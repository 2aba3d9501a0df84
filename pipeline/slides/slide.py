"""Slide access: open a whole-slide image with OpenSlide, report its metadata, read at a µm/px.

Reads any file OpenSlide supports (Aperio .svs incl. JPEG 2000, generic and CAMELYON
pyramidal .tif, Hamamatsu .ndpi, MIRAX .mrxs, DICOM). Produces RGB uint8 arrays.
All coordinates are level-0 pixels, (x, y) and (width, height), as in OpenSlide.
``Slide`` reads; it never segments, tiles or draws. A ``SlideSource`` (``source``) names what
to open and at which µm/px; ``Slide.source`` reopens a slide identically. The metadata checks
(µm/px, level sizes, user µm/px and ``--mpp-csv``) live in ``metadata`` and are importable here.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from pipeline.errors import MissingMppError, SlideOpenError
from pipeline.slides.computed_levels import ComputedLevels, computed_level_factors
from pipeline.slides.formats import DICOM_SUFFIX
from pipeline.slides.metadata import (
    MAX_MPP_ANISOTROPY,
    MPP_OVERRIDE_TOLERANCE,
    check_level_sizes,
    check_mpp,
    check_user_mpp,
    mpp_by_slide_id,
    parse_float,
    read_mpp,
    read_mpp_csv,
)
from pipeline.slides.plain_images import (
    PLAIN_IMAGE_VENDORS,
    TiffRegionSlide,
    WholeImageSlide,
    is_tiff_file,
    plain_image_kind,
)
from pipeline.slides.source import MPP_FROM_METADATA, NoPhysicalResolutionError, SlideSource

if TYPE_CHECKING:
    from openslide import AbstractSlide

__all__ = [
    "DICOM_SUFFIX",
    "FALLBACK_MAX_LEVEL0_PX",
    "MAX_MPP_ANISOTROPY",
    "MPP_MATCH_TOLERANCE",
    "MPP_OVERRIDE_TOLERANCE",
    "Slide",
    "SlideInfo",
    "SlideSource",
    "check_level_sizes",
    "check_mpp",
    "check_user_mpp",
    "is_dicom_folder",
    "mpp_by_slide_id",
    "open_handle",
    "open_slide",
    "open_slide_for_user",
    "read_mpp",
    "read_mpp_csv",
    "resize_rgb",
    "resolve_slide_path",
    "rgba_to_rgb",
]

log = logging.getLogger(__name__)

# A target resolution within this relative tolerance of a level's mpp reads that level as is.
MPP_MATCH_TOLERANCE = 0.02
# A reduced level that fails to decode is re-read from level 0 up to this many level-0 pixels.
FALLBACK_MAX_LEVEL0_PX = 64_000_000


@dataclasses.dataclass(frozen=True)
class SlideInfo:
    """What the slide access layer knows about one slide.

    dimensions: level-0 (width, height) in px. mpp: µm/px at level 0 (mean of x and y); None
    for a slide opened for its pixels only (``SlideSource.pixels_only``).
    mpp_source: "metadata" (the slide's own), "user" (given with --mpp or --mpp-csv) or
    "pixels only".
    metadata_mpp: the slide's own µm/px, None when it records none (or an unusable one).
    objective_power: None when not recorded. computed_levels: how many of the levels micromet
    computes from level 0 (a single-level image or slide) rather than reads from the file.
    """

    path: str
    vendor: str
    dimensions: tuple[int, int]
    level_count: int
    level_dimensions: tuple[tuple[int, int], ...]
    level_downsamples: tuple[float, ...]
    mpp: float | None
    mpp_source: str
    objective_power: float | None
    metadata_mpp: float | None = None
    computed_levels: int = 0

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


def check_readable_folder(folder: Path) -> None:
    """Raise SlideOpenError naming ``folder`` when it cannot be listed (permissions, I/O), so
    an unreadable folder is not mistaken for an empty one."""
    try:
        with os.scandir(folder) as entries:
            next(entries, None)
    except OSError as exc:
        raise SlideOpenError(
            f"{folder}: cannot read this folder ({exc.strerror or exc}); check its permissions"
        ) from exc


def is_dicom_folder(path: Path) -> bool:
    """True for a folder holding a DICOM WSI series (its files end in .dcm)."""
    if not path.is_dir():
        return False
    check_readable_folder(path)
    files = [p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")]
    return bool(files) and any(p.suffix.lower() == DICOM_SUFFIX for p in files)


def resolve_slide_path(path: Path) -> Path:
    """The file OpenSlide opens for ``path``: the path itself, or for a DICOM series folder its
    first .dcm file (OpenSlide reads the whole series from any one of its files)."""
    if not is_dicom_folder(path):
        return path
    return min(p for p in path.iterdir() if p.is_file() and p.suffix.lower() == DICOM_SUFFIX)


def open_handle(path: Path) -> AbstractSlide:
    """An OpenSlide-like handle of a slide file or plain image; raises SlideOpenError naming it.

    JPEG and PNG images (recognised by their first bytes) and TIFFs OpenSlide refuses are read
    by ``plain_images``; a single-level image larger than ``computed_levels.COMPUTED_LEVELS_MIN_SIDE_PX``
    gets coarser levels computed from level 0, so no read decodes level 0 whole.
    """
    handle = _open_base_handle(path)
    factors = computed_level_factors(handle.dimensions) if handle.level_count == 1 else ()
    return ComputedLevels(handle, factors) if factors else handle


def _check_readable(path: Path) -> None:
    """Raise SlideOpenError when the file cannot be read (permissions, I/O), so an unreadable
    slide is not mistaken for an unsupported format."""
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise SlideOpenError(
            f"{path}: cannot read the file ({exc.strerror or exc}); check its permissions "
            "and that the disk or share holding it is reachable"
        ) from exc


def _open_base_handle(path: Path) -> AbstractSlide:
    if not path.exists():
        raise SlideOpenError(f"{path}: file not found; check the path")
    if not path.is_file() and path.suffix.lower() != ".mrxs":
        raise SlideOpenError(
            f"{path}: not a file; pass a slide file (or a folder holding one DICOM series)"
        )
    if path.is_file() and path.stat().st_size == 0:
        raise SlideOpenError(f"{path}: file is empty; the copy or scan may have failed")
    if path.is_file():
        _check_readable(path)
    kind = plain_image_kind(path) if path.is_file() else None
    if kind is not None:
        return WholeImageSlide(path, kind)
    openslide = _import_openslide()
    try:
        handle: AbstractSlide = openslide.OpenSlide(str(path))
        return handle
    except openslide.OpenSlideUnsupportedFormatError as exc:
        if is_tiff_file(path):
            return TiffRegionSlide(path)
        raise SlideOpenError(
            f"{path}: OpenSlide cannot read this file: not a supported slide format "
            "(svs, tif, ndpi, mrxs, DICOM, ...) nor a JPEG, PNG or TIFF image, or a truncated "
            "copy; check the file"
        ) from exc
    except (openslide.OpenSlideError, OSError, ValueError) as exc:
        raise SlideOpenError(
            f"{path}: cannot open the slide, the file looks truncated or corrupt ({exc})"
        ) from exc


class Slide:
    """An open whole-slide image. Use as a context manager; reads return RGB uint8 arrays.

    Opened from a ``SlideSource`` (``source.open()``); ``self.source`` is that source with
    the resolution it settled (a metadata source gets the slide's own µm/px), so a reader
    process reopening ``self.source`` reads exactly what this slide reads.
    """

    def __init__(self, source: SlideSource) -> None:
        self.path = resolve_slide_path(source.path)
        self._handle: AbstractSlide | None = open_handle(self.path)
        try:
            self.info = self._read_info(source)
        except BaseException:
            self.close()
            raise
        mpp = self.info.mpp if source.has_mpp else None
        self.source = dataclasses.replace(source, path=self.path, mpp=mpp)

    def _read_info(self, source: SlideSource) -> SlideInfo:
        handle = self._require_handle()
        properties = dict(handle.properties)
        check_level_sizes(self.path, handle.level_dimensions, properties.get("openslide.vendor", ""))
        mpp, mpp_source, metadata_mpp = self._resolution(source, properties)
        return SlideInfo(
            path=str(self.path),
            vendor=properties.get("openslide.vendor", "unknown"),
            dimensions=(int(handle.dimensions[0]), int(handle.dimensions[1])),
            level_count=int(handle.level_count),
            level_dimensions=tuple((int(w), int(h)) for w, h in handle.level_dimensions),
            level_downsamples=tuple(float(d) for d in handle.level_downsamples),
            mpp=mpp,
            mpp_source=mpp_source,
            objective_power=parse_float(properties.get("openslide.objective-power")),
            metadata_mpp=metadata_mpp,
            computed_levels=int(properties.get("micromet.computed-levels", "0")),
        )

    def _resolution(
        self, source: SlideSource, properties: dict[str, str]
    ) -> tuple[float | None, str, float | None]:
        """(mpp, SlideInfo.mpp_source, metadata_mpp) for ``source``.

        A given µm/px is checked and used as is; so is a metadata source's recorded value when
        it is reopened (``Slide.source``), which reads the same value again.
        """
        if not source.has_mpp:
            return None, source.mpp_from, None
        if source.mpp is None:
            mpp = self._metadata_mpp(properties)
            return mpp, MPP_FROM_METADATA, mpp
        check_mpp(self.path, source.mpp)
        try:
            metadata_mpp: float | None = read_mpp(self.path, properties)
        except MissingMppError:
            metadata_mpp = None
        mpp_source = MPP_FROM_METADATA if source.mpp_from == MPP_FROM_METADATA else "user"
        return float(source.mpp), mpp_source, metadata_mpp

    def _metadata_mpp(self, properties: dict[str, str]) -> float:
        """The file's own µm/px; for a plain image without one, a MissingMppError saying that
        such images need --mpp (micromet never guesses a resolution)."""
        vendor = properties.get("openslide.vendor", "")
        has_tags = "tiff.XResolution" in properties
        if vendor not in PLAIN_IMAGE_VENDORS or has_tags:
            return read_mpp(self.path, properties)
        kind = {"plain-jpeg": "JPEG", "plain-png": "PNG"}.get(vendor, "TIFF")
        raise MissingMppError(
            f"{self.path}: a plain {kind} image records no µm/px micromet can trust; pass the "
            "resolution of the scan it was exported from with --mpp (or per image with --mpp-csv)"
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

    def _require_handle(self) -> AbstractSlide:
        if self._handle is None:
            raise SlideOpenError(f"{self.path}: slide is closed")
        return self._handle

    @property
    def mpp(self) -> float:
        """Level-0 resolution in µm/px. Raises NoPhysicalResolutionError on a slide opened for
        its pixels only, and so does every read at a µm/px."""
        if self.info.mpp is None:
            raise NoPhysicalResolutionError(
                f"{self.path}: opened for its pixels only (SlideSource.pixels_only), so it has no "
                "µm/px; open it with SlideSource.from_metadata or with_mpp to read at a resolution"
            )
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
            self._handle = open_handle(self.path)
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
    ``open_slide_for_user``. Code that reopens an open slide uses ``slide.source.open()``.
    """
    return SlideSource.for_path(path, mpp_override).open()


def open_slide_for_user(
    path: str | Path, user_mpp: float | None, force_mpp: bool = False, flag: str = "--mpp"
) -> Slide:
    """Open a slide with a µm/px the user gave (``flag``: --mpp or --mpp-csv), or None.

    Raises MppMismatchError (``check_user_mpp``) when it contradicts the slide's own value
    and ``force_mpp`` is False, besides open_slide's errors.
    """
    slide = SlideSource.for_path(path, user_mpp, flag).open()
    try:
        check_user_mpp(slide.path, slide.info.metadata_mpp, user_mpp, force_mpp, flag)
    except BaseException:
        slide.close()
        raise
    return slide
