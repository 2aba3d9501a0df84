"""Deposits: reads a ``Heatmap``, produces measured tumor deposits (``Deposit``) with categories.

A deposit is one 8-connected component of heatmap cells whose probability is at or above
the threshold (NaN = not scored = not tumor). Each cell stands for the stride-sized square
centred on its tile (see ``pipeline.detection.heatmap``), so a deposit is a union of such squares.

Measurements, all in level-0 px and converted to mm with the slide's µm/px:
- max_diameter_mm: the maximum Feret diameter (largest distance between two points) of the
  union of cell squares. The Feret diameter of a set equals that of its convex hull, so it is
  computed exactly from the convex hull of all square corners, not from a fitted ellipse.
- max_diameter_uncertainty_mm = stride_um * sqrt(2) / 1000. Why: a cell is tumor when its
  tile scores as tumor, taken to mean "the cell centre lies in the tumor". Every point of the
  measured squares is then within half a cell diagonal (stride / sqrt(2)) of the true
  deposit, and every point of the true deposit within half a diagonal of the squares (as
  long as the deposit is at least about one stride wide, i.e. resolved by the grid). Two
  sets that close have max Feret diameters within twice that, stride * sqrt(2). The bound
  covers grid quantisation only, not errors of the model itself.
- area_mm2: number of cells x stride²; centroid: mean of the cell centres; bbox: the
  bounding box of the squares; outline_xy: the outer boundary of the squares (holes are
  not part of the outline; their cells are simply absent from the area).

With a ``SizeCalibration`` (from the model card, measured on real tumor at node scale) the size
is instead the max Feret diameter of the probability contour at ``level`` around the deposit
(marching squares on the heatmap, so partial cells count by how tumor-like they score), less
``offset_mm``, the mean excess measured on real tumor; its ± is the 95 % error measured for the
deposit's size class. The grid-step bound above covers quantisation only; the calibrated ± is
what sizes were actually off by on real tissue.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.detection.heatmap import Heatmap
from pipeline.errors import HeatmapError
from pipeline.slides.annotations import max_feret_diameter_px
from pipeline.staging import DEFAULT_CELL_RULE, Category, CellRule, categorize_deposit, deposit_review

log = logging.getLogger(__name__)

# The outline is traced on the cell mask upsampled by this factor; straight edges are exact
# and corners are cut by 1 / (2 * factor) of a cell (display only: sizes use the corners).
OUTLINE_UPSAMPLE = 2
# Components whose bounding box holds more cells than this are traced without upsampling.
OUTLINE_MAX_UPSAMPLED_CELLS = 1_000_000
UM_PER_MM = 1000.0

__all__ = [
    "Deposit",
    "SizeCalibration",
    "calibrated_diameter_mm",
    "deposit_from_dict",
    "diameter_uncertainty_mm",
    "find_deposits",
    "keep_seeded",
    "max_feret_diameter",
    "number_deposits",
    "size_is_upper_bound",
    "with_cell_count",
]


@dataclasses.dataclass(frozen=True)
class SizeCalibration:
    """How sizes are measured, from real tumor at node scale (docs/benchmarks.md, "Node scale").

    level: probability of the contour whose max Feret diameter is measured. offset_mm: mean
    excess of that diameter over the true largest dimension, subtracted. error_mm: (upper size
    mm, 95 % error half-width mm) by size class, smallest first; the last covers every larger size.
    knots_mm: (contour diameter mm, mean true size mm) pairs measured on real tumor; when given,
    sizes are read off this piecewise-linear curve (the offset of the nearest end knot beyond it)
    instead of subtracting one offset, since the contour's excess depends on the deposit's size.
    """

    level: float
    offset_mm: float
    error_mm: tuple[tuple[float, float], ...]
    knots_mm: tuple[tuple[float, float], ...] = ()

    def __post_init__(self) -> None:
        raw = [r for r, _ in self.knots_mm]
        if any(
            not (math.isfinite(r) and math.isfinite(t) and r > 0 and t > 0) for r, t in self.knots_mm
        ) or any(b <= a for a, b in itertools.pairwise(raw)):
            raise ValueError(f"size knots_mm={self.knots_mm!r}; expected (contour mm, true mm) pairs, rising")
        if not (math.isfinite(self.level) and 0.0 < self.level < 1.0):
            raise ValueError(f"size level={self.level!r} is out of range; allowed 0 to 1 (exclusive)")
        if not (math.isfinite(self.offset_mm) and abs(self.offset_mm) < 1.0):
            raise ValueError(f"size offset_mm={self.offset_mm!r} is out of range; allowed -1 to 1")
        if not self.error_mm or any(
            not (math.isfinite(u) and math.isfinite(e) and u > 0 and e >= 0) for u, e in self.error_mm
        ):
            raise ValueError(f"size error_mm={self.error_mm!r}; expected (upper mm, error mm) pairs, > 0")

    def error_for(self, diameter_mm: float) -> float:
        """The 95 % error half-width measured for a deposit of this size."""
        for upper_mm, error_mm in self.error_mm:
            if diameter_mm <= upper_mm:
                return error_mm
        return self.error_mm[-1][1]


@dataclasses.dataclass(frozen=True, eq=False)
class Deposit:
    """One measured tumor deposit.

    id: 1-based rank by size (largest first). category: from size and cell count via
    ``staging.categorize_deposit``. max_diameter_mm, max_diameter_uncertainty_mm: max Feret
    diameter and its +/- bound. area_mm2: tumor area. centroid_x_px/_y_px: level-0 px;
    centroid_x_mm/_y_mm: the same in mm from the slide origin. bbox_px: level-0
    (x, y, width, height), whole px enclosing the outline. max/mean_probability: over the
    deposit's cells. cell_count: estimated tumor nuclei, None when not counted. refined:
    measured on a finer rescoring (``pipeline.deposits.refine``). outline_xy: (N, 2) float64 level-0
    px, open ring (first vertex not repeated), counter-clockwise in the x-right/y-up sense.
    review: why size and cell count disagree (``staging.deposit_review``), None when they
    agree or cells were not counted. confirm_probability: the probability the confirmation
    decided by (``pipeline.deposits.decide``): the mean tumor probability over the 8 dihedral
    poses of the deposit's best cell, or the card's second stage's; None when not rescored.
    size_calibrated: the size is the calibrated contour diameter (module docs).
    """

    id: int
    category: Category
    max_diameter_mm: float
    max_diameter_uncertainty_mm: float
    area_mm2: float
    centroid_x_px: float
    centroid_y_px: float
    centroid_x_mm: float
    centroid_y_mm: float
    bbox_px: tuple[int, int, int, int]
    max_probability: float
    mean_probability: float
    cell_count: int | None
    refined: bool
    outline_xy: NDArray[np.float64]
    review: str | None = None
    confirm_probability: float | None = None
    size_calibrated: bool = False

    @property
    def below_grid(self) -> bool:
        """True when the size is not above the grid's resolution (one heatmap cell): the
        diameter is then an upper bound, not a value +/- its uncertainty."""
        return size_is_upper_bound(self.max_diameter_mm, self.max_diameter_uncertainty_mm)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form used in ``report.json`` (docs/architecture.md)."""
        x, y, width, height = self.bbox_px
        return {
            "id": int(self.id),
            "category": str(self.category),
            "max_diameter_mm": float(self.max_diameter_mm),
            "max_diameter_uncertainty_mm": float(self.max_diameter_uncertainty_mm),
            "max_diameter_is_upper_bound": self.below_grid,
            "area_mm2": float(self.area_mm2),
            "centroid_x_px": float(self.centroid_x_px),
            "centroid_y_px": float(self.centroid_y_px),
            "centroid_x_mm": float(self.centroid_x_mm),
            "centroid_y_mm": float(self.centroid_y_mm),
            "bbox_x_px": int(x),
            "bbox_y_px": int(y),
            "bbox_width_px": int(width),
            "bbox_height_px": int(height),
            "max_probability": float(self.max_probability),
            "mean_probability": float(self.mean_probability),
            "cell_count": None if self.cell_count is None else int(self.cell_count),
            "refined": bool(self.refined),
            "outline_xy": [[float(px), float(py)] for px, py in self.outline_xy],
            "review": self.review,
            "confirm_probability": None
            if self.confirm_probability is None
            else round(float(self.confirm_probability), 4),
            "size_calibrated": bool(self.size_calibrated),
        }


def deposit_from_dict(data: Mapping[str, Any]) -> Deposit:
    """Rebuild a Deposit from ``Deposit.to_dict()`` output (e.g. a report.json entry).

    Raises ValueError (KeyError/TypeError included) for a missing or malformed field.
    """
    try:
        cell_count = data["cell_count"]
        return Deposit(
            id=int(data["id"]),
            category=Category(data["category"]),
            max_diameter_mm=float(data["max_diameter_mm"]),
            max_diameter_uncertainty_mm=float(data["max_diameter_uncertainty_mm"]),
            area_mm2=float(data["area_mm2"]),
            centroid_x_px=float(data["centroid_x_px"]),
            centroid_y_px=float(data["centroid_y_px"]),
            centroid_x_mm=float(data["centroid_x_mm"]),
            centroid_y_mm=float(data["centroid_y_mm"]),
            bbox_px=(
                int(data["bbox_x_px"]),
                int(data["bbox_y_px"]),
                int(data["bbox_width_px"]),
                int(data["bbox_height_px"]),
            ),
            max_probability=float(data["max_probability"]),
            mean_probability=float(data["mean_probability"]),
            cell_count=None if cell_count is None else int(cell_count),
            refined=bool(data["refined"]),
            outline_xy=np.asarray(data["outline_xy"], dtype=np.float64).reshape(-1, 2),
            review=None if data.get("review") is None else str(data["review"]),
            confirm_probability=None
            if data.get("confirm_probability") is None
            else float(data["confirm_probability"]),
            size_calibrated=bool(data.get("size_calibrated", False)),
        )
    except (KeyError, TypeError) as exc:
        raise ValueError(f"deposit entry is missing or has a malformed field ({exc!r})") from exc


def max_feret_diameter(points_xy: NDArray[np.float64]) -> float:
    """Maximum Feret diameter (largest pairwise distance) of a point set, in its px units.

    points_xy: (N, 2) points, e.g. polygon vertices; 0.0 for fewer than two distinct points.
    """
    return max_feret_diameter_px(np.asarray(points_xy, dtype=np.float64).reshape(-1, 2))


def diameter_uncertainty_mm(stride_um: float) -> float:
    """+/- bound on a max Feret diameter measured on a grid of this stride (module docs)."""
    return stride_um * math.sqrt(2.0) / UM_PER_MM


def size_is_upper_bound(max_diameter_mm: float, uncertainty_mm: float) -> bool:
    """True when a measured size is not above the grid's resolution (at most its own
    uncertainty: one heatmap cell), so it can only be read as an upper bound."""
    return max_diameter_mm <= uncertainty_mm * (1.0 + 1e-9)


def with_cell_count(
    deposit: Deposit, cell_count: int | None, cell_rule: CellRule | str = DEFAULT_CELL_RULE
) -> Deposit:
    """The deposit with ``cell_count`` set, its category recomputed from size and count
    under ``cell_rule``, and ``review`` set when they disagree (``staging.deposit_review``)."""
    category = categorize_deposit(deposit.max_diameter_mm, cell_count, cell_rule)
    review = deposit_review(deposit.max_diameter_mm, cell_count, cell_rule)
    return dataclasses.replace(deposit, cell_count=cell_count, category=category, review=review)


def keep_seeded(deposits: Sequence[Deposit], seed_threshold: float | None) -> list[Deposit]:
    """Deposits with at least one cell at or above ``seed_threshold`` (all when None), renumbered.

    The second threshold of a hysteresis: ``find_deposits``' threshold outlines deposits, the
    seed decides which of them are tumor, so isolated weak cells do not become deposits.
    """
    if seed_threshold is None:
        return list(deposits)
    return number_deposits([d for d in deposits if d.max_probability >= seed_threshold])


def number_deposits(deposits: Sequence[Deposit]) -> list[Deposit]:
    """Deposits sorted largest first (diameter, then area, then max probability), ids 1..n."""
    ordered = sorted(
        deposits,
        key=lambda d: (-d.max_diameter_mm, -d.area_mm2, -d.max_probability, d.bbox_px),
    )
    return [dataclasses.replace(d, id=index + 1) for index, d in enumerate(ordered)]


def _check_heatmap(heatmap: Heatmap) -> None:
    values = np.asarray(heatmap.probabilities)
    if values.ndim != 2:
        raise HeatmapError(
            f"heatmap probabilities have shape {values.shape}; expected a 2-D (rows, cols) "
            "array; recompute the heatmap with `micromet infer`"
        )
    for name in ("stride_l0_px", "tile_size_l0_px", "slide_mpp"):
        value = float(getattr(heatmap, name))
        if not (math.isfinite(value) and value > 0):
            raise HeatmapError(
                f"heatmap {name}={value!r}; expected a positive number; the heatmap.json "
                "geometry is broken, recompute the heatmap"
            )


def _check_threshold(threshold: float) -> None:
    if not (math.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise ValueError(
            f"threshold={threshold!r} is out of range; allowed 0.0 to 1.0 (take it from the model card)"
        )


def find_deposits(
    heatmap: Heatmap, threshold: float, refined: bool = False, calibration: SizeCalibration | None = None
) -> list[Deposit]:
    """Measured deposits of a heatmap, sorted largest first (ids 1..n).

    threshold: a cell is tumor when its probability is >= threshold (NaN is never tumor).
    refined: the value written into every deposit's ``refined`` flag.
    calibration: measure sizes as calibrated contour diameters (module docs); None: grid sizes.
    Returns [] for an empty or all-NaN heatmap. Raises HeatmapError for a heatmap that is
    not 2-D or has a broken geometry, ValueError for a threshold outside [0, 1].
    """
    from scipy import ndimage
    from skimage.measure import label

    _check_heatmap(heatmap)
    _check_threshold(threshold)
    values = np.asarray(heatmap.probabilities, dtype=np.float32)
    if values.size == 0:
        return []
    tumor = np.zeros(values.shape, dtype=bool)
    np.greater_equal(values, threshold, out=tumor, where=~np.isnan(values))
    labels = np.asarray(label(tumor, connectivity=2), dtype=np.int32)
    deposits = []
    for index, window in enumerate(ndimage.find_objects(labels)):
        if window is None:
            continue
        component = labels[window] == index + 1
        deposit = _measure(heatmap, values[window], component, window, refined)
        if calibration is not None:
            deposit = _calibrate(heatmap, deposit, values, labels, index + 1, window, calibration)
        deposits.append(deposit)
    log.debug("%d deposit(s) at threshold %g", len(deposits), threshold)
    return number_deposits(deposits)


def _measure(
    heatmap: Heatmap,
    values: NDArray[np.float32],
    component: NDArray[np.bool_],
    window: tuple[slice, slice],
    refined: bool,
) -> Deposit:
    """Measure one component; ``component`` and ``values`` are cropped to ``window``."""
    row0, col0 = window[0].start, window[1].start
    rows, cols = np.nonzero(component)
    offset = np.array([row0, col0], dtype=np.float64)
    cells_rc = np.column_stack([rows, cols]).astype(np.float64) + offset
    corners_xy = heatmap.cell_center_xy(_square_corners_rc(_row_extremes(rows, cols) + offset))
    centres_xy = heatmap.cell_center_xy(cells_rc)
    mm_per_px = heatmap.slide_mpp / UM_PER_MM
    diameter_mm = max_feret_diameter(corners_xy) * mm_per_px
    centroid_x, centroid_y = (float(v) for v in centres_xy.mean(axis=0))
    probabilities = values[component].astype(np.float64)
    outline_rc = _outline_rc(component) + offset
    return Deposit(
        id=0,
        category=categorize_deposit(diameter_mm, None),
        max_diameter_mm=diameter_mm,
        max_diameter_uncertainty_mm=diameter_uncertainty_mm(heatmap.stride_um),
        area_mm2=len(rows) * (heatmap.stride_um / UM_PER_MM) ** 2,
        centroid_x_px=centroid_x,
        centroid_y_px=centroid_y,
        centroid_x_mm=centroid_x * mm_per_px,
        centroid_y_mm=centroid_y * mm_per_px,
        bbox_px=_bbox_px(corners_xy),
        max_probability=float(probabilities.max()),
        mean_probability=float(probabilities.mean()),
        cell_count=None,
        refined=refined,
        outline_xy=heatmap.cell_center_xy(outline_rc),
    )


def contour_diameter_px(
    heatmap: Heatmap,
    values: NDArray[np.float32],
    labels: NDArray[np.int32],
    label_id: int,
    window: tuple[slice, slice],
    level: float,
) -> float:
    """Max Feret diameter in level-0 px of the probability contour at ``level`` around one
    component: its cells and the unlabelled cells touching it (other components count as 0)."""
    from scipy.ndimage import binary_dilation
    from skimage.measure import find_contours

    row0, col0 = max(window[0].start - 1, 0), max(window[1].start - 1, 0)
    row1, col1 = min(window[0].stop + 1, values.shape[0]), min(window[1].stop + 1, values.shape[1])
    sub = np.nan_to_num(values[row0:row1, col0:col1], nan=0.0).astype(np.float64)
    own = labels[row0:row1, col0:col1] == label_id
    near = binary_dilation(own, structure=np.ones((3, 3), dtype=bool))
    sub = np.where(near & ((labels[row0:row1, col0:col1] == 0) | own), sub, 0.0)
    contours = find_contours(np.pad(sub, 1), level)
    if not contours:
        return 0.0
    points_rc = np.concatenate(contours) - 1.0 + np.array([row0, col0], dtype=np.float64)
    return max_feret_diameter(points_rc * heatmap.stride_l0_px)


def calibrated_diameter_mm(raw_mm: float, calibration: SizeCalibration, floor_mm: float) -> float:
    """A contour diameter corrected by the calibration (its knots, else its offset), never below
    ``floor_mm``."""
    knots = calibration.knots_mm
    if not knots:
        return max(raw_mm - calibration.offset_mm, floor_mm)
    if raw_mm <= knots[0][0]:
        return max(raw_mm - (knots[0][0] - knots[0][1]), floor_mm)
    if raw_mm >= knots[-1][0]:
        return max(raw_mm - (knots[-1][0] - knots[-1][1]), floor_mm)
    raw, true = zip(*knots, strict=True)
    return max(float(np.interp(raw_mm, raw, true)), floor_mm)


def _calibrate(
    heatmap: Heatmap,
    deposit: Deposit,
    values: NDArray[np.float32],
    labels: NDArray[np.int32],
    label_id: int,
    window: tuple[slice, slice],
    calibration: SizeCalibration,
) -> Deposit:
    """The deposit with its calibrated size, ± and category (module docs)."""
    raw_px = contour_diameter_px(heatmap, values, labels, label_id, window, calibration.level)
    mm_per_px = heatmap.slide_mpp / UM_PER_MM
    # the floor: a deposit found is at least a few cells' worth of tissue (10 µm)
    diameter_mm = calibrated_diameter_mm(raw_px * mm_per_px, calibration, 0.01)
    return dataclasses.replace(
        deposit,
        category=categorize_deposit(diameter_mm, None),
        max_diameter_mm=diameter_mm,
        max_diameter_uncertainty_mm=calibration.error_for(diameter_mm),
        size_calibrated=True,
    )


def _row_extremes(rows: NDArray[np.intp], cols: NDArray[np.intp]) -> NDArray[np.float64]:
    """The first and last cell of every row, as (M, 2) rc (``rows`` in row-major order).

    The convex hull of a union of squares is spanned by the corners of these cells alone,
    so they give the same Feret diameter as all cells at a fraction of the cost.
    """
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    ends = np.r_[starts[1:] - 1, len(rows) - 1]
    picks = np.r_[starts, ends]
    return np.column_stack([rows[picks], cols[picks]]).astype(np.float64)


def _square_corners_rc(cells_rc: NDArray[np.float64]) -> NDArray[np.float64]:
    """The four corners (row +/- 0.5, col +/- 0.5) of each cell, as (4N, 2) fractional rc."""
    offsets = np.array([[-0.5, -0.5], [-0.5, 0.5], [0.5, -0.5], [0.5, 0.5]])
    corners = cells_rc[:, None, :] + offsets[None, :, :]
    return np.asarray(corners, dtype=np.float64).reshape(-1, 2)


def _bbox_px(corners_xy: NDArray[np.float64]) -> tuple[int, int, int, int]:
    x0, y0 = np.floor(corners_xy.min(axis=0))
    x1, y1 = np.ceil(corners_xy.max(axis=0))
    return int(x0), int(y0), int(x1 - x0), int(y1 - y0)


def _outline_rc(component: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Outer boundary of an 8-connected cell mask, as (N, 2) fractional (row, col).

    Traced with marching squares on the mask upsampled by OUTLINE_UPSAMPLE and padded, so
    the level-0.5 contour runs along the cell edges; "high" connectivity keeps cells that
    touch only at a corner inside one simple ring.
    """
    from skimage.measure import find_contours

    k = OUTLINE_UPSAMPLE if component.size <= OUTLINE_MAX_UPSAMPLED_CELLS else 1
    upsampled = np.kron(component.astype(np.float32), np.ones((k, k), dtype=np.float32))
    padded = np.pad(upsampled, 1)
    contours = find_contours(padded, 0.5, fully_connected="high")
    ring = max(contours, key=lambda c: abs(_signed_area(c)))[:-1]
    # Sample index i (padded) has its centre at cell coordinate (i - 0.5) / k - 0.5.
    ring_rc = (ring - 0.5) / k - 0.5
    ring_rc = _drop_collinear(ring_rc)
    # In (x, y) = (col, row) a positive shoelace area is counter-clockwise for y up.
    if _signed_area(ring_rc[:, ::-1]) < 0:
        ring_rc = ring_rc[::-1]
    return np.asarray(ring_rc, dtype=np.float64)


def _signed_area(ring: NDArray[np.float64]) -> float:
    a, b = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(a, np.roll(b, -1)) - np.dot(b, np.roll(a, -1)))


def _drop_collinear(ring: NDArray[np.float64]) -> NDArray[np.float64]:
    """Remove vertices lying on the straight line through their neighbours."""
    previous, following = np.roll(ring, 1, axis=0), np.roll(ring, -1, axis=0)
    u, v = ring - previous, following - ring
    cross = u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0]
    keep = np.abs(cross) > 1e-9
    return ring[keep] if int(keep.sum()) >= 3 else ring
