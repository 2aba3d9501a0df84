"""Slide access: opens a slide file (or a DICOM series folder) as an OpenSlide-like handle.

Checks the file first (exists, not empty, readable) so each bad input gets its own message;
reads JPEG, PNG and TIFF images OpenSlide refuses through ``plain_images``, and gives a
single-level image coarser levels computed from level 0 (``computed_levels``). ``Slide``
(``slide``) wraps the handle with checked metadata; the viewer's Deep Zoom tiles read it bare.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.errors import SlideOpenError
from pipeline.slides.computed_levels import ComputedLevels, computed_level_factors
from pipeline.slides.formats import DICOM_SUFFIX
from pipeline.slides.plain_images import TiffRegionSlide, WholeImageSlide, is_tiff_file, plain_image_kind

if TYPE_CHECKING:
    from openslide import AbstractSlide

__all__ = [
    "check_readable_folder",
    "import_openslide",
    "is_dicom_folder",
    "open_handle",
    "resolve_slide_path",
]


def import_openslide() -> Any:
    """The openslide module; SlideOpenError saying how to install it when it is missing."""
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
    openslide = import_openslide()
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
