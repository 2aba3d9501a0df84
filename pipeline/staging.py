"""Staging: reads deposit sizes and node categories, produces slide categories and pN stages.

Every clinical cut-off and pN rule of micromet lives here, as named constants with their
sources; docs/staging.md explains them with worked boundary cases.

Sources:
  [AJCC8] AJCC Cancer Staging Manual, 8th edition, breast, pathological N (pN), as tabulated
      in the NCI PDQ Breast Cancer Treatment, "Table 4. Pathologic (pN)"
      (https://www.ncbi.nlm.nih.gov/books/NBK65744/): ITCs are clusters <= 0.2 mm, single
      cells, or < 200 cells in one cross-section; nodes with only ITCs are left out of the
      positive-node count; pN1mi is > 0.2 mm and/or > 200 cells, none > 2.0 mm; pN1a is 1-3
      axillary nodes with at least one metastasis > 2.0 mm; pN2a 4-9 nodes and pN3a 10 or
      more nodes, each with at least one deposit > 2.0 mm.
  [C17] CAMELYON17 challenge, Evaluation (https://camelyon17.grand-challenge.org/Evaluation/);
      Bandi et al., IEEE Trans. Med. Imaging 38(2):550-560, 2019, doi:10.1109/TMI.2018.2867350:
      a simplified pN scheme (pN0, pN0(i+), pN1mi, pN1, pN2) over 5 nodes per patient; its
      node labels and evaluation carry sizes (0.2 mm, 2.0 mm), never cell counts.
  [CAP] College of American Pathologists breast protocols, lymph-node notes: "the threshold
      of 200 cells in a single cross-section is a guideline to help pathologists distinguish
      between these 2 categories. The pathologist should use judgment ..."; the report gives
      "the greatest dimension of the largest metastatic focus". So size decides by default
      (CellRule) and the cell count only flags disagreement (docs/staging.md).
"""

from __future__ import annotations

import csv
import dataclasses
import enum
import logging
import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from pipeline.config import StagingConfig
from pipeline.errors import StagingError

log = logging.getLogger(__name__)

# --- Clinical constants: the only place these numbers appear. ------------------------------
# [AJCC8], [C17]: an ITC cluster is at most 0.2 mm (<=); a micrometastasis is larger.
ITC_MAX_DIAMETER_MM = 0.2
# [AJCC8], [C17]: a micrometastasis is at most 2.0 mm ("none > 2.0 mm"); larger is macro.
MICRO_MAX_DIAMETER_MM = 2.0
# [AJCC8]: ITC "< 200 cells" in one cross-section; micrometastasis "> 200 cells".
ITC_MAX_CELLS = 200
# [AJCC8] pN1a / [C17] pN1: metastases in 1-3 nodes; pN2(a): 4-9 nodes; pN3a: 10 or more.
PN1_MAX_POSITIVE_NODES = 3
PN2_MAX_POSITIVE_NODES = 9


class Category(enum.StrEnum):
    """Category of one deposit or one node (slide), ordered negative < itc < micro < macro.

    Comparisons between categories follow that clinical order, not the alphabet, so
    ``max(categories)`` is the worst one.
    """

    NEGATIVE = "negative"
    ITC = "itc"
    MICRO = "micro"
    MACRO = "macro"

    @property
    def rank(self) -> int:
        """Position in CATEGORY_ORDER: 0 (negative) to 3 (macro)."""
        return _CATEGORY_RANK[self]

    def __lt__(self, other: object) -> bool:
        return self.rank < other.rank if isinstance(other, Category) else NotImplemented

    def __le__(self, other: object) -> bool:
        return self.rank <= other.rank if isinstance(other, Category) else NotImplemented

    def __gt__(self, other: object) -> bool:
        return self.rank > other.rank if isinstance(other, Category) else NotImplemented

    def __ge__(self, other: object) -> bool:
        return self.rank >= other.rank if isinstance(other, Category) else NotImplemented


# Clinical order, least to most severe: a slide takes the category of its worst deposit.
CATEGORY_ORDER: tuple[Category, ...] = (
    Category.NEGATIVE,
    Category.ITC,
    Category.MICRO,
    Category.MACRO,
)
_CATEGORY_RANK = {category: rank for rank, category in enumerate(CATEGORY_ORDER)}


class PNStage(enum.StrEnum):
    """Patient pN stage names as written in [C17] and [AJCC8]."""

    PN0 = "pN0"
    PN0_ITC = "pN0(i+)"
    PN1MI = "pN1mi"
    PN1 = "pN1"
    PN2 = "pN2"
    PN1A = "pN1a"
    PN2A = "pN2a"
    PN3A = "pN3a"


# The stages each scheme can give, in increasing order (for ordinal metrics such as kappa).
CAMELYON17_STAGES: tuple[PNStage, ...] = (
    PNStage.PN0,
    PNStage.PN0_ITC,
    PNStage.PN1MI,
    PNStage.PN1,
    PNStage.PN2,
)
AJCC_STAGES: tuple[PNStage, ...] = (
    PNStage.PN0,
    PNStage.PN0_ITC,
    PNStage.PN1MI,
    PNStage.PN1A,
    PNStage.PN2A,
    PNStage.PN3A,
)

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
)

# File suffixes of whole-slide images; removed so "x.tif" and batch slide id "x" match.
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif")
_CAMELYON17_NODE = re.compile(r"(patient_\d+)_node_\d+", re.IGNORECASE)


@dataclasses.dataclass(frozen=True)
class PatientStage:
    """A patient's pN stage and node counts.

    positive_nodes = macro_nodes + micro_nodes; nodes with only ITCs are not positive.
    """

    stage: PNStage
    scheme: str
    nodes: int
    positive_nodes: int
    macro_nodes: int
    micro_nodes: int
    itc_nodes: int


@dataclasses.dataclass(frozen=True)
class PatientRow:
    """One row of the patient stage CSV.

    stage: a PNStage value, or UNSTAGEABLE when a node has no result (then the counts
    cover only the nodes that have one). node_categories: "node_0:negative;node_1:macro".
    problems: why the patient is unstageable, one line per node without a result.
    qc_warnings: "node_1: QC failed: not lymph node" for nodes scored although they failed
    slide QC (``--accept-qc-failures``), joined by "; "; empty when every node passed.
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

    def csv_values(self) -> list[str]:
        """The values for PATIENT_CSV_COLUMNS, in order."""
        return [str(getattr(self, column)) for column in PATIENT_CSV_COLUMNS]


class CellRule(enum.StrEnum):
    """How a counted number of tumor nuclei enters a deposit's category (docs/staging.md).

    SIZE_FIRST (the default): size alone decides (<= 0.2 mm ITC, <= 2.0 mm micro, else
    macro); a count that disagrees with the size only sets a review flag ([CAP], [C17]).
    LITERAL: the [AJCC8] wording read literally: up to 2.0 mm a count of > 200 cells makes
    a deposit micro and a count of < 200 cells makes it ITC, whatever its size.
    """

    SIZE_FIRST = "size-first"
    LITERAL = "literal"


DEFAULT_CELL_RULE = CellRule.SIZE_FIRST


def _check_measurement(max_diameter_mm: float, cell_count: int | None) -> None:
    if not math.isfinite(max_diameter_mm) or max_diameter_mm < 0:
        raise ValueError(f"max_diameter_mm={max_diameter_mm!r}; expected a finite size >= 0 mm")
    if cell_count is not None and cell_count < 0:
        raise ValueError(f"cell_count={cell_count!r}; expected a count >= 0 or None")


def _size_category(max_diameter_mm: float) -> Category:
    if max_diameter_mm > MICRO_MAX_DIAMETER_MM:
        return Category.MACRO
    if max_diameter_mm > ITC_MAX_DIAMETER_MM:
        return Category.MICRO
    return Category.ITC


def categorize_deposit(
    max_diameter_mm: float,
    cell_count: int | None = None,
    cell_rule: CellRule | str = DEFAULT_CELL_RULE,
) -> Category:
    """Category of one contiguous deposit from its largest dimension (and its cell count).

    max_diameter_mm: largest dimension (max Feret diameter) of this one deposit, in mm;
        separate deposits are never summed. cell_count: tumor cells in one cross-section,
        or None when not counted. cell_rule: CellRule or its value.

    Size: <= 0.2 mm ITC, > 0.2 mm and <= 2.0 mm micro, > 2.0 mm macro; comparisons are exact
    on the given float. With CellRule.SIZE_FIRST (default) the count never changes the
    category (``deposit_review`` says when it disagrees). With CellRule.LITERAL, up to
    2.0 mm a count of > 200 gives micro and < 200 gives ITC; exactly 200 meets neither
    rule and size decides. Raises ValueError for a negative or non-finite diameter, a
    negative count or an unknown rule.
    """
    _check_measurement(max_diameter_mm, cell_count)
    rule = CellRule(cell_rule)
    by_size = _size_category(max_diameter_mm)
    if rule is CellRule.SIZE_FIRST or cell_count is None or by_size is Category.MACRO:
        return by_size
    if cell_count > ITC_MAX_CELLS:
        return Category.MICRO
    if cell_count < ITC_MAX_CELLS:
        return Category.ITC
    return by_size


def deposit_review(
    max_diameter_mm: float,
    cell_count: int | None,
    cell_rule: CellRule | str = DEFAULT_CELL_RULE,
) -> str | None:
    """Why a deposit needs a pathologist's review, or None when size and count agree.

    Size and count disagree when the deposit is > 0.2 mm with < 200 counted nuclei, or
    <= 0.2 mm with > 200; an uncounted deposit (None) never disagrees. The reason names the
    size, the count and the category kept under ``cell_rule``. Raises ValueError as
    ``categorize_deposit``.
    """
    category = categorize_deposit(max_diameter_mm, cell_count, cell_rule)
    if cell_count is None:
        return None
    if max_diameter_mm > ITC_MAX_DIAMETER_MM and cell_count < ITC_MAX_CELLS:
        finding = (
            f"{max_diameter_mm:.3f} mm is above the {ITC_MAX_DIAMETER_MM} mm ITC limit but "
            f"only {cell_count} tumor nuclei were counted (< {ITC_MAX_CELLS})"
        )
    elif max_diameter_mm <= ITC_MAX_DIAMETER_MM and cell_count > ITC_MAX_CELLS:
        finding = (
            f"{max_diameter_mm:.3f} mm is within the {ITC_MAX_DIAMETER_MM} mm ITC limit but "
            f"{cell_count} tumor nuclei were counted (> {ITC_MAX_CELLS})"
        )
    else:
        return None
    how = "by size" if CellRule(cell_rule) is CellRule.SIZE_FIRST else "by the literal cell rule"
    return f"{finding}; called {category} {how}, check size and count"


def slide_category(deposit_categories: Iterable[Category | str]) -> Category:
    """Category of a slide (one node): its worst deposit's; negative when it has none.

    Raises ValueError for a value that is not a category name.
    """
    return max((Category(value) for value in deposit_categories), default=Category.NEGATIVE)


def stage_patient(node_categories: Sequence[Category], config: StagingConfig) -> PatientStage:
    """pN stage of a patient from the categories of its nodes (one slide per node).

    Scheme "camelyon17" [C17]: pN0 nothing found; pN0(i+) only ITCs; pN1mi micro but no
    macro (any number of nodes); pN1 1-3 positive nodes, at least one macro; pN2 4-9 positive
    nodes, at least one macro. The scheme stops at pN2 (5 nodes per patient there); 10 or
    more positive nodes also give pN2, with a warning: use the AJCC scheme for such patients.
    Scheme "ajcc" [AJCC8] (axillary nodes): pN0, pN0(i+), pN1mi as above (pN2a and pN3a need
    a deposit > 2.0 mm, so micro-only nodes stay pN1mi whatever their number); with a macro,
    pN1a for 1-3, pN2a for 4-9 and pN3a for 10 or more positive nodes.
    Positive nodes are micro or macro; ITC-only nodes never count.
    Raises StagingError when there are no nodes, ValueError for a non-category value.
    """
    if not node_categories:
        raise StagingError("no node categories to stage; a patient needs at least one node")
    counts = Counter(Category(value) for value in node_categories)
    macro, micro, itc = counts[Category.MACRO], counts[Category.MICRO], counts[Category.ITC]
    positive = macro + micro
    if config.scheme == "ajcc":
        stage = _ajcc_stage(positive, macro, micro, itc)
    else:
        stage = _camelyon17_stage(positive, macro, micro, itc)
    return PatientStage(
        stage=stage,
        scheme=config.scheme,
        nodes=len(node_categories),
        positive_nodes=positive,
        macro_nodes=macro,
        micro_nodes=micro,
        itc_nodes=itc,
    )


def _stage_without_macro(micro: int, itc: int) -> PNStage:
    if micro > 0:
        return PNStage.PN1MI
    if itc > 0:
        return PNStage.PN0_ITC
    return PNStage.PN0


def _camelyon17_stage(positive: int, macro: int, micro: int, itc: int) -> PNStage:
    if macro == 0:
        return _stage_without_macro(micro, itc)
    if positive <= PN1_MAX_POSITIVE_NODES:
        return PNStage.PN1
    if positive > PN2_MAX_POSITIVE_NODES:
        log.warning(
            "%d positive nodes: the CAMELYON17 scheme stops at pN2 (4-9 nodes); "
            "reporting pN2, use scheme 'ajcc' for pN3a",
            positive,
        )
    return PNStage.PN2


def _ajcc_stage(positive: int, macro: int, micro: int, itc: int) -> PNStage:
    if macro == 0:
        return _stage_without_macro(micro, itc)
    if positive <= PN1_MAX_POSITIVE_NODES:
        return PNStage.PN1A
    if positive <= PN2_MAX_POSITIVE_NODES:
        return PNStage.PN2A
    return PNStage.PN3A


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
    """Patient of a CAMELYON17 node slide: "patient_004_node_4(.tif)" -> "patient_004".

    Returns None when the name does not follow that convention.
    """
    match = _CAMELYON17_NODE.fullmatch(slide_key(slide))
    return match.group(1) if match else None


def node_label(slide: str, patient: str) -> str:
    """Short name of a node within its patient: "patient_004_node_4" -> "node_4"."""
    prefix = f"{patient}_"
    if slide.startswith(prefix) and len(slide) > len(prefix):
        return slide[len(prefix) :]
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


def assign_patients(
    slides: Iterable[str],
    mapping: Mapping[str, str] | None = None,
    mapping_path: Path | None = None,
) -> dict[str, list[str]]:
    """Group slide ids by patient: from ``mapping`` first, else the CAMELYON17 naming.

    Returns patient -> slide ids, both in natural order.
    Raises StagingError when the mapping names a slide that is not among ``slides``
    (naming mapping_path and its line), or when a slide has no patient by either rule.
    """
    slide_set = set(slides)
    mapping = mapping or {}
    extra = sorted(set(mapping) - slide_set, key=natural_key)
    if extra:
        where = (
            f"{mapping_path}: line {_mapping_line(mapping_path, extra[0])}: "
            if mapping_path
            else ""
        )
        raise StagingError(
            f"{where}slide {extra[0]!r} is not among the {len(slide_set)} slides with results "
            f"({_examples(slide_set)}); unknown in the mapping: {_examples(extra)}. "
            f"Fix the slide names or remove those lines"
        )
    groups: dict[str, list[str]] = {}
    unmatched: list[str] = []
    for slide in slide_set:
        patient = mapping.get(slide) or patient_from_camelyon17_name(slide)
        if patient is None:
            unmatched.append(slide)
        else:
            groups.setdefault(patient, []).append(slide)
    if unmatched:
        raise StagingError(
            f"no patient for {len(unmatched)} slide(s): {_examples(unmatched)}; their names do "
            f"not follow the CAMELYON17 'patient_NNN_node_N' convention"
            + (" and the patient mapping does not list them" if mapping else "")
            + "; pass --patients with a CSV 'slide,patient' that lists every slide"
        )
    return {
        patient: sorted(groups[patient], key=natural_key)
        for patient in sorted(groups, key=natural_key)
    }


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
