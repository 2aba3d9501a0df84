"""Annotations: reads ASAP XML, QuPath GeoJSON and CAMELYON16 JSON outlines, produces
``Annotation`` polygons in level-0 px, rasterised masks, and writes ASAP XML and GeoJSON.

The public names, defined in three modules that import in this order (no cycle):
- ``annotation_model``: the ``Annotation`` type, labels, and the validation policy every
  reader applies (a malformed file raises ``AnnotationError``; degenerate polygons are
  dropped and self-intersecting ones repaired, with a warning);
- ``annotation_formats``: the readers and writers of each file format;
- ``annotation_geometry``: ``polygon_mask`` (the pipeline's one polygon rasteriser, with
  the CAMELYON16 masks' edge rule), annotation masks, areas and Feret diameters.
"""

from __future__ import annotations

from pipeline.slides.annotation_formats import (
    annotation_to_feature,
    read_annotations,
    read_asap_xml,
    read_camelyon16_json,
    read_geojson,
    write_asap_xml,
    write_geojson,
)
from pipeline.slides.annotation_geometry import (
    max_feret_diameter_px,
    polygon_area_px2,
    polygon_mask,
    rasterize_annotations,
    warn_outlines_outside,
)
from pipeline.slides.annotation_model import (
    CANONICAL_GROUPS,
    GROUP_LABELS,
    LABEL_COLORS_RGB,
    MAX_COORDINATE_PX,
    MIN_REPAIRED_PART_FRACTION,
    Annotation,
    AnnotationLabel,
    check_coordinates,
    label_for_group,
)

__all__ = [
    "CANONICAL_GROUPS",
    "GROUP_LABELS",
    "LABEL_COLORS_RGB",
    "MAX_COORDINATE_PX",
    "MIN_REPAIRED_PART_FRACTION",
    "Annotation",
    "AnnotationLabel",
    "annotation_to_feature",
    "check_coordinates",
    "label_for_group",
    "max_feret_diameter_px",
    "polygon_area_px2",
    "polygon_mask",
    "rasterize_annotations",
    "read_annotations",
    "read_asap_xml",
    "read_camelyon16_json",
    "read_geojson",
    "warn_outlines_outside",
    "write_asap_xml",
    "write_geojson",
]
