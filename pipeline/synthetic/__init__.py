"""Synthetic data: reads a ``SynthConfig`` (and optionally real H&E texture); produces
pyramidal TIFF / SVS test slides with planted deposits of known size and their
ground truth. ``generate`` is the entry; ``config``, ``layout``, ``scene``,
``sprites``, ``texture``, ``render``, ``write`` are its steps. ``pyramid_tiff`` (a small TIFF
from an RGB array) and ``real_slides`` (slides of real tissue from ../shared/data) build the
slides that tests and benchmark scripts share.
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "config",
    "generate",
    "layout",
    "pyramid_tiff",
    "real_slides",
    "render",
    "scene",
    "sprites",
    "texture",
    "write",
]
