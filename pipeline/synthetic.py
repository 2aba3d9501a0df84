"""Test data: generates synthetic H&E lymph-node whole-slide images from a ``SynthConfig``.

Produces a pyramidal, tiled, JPEG-compressed TIFF (generic) or Aperio-style SVS, plus its
ground truth: ``<stem>.truth.json`` (planted deposits with measured Feret diameter, area,
category and tumor nucleus count) and ``<stem>.xml`` (ASAP XML of the deposits).
Level 0 is rendered strip by strip (``synthetic_render``); lower levels are built from it
through disk-backed arrays, so memory stays bounded for any slide size.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from pipeline import __version__
from pipeline.annotations import Annotation, write_asap_xml, write_text_atomic
from pipeline.errors import ConfigError, OutputError
from pipeline.staging import (
    DEFAULT_CELL_RULE,
    ITC_MAX_CELLS,
    ITC_MAX_DIAMETER_MM,
    MICRO_MAX_DIAMETER_MM,
    CellRule,
    categorize_deposit,
    slide_category,
)
from pipeline.synthetic_layout import build_scene
from pipeline.synthetic_render import CAPSULE_WIDTH_UM, Scene, render_strip

log = logging.getLogger(__name__)

# Resolution used to draw a slide written without mpp metadata (``mpp=None``).
NOMINAL_MPP = 0.25
# Pyramid levels halve until the long side is at most this many px.
SMALLEST_LEVEL_MAX_PX = 1024
MIN_DEPOSIT_DIAMETER_MM = 0.02  # about two tumor cells
MAX_DEPOSIT_FRACTION = 0.5  # a deposit's diameter is at most this fraction of the short side
RENDER_THREADS = 2  # tile rows rendered in parallel (numpy releases the GIL)
RENDER_LOOKAHEAD = 4  # tile rows rendered ahead of the TIFF writer
WRITE_BUFFER_BYTES = 16 * 2**20  # tiles tifffile collects per compression batch
APERIO_HEADER = "Aperio Image Library v12.0.15"  # OpenSlide detects Aperio by this prefix


@dataclasses.dataclass(frozen=True)
class PlantedDeposit:
    """A tumor deposit to plant: its longest diameter (max Feret) in mm."""

    diameter_mm: float

    def __post_init__(self) -> None:
        if not (math.isfinite(self.diameter_mm) and self.diameter_mm >= MIN_DEPOSIT_DIAMETER_MM):
            raise ValueError(
                f"diameter_mm={self.diameter_mm!r}; expected at least "
                f"{MIN_DEPOSIT_DIAMETER_MM} mm (about two tumor cells)"
            )


@dataclasses.dataclass(frozen=True)
class SynthConfig:
    """A synthetic slide.

    width_px, height_px: level-0 size. mpp: µm/px written to the file; None writes no
    resolution metadata (the slide is then drawn at NOMINAL_MPP). seed: all randomness.
    deposits: planted tumor deposits. tile_size_px: TIFF tile side (multiple of 16).
    jpeg_quality: 1-100. format: "tif" (generic TIFF) or "svs" (Aperio). n_levels: pyramid
    levels, None for halving down to <= SMALLEST_LEVEL_MAX_PX on the long side.
    """

    width_px: int = 8000
    height_px: int = 6000
    mpp: float | None = 0.25
    seed: int = 0
    deposits: tuple[PlantedDeposit, ...] = ()
    tile_size_px: int = 256
    jpeg_quality: int = 85
    format: Literal["tif", "svs"] = "tif"
    n_levels: int | None = None

    def __post_init__(self) -> None:
        _check_int("width_px", self.width_px, 256, 500_000)
        _check_int("height_px", self.height_px, 256, 500_000)
        if self.mpp is not None and not (0.1 <= self.mpp <= 2.0):
            raise ValueError(f"mpp={self.mpp!r} is out of range; allowed 0.1 to 2.0 µm/px")
        _check_int("seed", self.seed, 0, 2**63 - 1)
        _check_int("tile_size_px", self.tile_size_px, 16, 4096)
        if self.tile_size_px % 16:
            raise ValueError(f"tile_size_px={self.tile_size_px} is not a multiple of 16")
        _check_int("jpeg_quality", self.jpeg_quality, 1, 100)
        if self.format not in ("tif", "svs"):
            raise ValueError(f"format={self.format!r} is not allowed; use tif or svs")
        if self.n_levels is not None:
            _check_int("n_levels", self.n_levels, 1, len(self.max_level_dimensions()))
        object.__setattr__(self, "deposits", tuple(self.deposits))
        for index, deposit in enumerate(self.deposits):
            self._check_fits(index, deposit)

    def _check_fits(self, index: int, deposit: PlantedDeposit) -> None:
        if not isinstance(deposit, PlantedDeposit):
            raise ValueError(f"deposits[{index}]={deposit!r} is not a PlantedDeposit")
        short_mm = min(self.width_px, self.height_px) * self.render_mpp / 1000
        limit_mm = MAX_DEPOSIT_FRACTION * short_mm - 2 * CAPSULE_WIDTH_UM / 1000
        if deposit.diameter_mm > limit_mm:
            raise ValueError(
                f"deposits[{index}].diameter_mm={deposit.diameter_mm:g} does not fit in the "
                f"tissue of a {self.width_px} x {self.height_px} px slide at "
                f"{self.render_mpp:g} µm/px (at most {limit_mm:.3g} mm); use a larger "
                "width/height or a smaller deposit"
            )

    @property
    def render_mpp(self) -> float:
        """µm/px the slide is drawn at."""
        return self.mpp if self.mpp is not None else NOMINAL_MPP

    def max_level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of every possible level, halving (rounding up) down to 1 px."""
        dims = [(self.width_px, self.height_px)]
        while max(dims[-1]) > 1:
            w, h = dims[-1]
            dims.append(((w + 1) // 2, (h + 1) // 2))
        return dims

    def level_dimensions(self) -> list[tuple[int, int]]:
        """(width, height) of the levels written."""
        dims = self.max_level_dimensions()
        if self.n_levels is not None:
            return dims[: self.n_levels]
        count = next(i for i, (w, h) in enumerate(dims) if max(w, h) <= SMALLEST_LEVEL_MAX_PX)
        return dims[: count + 1]


def _check_int(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not (low <= value <= high):
        raise ValueError(f"{name}={value!r} is out of range; allowed integers {low} to {high}")


@dataclasses.dataclass(frozen=True, eq=False)
class DepositTruth:
    """A planted deposit as drawn: outline in level-0 px and its measured size."""

    id: int
    requested_diameter_mm: float
    diameter_mm: float
    area_mm2: float
    category: str
    n_tumor_nuclei: int
    centroid_xy: tuple[float, float]
    vertices_xy: NDArray[np.float64]


@dataclasses.dataclass(frozen=True, eq=False)
class SynthResult:
    """What ``generate_slide`` wrote and the ground truth of the slide."""

    slide_path: Path
    truth_path: Path
    xml_path: Path
    width_px: int
    height_px: int
    mpp: float | None
    render_mpp: float
    level_dimensions: tuple[tuple[int, int], ...]
    node_category: str
    deposits: tuple[DepositTruth, ...]
    tissue_xy: tuple[NDArray[np.float64], ...]


def deposit_category(
    diameter_mm: float,
    n_tumor_nuclei: int | None = None,
    cell_rule: CellRule | str = DEFAULT_CELL_RULE,
) -> str:
    """The deposit's category by the same rule the pipeline applies
    (``pipeline.staging.categorize_deposit``, default cell rule "size-first": size decides,
    the number of tumor nuclei only matters under the "literal" rule)."""
    return str(categorize_deposit(diameter_mm, n_tumor_nuclei, cell_rule))


def node_category(deposits: Sequence[DepositTruth]) -> str:
    """The worst deposit category, "negative" without deposits (``staging.slide_category``)."""
    return str(slide_category(d.category for d in deposits))


# --- writing the slide ---------------------------------------------------------------------


class _DiskImage:
    """An RGB image in a raw file, written and read a band of rows at a time.

    Plain file I/O instead of a memory map keeps the process's resident memory bounded by
    one band whatever the slide size (the OS page cache holds the rest).
    """

    def __init__(self, path: Path, width: int, height: int) -> None:
        self.path, self.shape = path, (height, width, 3)
        self._row_bytes = width * 3
        with path.open("wb") as handle:
            handle.truncate(height * self._row_bytes)

    def write_rows(self, r0: int, rows: NDArray[np.uint8]) -> None:
        """Write rows starting at row r0 (rows beyond the image are dropped)."""
        height, width = self.shape[:2]
        block = np.ascontiguousarray(rows[: max(height - r0, 0), :width])
        with self.path.open("r+b") as handle:
            handle.seek(r0 * self._row_bytes)
            handle.write(block.tobytes())

    def read_rows(self, r0: int, r1: int) -> NDArray[np.uint8]:
        """Rows [r0, r1) as an (rows, width, 3) array."""
        r1 = min(r1, self.shape[0])
        data = np.fromfile(
            self.path, dtype=np.uint8, count=(r1 - r0) * self._row_bytes, offset=r0 * self._row_bytes
        )
        return data.reshape(r1 - r0, self.shape[1], 3)


def _halve(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    """2 x 2 box average (PIL's C reduce); an odd last row or column averages what it has."""
    from PIL import Image

    return np.asarray(Image.fromarray(np.ascontiguousarray(image)).reduce(2))


@dataclasses.dataclass(frozen=True, eq=False)
class _Strip:
    y0: int
    rgb: NDArray[np.uint8]  # (tile_size_px, padded width, 3)
    half: NDArray[np.uint8] | None  # rgb halved, for level 1


def _render_strip(scene: Scene, config: SynthConfig, y0: int, halve: bool) -> _Strip:
    ts = config.tile_size_px
    rgb = render_strip(scene, y0, ts, math.ceil(config.width_px / ts) * ts)
    return _Strip(y0, rgb, _halve(rgb) if halve else None)


def _level0_tiles(
    scene: Scene, config: SynthConfig, level1: _DiskImage | None
) -> Iterator[NDArray[np.uint8]]:
    """Level-0 tiles in row-major order; tile rows are rendered ahead in worker threads.

    Each tile row is also halved into ``level1`` when given. Rows are independent and
    deterministic, so the threads do not change the pixels.
    """
    with ThreadPoolExecutor(RENDER_THREADS) as pool:
        pending: deque[Future[_Strip]] = deque()
        for y0 in range(0, config.height_px, config.tile_size_px):
            pending.append(pool.submit(_render_strip, scene, config, y0, level1 is not None))
            if len(pending) >= RENDER_LOOKAHEAD:
                yield from _strip_tiles(pending.popleft().result(), config.tile_size_px, level1)
        while pending:
            yield from _strip_tiles(pending.popleft().result(), config.tile_size_px, level1)


def _strip_tiles(strip: _Strip, ts: int, level1: _DiskImage | None) -> Iterator[NDArray[np.uint8]]:
    """The tiles of a rendered tile row, after saving its halved copy to level 1."""
    if level1 is not None and strip.half is not None:
        level1.write_rows(strip.y0 // 2, strip.half)
    for x0 in range(0, strip.rgb.shape[1], ts):
        yield strip.rgb[:, x0 : x0 + ts]


def _disk_tiles(image: _DiskImage, ts: int) -> Iterator[NDArray[np.uint8]]:
    """Tiles of a disk image, row-major; edge tiles are partial (tifffile pads them)."""
    for y0 in range(0, image.shape[0], ts):
        rows = image.read_rows(y0, y0 + ts)
        for x0 in range(0, image.shape[1], ts):
            yield rows[:, x0 : x0 + ts]


def _fill_reduced(reduced: list[_DiskImage], band_rows: int = 1024) -> None:
    """Fill reduced[k] from reduced[k - 1] for k >= 1, a band of rows at a time."""
    for previous, current in itertools.pairwise(reduced):
        for r0 in range(0, previous.shape[0], band_rows):
            current.write_rows(r0 // 2, _halve(previous.read_rows(r0, r0 + band_rows)))


def _descriptions(config: SynthConfig, dims: list[tuple[int, int]], name: str) -> list[str]:
    """ImageDescription of each level: Aperio-style for svs (OpenSlide reads MPP from it)."""
    w0, h0 = dims[0]
    if config.format == "tif":
        return [f"micromet synthetic slide {name}, seed {config.seed}"] * len(dims)
    ts, q = config.tile_size_px, config.jpeg_quality
    first = f"{APERIO_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({ts}x{ts}) JPEG/RGB Q={q}"
    if config.mpp is not None:
        first += f"|AppMag = {round(10 / config.mpp)}|MPP = {config.mpp:.4f}"
    first += f"|ScanScope ID = MICROMET-SYNTH|Filename = {name}|Title = seed {config.seed}"
    rest = [
        f"{APERIO_HEADER}\r\n{w0}x{h0} [0,0 {w0}x{h0}] ({ts}x{ts}) -> {w}x{h} JPEG/RGB Q={q}"
        for w, h in dims[1:]
    ]
    return [first, *rest]


def _page_options(config: SynthConfig, level_width: int, description: str) -> dict[str, Any]:
    """tifffile.write options of one page: JPEG, description and resolution tags."""
    options: dict[str, Any] = {
        "photometric": "rgb",
        "compression": "jpeg",
        "compressionargs": {"level": config.jpeg_quality},
        "description": description,
        "metadata": None,
        "software": f"micromet {__version__}",
    }
    if config.mpp is not None:  # pixels per cm at this level; OpenSlide derives mpp from it
        pixels_per_cm = 1e4 / (config.mpp * config.width_px / level_width)
        options["resolution"] = (pixels_per_cm, pixels_per_cm)
        options["resolutionunit"] = "CENTIMETER"
    return options


def _tile_options(config: SynthConfig, shape: tuple[int, ...]) -> dict[str, Any]:
    return {
        "shape": shape,
        "dtype": np.uint8,
        "tile": (config.tile_size_px, config.tile_size_px),
        "maxworkers": 2,
        "buffersize": WRITE_BUFFER_BYTES,
    }


def _write_pyramid(scene: Scene, config: SynthConfig, path: Path, name: str) -> None:
    """Write the tiled JPEG pyramid, levels as consecutive pages (svs: thumbnail second)."""
    import tifffile

    dims = config.level_dimensions()
    all_dims = config.max_level_dimensions()
    # The svs thumbnail is the first level of at most SMALLEST_LEVEL_MAX_PX, never level 0.
    thumb_level = next(i for i, d in enumerate(all_dims) if i > 0 and max(d) <= SMALLEST_LEVEL_MAX_PX)
    n_reduced = max(len(dims) - 1, thumb_level if config.format == "svs" else 0)
    descriptions = _descriptions(config, dims, name)
    raw_bytes = sum(w * h * 3 for w, h in dims)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=".synth-") as tmp:
        reduced = [
            _DiskImage(Path(tmp) / f"level{k}.rgb", w, h)
            for k, (w, h) in enumerate(all_dims[1 : n_reduced + 1], start=1)
        ]
        with tifffile.TiffWriter(path, bigtiff=raw_bytes > 2**32 - 2**28) as tif:
            tif.write(
                _level0_tiles(scene, config, reduced[0] if reduced else None),
                subfiletype=0,
                **_tile_options(config, (config.height_px, config.width_px, 3)),
                **_page_options(config, config.width_px, descriptions[0]),
            )
            _fill_reduced(reduced)
            if config.format == "svs":
                _write_thumbnail(tif, config, reduced[thumb_level - 1])
            for k in range(1, len(dims)):
                tif.write(
                    _disk_tiles(reduced[k - 1], config.tile_size_px),
                    subfiletype=1,
                    **_tile_options(config, reduced[k - 1].shape),
                    **_page_options(config, dims[k][0], descriptions[k]),
                )


def _write_thumbnail(tif: Any, config: SynthConfig, image: _DiskImage) -> None:
    """Aperio's second page: a small stripped (untiled) image, read as "thumbnail"."""
    w0, h0 = config.width_px, config.height_px
    h, w = image.shape[:2]
    tif.write(
        image.read_rows(0, h),
        rowsperstrip=16,
        subfiletype=1,
        **_page_options(config, w, f"{APERIO_HEADER}\r\n{w0}x{h0} -> {w}x{h} - "),
    )


# --- ground truth --------------------------------------------------------------------------


def _deposit_truths(
    config: SynthConfig, deposits_xy: list[NDArray[np.float64]], counts: list[int]
) -> tuple[DepositTruth, ...]:
    from pipeline.annotations import max_feret_diameter_px, polygon_area_px2

    mm_per_px = config.render_mpp / 1000
    truths = []
    for index, (vertices, count) in enumerate(zip(deposits_xy, counts, strict=True)):
        diameter_mm = max_feret_diameter_px(vertices) * mm_per_px
        centroid = vertices.mean(axis=0)
        truths.append(
            DepositTruth(
                id=index + 1,
                requested_diameter_mm=config.deposits[index].diameter_mm,
                diameter_mm=diameter_mm,
                area_mm2=polygon_area_px2(vertices) * mm_per_px**2,
                category=deposit_category(diameter_mm, count),
                n_tumor_nuclei=count,
                centroid_xy=(float(centroid[0]), float(centroid[1])),
                vertices_xy=vertices,
            )
        )
    return tuple(truths)


def _truth_dict(result: SynthResult, config: SynthConfig) -> dict[str, Any]:
    return {
        "generator": f"micromet {__version__} synthetic",
        "slide": result.slide_path.name,
        "format": config.format,
        "seed": config.seed,
        "width_px": result.width_px,
        "height_px": result.height_px,
        "mpp": result.mpp,
        "render_mpp": result.render_mpp,
        "level_dimensions": [list(d) for d in result.level_dimensions],
        "category_cutoffs_mm": {"itc_max": ITC_MAX_DIAMETER_MM, "micro_max": MICRO_MAX_DIAMETER_MM},
        "itc_max_cells": ITC_MAX_CELLS,
        "cell_rule": str(DEFAULT_CELL_RULE),
        "node_category": result.node_category,
        "tissue": [{"vertices_xy": t.tolist()} for t in result.tissue_xy],
        "deposits": [
            {
                "id": d.id,
                "requested_diameter_mm": d.requested_diameter_mm,
                "diameter_mm": d.diameter_mm,
                "area_mm2": d.area_mm2,
                "category": d.category,
                "n_tumor_nuclei": d.n_tumor_nuclei,
                "centroid_xy": list(d.centroid_xy),
                "vertices_xy": d.vertices_xy.tolist(),
            }
            for d in result.deposits
        ],
    }


def read_truth(path: Path) -> SynthResult:
    """Reload a ``<stem>.truth.json`` written by ``generate_slide``.

    Raises ConfigError naming the file if it is missing or not a truth file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        deposits = tuple(
            DepositTruth(
                id=int(d["id"]),
                requested_diameter_mm=float(d["requested_diameter_mm"]),
                diameter_mm=float(d["diameter_mm"]),
                area_mm2=float(d["area_mm2"]),
                category=str(d["category"]),
                n_tumor_nuclei=int(d["n_tumor_nuclei"]),
                centroid_xy=(float(d["centroid_xy"][0]), float(d["centroid_xy"][1])),
                vertices_xy=np.asarray(d["vertices_xy"], dtype=np.float64),
            )
            for d in data["deposits"]
        )
        stem = path.name.removesuffix(".truth.json")
        return SynthResult(
            slide_path=path.with_name(data["slide"]),
            truth_path=path,
            xml_path=path.with_name(f"{stem}.xml"),
            width_px=int(data["width_px"]),
            height_px=int(data["height_px"]),
            mpp=None if data["mpp"] is None else float(data["mpp"]),
            render_mpp=float(data["render_mpp"]),
            level_dimensions=tuple((int(w), int(h)) for w, h in data["level_dimensions"]),
            node_category=str(data["node_category"]),
            deposits=deposits,
            tissue_xy=tuple(np.asarray(t["vertices_xy"], dtype=np.float64) for t in data["tissue"]),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise ConfigError(f"{path}: not a readable synthetic truth file ({exc})") from exc


# --- entry point -------------------------------------------------------------------------


def _check_out_path(config: SynthConfig, out_path: Path) -> None:
    allowed = (".tif", ".tiff") if config.format == "tif" else (".svs",)
    if out_path.suffix.lower() not in allowed:
        raise ConfigError(f"{out_path}: a {config.format} slide needs the suffix {' or '.join(allowed)}")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out_path.parent}: cannot create the output folder ({exc})") from exc


def generate_slide(config: SynthConfig, out_path: Path) -> SynthResult:
    """Write a synthetic slide, ``<stem>.truth.json`` and ``<stem>.xml`` beside it.

    out_path: slide file (.tif/.tiff for format "tif", .svs for "svs"); files are written
    to temporary names and renamed, the truth JSON last. Raises ConfigError when the
    deposits cannot be placed or the suffix does not match the format, OutputError when
    the folder cannot be written.
    """
    out_path = Path(out_path)
    _check_out_path(config, out_path)
    started = time.perf_counter()
    scene, layout, counts = build_scene(config)
    deposits = _deposit_truths(config, layout.deposits_xy, counts)
    stem = out_path.name[: -len(out_path.suffix)]
    tmp_slide = out_path.with_name(f".{out_path.name}.tmp")
    try:
        _write_pyramid(scene, config, tmp_slide, stem)
        os.replace(tmp_slide, out_path)
    except OSError as exc:
        raise OutputError(f"{out_path}: cannot write the slide ({exc})") from exc
    finally:
        tmp_slide.unlink(missing_ok=True)
    result = SynthResult(
        slide_path=out_path,
        truth_path=out_path.with_name(f"{stem}.truth.json"),
        xml_path=out_path.with_name(f"{stem}.xml"),
        width_px=config.width_px,
        height_px=config.height_px,
        mpp=config.mpp,
        render_mpp=config.render_mpp,
        level_dimensions=tuple(config.level_dimensions()),
        node_category=node_category(deposits),
        deposits=deposits,
        tissue_xy=tuple(blob.outline() for blob in layout.blobs),
    )
    annotations = [
        Annotation(name=f"deposit {d.id}", group="Tumor", label="tumor", vertices_xy=d.vertices_xy)
        for d in deposits
    ]
    write_asap_xml(annotations, result.xml_path)
    write_text_atomic(result.truth_path, json.dumps(_truth_dict(result, config), indent=1) + "\n")
    log.info(
        "%s: %d x %d px, %d deposit(s), written in %.1f s",
        out_path,
        config.width_px,
        config.height_px,
        len(deposits),
        time.perf_counter() - started,
    )
    return result
