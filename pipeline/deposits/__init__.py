"""Deposits: reads a heatmap (and the slide, for refinement and cell counts); produces
measured deposits: ``measure`` (connected components, max Feret diameter in mm,
area, the seed threshold), ``refine`` (finer grids near the 0.2 / 2.0 mm cut-offs),
``cells`` (tumor nucleus counts), ``decide`` (seed, confirmation in 8 poses, candidates for
review) and ``confirm`` (its optional second stage).
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "cells",
    "confirm",
    "decide",
    "measure",
    "refine",
]
