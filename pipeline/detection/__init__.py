"""Detection: reads a slide's tile grid and a model; produces one tumor probability per
tile and the heatmap. ``inference`` (one prepared model per slide, readers, precision),
``dense`` (exact dense scoring of regions), ``paired`` (two dense partners scored as one),
``cpu_plan`` (readers vs torch threads), ``cascade`` (the screen, on by default),
``heatmap`` (probabilities on the grid, saved and reloaded exactly).
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "cascade",
    "cpu_plan",
    "dense",
    "heatmap",
    "inference",
    "paired",
    "precision",
]
