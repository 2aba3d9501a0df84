"""Batch: reads a list of slide files; produces one output folder per slide plus the
batch manifest. ``analyze`` runs one slide through every stage, ``local`` runs a
resumable batch on this machine, ``distributed`` (+ ``distributed_pool``,
``distributed_worker``) the same on a Ray cluster.
"""


# The package's public modules (imported on use, so importing the package stays cheap).
__all__ = [
    "analyze",
    "distributed",
    "distributed_pool",
    "distributed_worker",
    "folder",
    "local",
    "scoring",
    "settings",
]
