"""Slide access: checks a slide's metadata and the µm/px users give for it.

Reads OpenSlide properties, raw TIFF resolution tags and directory sizes, user µm/px
(``--mpp``) and the per-slide ``--mpp-csv`` file; produces the level-0 µm/px of a slide,
per-slide µm/px keyed by batch slide id, or a MissingMppError / MppMismatchError /
SlideOpenError / ConfigError naming the file and what to do. ``pipeline.slides.slide`` opens slides
with these checks; the public names are importable from there too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from pipeline.config import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP
from pipeline.errors import MissingMppError, MppMismatchError, SlideOpenError

# x and y resolutions further apart than this are treated as broken metadata.
MAX_MPP_ANISOTROPY = 0.05
# A user's µm/px further than this (relative) from the slide's own is refused unless forced.
MPP_OVERRIDE_TOLERANCE = 0.01
# Resolution units of TIFF tags, in µm per unit.
_TIFF_UNIT_UM = {"centimeter": 10_000.0, "cm": 10_000.0, "inch": 25_400.0}


def parse_float(value: str | None) -> float | None:
    """A metadata string as a finite float; None when missing, not a number or not finite."""
    if value is None or "_" in value:  # float() reads "1_0" as 10
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
        pixels_per_unit = parse_float(properties.get(tag))
        result.append(_TIFF_UNIT_UM[unit] / pixels_per_unit if pixels_per_unit else None)
    return result[0], result[1]


def read_mpp(path: Path, properties: dict[str, str]) -> float:
    """The level-0 µm/px of a slide from its OpenSlide properties.

    Raises MissingMppError, naming the file and the ``--mpp`` override, when the
    value is missing, anisotropic or outside 0.05-20 µm/px.
    """
    mpp_x = parse_float(properties.get("openslide.mpp-x"))
    mpp_y = parse_float(properties.get("openslide.mpp-y"))
    if mpp_x is None or mpp_y is None:
        mpp_x, mpp_y = _mpp_from_tiff_tags(properties)
    if mpp_x is None or mpp_y is None:
        raise MissingMppError(
            f"{path}: no microns-per-pixel in the slide metadata; pass the scanner's µm/px "
            "with --mpp (or per slide with --mpp-csv)"
        )
    if mpp_x <= 0 or mpp_y <= 0:
        raise MissingMppError(
            f"{path}: the slide metadata gives a resolution of {mpp_x:g} x {mpp_y:g} µm/px, which is "
            "not positive; the metadata is damaged: pass the scanner's µm/px with --mpp"
        )
    mpp = (mpp_x + mpp_y) / 2.0
    if abs(mpp_x - mpp_y) > MAX_MPP_ANISOTROPY * mpp:
        raise MissingMppError(
            f"{path}: x and y resolutions differ ({mpp_x:g} vs {mpp_y:g} µm/px); "
            "check the scanner metadata or pass --mpp to override"
        )
    check_mpp(path, mpp)
    return mpp


# The strongest microscope objectives are 100x; an objective power outside (0, this] is damage.
MAX_OBJECTIVE_POWER = 200.0


def plausible_objective_power(path: Path, power: float | None) -> float | None:
    """``power`` when it is a magnification (0 to MAX_OBJECTIVE_POWER), else None with a warning
    (an Aperio ``AppMag = -40`` would otherwise reach report.json)."""
    if power is not None and not 0 < power <= MAX_OBJECTIVE_POWER:
        import logging

        logging.getLogger(__name__).warning(
            "%s: objective power %g is not a magnification; recorded as unknown", path, power
        )
        return None
    return power


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


def read_mpp_csv(path: Path) -> dict[str, float]:
    """Per-slide µm/px from a CSV with columns ``slide`` and ``mpp`` (``--mpp-csv``).

    Returns slide name -> µm/px. Raises ConfigError naming the file and line for a missing
    file or column, an empty or duplicate slide name, or an mpp that is not a plausible number.
    """
    import csv

    from pipeline.errors import ConfigError
    from pipeline.outputs import require_regular_file

    require_regular_file(path, "--mpp-csv file", ConfigError)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the --mpp-csv file ({exc}); check the path") from exc
    reader = csv.DictReader(text.splitlines())
    try:
        columns = [c.strip() for c in reader.fieldnames or []]
    except csv.Error as exc:
        raise ConfigError(f"{path}: not a readable CSV ({exc})") from exc
    if "slide" not in columns or "mpp" not in columns:
        raise ConfigError(f"{path}: --mpp-csv needs the columns slide and mpp; found {columns or 'none'}")
    twice = sorted({c for c in columns if columns.count(c) > 1})
    if twice:
        raise ConfigError(f"{path}: the columns {twice} appear more than once; keep one of each")
    values: dict[str, float] = {}
    for line, raw_row in enumerate(_csv_rows(reader, path), start=2):
        if None in raw_row:
            raise ConfigError(f"{path}: line {line}: more cells than the header's {len(columns)}")
        row = {(k or "").strip(): (v or "").strip() for k, v in raw_row.items()}
        name, raw = row["slide"], row["mpp"]
        if not name:
            raise ConfigError(f"{path}: line {line}: empty slide name; give every row a slide")
        if any(ord(ch) < 32 for ch in name):
            raise ConfigError(f"{path}: line {line}: slide name {name!r} holds control characters")
        if name in values:
            raise ConfigError(f"{path}: line {line}: slide {name!r} is listed twice; keep one row per slide")
        mpp = parse_float(raw)
        if mpp is None:
            raise ConfigError(f"{path}: line {line}: mpp {raw!r} of {name!r} is not a number; give µm/px")
        if not (MIN_PLAUSIBLE_MPP <= mpp <= MAX_PLAUSIBLE_MPP):
            raise ConfigError(
                f"{path}: line {line}: mpp {mpp:g} of {name!r} is not a plausible µm/px "
                f"(expected {MIN_PLAUSIBLE_MPP}-{MAX_PLAUSIBLE_MPP})"
            )
        values[name] = mpp
    return values


def _csv_rows(reader: Any, path: Path) -> list[dict[Any, Any]]:
    import csv

    from pipeline.errors import ConfigError

    try:
        return list(reader)
    except csv.Error as exc:
        raise ConfigError(f"{path}: not a readable CSV ({exc})") from exc


def _resolved(name: str) -> str:
    try:
        return str(Path(name).resolve())
    except (OSError, RuntimeError, ValueError):  # a link loop, a NUL byte
        return name


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
        match = by_name.get(name) or by_name.get(_resolved(name))
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
