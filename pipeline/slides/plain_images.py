"""Slide access: plain images (JPEG, PNG, single-level TIFF) and single-level slides, read by regions.

Reads image files OpenSlide does not open (JPEG, PNG, stripped or otherwise plain TIFF) and
produces ``openslide.AbstractSlide`` handles, so ``Slide`` and the viewer's Deep Zoom read
them like any slide (``computed_levels`` adds coarser levels to the large single-level ones).
TIFF images are read segment by segment (tiles or strips) with tifffile; JPEG and PNG
cannot be decoded by regions, so they are decoded once, up to ``MAX_WHOLE_DECODE_PX``.
Coordinates are level-0 pixels, (x, y) and (width, height), as in OpenSlide.
"""

from __future__ import annotations

import contextlib
import logging
import math
import struct
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from openslide import AbstractSlide
from PIL import Image

from pipeline.errors import SlideOpenError

# JPEG and PNG cannot be decoded by regions: above this many pixels (300 MB as RGB) they are
# refused with the advice to convert them to a tiled TIFF.
MAX_WHOLE_DECODE_PX = 100_000_000
# A TIFF segment (tile or strip) decoding to more pixels than this is refused: reading any
# region would decode it whole.
MAX_SEGMENT_PX = 16_777_216

VENDOR_JPEG = "plain-jpeg"
VENDOR_PNG = "plain-png"
VENDOR_TIFF = "plain-tiff"
PLAIN_IMAGE_VENDORS = (VENDOR_JPEG, VENDOR_PNG, VENDOR_TIFF)
_MAGIC = {b"\xff\xd8\xff": VENDOR_JPEG, b"\x89PNG\r\n\x1a\n": VENDOR_PNG}
_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PIL_MODES = ("RGB", "RGBA", "L", "LA", "P", "1", "CMYK", "YCbCr")


def plain_image_kind(path: Path) -> str | None:
    """``VENDOR_JPEG`` or ``VENDOR_PNG`` when the file starts like one (whatever its suffix)."""
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError:
        return None
    for magic, kind in _MAGIC.items():
        if head.startswith(magic):
            return kind
    return None


def is_tiff_file(path: Path) -> bool:
    """True when the file starts with a TIFF (or BigTIFF) header."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def _transparent(size: tuple[int, int]) -> NDArray[np.uint8]:
    width, height = size
    return np.zeros((height, width, 4), dtype=np.uint8)


class _SingleLevel(AbstractSlide):
    """Shared parts of one-level handles: no associated images, level 0 only."""

    vendor = "plain"

    def __init__(self, path: Path, size: tuple[int, int]) -> None:
        super().__init__()
        self.path = path
        self._size = size
        self._properties: dict[str, str] = {"openslide.vendor": self.vendor}

    @classmethod
    def detect_format(cls, filename: Any) -> str | None:
        return None

    @property
    def level_count(self) -> int:
        return 1

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return (self._size,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def properties(self) -> Mapping[str, str]:
        return self._properties

    @property
    def associated_images(self) -> Mapping[str, Image.Image]:
        return {}

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return 0

    def _check_read(self, level: int, size: tuple[int, int]) -> None:
        if level != 0:
            raise ValueError(f"{self.path}: level {level} does not exist; the image has one level")
        if size[0] < 0 or size[1] < 0:
            raise ValueError(f"{self.path}: region size {size} is negative")


class WholeImageSlide(_SingleLevel):
    """A JPEG or PNG image, decoded once when opened (such files cannot be read by regions)."""

    def __init__(self, path: Path, kind: str) -> None:
        self.vendor = kind
        name = "JPEG" if kind == VENDOR_JPEG else "PNG"
        try:
            with Image.open(path) as image:
                width, height = image.size
                if width * height > MAX_WHOLE_DECODE_PX:
                    raise SlideOpenError(
                        f"{path}: a {name} image of {width} x {height} px is too large to decode "
                        f"whole (over {MAX_WHOLE_DECODE_PX // 1_000_000} million px) and {name} "
                        "cannot be read by regions; convert it to a tiled TIFF "
                        "(e.g. vips tiffsave IN OUT.tif --tile --compression jpeg)"
                    )
                if image.mode not in _PIL_MODES:
                    raise SlideOpenError(
                        f"{path}: a {name} image in mode {image.mode} (not 8-bit colour or grey); "
                        "export it as 8-bit RGB"
                    )
                rgb = image.convert("RGB")
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            raise SlideOpenError(
                f"{path}: cannot decode this {name} image ({exc}); the file looks truncated or "
                "corrupt: copy or export it again"
            ) from exc
        super().__init__(path, (width, height))
        self._image: Image.Image | None = rgb

    def close(self) -> None:
        if self._image is not None:
            self._image.close()
            self._image = None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        self._check_read(level, size)
        if self._image is None:
            raise ValueError(f"{self.path}: the image is closed")
        tile = Image.new("RGBA", size, (0, 0, 0, 0))
        x, y = location
        box = (max(0, x), max(0, y), min(self._size[0], x + size[0]), min(self._size[1], y + size[1]))
        if box[2] > box[0] and box[3] > box[1]:
            tile.paste(self._image.crop(box).convert("RGBA"), (box[0] - x, box[1] - y))
        return tile


class TiffRegionSlide(_SingleLevel):
    """The first image of a TIFF, read tile by tile or strip by strip (tifffile).

    Only 8-bit grey, RGB or RGBA images are read. Properties carry the TIFF resolution tags
    under OpenSlide's names (``tiff.XResolution`` ...), so their µm/px is read and checked
    like a slide's.
    """

    vendor = VENDOR_TIFF

    def __init__(self, path: Path) -> None:
        import tifffile

        with _quiet_tifffile():
            try:
                _check_directory_chain(path)
                self._tif = tifffile.TiffFile(path)
            except (tifffile.TiffFileError, *_TIFF_ERRORS) as exc:
                raise _unreadable_tiff(path, exc) from exc
            try:
                self._page = self._check_page(path, self._tif.pages[0])
            except SlideOpenError:
                self._tif.close()
                raise
            except (tifffile.TiffFileError, *_TIFF_ERRORS) as exc:
                self._tif.close()
                raise _unreadable_tiff(path, exc) from exc
        super().__init__(path, (int(self._page.imagewidth), int(self._page.imagelength)))
        self._properties.update(_resolution_properties(self._page))
        self._lock = threading.Lock()

    @staticmethod
    def _check_page(path: Path, page: Any) -> Any:
        import tifffile

        if not isinstance(page, tifffile.TiffPage):
            raise SlideOpenError(f"{path}: the TIFF's first image cannot be read; export it again")
        samples = int(page.samplesperpixel)
        if page.dtype != np.uint8 or samples not in (1, 3, 4) or int(page.imagedepth) != 1:
            raise SlideOpenError(
                f"{path}: a TIFF of {samples} x {page.dtype} samples per pixel; micromet reads "
                "8-bit grey, RGB or RGBA images: export it as 8-bit RGB"
            )
        if samples > 1 and int(page.planarconfig) != 1:
            raise SlideOpenError(
                f"{path}: a TIFF storing each colour in its own plane; re-save it with "
                "interleaved RGB (e.g. vips tiffsave IN OUT.tif --tile)"
            )
        ends = [offset + count for offset, count in zip(page.dataoffsets, page.databytecounts, strict=False)]
        if max(ends, default=0) > path.stat().st_size:
            raise SlideOpenError(
                f"{path}: the TIFF's image data runs past the end of the file: a truncated copy; "
                "copy or export it again"
            )
        width, height = page.chunks[1], page.chunks[0]
        expected = math.ceil(page.imagewidth / width) * math.ceil(page.imagelength / height)
        if len(page.dataoffsets) != expected:
            raise SlideOpenError(
                f"{path}: the TIFF header says {page.imagewidth} x {page.imagelength} px in pieces "
                f"of {width} x {height} px ({expected} pieces) but the file indexes "
                f"{len(page.dataoffsets)}: a damaged header; copy or export it again"
            )
        if width * height > MAX_SEGMENT_PX:
            raise SlideOpenError(
                f"{path}: the TIFF stores its pixels in pieces of {width} x {height} px, too large "
                "to read by regions; re-save it as a tiled TIFF (e.g. vips tiffsave IN OUT.tif --tile)"
            )
        return page

    def close(self) -> None:
        self._tif.close()

    def _segment_grid(self) -> tuple[int, int, int]:
        """(segment width, segment height, segments per row) in level-0 px."""
        seg_h, seg_w = int(self._page.chunks[0]), int(self._page.chunks[1])
        return seg_w, seg_h, math.ceil(self._size[0] / seg_w)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        self._check_read(level, size)
        x, y = int(location[0]), int(location[1])
        out = _transparent(size)
        x0, y0 = max(0, x), max(0, y)
        x1, y1 = min(self._size[0], x + size[0]), min(self._size[1], y + size[1])
        if x1 > x0 and y1 > y0:
            seg_w, seg_h, per_row = self._segment_grid()
            for row in range(y0 // seg_h, (y1 - 1) // seg_h + 1):
                for col in range(x0 // seg_w, (x1 - 1) // seg_w + 1):
                    self._paste_segment(out, row * per_row + col, (col * seg_w - x, row * seg_h - y))
        return Image.fromarray(out, "RGBA")

    def _paste_segment(self, out: NDArray[np.uint8], index: int, offset: tuple[int, int]) -> None:
        """Decode segment ``index`` and copy it into ``out`` with its corner at ``offset``."""
        page = self._page
        offsets, counts = page.dataoffsets, page.databytecounts
        if index >= len(offsets) or counts[index] == 0:
            return  # a segment with no data stays transparent, as OpenSlide shows missing tiles
        with self._lock:
            handle = self._tif.filehandle
            handle.seek(offsets[index])
            data = handle.read(counts[index])
        try:
            segment, _, shape = page.decode(
                data, index, jpegtables=page.jpegtables, jpegheader=getattr(page, "jpegheader", None)
            )
        except Exception as exc:  # codec errors come as many types (imagecodecs, zlib, ...)
            raise OSError(f"cannot decode TIFF segment {index} ({exc})") from exc
        if segment is None:
            return
        pixels = np.asarray(segment).reshape(shape[-3], shape[-2], shape[-1])
        _paste_rgba(out, _as_rgba(pixels), offset)


# What tifffile raises on damaged headers besides TiffFileError (a hostile corpus found these).
_TIFF_ERRORS = (OSError, ValueError, IndexError, KeyError, struct.error, EOFError, TypeError, AttributeError)


def _check_directory_chain(path: Path) -> None:
    """Raise SlideOpenError when the chain of TIFF image directories loops back on itself
    (tifffile would iterate such a file's pages forever). Reads only the chain's offsets."""
    with path.open("rb") as handle:
        head = handle.read(16)
        order = "<" if head[:2] == b"II" else ">"
        big = struct.unpack(order + "H", head[2:4])[0] == 43
        offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
        count_format, entry_size, next_format = ("Q", 20, "Q") if big else ("H", 12, "I")
        seen: set[int] = set()
        while offset and len(seen) < 4096:
            if offset in seen:
                raise SlideOpenError(
                    f"{path}: the TIFF's chain of image directories loops back on itself: a damaged "
                    "header; copy or export it again"
                )
            seen.add(offset)
            handle.seek(offset)
            raw = handle.read(struct.calcsize(count_format))
            if len(raw) < struct.calcsize(count_format):
                return  # past the end: tifffile reports it
            entries = struct.unpack(order + count_format, raw)[0]
            handle.seek(offset + len(raw) + entries * entry_size)
            raw = handle.read(struct.calcsize(next_format))
            if len(raw) < struct.calcsize(next_format):
                return
            offset = struct.unpack(order + next_format, raw)[0]


@contextlib.contextmanager
def _quiet_tifffile() -> Iterator[None]:
    """tifffile logs each damaged tag as a warning; the one error raised here says it all."""
    logger = logging.getLogger("tifffile")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _unreadable_tiff(path: Path, error: BaseException) -> SlideOpenError:
    return SlideOpenError(
        f"{path}: neither OpenSlide nor the TIFF reader can read this file ({error}); "
        "the file looks truncated or corrupt: copy or export it again"
    )


def _as_rgba(pixels: NDArray[Any]) -> NDArray[np.uint8]:
    """(h, w, 1 | 3 | 4) uint8 -> (h, w, 4) uint8, opaque unless the image has alpha."""
    height, width, samples = pixels.shape
    rgba = np.full((height, width, 4), 255, dtype=np.uint8)
    if samples == 1:
        rgba[..., :3] = pixels
    else:
        rgba[..., : min(samples, 4)] = pixels[..., :4]
    return rgba


def _paste_rgba(out: NDArray[np.uint8], piece: NDArray[np.uint8], offset: tuple[int, int]) -> None:
    """Copy ``piece`` into ``out`` with its top-left corner at ``offset`` (x, y), clipped."""
    ox, oy = offset
    height, width = out.shape[:2]
    sx0, sy0 = max(0, -ox), max(0, -oy)
    dx0, dy0 = max(0, ox), max(0, oy)
    w = min(piece.shape[1] - sx0, width - dx0)
    h = min(piece.shape[0] - sy0, height - dy0)
    if w > 0 and h > 0:
        out[dy0 : dy0 + h, dx0 : dx0 + w] = piece[sy0 : sy0 + h, sx0 : sx0 + w]


def _resolution_properties(page: Any) -> dict[str, str]:
    """The page's resolution tags as OpenSlide names them (``tiff.ResolutionUnit`` ...)."""
    units = {2: "inch", 3: "centimeter"}
    tags = page.tags
    properties: dict[str, str] = {}
    unit = tags.get("ResolutionUnit")
    if unit is not None and int(unit.value) in units:
        properties["tiff.ResolutionUnit"] = units[int(unit.value)]
    for name in ("XResolution", "YResolution"):
        tag = tags.get(name)
        if tag is None:
            continue
        value = tag.value
        numerator, denominator = value if isinstance(value, tuple) else (value, 1)
        if denominator:
            properties[f"tiff.{name}"] = repr(float(numerator) / float(denominator))
    return properties
