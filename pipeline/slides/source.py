"""Slide access: a slide as one value (the file, the µm/px to read it at and where that came
from), opened by ``SlideSource.open``.

A ``SlideSource`` is what crosses process boundaries: a DataLoader reader process, a thread
drawing the overlay or a benchmark worker reopens the slide from it, never from a loose
``(path, mpp)`` pair, so every reopening reads at the resolution the first opening settled.
``Slide.source`` is the source an open slide reopens identically from.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pipeline.slides.slide import Slide

__all__ = ["MPP_FROM_METADATA", "PIXELS_ONLY", "NoPhysicalResolutionError", "SlideSource"]

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
    mpp_from: where ``mpp`` comes from: "metadata", the flag or setting that gave it
    ("--mpp", "--mpp-csv", "slide_mpp", ...), or "pixels only" (no physical resolution).
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
        return cls(_resolved(path), None, MPP_FROM_METADATA)

    @classmethod
    def with_mpp(cls, path: str | Path, mpp: float, mpp_from: str = "--mpp") -> SlideSource:
        """``path`` read at ``mpp`` µm/px, given by ``mpp_from`` (checked when opened)."""
        return cls(_resolved(path), float(mpp), mpp_from)

    @classmethod
    def for_path(cls, path: str | Path, mpp: float | None, mpp_from: str = "--mpp") -> SlideSource:
        """``with_mpp`` when ``mpp`` was given, else ``from_metadata`` (``mpp`` None: not given)."""
        return cls.from_metadata(path) if mpp is None else cls.with_mpp(path, mpp, mpp_from)

    @classmethod
    def pixels_only(cls, path: str | Path) -> SlideSource:
        """``path`` read for its pixels only (the viewer's tiles): no µm/px is read or checked,
        and any physical-resolution read on the opened slide raises NoPhysicalResolutionError."""
        return cls(_resolved(path), None, PIXELS_ONLY)

    @property
    def has_mpp(self) -> bool:
        """False for a pixels-only source, which never has a physical resolution."""
        return self.mpp_from != PIXELS_ONLY

    def open(self) -> Slide:
        """The open slide; use it as a context manager.

        Raises SlideOpenError naming the file when it cannot be read, MissingMppError when
        ``mpp`` is implausible or a metadata source records no usable µm/px.
        """
        from pipeline.slides.slide import Slide

        return Slide(self)


def _resolved(path: str | Path) -> Path:
    from pipeline.slides.slide import resolve_slide_path

    return resolve_slide_path(Path(path))
