"""Training: finds slides and their annotations, and samples tile centres from them.

Reads slide files, ASAP XML / GeoJSON / CAMELYON16 JSON outlines and the slides' tissue
masks; produces ``PatchSample`` rows (slide, level-0 centre x, y, label, split, kind) and
writes them as a CSV sample index, so a training run can be repeated exactly.

Tumor samples are centred inside tumor outlines (and outside excluded regions); normal
samples are centred on tissue, outside excluded regions and at least ``normal_margin_um``
from any tumor outline. A slide without an annotation file is a normal slide (the CAMELYON
convention: normal slides come without XML), sampled anywhere on tissue. Slides are split
into train and validation as wholes, never by tile.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import zlib
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import shapely
from numpy.typing import NDArray

from pipeline.config import TissueConfig
from pipeline.errors import ConfigError
from pipeline.outputs import atomic_write_text, csv_safe_row, csv_unquote
from pipeline.slides.annotations import Annotation, read_annotations, warn_outlines_outside
from pipeline.slides.formats import OPENSLIDE_SUFFIXES
from pipeline.slides.slide import SlideSource, check_readable_folder
from pipeline.slides.tissue import detect_tissue

log = logging.getLogger(__name__)

# Looked for, in this order, beside a slide or in an annotation folder: <stem><suffix>.
ANNOTATION_SUFFIXES = (".xml", ".geojson", ".json")
INDEX_COLUMNS = ("slide", "x_px", "y_px", "label", "split", "kind")
SampleKind = Literal["tumor", "normal", "hard_negative", "review_normal"]
SAMPLE_KINDS = ("tumor", "normal", "hard_negative", "review_normal")
Split = Literal["train", "val"]
_MAX_DRAW_ROUNDS = 20  # rejection-sampling rounds before giving up on a region
# ``SlideSource.mpp_from`` of a training slide read at the run's --slide-mpp ([data] slide_mpp).
SLIDE_MPP_SETTING = "--slide-mpp"


@dataclasses.dataclass(frozen=True)
class AnnotatedSlide:
    """A slide and its annotation file; ``annotation_path`` None means a normal slide."""

    slide_path: Path
    annotation_path: Path | None = None

    @property
    def slide_id(self) -> str:
        """The slide's file stem."""
        return self.slide_path.stem

    def slide_source(self, slide_mpp: float | None) -> SlideSource:
        """The slide to open: at ``slide_mpp`` µm/px (--slide-mpp) when given, else its own."""
        return SlideSource.for_path(self.slide_path, slide_mpp, SLIDE_MPP_SETTING)


@dataclasses.dataclass(frozen=True)
class PatchSample:
    """One training tile: its centre (x_px, y_px) in level-0 px of ``slide``, label 1 = tumor."""

    slide: str
    x_px: float
    y_px: float
    label: int
    split: Split = "train"
    kind: SampleKind = "normal"


@dataclasses.dataclass(frozen=True)
class SampleConfig:
    """How many tile centres to draw per slide, and where.

    tumor_per_slide: tumor centres per annotated slide (fewer if the outlines are tiny).
    normal_per_slide: normal centres per slide (tumor or normal slide).
    normal_margin_um: normal centres keep at least this distance from tumor outlines, so a
    normal tile barely overlaps tumor (half the tile side in µm is a good value).
    seed: all randomness; each slide draws from its own stream (seed, slide file name).
    """

    tumor_per_slide: int = 200
    normal_per_slide: int = 200
    normal_margin_um: float = 32.0
    seed: int = 0
    tissue: TissueConfig = dataclasses.field(default_factory=TissueConfig)

    def __post_init__(self) -> None:
        for name in ("tumor_per_slide", "normal_per_slide"):
            value = getattr(self, name)
            if not (isinstance(value, int) and 0 <= value <= 1_000_000):
                raise ValueError(f"{name}={value!r} is out of range; allowed 0 to 1000000")
        if not (0.0 <= self.normal_margin_um <= 10_000.0):
            raise ValueError(
                f"normal_margin_um={self.normal_margin_um!r} is out of range; allowed 0 to 10000"
            )


# --- finding slides and annotations ------------------------------------------------------


def _slide_files(paths: Sequence[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_file():
            found.append(path)
        elif path.is_dir():
            check_readable_folder(path)  # an unreadable folder is not "no slide files"
            found.extend(
                p
                for p in sorted(path.rglob("*"))
                if p.is_file() and p.suffix.lower() in OPENSLIDE_SUFFIXES and not p.name.startswith(".")
            )
        else:
            raise ConfigError(f"{path}: slide file or folder not found; check the path")
    return found


def _annotation_lookup(folders: Sequence[Path]) -> dict[str, Path]:
    lookup: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            raise ConfigError(f"{folder}: annotation folder not found; check the path")
        check_readable_folder(folder)  # unread, its tumor slides would pass as normal ones
        for suffix in reversed(ANNOTATION_SUFFIXES):  # earlier suffixes win
            for path in sorted(folder.rglob(f"*{suffix}")):
                stem = path.name[: -len(suffix)].lower()
                lookup[stem] = path
    return lookup


def _beside(slide: Path) -> Path | None:
    for suffix in ANNOTATION_SUFFIXES:
        candidate = slide.with_name(slide.stem + suffix)
        if candidate.is_file():
            return candidate
    return None


def find_slides(slide_paths: Sequence[Path], annotation_dirs: Sequence[Path] = ()) -> list[AnnotatedSlide]:
    """Slides under ``slide_paths`` (files or folders, searched recursively), each with its
    annotation file.

    An annotation is ``<stem>.xml`` / ``.geojson`` / ``.json`` beside the slide, or a file with
    the slide's stem (case-insensitive, so ``Tumor_001.json`` matches ``tumor_001.tif``) in one
    of ``annotation_dirs`` (the CAMELYON16/17 ``lesion_annotations`` layout). Slides without
    one are normal slides. Raises ConfigError for missing paths or when no slide is found.
    """
    lookup = _annotation_lookup(annotation_dirs)
    sources = []
    for slide in _slide_files(slide_paths):
        annotation = _beside(slide) or lookup.get(slide.stem.lower())
        sources.append(AnnotatedSlide(slide.resolve(), annotation))
    if not sources:
        raise ConfigError(
            f"no slide files ({', '.join(OPENSLIDE_SUFFIXES)}) found in "
            f"{', '.join(str(p) for p in slide_paths)}"
        )
    n_annotated = sum(s.annotation_path is not None for s in sources)
    log.info("found %d slides, %d with annotations", len(sources), n_annotated)
    return sources


# --- geometry ----------------------------------------------------------------------------


def _polygon(annotation: Annotation) -> Any:
    shape = shapely.Polygon(annotation.vertices_xy, [h for h in annotation.holes_xy if len(h) >= 3])
    return shape if shape.is_valid else shapely.make_valid(shape)


def _union(annotations: Iterable[Annotation], label: str) -> Any:
    shapes = [_polygon(a) for a in annotations if a.label == label]
    if not shapes:
        return shapely.Polygon()
    geometry = shapely.union_all(shapes)
    shapely.prepare(geometry)
    return geometry


@dataclasses.dataclass(frozen=True, eq=False)
class SlideRegions:
    """A slide's annotated regions as shapely geometries in level-0 px."""

    tumor_parts: tuple[Any, ...]
    tumor: Any
    exclude: Any


def slide_regions(annotations: Sequence[Annotation]) -> SlideRegions:
    """Tumor polygons (one per annotation), their union and the union of excluded regions."""
    parts = tuple(_polygon(a) for a in annotations if a.label == "tumor")
    parts = tuple(p for p in parts if not p.is_empty and p.area > 0)
    return SlideRegions(parts, _union(annotations, "tumor"), _union(annotations, "exclude"))


def inside(geometry: Any, x_px: NDArray[np.float64], y_px: NDArray[np.float64]) -> NDArray[np.bool_]:
    """Bool per point: (x_px, y_px) lies inside ``geometry`` (False for an empty geometry)."""
    if geometry.is_empty:
        return np.zeros(len(x_px), dtype=bool)
    return np.asarray(shapely.contains_xy(geometry, x_px, y_px), dtype=bool)


def near(
    geometry: Any, x_px: NDArray[np.float64], y_px: NDArray[np.float64], distance_px: float
) -> NDArray[np.bool_]:
    """Bool per point: within ``distance_px`` of ``geometry`` (inside counts as near)."""
    if geometry.is_empty:
        return np.zeros(len(x_px), dtype=bool)
    points = shapely.points(x_px, y_px)
    return np.asarray(shapely.dwithin(geometry, points, distance_px), dtype=bool)


# --- drawing centres ---------------------------------------------------------------------


def _rng_for(seed: int, slide: Path) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(slide.name.encode("utf-8"))])


def _draw_in_polygon(
    polygon: Any, regions: SlideRegions, count: int, rng: np.random.Generator
) -> NDArray[np.float64]:
    x0, y0, x1, y1 = polygon.bounds
    kept: list[NDArray[np.float64]] = []
    n_kept = 0
    for _ in range(_MAX_DRAW_ROUNDS):
        n_try = max(16, 4 * (count - n_kept))
        x = rng.uniform(x0, x1, n_try)
        y = rng.uniform(y0, y1, n_try)
        ok = inside(polygon, x, y) & ~inside(regions.exclude, x, y)
        kept.append(np.stack([x[ok], y[ok]], axis=1))
        n_kept += int(ok.sum())
        if n_kept >= count:
            break
    return np.concatenate(kept)[:count]


def sample_tumor_centres(regions: SlideRegions, count: int, rng: np.random.Generator) -> NDArray[np.float64]:
    """(N <= count, 2) level-0 centres inside tumor outlines and outside excluded regions.

    Outlines are picked with probability proportional to the square root of their area, so
    the many small lesions (ITC, micrometastases) are not drowned by one large one.
    """
    if count == 0 or not regions.tumor_parts:
        return np.zeros((0, 2))
    weights = np.sqrt([p.area for p in regions.tumor_parts])
    picks = rng.choice(len(regions.tumor_parts), size=count, p=weights / weights.sum())
    centres = [
        _draw_in_polygon(regions.tumor_parts[index], regions, int(n), rng)
        for index, n in zip(*np.unique(picks, return_counts=True), strict=True)
    ]
    return np.concatenate(centres) if centres else np.zeros((0, 2))


def sample_normal_centres(
    tissue_mask: NDArray[np.bool_],
    level0_px_per_mask_px: tuple[float, float],
    regions: SlideRegions,
    margin_px: float,
    count: int,
    rng: np.random.Generator,
) -> NDArray[np.float64]:
    """(N <= count, 2) level-0 centres on tissue, outside excluded regions and farther than
    ``margin_px`` from tumor. Draws uniformly over the tissue mask's pixels.
    """
    rows, cols = np.nonzero(tissue_mask)
    if count == 0 or len(rows) == 0:
        return np.zeros((0, 2))
    sx, sy = level0_px_per_mask_px
    kept: list[NDArray[np.float64]] = []
    n_kept = 0
    for _ in range(_MAX_DRAW_ROUNDS):
        picks = rng.integers(0, len(rows), max(16, 2 * (count - n_kept)))
        x = (cols[picks] + rng.random(len(picks))) * sx
        y = (rows[picks] + rng.random(len(picks))) * sy
        ok = ~inside(regions.exclude, x, y) & ~near(regions.tumor, x, y, margin_px)
        kept.append(np.stack([x[ok], y[ok]], axis=1))
        n_kept += int(ok.sum())
        if n_kept >= count:
            break
    return np.concatenate(kept)[:count]


def _rows(slide: Path, centres: NDArray[np.float64], label: int, kind: SampleKind) -> list[PatchSample]:
    return [PatchSample(str(slide), float(x), float(y), label, "train", kind) for x, y in centres]


@dataclasses.dataclass(frozen=True, eq=False)
class _SlideAreas:
    regions: SlideRegions
    tissue_mask: NDArray[np.bool_]
    level0_px_per_mask_px: tuple[float, float]
    margin_px: float


def _slide_areas(source: AnnotatedSlide, config: SampleConfig, slide_mpp: float | None) -> _SlideAreas:
    annotations = read_annotations(source.annotation_path) if source.annotation_path else []
    with source.slide_source(slide_mpp).open() as slide:
        if source.annotation_path is not None:
            tumors = [a.vertices_xy for a in annotations if a.label == "tumor"]
            warn_outlines_outside(source.annotation_path, tumors, slide.dimensions)
        tissue = detect_tissue(slide, config.tissue)
        margin_px = config.normal_margin_um / slide.mpp
    return _SlideAreas(slide_regions(annotations), tissue.mask, tissue.level0_px_per_mask_px, margin_px)


def sample_slide(
    source: AnnotatedSlide, config: SampleConfig, slide_mpp: float | None = None
) -> list[PatchSample]:
    """Tumor and normal tile centres of one slide (split "train"; ``assign_splits`` sets it).

    slide_mpp: µm/px to use when the slide's metadata lacks it. Raises SlideOpenError /
    MissingMppError naming the slide and AnnotationError naming the annotation file.
    """
    areas = _slide_areas(source, config, slide_mpp)
    rng = _rng_for(config.seed, source.slide_path)
    tumor = sample_tumor_centres(areas.regions, config.tumor_per_slide, rng)
    normal = sample_normal_centres(
        areas.tissue_mask,
        areas.level0_px_per_mask_px,
        areas.regions,
        areas.margin_px,
        config.normal_per_slide,
        rng,
    )
    if areas.regions.tumor_parts and len(tumor) < config.tumor_per_slide:
        log.warning(
            "%s: only %d of %d tumor centres could be drawn from %s",
            source.slide_path,
            len(tumor),
            config.tumor_per_slide,
            source.annotation_path,
        )
    return _rows(source.slide_path, tumor, 1, "tumor") + _rows(source.slide_path, normal, 0, "normal")


def sample_negative_candidates(
    source: AnnotatedSlide,
    config: SampleConfig,
    count: int,
    round_index: int,
    slide_mpp: float | None = None,
) -> list[PatchSample]:
    """``count`` fresh normal centres of a slide (kind "hard_negative") for mining round
    ``round_index``: same rules as normal samples, a different random stream per round.
    """
    areas = _slide_areas(source, config, slide_mpp)
    rng = np.random.default_rng(
        [config.seed, zlib.crc32(source.slide_path.name.encode("utf-8")), 1 + round_index]
    )
    centres = sample_normal_centres(
        areas.tissue_mask, areas.level0_px_per_mask_px, areas.regions, areas.margin_px, count, rng
    )
    return _rows(source.slide_path, centres, 0, "hard_negative")


# --- splits, balance, the index file ------------------------------------------------------


def split_by_slide(
    slides: Sequence[str], tumor_slides: Collection[str], val_fraction: float, seed: int
) -> dict[str, Split]:
    """Slide -> "train" or "val"; whole slides only, stratified by tumor / tumor-free.

    tumor_slides: the slides with tumor samples. Each group sends round(n * val_fraction)
    slides to validation; when val_fraction > 0 and a group has at least two slides, at least
    one and never all of them. Raises ValueError for a fraction outside 0-0.9.
    """
    if not (0.0 <= val_fraction <= 0.9):
        raise ValueError(f"val_fraction={val_fraction!r} is out of range; allowed 0 to 0.9")
    rng = np.random.default_rng(seed)
    splits: dict[str, Split] = {}
    for has_tumor in (True, False):
        group = sorted({s for s in slides if (s in tumor_slides) == has_tumor})
        n_val = round(len(group) * val_fraction)
        if val_fraction > 0 and len(group) >= 2:
            n_val = min(max(n_val, 1), len(group) - 1)
        order = rng.permutation(len(group))
        for rank, index in enumerate(order):
            splits[group[index]] = "val" if rank < n_val else "train"
    return splits


def assign_splits(samples: Sequence[PatchSample], splits: dict[str, Split]) -> list[PatchSample]:
    """Samples with ``split`` taken from their slide's entry in ``splits``."""
    return [dataclasses.replace(s, split=splits.get(s.slide, "train")) for s in samples]


def balance_classes(samples: Sequence[PatchSample], seed: int) -> list[PatchSample]:
    """The samples plus random repeats of the rarer class until both classes are equal.

    Returns the input unchanged when a class is absent.
    """
    tumor = [s for s in samples if s.label == 1]
    normal = [s for s in samples if s.label == 0]
    if not tumor or not normal or len(tumor) == len(normal):
        return list(samples)
    rare, common = (tumor, normal) if len(tumor) < len(normal) else (normal, tumor)
    rng = np.random.default_rng(seed)
    extra = rng.integers(0, len(rare), len(common) - len(rare))
    return list(samples) + [rare[i] for i in extra]


def write_sample_index(path: Path, samples: Sequence[PatchSample]) -> Path:
    """Write samples as CSV (INDEX_COLUMNS); coordinates keep full float precision."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(INDEX_COLUMNS)
    for s in samples:
        writer.writerow(csv_safe_row([s.slide, repr(s.x_px), repr(s.y_px), s.label, s.split, s.kind]))
    atomic_write_text(path, buffer.getvalue())  # OutputError naming the file on a full disk
    return path


def _parse_row(path: Path, line: int, row: dict[str, str]) -> PatchSample:
    try:
        split, kind = row["split"], row["kind"]
        if split not in ("train", "val") or kind not in SAMPLE_KINDS:
            raise ValueError(f"split={split!r}, kind={kind!r}")
        label = int(row["label"])
        if label not in (0, 1):
            raise ValueError(f"label={label!r}")
        x_px, y_px = float(row["x_px"]), float(row["y_px"])
        if not (math.isfinite(x_px) and math.isfinite(y_px)):
            raise ValueError("coordinates are not finite")
    except (KeyError, ValueError, TypeError) as exc:
        raise ConfigError(
            f"{path}: line {line}: bad sample row ({exc}); columns are {INDEX_COLUMNS}"
        ) from exc
    return PatchSample(csv_unquote(row["slide"]), x_px, y_px, label, split, kind)  # type: ignore[arg-type]


def read_sample_index(path: Path) -> list[PatchSample]:
    """Samples from a CSV written by ``write_sample_index``; ConfigError naming the line."""
    if not path.is_file():
        raise ConfigError(f"{path}: sample index not found")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            return [_parse_row(path, n, row) for n, row in enumerate(csv.DictReader(handle), start=2)]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(
            f"{path}: cannot read the sample index ({exc}); pass the samples.csv of a run"
        ) from exc


def build_sample_index(
    sources: Sequence[AnnotatedSlide],
    config: SampleConfig,
    val_fraction: float,
    slide_mpp: float | None = None,
) -> list[PatchSample]:
    """Sample every slide and assign whole slides to train / validation (``split_by_slide``)."""
    samples: list[PatchSample] = []
    for source in sources:
        samples.extend(sample_slide(source, config, slide_mpp))
    tumor_slides = {s.slide for s in samples if s.label == 1}
    slides = [str(source.slide_path) for source in sources]
    return assign_splits(samples, split_by_slide(slides, tumor_slides, val_fraction, config.seed))
