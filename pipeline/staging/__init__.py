"""Staging: reads deposit sizes and node categories, produces slide categories and pN stages.

The public face of two modules, importable from here:

- ``rules``: every clinical cut-off and pN rule of micromet, as named constants with
  their sources (AJCC 8th edition, CAMELYON17, CAP), deposit and slide categories and a
  patient's pN stage; docs/staging.md explains them with worked boundary cases.
- ``tables``: slide and patient names, the node-category and patient-mapping CSV
  readers, grouping slides by patient and the rows of the patient stage CSV.

``tables`` imports ``rules``; neither imports this module.
"""

from __future__ import annotations

from pipeline.staging.rules import (
    AJCC_STAGES,
    CAMELYON17_STAGES,
    CATEGORY_ORDER,
    DEFAULT_CELL_RULE,
    ITC_MAX_CELLS,
    ITC_MAX_DIAMETER_MM,
    MICRO_MAX_DIAMETER_MM,
    PN1_MAX_POSITIVE_NODES,
    PN2_MAX_POSITIVE_NODES,
    Category,
    CellRule,
    PatientStage,
    PNStage,
    categorize_deposit,
    deposit_review,
    slide_category,
    stage_patient,
)
from pipeline.staging.tables import (
    NO_RESULT,
    PATIENT_CSV_COLUMNS,
    UNSTAGEABLE,
    PatientGroups,
    PatientRow,
    assign_patients,
    group_by_patient,
    natural_key,
    node_label,
    patient_from_camelyon17_name,
    read_node_categories_csv,
    read_patient_mapping_csv,
    slide_key,
    stage_patients,
)

__all__ = [
    "AJCC_STAGES",
    "CAMELYON17_STAGES",
    "CATEGORY_ORDER",
    "DEFAULT_CELL_RULE",
    "ITC_MAX_CELLS",
    "ITC_MAX_DIAMETER_MM",
    "MICRO_MAX_DIAMETER_MM",
    "NO_RESULT",
    "PATIENT_CSV_COLUMNS",
    "PN1_MAX_POSITIVE_NODES",
    "PN2_MAX_POSITIVE_NODES",
    "UNSTAGEABLE",
    "Category",
    "CellRule",
    "PNStage",
    "PatientGroups",
    "PatientRow",
    "PatientStage",
    "assign_patients",
    "categorize_deposit",
    "deposit_review",
    "group_by_patient",
    "natural_key",
    "node_label",
    "patient_from_camelyon17_name",
    "read_node_categories_csv",
    "read_patient_mapping_csv",
    "slide_category",
    "slide_key",
    "stage_patient",
    "stage_patients",
]
