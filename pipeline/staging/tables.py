"""Staging tables: reads slide names, node-category CSVs and slide-to-patient mappings,
produces patients (slide ids grouped by patient) and one ``PatientRow`` per patient for the
patient stage CSV.

The pN rules themselves live in ``rules``; callers import these names from
``pipeline.staging``. Every error is a StagingError naming the file and line to fix.
"""

from __future__ import annotations

import csv
import dataclasses
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipeline.config import StagingConfig
from pipeline.errors import StagingError
from pipeline.slides.formats import SLIDE_SUFFIXES
from pipeline.staging.rules import CATEGORY_ORDER, Category, PNStage, stage_patient

# Written in the stage column for a patient with a node that has no result.
UNSTAGEABLE = "unstageable"
# Written for such a node in the node_categories column.
NO_RESULT = "no-result"
# Columns of the patient stage CSV, in order.
PATIENT_CSV_COLUMNS = (
    "patient",
    "stage",
    "nodes",
    "positive_nodes",
    "macro_nodes",
    "micro_nodes",
    "itc_nodes",
    "node_categories",
    "qc_warnings",
    "reviewed_nodes",
    "category_warning",
)

# "patient_024_node_2", also inside a longer name ("centre_1_patient_024_node_2_HE"): the
# patient part must start the name or follow a separator, the node part end it or precede one.
_CAMELYON17_NODE = re.compile(r"(?:^|(?<=[_\W]))(patient_\d+)_node_\d+(?=$|[_\W])", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PatientRow:
    """One row of the patient stage CSV.

    stage: a PNStage value, or UNSTAGEABLE when a node has no result (then the counts
    cover only the nodes that have one). node_categories: "node_0:negative;node_1:macro".
    problems: why the patient is unstageable, one line per node without a result.
    qc_warnings: "node_1: QC failed: not lymph node" for nodes scored although they failed
    slide QC (``--accept-qc-failures``), joined by "; "; empty when every node passed.
    reviewed_nodes: "node_1: itc (automated micro, reviewed by Dr A)" for nodes whose category
    comes from a complete pathologist review (``pipeline.review.reviews``), joined by "; ".
    category_warning: why the categories and the stage are not meaningful ("not meaningful:
    node_0, node_1 are synthetic cartoon slides"); empty when nothing is known against them.
    """

    patient: str
    stage: str
    nodes: int
    positive_nodes: int
    macro_nodes: int
    micro_nodes: int
    itc_nodes: int
    node_categories: str
    problems: tuple[str, ...] = ()
    qc_warnings: str = ""
    reviewed_nodes: str = ""
    category_warning: str = ""

    def csv_values(self) -> list[str]:
        """The values for PATIENT_CSV_COLUMNS, in order."""
        return [str(getattr(self, column)) for column in PATIENT_CSV_COLUMNS]


# --- Slide and patient names. ---------------------------------------------------------------


def slide_key(name: str) -> str:
    """A slide's id as batch folders name it: the file name without folder or WSI suffix.

    "data/patient_004_node_4.tif" -> "patient_004_node_4"; other names are only stripped.
    """
    base = name.strip().replace("\\", "/").rsplit("/", 1)[-1]
    lower = base.lower()
    for suffix in SLIDE_SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def patient_from_camelyon17_name(slide: str) -> str | None:
    """Patient of a CAMELYON17 node slide: "patient_004_node_4(.tif)" -> "patient_004", also
    inside a longer name: "centre_1_patient_024_node_2" -> "patient_024".

    Returns None when the name holds no such part, or two that name different patients.
    """
    patients = {match.group(1) for match in _CAMELYON17_NODE.finditer(slide_key(slide))}
    return patients.pop() if len(patients) == 1 else None


def node_label(slide: str, patient: str) -> str:
    """Short name of a node within its patient: "patient_004_node_4" -> "node_4",
    "centre_1_patient_004_node_4" -> "node_4" (what follows the patient part)."""
    prefix = f"{patient}_"
    at = slide.find(prefix)
    if at >= 0 and len(slide) > at + len(prefix) and (at == 0 or not slide[at - 1].isalnum()):
        return slide[at + len(prefix) :]
    return slide


def natural_key(name: str) -> tuple[tuple[str, int], ...]:
    """Sort key that orders "node_2" before "node_10"."""
    parts = re.split(r"(\d+)", name)
    return tuple(
        (parts[i].lower(), int(parts[i + 1]) if i + 1 < len(parts) else -1)
        for i in range(0, len(parts), 2)
    )


# --- CSV readers. ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Table:
    path: Path
    columns: tuple[str, ...]
    rows: tuple[tuple[int, tuple[str, ...]], ...]  # (line number, stripped cells)

    def cell(self, line: int, cells: tuple[str, ...], column: str) -> str:
        index = self.columns.index(column)
        if index >= len(cells) or not cells[index]:
            raise StagingError(
                f"{self.path}: line {line}: no value in column {column!r}; "
                f"fill it in or delete the line"
            )
        return cells[index]


def _read_table(path: Path, what: str) -> _Table:
    """Read a CSV with a header line; blank lines are skipped, names lower-cased."""
    if not path.is_file():
        raise StagingError(f"{path}: {what} file not found; pass an existing CSV file")
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.reader(handle)
            lines = [(reader.line_num, tuple(c.strip() for c in row)) for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise StagingError(
            f"{path}: cannot read the {what} CSV ({exc}); save it as UTF-8 CSV"
        ) from exc
    lines = [(line, cells) for line, cells in lines if any(cells)]
    if not lines:
        raise StagingError(f"{path}: the {what} CSV is empty; it needs a header line")
    for line, cells in lines:
        if any("\x00" in cell for cell in cells):
            raise StagingError(f"{path}: line {line}: a NUL byte; save the {what} CSV as plain UTF-8 text")
    header = tuple(name.lower() for name in lines[0][1])
    return _Table(path=path, columns=header, rows=tuple(lines[1:]))


def _require_columns(
    table: _Table, options: Sequence[tuple[str, str]], what: str
) -> tuple[str, str]:
    for names in options:
        if all(name in table.columns for name in names):
            return names
    wanted = " or ".join(",".join(names) for names in options)
    raise StagingError(
        f"{table.path}: the {what} CSV needs the columns {wanted} in its header line; "
        f"found {','.join(table.columns)}"
    )


def _is_camelyon17_patient_row(name: str, value: str) -> bool:
    stages = {stage.value.lower() for stage in PNStage}
    return name.lower().endswith(".zip") or value.lower() in stages


def _parse_category(table: _Table, line: int, slide: str, value: str) -> Category:
    try:
        return Category(value.lower())
    except ValueError:
        allowed = ", ".join(category.value for category in CATEGORY_ORDER)
        raise StagingError(
            f"{table.path}: line {line}: unknown category {value!r} for slide {slide!r}; "
            f"use one of {allowed}"
        ) from None


def read_node_categories_csv(path: Path) -> dict[str, Category]:
    """Node categories from a CSV: slide id -> Category.

    Columns "slide,category", or the CAMELYON17 labels layout "patient,stage" where node rows
    read "patient_004_node_0.tif,negative" and patient rows ("patient_004.zip,pN1") are
    skipped. Other columns are ignored; slide names lose their WSI suffix (slide_key).
    Raises StagingError naming the file and line for a missing file or column, an empty
    value, an unknown category, a duplicate slide, or no slide rows.
    """
    table = _read_table(path, "node categories")
    name_col, value_col = _require_columns(
        table, (("slide", "category"), ("patient", "stage")), "node categories"
    )
    camelyon17 = (name_col, value_col) == ("patient", "stage")
    categories: dict[str, Category] = {}
    first_line: dict[str, int] = {}
    for line, cells in table.rows:
        name = table.cell(line, cells, name_col)
        value = table.cell(line, cells, value_col)
        if camelyon17 and _is_camelyon17_patient_row(name, value):
            continue
        slide = slide_key(name)
        if slide in categories:
            raise StagingError(
                f"{path}: line {line}: slide {slide!r} is listed again (first on line "
                f"{first_line[slide]}); keep one line per slide"
            )
        categories[slide] = _parse_category(table, line, slide, value)
        first_line[slide] = line
    if not categories:
        raise StagingError(f"{path}: no slide rows found; add lines 'slide,category'")
    return categories


def read_patient_mapping_csv(path: Path) -> dict[str, str]:
    """Slide-to-patient mapping from a CSV with columns "slide,patient": slide id -> patient.

    Slide names lose their WSI suffix (slide_key); other columns are ignored.
    Raises StagingError naming the file and line for a missing file or column, an empty
    value, a duplicate slide, or no rows.
    """
    table = _read_table(path, "patient mapping")
    _require_columns(table, (("slide", "patient"),), "patient mapping")
    patients: dict[str, str] = {}
    first_line: dict[str, int] = {}
    for line, cells in table.rows:
        slide = slide_key(table.cell(line, cells, "slide"))
        patient = table.cell(line, cells, "patient")
        if slide in patients:
            raise StagingError(
                f"{path}: line {line}: slide {slide!r} is mapped again (first on line "
                f"{first_line[slide]}); keep one line per slide"
            )
        patients[slide] = patient
        first_line[slide] = line
    if not patients:
        raise StagingError(f"{path}: no rows found; add lines 'slide,patient'")
    return patients


def _mapping_line(path: Path, slide: str) -> int:
    """Line of ``slide`` in a mapping CSV already read by read_patient_mapping_csv."""
    table = _read_table(path, "patient mapping")
    index = table.columns.index("slide")
    for line, cells in table.rows:
        if index < len(cells) and slide_key(cells[index]) == slide:
            return line
    return 0


def _examples(names: Iterable[str], limit: int = 5) -> str:
    ordered = sorted(names, key=natural_key)
    shown = ", ".join(repr(name) for name in ordered[:limit])
    return shown + (f" and {len(ordered) - limit} more" if len(ordered) > limit else "")


@dataclasses.dataclass(frozen=True)
class PatientGroups:
    """Slides grouped by patient (``group_by_patient``).

    groups: patient -> slide ids, both in natural order; a slide the mapping names counts
        there even when it is not among the slides (it is then listed in ``not_among_slides``).
    unassigned: slides with no patient by either rule, in natural order.
    not_among_slides: slides the mapping names that are not among the slides.
    """

    groups: dict[str, list[str]]
    unassigned: list[str]
    not_among_slides: list[str]


def group_by_patient(slides: Iterable[str], mapping: Mapping[str, str] | None = None) -> PatientGroups:
    """Group slide ids by patient: from ``mapping`` (slide id -> patient) first, else the
    CAMELYON17 naming (``patient_NNN_node_N``). The one grouping ``stage`` and the viewer use."""
    slide_set = set(slides)
    mapping = mapping or {}
    groups: dict[str, list[str]] = {}
    unassigned: list[str] = []
    for slide in slide_set | set(mapping):
        patient = mapping.get(slide) or patient_from_camelyon17_name(slide)
        if patient is None:
            unassigned.append(slide)
        else:
            groups.setdefault(patient, []).append(slide)
    return PatientGroups(
        {patient: sorted(groups[patient], key=natural_key) for patient in sorted(groups, key=natural_key)},
        sorted(unassigned, key=natural_key),
        sorted(set(mapping) - slide_set, key=natural_key),
    )


def assign_patients(
    slides: Iterable[str],
    mapping: Mapping[str, str] | None = None,
    mapping_path: Path | None = None,
) -> dict[str, list[str]]:
    """Group slide ids by patient (``group_by_patient``), refusing what cannot be staged.

    Returns patient -> slide ids, both in natural order.
    Raises StagingError when the mapping names a slide that is not among ``slides``
    (naming mapping_path and its line), or when a slide has no patient by either rule.
    """
    slide_set = set(slides)
    found = group_by_patient(slide_set, mapping)
    if found.not_among_slides:
        extra = found.not_among_slides
        where = f"{mapping_path}: line {_mapping_line(mapping_path, extra[0])}: " if mapping_path else ""
        raise StagingError(
            f"{where}slide {extra[0]!r} is not among the {len(slide_set)} slides with results "
            f"({_examples(slide_set)}); unknown in the mapping: {_examples(extra)}. "
            f"Fix the slide names or remove those lines"
        )
    if found.unassigned:
        unmatched = found.unassigned
        raise StagingError(
            f"no patient for {len(unmatched)} slide(s): {_examples(unmatched)}; their names hold "
            f"no CAMELYON17 'patient_NNN_node_N' part"
            + (" and the patient mapping does not list them" if mapping else "")
            + "; pass --patients with a CSV 'slide,patient' that lists every slide"
        )
    return found.groups


# --- Patients. ------------------------------------------------------------------------------


def stage_patients(
    groups: Mapping[str, Sequence[str]],
    categories: Mapping[str, Category],
    config: StagingConfig,
    unavailable: Mapping[str, str] | None = None,
) -> list[PatientRow]:
    """One PatientRow per patient of ``groups`` (patient -> slide ids), in that order.

    A patient with a slide in ``unavailable`` (slide -> reason) or missing from
    ``categories`` is UNSTAGEABLE: never staged with a node missing.
    """
    unavailable = unavailable or {}
    rows = []
    for patient, slides in groups.items():
        known = [categories[slide] for slide in slides if slide in categories]
        problems = tuple(
            f"{slide}: {unavailable.get(slide, 'no category')}"
            for slide in slides
            if slide not in categories
        )
        labels = ";".join(
            f"{node_label(slide, patient)}:{categories.get(slide, NO_RESULT)}" for slide in slides
        )
        counts = Counter(known)
        stage = UNSTAGEABLE if problems else str(stage_patient(known, config).stage)
        rows.append(
            PatientRow(
                patient=patient,
                stage=stage,
                nodes=len(slides),
                positive_nodes=counts[Category.MACRO] + counts[Category.MICRO],
                macro_nodes=counts[Category.MACRO],
                micro_nodes=counts[Category.MICRO],
                itc_nodes=counts[Category.ITC],
                node_categories=labels,
                problems=problems,
            )
        )
    return rows
