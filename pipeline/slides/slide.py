"""Slide access: open a whole-slide image with OpenSlide, report its metadata, read at a µm/px.

Reads any file OpenSlide supports (Aperio .svs incl. JPEG 2000, generic and CAMELYON
pyramidal .tif, Hamamatsu .ndpi, MIRAX .mrxs, DICOM). Produces RGB uint8 arrays.
All coordinates are level-0 pixels, (x, y) and (width, height), as in OpenSlide.
A slide travels as one value, ``SlideSource`` (the file, the µm/px to read it at and where
that came from), opened by ``SlideSource.open``; ``Slide.source`` reopens an open slide
identically, so a reader process or thread never gets a loose ``(path, mpp)`` pair.
``Slide`` reads; it never segments, tiles or draws. The file checks and handle opening live
in ``handles``, the metadata checks (µm/px, level sizes, user µm/px and ``--mpp-csv``) in
``metadata``; both are importable from here.
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

from pipeline.errors import MissingMppError, SlideOpenError
from pipeline.slides.formats import DICOM_SUFFIX
from pipeline.slides.handles import (
    check_readable_folder,
    import_openslide,
    is_dicom_folder,
    open_handle,
    resolve_slide_path,
)
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
from pipeline.slides.plain_images import PLAIN_IMAGE_VENDORS

if TYPE_CHECKING:
    from openslide import AbstractSlide

__all__ = [
    "DICOM_SUFFIX",
    "FALLBACK_MAX_LEVEL0_PX",
    "MAX_MPP_ANISOTROPY",
    "MPP_FROM_METADATA",
    "MPP_MATCH_TOLERANCE",
    "MPP_OVERRIDE_TOLERANCE",
    "PIXELS_ONLY",
    "NoPhysicalResolutionError",
    "Slide",
    "SlideInfo",
    "SlideSource",
    "check_level_sizes",
    "check_mpp",
    "check_readable_folder",
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


# ``SlideSource.mpp_from`` of a slide read at its own recorded µm/px.
MPP_FROM_METADATA = "metadata"
# ``SlideSource.mpp_from`` of a slide read for its pixels only: it has no µm/px at all.
PIXELS_ONLY = "pixels only"


class NoPhysicalResolutionError(RuntimeError):
    """A physical-resolution read (µm/px) on a slide opened for its pixels only.

    Not a ``MicrometError``: no user input causes it, only code that opened the slide with
    ``SlideSource.pixels_only`` and then asked for µm, so a batch does not swallow it.
    """


@dataclasses.dataclass(frozen=True)
class SlideSource:
    """A slide to read: picklable, compared by value, opened by ``open``.

    path: the file OpenSlide opens (a DICOM series folder resolved to its first .dcm file).
    mpp: level-0 µm/px to read it at; None before a ``metadata`` source is first opened (the
    slide's own value is read then; ``Slide.source`` carries it) and always for ``pixels only``.
    mpp_from: where ``mpp`` comes from: "metadata", the flag or record that gave it
    ("--mpp", "--mpp-csv", "--slide-mpp", "the batch's record"), or "pixels only" (none).
    """

    path: Path
    mpp: float | None
    mpp_from: str

    def __post_init__(self) -> None:
        if not self.mpp_from:
            raise ValueError("mpp_from is empty; say where the µm/px comes from (e.g. 'metadata', '--mpp')")
        if self.mpp_from == PIXELS_ONLY and self.mpp is not None:
            raise ValueError(f"{self.path}: a pixels-only source has no µm/px; got mpp={self.mpp!r}")
        if self.mpp is None and self.mpp_from not in (MPP_FROM_METADATA, PIXELS_ONLY):
            raise ValueError(f"{self.path}: mpp_from={self.mpp_from!r} needs the µm/px it gave; got None")

    @classmethod
    def from_metadata(cls, path: str | Path) -> SlideSource:
        """``path`` read at the µm/px its own metadata records (checked when opened)."""
        return cls(resolve_slide_path(Path(path)), None, MPP_FROM_METADATA)

    @classmethod
    def with_mpp(cls, path: str | Path, mpp: float, mpp_from: str = "--mpp") -> SlideSource:
        """``path`` read at ``mpp`` µm/px, given by ``mpp_from`` (checked when opened)."""
        return cls(resolve_slide_path(Path(path)), float(mpp), mpp_from)

    @classmethod
    def for_path(cls, path: str | Path, mpp: float | None, mpp_from: str = "--mpp") -> SlideSource:
        """``with_mpp`` when ``mpp`` was given, else ``from_metadata`` (``mpp`` None: not given)."""
        return cls.from_metadata(path) if mpp is None else cls.with_mpp(path, mpp, mpp_from)

    @classmethod
    def pixels_only(cls, path: str | Path) -> SlideSource:
        """``path`` read for its pixels only (the viewer's tiles): no µm/px is read or checked,
        and any physical-resolution read on the opened slide raises NoPhysicalResolutionError."""
        return cls(resolve_slide_path(Path(path)), None, PIXELS_ONLY)

    @property
    def has_mpp(self) -> bool:
        """False for a pixels-only source, which never has a physical resolution."""
        return self.mpp_from != PIXELS_ONLY

    def open(self) -> Slide:
        """The open slide; use it as a context manager. The one way a slide is opened.

        Raises SlideOpenError naming the file when it cannot be read, MissingMppError when
        ``mpp`` is implausible or a metadata source records no usable µm/px.
        """
        return Slide(self)


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

        A given µm/px is checked and used as is; so is the value a metadata source recorded
        when first opened, on reopening (``Slide.source``), so every reopening reads alike.
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
        openslide = import_openslide()
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
        openslide = import_openslide()
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
