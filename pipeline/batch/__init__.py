"""Batch: reads a list of slide files; produces one output folder per slide plus the
batch manifest. ``analyze`` runs one slide through every stage, ``local`` runs a
resumable batch on this machine, ``distributed`` (+ ``distributed_pool``,
``distributed_worker``) the same on a Ray cluster.
"""
