"""Staging rules: reads deposit sizes (and cell counts) and node categories, produces deposit
and slide categories and a patient's pN stage.

Every clinical cut-off and pN rule of micromet lives here, as named constants with their
sources; docs/staging.md explains them with worked boundary cases. Callers import these
names from ``pipeline.staging``, which also holds the patient tables (``tables``).

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

import dataclasses
import enum
import logging
import math
from collections import Counter
from collections.abc import Iterable, Sequence

from pipeline.config import StagingConfig
from pipeline.errors import StagingError

# Records keep the name of the public module, ``pipeline.staging``, that log settings name.
log = logging.getLogger("pipeline.staging")

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
