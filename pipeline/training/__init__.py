"""Training: reads slides with annotations, patch folders or PCam files; produces
checkpoints with their model card. ``config``, ``datasets``, ``sampling``,
``augment``, ``loop``, ``mining`` (hard negatives), ``metrics``, ``checkpoint``
(resume), ``ddp``, ``train`` (the command's entry), ``classify`` (scoring patches).
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "augment",
    "checkpoint",
    "classify",
    "config",
    "datasets",
    "ddp",
    "default_model",
    "loop",
    "metrics",
    "mining",
    "pair",
    "pcam_split",
    "places",
    "review_samples",
    "sampling",
    "train",
]
