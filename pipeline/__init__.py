"""micromet: find and measure lymph-node metastases in whole-slide images.

Importing this package reads no environment variables and does not import torch.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
