"""Cell counts: nuclei counted on drawn images and on synthetic slides with known counts."""

from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import shapely
from numpy.typing import NDArray
from polygon_reference import asap_inside, winding_number

from pipeline.config import CAMELYON_LEVEL0_MPP, DepositConfig
from pipeline.deposits.cells import add_cell_counts, count_cells_in_deposit, count_tumor_nuclei, deposit_mask
from pipeline.deposits.measure import Deposit, find_deposits
from pipeline.detection.heatmap import Heatmap
from pipeline.slides.slide import open_slide
from pipeline.staging import Category

log = logging.getLogger(__name__)

MPP = 0.5
CYTOPLASM_RGB = (236, 176, 206)
TUMOR_NUCLEUS_RGB = (175, 125, 195)  # large, pale (vesicular): mean hematoxylin OD 0.036
LYMPHOCYTE_RGB = (55, 25, 105)  # small, dark
# Stated tolerance of the estimate against known counts (module docs of pipeline.deposits.cells).
RELATIVE_TOLERANCE = 0.25


def _paint(
    image: NDArray[np.uint8],
    x: float,
    y: float,
    a_px: float,
    b_px: float,
    angle: float,
    rgb: tuple[int, int, int],
) -> None:
    """Fill an ellipse (semi-axes a_px, b_px) centred on (x, y), drawing in a local window."""
    reach = math.ceil(max(a_px, b_px)) + 1
    x0, y0 = max(0, int(x) - reach), max(0, int(y) - reach)
    x1, y1 = min(image.shape[1], int(x) + reach + 1), min(image.shape[0], int(y) + reach + 1)
    yy, xx = np.mgrid[y0:y1, x0:x1]
    u = (xx - x) * math.cos(angle) + (yy - y) * math.sin(angle)
    v = -(xx - x) * math.sin(angle) + (yy - y) * math.cos(angle)
    image[y0:y1, x0:x1][(u / a_px) ** 2 + (v / b_px) ** 2 <= 1] = rgb


def draw_field(
    n_tumor: int, n_lymph: int, seed: int = 0, size_px: int = 400
) -> tuple[NDArray[np.uint8], NDArray[np.float64]]:
    """Pink field with n_tumor pale nuclei (10-14 µm) and n_lymph dark ones (6 µm).

    Tumor nuclei sit on a jittered lattice, neighbours sometimes touching; lymphocytes fill
    the gaps. Returns the image and the tumor nucleus centres (x, y) px.
    """
    rng = np.random.default_rng(seed)
    image = np.empty((size_px, size_px, 3), dtype=np.uint8)
    image[:] = CYTOPLASM_RGB
    side = math.ceil(math.sqrt(n_tumor))
    spacing = size_px / side
    lattice = [((i + 0.5) * spacing, (j + 0.5) * spacing) for j in range(side) for i in range(side)][:n_tumor]
    centres = np.array(lattice) + rng.uniform(-0.12, 0.12, (n_tumor, 2)) * spacing
    for x, y in centres:
        a_px, b_px = rng.uniform(5.0, 7.0, 2) / MPP
        _paint(image, x, y, a_px, b_px, rng.uniform(0, math.pi), TUMOR_NUCLEUS_RGB)
    placed = 0
    while placed < n_lymph:
        x, y = rng.uniform(0, size_px, 2)
        if np.min(np.hypot(centres[:, 0] - x, centres[:, 1] - y)) < 11 / MPP:
            continue
        _paint(image, x, y, 3.0 / MPP, 3.0 / MPP, 0.0, LYMPHOCYTE_RGB)
        placed += 1
    return image, centres


def test_counts_drawn_tumor_nuclei_and_ignores_lymphocytes() -> None:
    image, centres = draw_field(n_tumor=64, n_lymph=40)
    count = count_tumor_nuclei(image, MPP, None)
    assert abs(count - len(centres)) <= 0.1 * len(centres)


def test_counts_without_lymphocytes() -> None:
    image, centres = draw_field(n_tumor=49, n_lymph=0, seed=1)
    assert abs(count_tumor_nuclei(image, MPP, None) - len(centres)) <= 0.1 * len(centres)


def test_only_nuclei_centred_inside_the_mask_count() -> None:
    image, centres = draw_field(n_tumor=64, n_lymph=20, seed=2)
    mask = np.zeros(image.shape[:2], dtype=bool)
    mask[:, :200] = True
    inside = int(np.count_nonzero(centres[:, 0] < 200))
    count = count_tumor_nuclei(image, MPP, mask)
    assert abs(count - inside) <= max(2, 0.1 * inside)
    assert count < 0.7 * count_tumor_nuclei(image, MPP, None)


def test_blank_images_and_empty_masks_have_no_nuclei() -> None:
    white = np.full((100, 120, 3), 255, dtype=np.uint8)
    pink = np.empty((100, 120, 3), dtype=np.uint8)
    pink[:] = CYTOPLASM_RGB
    assert count_tumor_nuclei(white, MPP, None) == 0
    assert count_tumor_nuclei(pink, MPP, None) == 0
    image, _ = draw_field(n_tumor=16, n_lymph=0, size_px=200)
    assert count_tumor_nuclei(image, MPP, np.zeros((200, 200), dtype=bool)) == 0
    assert count_tumor_nuclei(np.zeros((0, 0, 3), dtype=np.uint8), MPP, None) == 0


def test_bad_inputs_are_rejected() -> None:
    image, _ = draw_field(n_tumor=4, n_lymph=0, size_px=100)
    with pytest.raises(ValueError, match="rgb"):
        count_tumor_nuclei(image[..., 0], MPP, None)
    with pytest.raises(ValueError, match="mpp"):
        count_tumor_nuclei(image, 0.0, None)
    with pytest.raises(ValueError, match="mask"):
        count_tumor_nuclei(image, MPP, np.ones((10, 10), dtype=bool))


# --- synthetic slides with known tumor nucleus counts -------------------------------------


@dataclasses.dataclass(frozen=True)
class SyntheticSlide:
    path: Path
    mpp: float
    size_px: tuple[int, int]
    outlines_xy: list[NDArray[np.float64]]
    n_tumor_nuclei: list[int]


@pytest.fixture(scope="module")
def synthetic_slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    synthetic = pytest.importorskip("pipeline.synthetic.generate")
    config = synthetic.SynthConfig(
        width_px=1600,
        height_px=1200,
        mpp=MPP,
        seed=0,
        n_levels=1,
        deposits=(synthetic.PlantedDeposit(0.22), synthetic.PlantedDeposit(0.1)),
    )
    result = synthetic.generate_slide(config, tmp_path_factory.mktemp("cells") / "node.tif")
    return SyntheticSlide(
        path=result.slide_path,
        mpp=MPP,
        size_px=(config.width_px, config.height_px),
        outlines_xy=[np.asarray(d.vertices_xy, dtype=np.float64) for d in result.deposits],
        n_tumor_nuclei=[int(d.n_tumor_nuclei) for d in result.deposits],
    )


def oracle_deposit(slide: SyntheticSlide, outline_xy: NDArray[np.float64], stride_um: float) -> Deposit:
    """The deposit a perfect tile model would give at this stride (tile = 4 strides)."""
    stride_px, tile_px = stride_um / slide.mpp, 4 * stride_um / slide.mpp
    low = outline_xy.min(axis=0) - 2 * stride_px
    cols, rows = (np.ceil((outline_xy.max(axis=0) + 2 * stride_px - low) / stride_px) + 1).astype(int)
    origin = low - tile_px / 2
    grid_r, grid_c = np.mgrid[0:rows, 0:cols]
    inside = shapely.contains_xy(
        shapely.Polygon(outline_xy),
        origin[0] + grid_c * stride_px + tile_px / 2,
        origin[1] + grid_r * stride_px + tile_px / 2,
    )
    heatmap = Heatmap(
        inside.astype(np.float32),
        float(origin[0]),
        float(origin[1]),
        stride_px,
        tile_px,
        slide.mpp,
        slide.size_px,
    )
    (deposit,) = find_deposits(heatmap, 0.5)
    return deposit


def test_synthetic_deposit_counts_within_tolerance(synthetic_slide: SyntheticSlide) -> None:
    """Nuclei counted inside the true outlines and inside heatmap outlines (12 µm stride)
    match the generator's known counts within RELATIVE_TOLERANCE."""
    total_true = total_truth_mask = total_heatmap = 0
    with open_slide(synthetic_slide.path) as slide:
        for outline, known in zip(synthetic_slide.outlines_xy, synthetic_slide.n_tumor_nuclei, strict=True):
            exact = dataclasses.replace(oracle_deposit(synthetic_slide, outline, 12.0), outline_xy=outline)
            counted_truth = count_cells_in_deposit(slide, exact, 1.0)
            counted_heatmap = count_cells_in_deposit(
                slide, oracle_deposit(synthetic_slide, outline, 12.0), 1.0
            )
            assert counted_truth is not None and counted_heatmap is not None
            log.info(
                "known %d, counted %d (true outline), %d (heatmap outline)",
                known,
                counted_truth,
                counted_heatmap,
            )
            if known >= 30:  # small counts are checked in total only
                assert abs(counted_truth - known) <= RELATIVE_TOLERANCE * known
                assert abs(counted_heatmap - known) <= RELATIVE_TOLERANCE * known
            total_true += known
            total_truth_mask += counted_truth
            total_heatmap += counted_heatmap
    assert abs(total_truth_mask - total_true) <= RELATIVE_TOLERANCE * total_true
    assert abs(total_heatmap - total_true) <= RELATIVE_TOLERANCE * total_true


def test_large_deposits_are_not_counted_and_counts_flag_the_category(
    synthetic_slide: SyntheticSlide,
) -> None:
    outline = synthetic_slide.outlines_xy[0]
    deposit = oracle_deposit(synthetic_slide, outline, 12.0)
    with open_slide(synthetic_slide.path) as slide:
        assert count_cells_in_deposit(slide, deposit, deposit.max_diameter_mm - 0.01) is None
        counted = add_cell_counts(slide, [deposit], DepositConfig())
        literal = add_cell_counts(slide, [deposit], DepositConfig(cell_rule="literal"))
        skipped = add_cell_counts(slide, [deposit], DepositConfig(count_cells=False))
        too_big = add_cell_counts(slide, [deposit], DepositConfig(max_cell_count_diameter_mm=0.1))
    assert counted[0].cell_count is not None and counted[0].cell_count > 0
    # About 0.22 mm with under 200 cells: size first keeps it micro and flags it for review;
    # the literal AJCC "< 200 cells" rule makes it an ITC.
    assert deposit.max_diameter_mm > 0.2 and counted[0].cell_count < 200
    assert counted[0].category is Category.MICRO and counted[0].review is not None
    assert literal[0].category is Category.ITC and literal[0].review is not None
    assert skipped[0] is deposit and too_big[0] is deposit


def skimage_deposit_mask(
    outline_xy: NDArray[np.float64], origin_xy: tuple[int, int], scale: float, shape_hw: tuple[int, int]
) -> NDArray[np.bool_]:
    """The former rule: skimage.draw.polygon on the outline in image px (pixel centres on integers)."""
    from skimage.draw import polygon

    rows = (outline_xy[:, 1] - origin_xy[1]) * scale - 0.5
    cols = (outline_xy[:, 0] - origin_xy[0]) * scale - 0.5
    mask = np.zeros(shape_hw, dtype=bool)
    mask[polygon(rows, cols, shape=shape_hw)] = True
    return mask


def centres_on_outline(
    outline_xy: NDArray[np.float64], origin_xy: tuple[int, int], scale: float, pixels_rc: NDArray[np.intp]
) -> NDArray[np.bool_]:
    """Which pixels (rows of pixels_rc) have their centre exactly on the outline."""
    rows = (outline_xy[:, 1] - origin_xy[1]) * scale - 0.5
    cols = (outline_xy[:, 0] - origin_xy[0]) * scale - 0.5
    closed = np.vstack([np.column_stack([cols, rows]), [[cols[0], rows[0]]]])
    ring = shapely.LineString(closed) if len(closed) > 1 else shapely.Point(closed[0])
    points = shapely.points(pixels_rc[:, 1].astype(float), pixels_rc[:, 0].astype(float))
    on: NDArray[np.bool_] = shapely.distance(ring, points) < 1e-9
    return on


def random_outline(rng: np.random.Generator, kind: int) -> NDArray[np.float64]:
    """Outlines that put pixel centres exactly on edges and vertices, and ones that do not."""
    n_vertices = int(rng.integers(1, 12))
    if kind == 0:  # vertices on a quarter-pixel lattice: many centres exactly on edges
        return rng.integers(0, 40, (n_vertices, 2)).astype(np.float64) * float(rng.choice([1.0, 0.5, 0.25]))
    if kind == 1:  # heatmap-cell outlines: axis-parallel and diagonal steps, repeated vertices
        steps = rng.choice([-4.0, 0.0, 4.0], (n_vertices, 2))
        return np.cumsum(steps, axis=0) + 20.0 + float(rng.choice([0.0, 0.5, 1.0]))
    return rng.uniform(-5.0, 45.0, (n_vertices, 2))


def test_deposit_mask_is_the_asap_rule_at_pixel_centres() -> None:
    rng = np.random.default_rng(0)
    for trial in range(600):
        outline = random_outline(rng, trial % 3)
        origin = (int(rng.integers(-3, 3)), int(rng.integers(-3, 3)))
        scale = float(rng.choice([1.0, 0.5, 2.0, 0.25]))
        shape = (int(rng.integers(5, 60)), int(rng.integers(5, 60)))
        got = deposit_mask(outline, origin, scale, shape)
        yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(float)
        image_xy = (outline - origin) * scale - 0.5
        np.testing.assert_array_equal(got, asap_inside(image_xy, xx, yy), err_msg=f"trial {trial}")
        # the former rule (skimage.draw.polygon: even-odd, closed) differs only at centres
        # exactly on the outline and where a self-intersecting outline winds twice or more
        changed = np.argwhere(got != skimage_deposit_mask(outline, origin, scale, shape))
        winding = winding_number(image_xy, xx, yy)[changed[:, 0], changed[:, 1]]
        wound_twice = (winding != 0) & (winding % 2 == 0)
        on_outline = centres_on_outline(outline, origin, scale, changed)
        assert (on_outline | wound_twice).all(), f"trial {trial}"


def test_deposit_mask_edge_pixels_follow_the_one_polygon_rule() -> None:
    # A 4 x 4 px square whose edges run through pixel centres 2 and 6: only the centres
    # strictly inside it are set (skimage.draw.polygon, the former rule, set [2:7, 2:7]).
    square = np.array([[2.5, 2.5], [6.5, 2.5], [6.5, 6.5], [2.5, 6.5]])
    mask = deposit_mask(square, (0, 0), 1.0, (10, 10))
    expected = np.zeros((10, 10), dtype=bool)
    expected[3:6, 3:6] = True
    np.testing.assert_array_equal(mask, expected)
    # No area, no pixels (the former rule set the pixels centred on a vertex); no outline either.
    assert not deposit_mask(square[:2], (0, 0), 1.0, (10, 10)).any()
    assert not deposit_mask(np.zeros((0, 2)), (0, 0), 1.0, (10, 10)).any()


# --- real tissue (../shared/data): only tumor-like nuclei count -----------------------------

# Carcinoma nuclei counted by eye on CAMELYON16 level-0 tumor patches (62 x 62 µm): every
# nucleus that looks like carcinoma with its centre inside the patch (docs/benchmarks.md,
# "Tumor nuclei counts on real tissue"; ringed overlays: scripts/measure_nuclei.py --overlays).
COUNTED_BY_EYE = {
    "tumor_001_70094_124883": 12,
    "tumor_001_70146_134140": 20,
    "tumor_064_68256_138372": 22,
    "tumor_001_70272_124240": 10,
    "tumor_001_70399_124449": 24,
    "tumor_064_68394_135834": 11,
}


def at_count_mpp(rgb: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """A level-0 image as the cell count reads a CAMELYON slide: at CELL_COUNT_MPP µm/px."""
    from pipeline.deposits.cells import CELL_COUNT_MPP
    from pipeline.slides.slide import resize_rgb

    factor = CAMELYON_LEVEL0_MPP / CELL_COUNT_MPP
    return resize_rgb(rgb, round(rgb.shape[1] * factor), round(rgb.shape[0] * factor))


def area_mm2(image: NDArray[np.uint8]) -> float:
    """Area of an image at 0.5 µm/px, in mm²."""
    return image.shape[0] * image.shape[1] * 0.5**2 / 1e6


def all_nuclei(image: NDArray[np.uint8]) -> int:
    """Segmented nuclei of at least 20 µm²: what the former count counted."""
    from pipeline.slides.nuclei import measure_nuclei

    area_um2, _ = measure_nuclei(image, 0.5)
    return int(np.count_nonzero(area_um2 >= 20.0))


def c16_tumor_patch(name: str) -> NDArray[np.uint8]:
    from conftest import require_shared_data

    from pipeline.training.datasets import load_rgb

    return load_rgb(require_shared_data("camelyon16_patches/tumor") / f"{name}.png")


@pytest.mark.shared_data
def test_tumor_free_node_tissue_counts_under_5_percent_of_its_nuclei() -> None:
    from tests.real_slides import NEGATIVE_C17_TILE, c17_rgb

    node = at_count_mpp(c17_rgb(NEGATIVE_C17_TILE))  # 0.5 x 0.5 mm of a negative node
    former, counted = all_nuclei(node), count_tumor_nuclei(node, 0.5)
    log.info("tumor-free node: %d tumor-like of %d nuclei in %.3f mm²", counted, former, area_mm2(node))
    assert former > 1000  # dense lymphoid tissue: the former count called these tumor nuclei
    assert counted < 0.05 * former


@pytest.mark.shared_data
def test_real_tumor_counts_far_more_nuclei_per_mm2_than_tumor_free_node_tissue() -> None:
    from conftest import require_shared_data

    from pipeline.training.datasets import load_rgb
    from tests.real_slides import NEGATIVE_C17_TILE, c17_rgb

    folder = require_shared_data("camelyon16_patches/tumor")
    patches = [at_count_mpp(load_rgb(path)) for path in sorted(folder.glob("*.png"))]
    tumor = sum(count_tumor_nuclei(p, 0.5) for p in patches) / sum(area_mm2(p) for p in patches)
    node_image = at_count_mpp(c17_rgb(NEGATIVE_C17_TILE))
    node = count_tumor_nuclei(node_image, 0.5) / area_mm2(node_image)
    log.info("tumor-like nuclei per mm²: %.0f in 28 tumor patches, %.0f in node tissue", tumor, node)
    assert len(patches) == 28 and tumor >= 1000
    assert node <= 0.05 * tumor


@pytest.mark.shared_data
def test_counts_on_real_tumor_patches_are_within_a_factor_of_two_of_a_count_by_eye() -> None:
    counted = {name: count_tumor_nuclei(at_count_mpp(c16_tumor_patch(name)), 0.5) for name in COUNTED_BY_EYE}
    log.info("counted %s against %s by eye", counted, COUNTED_BY_EYE)
    ratio = sum(counted.values()) / sum(COUNTED_BY_EYE.values())
    assert 0.5 <= ratio <= 2.0, ratio


@pytest.mark.shared_data
def test_a_real_0_03_mm_deposit_in_node_tissue_counts_a_few_nuclei_not_dozens() -> None:
    from tests.real_slides import NEGATIVE_C17_TILE, c17_rgb

    # a 0.124 mm square of the negative node (about a coarse heatmap outline) with a 0.03 mm
    # disc of real tumor (about 4 carcinoma nuclei) in its middle
    square = c17_rgb(NEGATIVE_C17_TILE)[1024:1536, 1024:1536].copy()
    tumor = c16_tumor_patch("tumor_064_68256_138372")
    yy, xx = np.mgrid[0:256, 0:256]
    disc = (xx - 127.5) ** 2 + (yy - 127.5) ** 2 <= (0.03 / 2 * 1000 / CAMELYON_LEVEL0_MPP) ** 2
    square[128:384, 128:384][disc] = tumor[disc]
    image = at_count_mpp(square)
    counted, former = count_tumor_nuclei(image, 0.5), all_nuclei(image)
    log.info("0.03 mm deposit in a 0.124 mm outline: %d tumor-like of %d nuclei", counted, former)
    assert former >= 46 and counted <= 10
