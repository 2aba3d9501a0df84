"""Slide file formats: the one list of file suffixes micromet opens as slides
(``pipeline.slides.slide.open_slide``).

Used wherever a folder is searched for slides (the batch, training) and wherever a slide's id
is cut from its file name (the batch folder, staging tables), so "x.tif" and slide id "x"
match everywhere. Imports nothing heavy (no OpenSlide), so staging can use it.
"""

from __future__ import annotations

__all__ = ["DICOM_SUFFIX", "OPENSLIDE_SUFFIXES", "PLAIN_IMAGE_SUFFIXES", "SLIDE_SUFFIXES"]

# Whole-slide files OpenSlide reads (each carries its own µm/px in its metadata).
OPENSLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".vms", ".vmu", ".scn", ".bif", ".svslide")
# A DICOM WSI is a folder of these files, one slide per folder (``slide.is_dicom_folder``).
DICOM_SUFFIX = ".dcm"
# Plain images (read with --mpp; ``pipeline.slides.plain_images``).
PLAIN_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Every suffix a slide file may have: what a folder given instead of files is searched for.
SLIDE_SUFFIXES = (*OPENSLIDE_SUFFIXES, DICOM_SUFFIX, *PLAIN_IMAGE_SUFFIXES)
