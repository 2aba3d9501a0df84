"""Review: reads a batch output folder, produces one self-contained HTML report.

The file embeds its thumbnails as data URIs and its CSS and JavaScript inline, so it opens
from disk (file://) with no server and no network. Every slide is listed: category,
score, largest deposit, a thumbnail with the heatmap and deposit outlines, the deposit
table, the candidates for review (counted beside the category, never in it; listed apart and
drawn dashed); failed slides with their error.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import time
from pathlib import Path
from typing import Any

import jinja2

from pipeline import __version__
from pipeline.batch.folder import STATUS_DONE
from pipeline.config import StagingConfig
from pipeline.errors import MicrometError, OutputError
from pipeline.outputs import atomic_write_text
from pipeline.review.cartoon import cartoon_context
from pipeline.review.colors import DEFAULT_HEATMAP_OPACITY
from pipeline.review.reviews import report_candidates
from pipeline.review.viewer.batch_index import (
    BatchIndex,
    SlideSummary,
    load_heatmap_or_none,
)
from pipeline.review.viewer.patients import load_patient_view
from pipeline.review.viewer.render import blank_thumbnail, render_review_image, slide_thumbnail
from pipeline.review.viewer.templating import TEMPLATES_DIR, format_number, read_static, template_globals
from pipeline.slides.slide import SlideSource
from pipeline.staging import DEFAULT_CELL_RULE

log = logging.getLogger(__name__)

DEFAULT_REPORT_NAME = "report.html"


@dataclasses.dataclass(frozen=True)
class StaticReportConfig:
    """How the report draws slides.

    thumbnail_max_px: longer side of each slide image. heatmap_opacity: 0-1.
    jpeg_quality: of the embedded images (1-95).
    """

    thumbnail_max_px: int = 800
    heatmap_opacity: float = DEFAULT_HEATMAP_OPACITY
    jpeg_quality: int = 85

    def __post_init__(self) -> None:
        if not (64 <= self.thumbnail_max_px <= 4096):
            raise ValueError(
                f"thumbnail_max_px={self.thumbnail_max_px!r} is out of range; allowed 64 to 4096"
            )
        if not (0.0 <= self.heatmap_opacity <= 1.0):
            raise ValueError(
                f"heatmap_opacity={self.heatmap_opacity!r} is out of range; allowed 0 to 1"
            )
        if not (1 <= self.jpeg_quality <= 95):
            raise ValueError(f"jpeg_quality={self.jpeg_quality!r} is out of range; allowed 1 to 95")


@dataclasses.dataclass(frozen=True)
class SlideSection:
    """What the report shows for one slide; candidates: its candidates for review."""

    summary: SlideSummary
    anchor: str
    report: dict[str, Any]
    image_uri: str | None
    image_note: str | None
    candidates: list[dict[str, Any]] = dataclasses.field(default_factory=list)


def _environment() -> jinja2.Environment:
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
    )
    environment.filters["fmt"] = format_number
    environment.globals.update(template_globals())
    return environment


def _jpeg_data_uri(image: Any, quality: int) -> str:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _slide_dimensions(report: dict[str, Any]) -> tuple[int, int] | None:
    dimensions = (report.get("slide") or {}).get("dimensions")
    if isinstance(dimensions, list) and len(dimensions) == 2:
        return int(dimensions[0]), int(dimensions[1])
    return None


def _slide_image(
    index: BatchIndex, summary: SlideSummary, report: dict[str, Any], config: StaticReportConfig
) -> tuple[str | None, str | None]:
    """(data URI, note) of a finished slide's review image."""
    record = summary.record
    heatmap = load_heatmap_or_none(index, record)
    mpp = (report.get("slide") or {}).get("mpp") or (heatmap.slide_mpp if heatmap else None)
    note = None
    dimensions: tuple[int, int] | None
    try:
        if record.slide_path is None:
            raise OutputError("the manifest records no slide file")
        source = SlideSource.for_path(record.slide_path, mpp, "the batch's record")
        base, dimensions = slide_thumbnail(source, config.thumbnail_max_px)
    except MicrometError as exc:
        dimensions = _slide_dimensions(report) or (heatmap.slide_dimensions if heatmap else None)
        if dimensions is None:
            return None, f"slide not shown: {exc}"
        base = blank_thumbnail(dimensions, config.thumbnail_max_px)
        note = f"slide image not shown ({exc}); heatmap and outlines only"
        log.warning("%s: %s", record.slide_id, note)
    image = render_review_image(
        base, dimensions, mpp, heatmap, report.get("deposits") or [], config.heatmap_opacity,
        report_candidates(report),
    )
    return _jpeg_data_uri(image, config.jpeg_quality), note


def _section(
    index: BatchIndex, summary: SlideSummary, number: int, config: StaticReportConfig
) -> SlideSection:
    report: dict[str, Any] = {}
    image_uri = note = None
    if summary.record.status == STATUS_DONE and summary.problem is None:
        report = index.report(summary.record) or {}
        image_uri, note = _slide_image(index, summary, report, config)
    return SlideSection(summary, f"slide-{number}", report, image_uri, note, report_candidates(report))


def build_static_report(
    batch_dir: Path,
    config: StaticReportConfig | None = None,
    patients_csv: Path | None = None,
    staging: StagingConfig | None = None,
) -> str:
    """The report HTML of a batch folder.

    When slides map to patients (``patients_csv``, BATCH_DIR/patients.csv or CAMELYON17
    names; ``pipeline.review.viewer.patients``) the report opens with a patient table staged by
    ``staging``. Raises OutputError if the folder has no manifest, StagingError for a bad
    ``patients_csv``.
    """
    config = config or StaticReportConfig()
    index = BatchIndex(batch_dir)
    summaries = index.summaries()
    patients = load_patient_view(index, summaries, patients_csv, staging or StagingConfig())
    sections = []
    for number, summary in enumerate(summaries, start=1):
        log.info("report: %s", summary.record.slide_id)
        sections.append(_section(index, summary, number, config))
    counts: dict[str, int] = {}
    for section in sections:
        key = section.summary.category or section.summary.record.status
        counts[key] = counts.get(key, 0) + 1
    return _environment().get_template("report.html").render(
        batch_dir=index.root,
        sections=sections,
        rows=[{"summary": s.summary, "href": f"#{s.anchor}"} for s in sections],
        hrefs={s.summary.record.slide_id: f"#{s.anchor}" for s in sections},
        patients=patients,
        cell_rules=sorted({s.summary.cell_rule or str(DEFAULT_CELL_RULE) for s in sections if s.report}),
        counts=counts,
        **cartoon_context((s.record.slide_id, s.record.slide_path) for s in summaries),
        version=__version__,
        generated=time.strftime("%Y-%m-%d %H:%M"),
        css=read_static("viewer.css"),
        sort_js=read_static("sort_table.js"),
    )


def write_static_report(
    batch_dir: Path,
    out_path: Path,
    config: StaticReportConfig | None = None,
    patients_csv: Path | None = None,
    staging: StagingConfig | None = None,
) -> Path:
    """Write the report to ``out_path`` atomically; raises OutputError naming the path."""
    _make_parent(out_path)  # fail before the slow part
    html = build_static_report(batch_dir, config, patients_csv, staging)
    atomic_write_text(out_path, html)
    return out_path


def _make_parent(out_path: Path) -> None:
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"{out_path}: cannot write the report ({exc.strerror}); choose another --out"
        ) from exc
