"""Errors raised by micromet: one base class, one subclass per kind of bad input.

Every message says what was expected, what arrived, and what the user can do.
A batch catches ``MicrometError`` per slide and records it; anything else is a bug.
"""

from __future__ import annotations


class MicrometError(Exception):
    """Base class for every error micromet raises on bad input or bad settings."""


class SlideOpenError(MicrometError):
    """A slide file is missing, unsupported, truncated or corrupt."""


class MissingMppError(MicrometError):
    """A slide has no (or an implausible) microns-per-pixel value."""


class MppMismatchError(MicrometError):
    """A µm/px given by the user contradicts the slide's own metadata."""


class SlideQCError(MicrometError):
    """A slide failed QC (not brightfield H&E, stain, focus, tissue, not lymph node)."""


class NoTissueError(MicrometError):
    """Tissue detection found no tissue on a slide."""


class CheckpointError(MicrometError):
    """A model checkpoint is missing, unreadable or has inconsistent metadata."""


class AnnotationError(MicrometError):
    """An annotation file (ASAP XML, GeoJSON, JSON outlines) cannot be read."""


class ConfigError(MicrometError):
    """A configuration file or value is invalid."""


class HeatmapError(MicrometError):
    """A heatmap file is missing, inconsistent or unusable."""


class StagingError(MicrometError):
    """Node categories or slide-to-patient mappings cannot be staged."""


class EvaluationError(MicrometError):
    """Predictions or ground truth for evaluation are missing or inconsistent."""


class OutputError(MicrometError):
    """An output folder cannot be written."""


class ReviewError(MicrometError):
    """A pathologist's review (review.geojson, an edit, an imported file) is invalid."""


class ReviewConflictError(ReviewError):
    """A review edit was made on an outdated revision (another tab or person saved first)."""


def printable(text: str) -> str:
    """``text`` on one line: control characters (a newline or tab in a file name) written as
    their escapes, so a path cannot split a one-line error or progress line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
