"""``micromet stage``: patient pN stages from node categories (a batch folder or a CSV).

Reads node categories from BATCH_DIR (manifest.json + each slide's report.json) or from a
CSV, groups slides into patients (a mapping CSV, else CAMELYON17 names), writes one CSV row
per patient atomically and prints a table (or JSON). Exit status 1 when a patient could not
be staged because one of its slides has no result; its row then reads "unstageable".
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipeline.batch.folder import read_manifest, read_report, report_category, report_path, report_warning
from pipeline.config import StagingConfig, build_config, load_config_file
from pipeline.errors import ConfigError, StagingError
from pipeline.outputs import atomic_write_text, csv_safe_row, refuse_replacing_batch_file
from pipeline.review.cartoon import NOT_MEANINGFUL, batch_cartoon_slides, cartoon_notice
from pipeline.review.review_files import read_slide_review
from pipeline.review.reviews import REVIEW_GEOJSON, check_review_matches
from pipeline.staging import (
    PATIENT_CSV_COLUMNS,
    UNSTAGEABLE,
    Category,
    PatientRow,
    assign_patients,
    node_label,
    read_node_categories_csv,
    read_patient_mapping_csv,
    slide_key,
    stage_patients,
)

# CAMELYON17 provides 5 lymph-node slides per patient and its pN stages count them
# (Bandi et al., IEEE TMI 2019); more nodes for one patient usually means a wrong mapping.
CAMELYON17_MAX_NODES = 5


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``stage`` subcommand."""
    parser = subparsers.add_parser(
        "stage",
        help="patient pN stages from node (slide) categories",
        description=(
            "Stage patients (pN) from the categories of their lymph-node slides. "
            "Rules and sources: docs/staging.md."
        ),
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--batch", type=Path, metavar="BATCH_DIR", help="batch output folder with manifest.json"
    )
    source.add_argument(
        "--categories",
        type=Path,
        metavar="CSV",
        help="CSV 'slide,category' or the CAMELYON17 labels CSV 'patient,stage'",
    )
    parser.add_argument(
        "--patients",
        type=Path,
        metavar="CSV",
        help="CSV 'slide,patient' (default: CAMELYON17 names patient_NNN_node_N)",
    )
    parser.add_argument(
        "--scheme",
        choices=("camelyon17", "ajcc"),
        default=None,
        help="pN scheme (default camelyon17, or [staging] scheme in --config)",
    )
    parser.add_argument("--config", type=Path, metavar="TOML", help="config file ([staging])")
    parser.add_argument("--out", type=Path, required=True, metavar="CSV", help="patient CSV")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Read, stage, write; nothing is written when any input is invalid."""
    config = _staging_config(args.config, args.scheme)
    if args.batch is not None:
        refuse_replacing_batch_file(args.batch, args.out, "--out")
    qc_warnings: dict[str, str] = {}
    reviewed: dict[str, str] = {}
    if args.batch is not None:
        batch = read_batch_node_categories(args.batch)
        categories, unavailable, qc_warnings = batch.categories, batch.unavailable, batch.qc_warnings
        reviewed = batch.reviewed
    else:
        categories, unavailable = read_node_categories_csv(args.categories), {}
    mapping = read_patient_mapping_csv(args.patients) if args.patients is not None else None
    groups = assign_patients([*categories, *unavailable], mapping, args.patients)
    rows = [
        _with_reviews(_with_qc_warnings(row, groups, qc_warnings), groups, reviewed)
        for row in stage_patients(groups, categories, config, unavailable)
    ]
    cartoons = {slide_key(s) for s in batch_cartoon_slides(args.batch)} if args.batch is not None else set()
    rows = [_with_cartoons(row, groups, cartoons) for row in rows]
    for row in rows:
        if row.qc_warnings:
            print(
                f"micromet stage: warning: {row.patient} is staged from nodes that failed slide QC "
                f"({row.qc_warnings}); treat its stage with that in mind",
                file=sys.stderr,
            )
    write_patient_csv(args.out, rows)
    for patient, slides in sorted(groups.items()):
        if config.scheme == "camelyon17" and len(slides) > CAMELYON17_MAX_NODES:
            print(
                f"micromet stage: warning: {patient} has {len(slides)} nodes; CAMELYON17 stages at "
                f"most {CAMELYON17_MAX_NODES} per patient - check the slide-to-patient mapping",
                file=sys.stderr,
            )
    if cartoons:  # first, on the first screen (stderr beside JSON, which must stay parseable)
        notice = cartoon_notice(cartoons, len(categories) + len(unavailable))
        print(f"micromet stage: NOTE: {notice}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps([dataclasses.asdict(row) for row in rows], indent=2))
    else:
        print(format_table(rows))
        for row in rows:
            if row.reviewed_nodes:
                print(f"{row.patient}: reviewed nodes: {row.reviewed_nodes}")
            if row.category_warning:
                print(f"{row.patient}: {row.category_warning}")
    unstageable = [row for row in rows if row.stage == UNSTAGEABLE]
    for row in unstageable:
        for problem in row.problems:
            print(f"micromet stage: {row.patient} not staged: {problem}", file=sys.stderr)
    return 1 if unstageable else 0


def _with_qc_warnings(
    row: PatientRow, groups: Mapping[str, Sequence[str]], qc_warnings: Mapping[str, str]
) -> PatientRow:
    found = [
        f"{slide}: {qc_warnings[slide]}"
        for slide in sorted(groups.get(row.patient, ()))
        if slide in qc_warnings
    ]
    return dataclasses.replace(row, qc_warnings="; ".join(found)) if found else row


def _with_cartoons(row: PatientRow, groups: Mapping[str, Sequence[str]], cartoons: set[str]) -> PatientRow:
    slides = sorted(groups.get(row.patient, ()))
    found = [node_label(slide, row.patient) for slide in slides if slide in cartoons]
    if not found:
        return row
    verb = "is a synthetic cartoon slide" if len(found) == 1 else "are synthetic cartoon slides"
    return dataclasses.replace(row, category_warning=f"{NOT_MEANINGFUL}: {', '.join(found)} {verb}")


def _with_reviews(
    row: PatientRow, groups: Mapping[str, Sequence[str]], reviewed: Mapping[str, str]
) -> PatientRow:
    found = [
        f"{node_label(slide, row.patient)}: {reviewed[slide]}"
        for slide in groups.get(row.patient, ())
        if slide in reviewed
    ]
    return dataclasses.replace(row, reviewed_nodes="; ".join(found)) if found else row


def _staging_config(config_path: Path | None, scheme: str | None) -> StagingConfig:
    sections = load_config_file(config_path) if config_path else {}
    unknown = sorted(set(sections) - {"staging"})
    if unknown:  # a misspelt [staging] would otherwise leave its scheme unread
        raise ConfigError(f"{config_path}: unknown sections {unknown}; stage reads only [staging]")
    section = sections.get("staging")
    source = str(config_path) if config_path else "--scheme"
    return build_config(StagingConfig, section, {"scheme": scheme}, source=source)


@dataclasses.dataclass(frozen=True)
class BatchNodeCategories:
    """Node categories read from a batch folder.

    categories: slide id -> category, for slides whose report.json was read.
    unavailable: slide id -> why it has no result (failed, not finished, report missing).
    qc_warnings: slide id -> its report's QC warning, for slides scored despite failing QC.
    reviewed: slide id -> "itc (automated micro, reviewed by Dr A)" for slides whose category
    is the one of a complete pathologist review (<output_dir>/review.geojson).
    """

    categories: dict[str, Category]
    unavailable: dict[str, str]
    qc_warnings: dict[str, str] = dataclasses.field(default_factory=dict)
    reviewed: dict[str, str] = dataclasses.field(default_factory=dict)


def read_batch_node_categories(batch_dir: Path) -> BatchNodeCategories:
    """Node categories of a batch folder: BATCH_DIR/manifest.json, then each done slide's
    ``<output_dir>/report.json`` top-level "category" (docs/architecture.md), replaced by the
    reviewed category where ``<output_dir>/review.geojson`` holds a complete review.

    A slide whose status is not "done", or whose report.json is missing, is listed in
    ``unavailable`` with the reason (and the manifest's error text).
    Raises StagingError for a missing folder or manifest, unreadable JSON, or a report
    without a valid category.
    """
    manifest = read_manifest(
        batch_dir, StagingError,
        "pass a batch output folder (with manifest.json) to --batch, "
        "or a CSV 'slide,category' to --categories",
    )
    categories: dict[str, Category] = {}
    unavailable: dict[str, str] = {}
    qc_warnings: dict[str, str] = {}
    reviewed: dict[str, str] = {}
    for slide_id, entry in manifest.slides.items():
        slide = slide_key(slide_id)
        report = report_path(batch_dir, slide_id, entry)
        if not entry.done:
            unavailable[slide] = entry.unavailable_reason()
        elif not report.is_file():
            unavailable[slide] = f"{report} is missing (incomplete output folder)"
        else:
            report_data = read_report(report, StagingError)
            categories[slide] = report_category(report_data, report, StagingError)
            warning = report_warning(report_data, "qc")
            if warning:
                qc_warnings[slide] = warning
            review = read_slide_review(report.parent)
            if review is not None:
                check_review_matches(review, report_data, report.parent / REVIEW_GEOJSON)
            if review is not None and review.complete:
                reviewed[slide] = (
                    f"{review.reviewed_category} (automated {categories[slide]}, "
                    f"reviewed by {review.reviewer})"
                )
                categories[slide] = Category(review.reviewed_category)
    return BatchNodeCategories(categories, unavailable, qc_warnings, reviewed)


def write_patient_csv(path: Path, rows: Sequence[PatientRow]) -> None:
    """Write the patient stage CSV (PATIENT_CSV_COLUMNS) via a temporary file and a rename.

    Raises OutputError naming the path when it cannot be written.
    """
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(PATIENT_CSV_COLUMNS)
    writer.writerows(csv_safe_row(row.csv_values()) for row in rows)
    atomic_write_text(path, buffer.getvalue())


def format_table(rows: Sequence[PatientRow]) -> str:
    """The rows as an aligned text table, one line per patient."""
    header = ("patient", "stage", "nodes", "positive", "macro", "micro", "itc", "node categories")
    lines = [header] + [
        (
            row.patient,
            row.stage + (f" ({NOT_MEANINGFUL})" if row.category_warning else ""),
            str(row.nodes),
            str(row.positive_nodes),
            str(row.macro_nodes),
            str(row.micro_nodes),
            str(row.itc_nodes),
            row.node_categories.replace(";", " "),
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=False)) + "  " + line[-1]
        for line in lines
    )
