"""Test data: generates synthetic H&E lymph-node whole-slide images from a ``SynthConfig``.

Produces a pyramidal, tiled, JPEG-compressed TIFF (generic) or Aperio-style SVS, plus its
ground truth: ``<stem>.truth.json`` (planted deposits with measured Feret diameter, area,
category and tumor nucleus count) and ``<stem>.xml`` (ASAP XML of the deposits).
The layout comes from ``layout``; level 0 is drawn (texture "cartoon",
``render``) or painted from real H&E texture (texture "real",
``texture``) and written by ``write``. The texture never changes the
layout: a seed gives the same deposits and ground truth with either texture.

``SynthConfig`` and ``PlantedDeposit`` live in ``config`` (imported by the other
synthetic modules, which this one imports and none imports back) and are importable from here.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline import __version__
from pipeline.errors import ConfigError, OutputError
from pipeline.outputs import atomic_write_text
from pipeline.slides.annotations import Annotation, write_asap_xml
from pipeline.staging import (
    DEFAULT_CELL_RULE,
    ITC_MAX_CELLS,
    ITC_MAX_DIAMETER_MM,
    MICRO_MAX_DIAMETER_MM,
    CellRule,
    categorize_deposit,
    slide_category,
)
from pipeline.synthetic.config import PlantedDeposit, SynthConfig
from pipeline.synthetic.layout import build_scene
from pipeline.synthetic.render import render_strip
from pipeline.synthetic.texture import background_source, load_textures, render_textured_strip
from pipeline.synthetic.write import RenderRows, write_pyramid

__all__ = [
    "DepositTruth",
    "PlantedDeposit",
    "SynthConfig",
    "SynthResult",
    "deposit_category",
    "generate_slide",
    "node_category",
    "read_truth",
]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, eq=False)
class DepositTruth:
    """A planted deposit as drawn: outline in level-0 px and its measured size.

    n_tumor_nuclei: the tumor cells of the layout's lattice (one per 17 µm) inside the outline;
    drawn one for one with texture "cartoon", an estimate from the area with texture "real".
    """

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
    texture: str = "cartoon"
    texture_sources: tuple[str, ...] = ()  # files real texture was painted from, under its folder


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
# --- ground truth --------------------------------------------------------------------------


def _deposit_truths(
    config: SynthConfig, deposits_xy: list[NDArray[np.float64]], counts: list[int]
) -> tuple[DepositTruth, ...]:
    from pipeline.slides.annotations import max_feret_diameter_px, polygon_area_px2

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
        "texture": result.texture,
        "texture_background": config.texture_background,
        "texture_sources": list(result.texture_sources),
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
            texture=str(data.get("texture", "cartoon")),
            texture_sources=tuple(str(s) for s in data.get("texture_sources", ())),
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
    deposits cannot be placed, the suffix does not match the format or the real-texture
    folder is missing, OutputError when the folder cannot be written.
    """
    out_path = Path(out_path)
    _check_out_path(config, out_path)
    started = time.perf_counter()
    library = None
    if config.texture == "real":
        library = load_textures(config.texture_folder, config.render_mpp, config.texture_background)
    scene, layout, counts = build_scene(config)
    deposits = _deposit_truths(config, layout.deposits_xy, counts)
    render_rows: RenderRows = functools.partial(render_strip, scene)
    sources: tuple[str, ...] = ()
    if library is not None:
        render_rows = functools.partial(render_textured_strip, scene, library)
        sources = (library.background_names[background_source(config.seed, library)],)
        sources += library.tumor_names if deposits else ()
    stem = out_path.name[: -len(out_path.suffix)]
    tmp_slide = out_path.with_name(f".{out_path.name}.tmp")
    try:
        write_pyramid(render_rows, config, tmp_slide, stem)
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
        texture=config.texture,
        texture_sources=sources,
    )
    annotations = [
        Annotation(name=f"deposit {d.id}", group="Tumor", label="tumor", vertices_xy=d.vertices_xy)
        for d in deposits
    ]
    write_asap_xml(annotations, result.xml_path)
    atomic_write_text(result.truth_path, json.dumps(_truth_dict(result, config), indent=1) + "\n")
    log.info(
        "%s: %d x %d px, %d deposit(s), written in %.1f s",
        out_path,
        config.width_px,
        config.height_px,
        len(deposits),
        time.perf_counter() - started,
    )
    return result
