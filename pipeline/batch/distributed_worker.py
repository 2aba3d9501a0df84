"""Batch runs on a Ray cluster, the worker side: what one worker slot reads and produces.

Reads an ``AnalysisSettings`` (``pipeline.batch.settings``: plain picklable settings, model
and config paths, flag overrides, µm/px) and builds the ``AnalysisContext`` from it in the
worker, so the model is never pickled from the driver; then reads one slide per ``WorkItem``
and produces a ``WorkResult`` (the slide's report or an error message, never an exception)
after writing its files into ``OUT/.<slide_id>.partial`` and renaming the folder into place
(``pipeline.batch.local.run_slide_safely``). ``pipeline.batch.distributed`` runs these workers
as Ray actors; nothing here imports Ray.
"""

from __future__ import annotations

import dataclasses
import socket
import time
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.batch.local import run_slide_safely, settings_key
from pipeline.batch.settings import AnalysisContext, AnalysisSettings
from pipeline.errors import MicrometError


@dataclasses.dataclass(frozen=True)
class WorkResult:
    """What a worker sends back for one slide: a report or an error message, never an exception.

    fatal: the worker itself cannot run (model or settings differ on its node); the run stops.
    """

    slide_id: str
    report: dict[str, Any] | None
    error: str | None
    seconds: float
    node: str
    fatal: bool = False


@dataclasses.dataclass(frozen=True)
class WorkItem:
    """One slide to analyse: its path (as every node sees it) and its output folder name."""

    path: Path
    slide_id: str


class SlideWorker:
    """One worker slot (run as a Ray actor): loads the model once, then analyses slides.

    out_dir: the batch folder, absolute, on storage every node shares. expected_key: the
    driver's settings key; a node that resolves other settings (another model file, config or
    micromet version at the same path) refuses to work rather than write mismatched results.
    """

    def __init__(self, settings: AnalysisSettings, out_dir: str, expected_key: str) -> None:
        self.out_dir = Path(out_dir)
        self.node = socket.gethostname()
        self.context: AnalysisContext | None = None
        self.setup_error: str | None = None
        try:
            self.context = settings.build()
        except MicrometError as exc:
            self.setup_error = f"worker on node {self.node} cannot load the model or settings: {exc}"
            return
        key = settings_key(self.context.settings())
        if key != expected_key:
            self.setup_error = (
                f"worker on node {self.node} resolved settings key {key}, the driver {expected_key}: "
                f"the model file, config file or micromet version ({__version__}) differs between "
                "nodes; every node needs the same files at the same paths"
            )

    def analyze(self, path: str, slide_id: str) -> WorkResult:
        """Analyse one slide into ``OUT/<slide_id>`` (staged, then renamed into place)."""
        started = time.perf_counter()
        if self.setup_error is not None:
            return WorkResult(slide_id, None, self.setup_error, 0.0, self.node, fatal=True)
        report, error = run_slide_safely(self.analyze_into, Path(path), slide_id, self.out_dir)
        seconds = round(time.perf_counter() - started, 3)
        return WorkResult(slide_id, report, error, seconds, self.node)

    def analyze_into(self, path: Path, slide_id: str, folder: Path) -> dict[str, Any]:
        """Write one slide's files into ``folder``; returns its report dict."""
        from pipeline.batch.analyze import analyze_slide

        assert self.context is not None  # set whenever setup_error is None
        return analyze_slide(self.context, path, slide_id, folder)
