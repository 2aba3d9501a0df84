"""Review: reads a batch's slide categories and a slide-to-patient mapping, produces the
patients (pN stage, nodes with their categories) that report.html and the viewer show.

The mapping comes, in this order, from a CSV passed by the caller ("slide,patient"), from
``BATCH_DIR/patients.csv`` (written by ``micromet infer --patients``), else from CAMELYON17
slide names (``patient_004_node_4``), as ``micromet stage`` reads it. A patient with a node
that has no result (failed, unreadable, or mapped but not in the batch) is shown
"unstageable", never staged with a node missing.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
from pathlib import Path

from pipeline.batch.folder import STATUS_DONE
from pipeline.config import StagingConfig
from pipeline.errors import StagingError
from pipeline.outputs import atomic_write_text
from pipeline.review.viewer.batch_index import BatchIndex, SlideSummary
from pipeline.staging import (
    Category,
    group_by_patient,
    natural_key,
    node_label,
    read_patient_mapping_csv,
    stage_patients,
)

log = logging.getLogger(__name__)

PATIENTS_CSV = "patients.csv"
NOT_IN_BATCH = "not in this batch"


@dataclasses.dataclass(frozen=True)
class PatientNode:
    """One node (slide) of a patient. summary: None when the slide is not in the batch."""

    slide_id: str
    label: str
    category: str | None
    summary: SlideSummary | None


@dataclasses.dataclass(frozen=True)
class Patient:
    """A patient's pN stage (or UNSTAGEABLE, with the reasons in ``problems``) and nodes."""

    patient: str
    stage: str
    scheme: str
    positive_nodes: int
    nodes: tuple[PatientNode, ...]
    problems: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class PatientView:
    """The patients of a batch and the slides that belong to none (in manifest order)."""

    patients: tuple[Patient, ...]
    unassigned: tuple[SlideSummary, ...]
    source: str


def write_patient_mapping(out_dir: Path, mapping: dict[str, str]) -> Path:
    """Write ``mapping`` (slide id -> patient) as BATCH_DIR/patients.csv (atomically), where
    report.html and the viewer find it. Raises OutputError if the folder cannot be written."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("slide", "patient"))
    for slide in sorted(mapping, key=natural_key):
        writer.writerow((slide, mapping[slide]))
    path = out_dir / PATIENTS_CSV
    atomic_write_text(path, buffer.getvalue())
    return path


def read_mapping(index: BatchIndex, mapping_path: Path | None) -> tuple[dict[str, str], str]:
    """The slide-to-patient mapping and where it came from ("" when there is none).

    ``mapping_path`` first, else BATCH_DIR/patients.csv. Raises StagingError naming the file
    for an unreadable or malformed CSV.
    """
    if mapping_path is not None:
        return read_patient_mapping_csv(mapping_path), str(mapping_path)
    batch_csv = index.root / PATIENTS_CSV
    if batch_csv.is_file():
        return read_patient_mapping_csv(batch_csv), str(batch_csv)
    return {}, ""


def patient_view(
    summaries: list[SlideSummary],
    mapping: dict[str, str],
    source: str,
    config: StagingConfig,
) -> PatientView | None:
    """Group ``summaries`` by patient and stage each patient; None when no slide has one.

    Slides follow ``mapping`` (slide id -> patient), else their CAMELYON17 name; mapped
    slides missing from the batch make their patient unstageable.
    """
    by_id = {summary.record.slide_id: summary for summary in summaries}
    found = group_by_patient(by_id, mapping)
    if not found.groups:
        return None
    ordered = found.groups
    unassigned = [by_id[slide] for slide in found.unassigned]
    categories, unavailable = _node_results(by_id, [s for slides in ordered.values() for s in slides])
    rows = stage_patients(ordered, categories, config, unavailable)
    patients = tuple(
        Patient(
            patient=row.patient,
            stage=row.stage,
            scheme=config.scheme,
            positive_nodes=row.positive_nodes,
            nodes=tuple(
                PatientNode(
                    slide_id=slide,
                    label=node_label(slide, row.patient),
                    category=str(categories[slide]) if slide in categories else None,
                    summary=by_id.get(slide),
                )
                for slide in ordered[row.patient]
            ),
            problems=row.problems,
        )
        for row in rows
    )
    return PatientView(patients=patients, unassigned=tuple(unassigned), source=source or "slide names")


def _node_results(
    by_id: dict[str, SlideSummary], slides: list[str]
) -> tuple[dict[str, Category], dict[str, str]]:
    categories: dict[str, Category] = {}
    unavailable: dict[str, str] = {}
    for slide in slides:
        summary = by_id.get(slide)
        if summary is None:
            unavailable[slide] = NOT_IN_BATCH
        elif summary.record.status != STATUS_DONE or summary.problem is not None:
            unavailable[slide] = summary.problem or summary.record.error or summary.record.status
        else:
            try:
                categories[slide] = Category(str(summary.category).lower())
            except ValueError:
                unavailable[slide] = f"report category {summary.category!r} is not a category"
    return categories, unavailable


def load_patient_view(
    index: BatchIndex,
    summaries: list[SlideSummary],
    mapping_path: Path | None,
    config: StagingConfig,
) -> PatientView | None:
    """``patient_view`` with the mapping from ``read_mapping``.

    A mapping the caller passed must be valid (StagingError propagates); a broken
    BATCH_DIR/patients.csv is logged and the slides are grouped by name only.
    """
    try:
        mapping, source = read_mapping(index, mapping_path)
    except StagingError:
        if mapping_path is not None:
            raise
        log.warning("%s: cannot read the patient mapping; grouping by slide names", index.root)
        mapping, source = {}, ""
    return patient_view(summaries, mapping, source, config)
