"""Slide access: reads whole-slide image files (OpenSlide) and annotation files; produces
``Slide`` handles with checked metadata and mpp, slide QC results, the tissue mask, the
tile grid at the model's physical resolution, region reads cut into model tiles, and
polygons / masks from QuPath GeoJSON, ASAP XML and CAMELYON16 outlines.

Modules, in data order: ``slide`` (``SlideSource``, a slide as one value opened by
``SlideSource.open``, and ``Slide``; + ``handles``, file checks and OpenSlide handles;
``metadata``; ``formats``, the one list of slide file
suffixes; ``plain_images`` for JPEG, PNG and plain TIFF images, ``computed_levels`` for the
coarser levels of single-level ones), ``qc``, ``tissue``, ``tiling``, ``readers``;
``annotations`` (+ ``annotation_model``, ``annotation_formats``, ``annotation_geometry``, the
one polygon rasteriser).
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "annotation_formats",
    "annotation_geometry",
    "annotation_model",
    "annotations",
    "computed_levels",
    "formats",
    "handles",
    "integrity",
    "metadata",
    "nuclei",
    "plain_images",
    "qc",
    "readers",
    "slide",
    "stain",
    "tiling",
    "tissue",
]
