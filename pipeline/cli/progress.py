"""Console progress of batch commands, on stderr: live bars on a terminal, plain lines otherwise.

On a terminal (``BARS``): an overall bar of slides (done / failed, ETA) and, for the slide in
progress, a bar of tiles scored (rate, ETA). Elsewhere (``LINES``, e.g. a log file or a job
scheduler): one line when a slide starts, one per quarter of its tiles, one when it ends.
``QUIET`` prints nothing (``--quiet``).
"""

from __future__ import annotations

import enum
import sys
from types import TracebackType
from typing import Any, TextIO

from tqdm import tqdm

from pipeline.batch.folder import STATUS_FAILED
from pipeline.errors import printable

# Plain-line mode reports a slide's tiles at these fractions.
LINE_STEPS = (0.25, 0.5, 0.75)


class ProgressMode(enum.StrEnum):
    """How progress is shown."""

    BARS = "bars"
    LINES = "lines"
    QUIET = "quiet"


def choose_mode(quiet: bool, stream: TextIO) -> ProgressMode:
    """QUIET when asked, BARS when ``stream`` is a terminal, else LINES."""
    if quiet:
        return ProgressMode.QUIET
    isatty = getattr(stream, "isatty", None)
    return ProgressMode.BARS if callable(isatty) and isatty() else ProgressMode.LINES


class _SlideTiles:
    """The tile progress of one slide (``pipeline.batch.analyze.TileProgress``)."""

    def __init__(self, owner: BatchProgress, slide_id: str) -> None:
        self.owner = owner
        self.slide_id = slide_id
        self.total = 0
        self.scored = 0
        self._next_step = 0
        self.bar: Any = None

    def start(self, n_tiles: int) -> None:
        self.total = n_tiles
        if self.owner.mode is ProgressMode.BARS:
            self.bar = tqdm(
                total=n_tiles, unit="tile", desc=self.slide_id[:30], position=1, leave=False,
                file=self.owner.stream, dynamic_ncols=True,
            )
        else:
            self.owner.line(f"{self.owner.position(self.slide_id)}: {n_tiles} tiles to score")

    def __call__(self, n_scored: int) -> None:
        self.scored += n_scored
        if self.bar is not None:
            self.bar.update(n_scored)
            return
        crossed = False
        while self._next_step < len(LINE_STEPS) and self.total and (
            self.scored >= LINE_STEPS[self._next_step] * self.total
        ):
            self._next_step += 1
            crossed = True
        if crossed:  # one line per update, with the share actually scored (updates come in batches)
            percent = min(100, 100 * self.scored // self.total)
            self.owner.line(f"{self.slide_id}: {self.scored}/{self.total} tiles scored ({percent} %)")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class BatchProgress:
    """Progress of a batch of ``n_slides`` slides on ``stream`` in ``mode``."""

    def __init__(self, n_slides: int, mode: ProgressMode, stream: TextIO | None = None) -> None:
        self.mode = mode
        self.stream: TextIO = stream if stream is not None else sys.stderr
        self.n_slides = n_slides
        self.done = 0
        self.failed = 0
        self.finished = 0
        self._tiles: _SlideTiles | None = None
        self._overall: Any = None
        if mode is ProgressMode.BARS:
            self._overall = tqdm(
                total=n_slides, unit="slide", desc="slides", position=0, file=self.stream,
                dynamic_ncols=True,
            )
            self._overall.set_postfix_str(self._counts())

    def line(self, text: str) -> None:
        """Write one plain line (LINES mode)."""
        print(text, file=self.stream, flush=True)

    def position(self, slide_id: str) -> str:
        """"[3/10] slide_id": the slide's place in the batch."""
        return f"[{self.finished + 1}/{self.n_slides}] {slide_id}"

    def _counts(self) -> str:
        return f"{self.done} done, {self.failed} failed"

    def tile_callback(self, slide_id: str) -> _SlideTiles | None:
        """The tile progress of a slide that starts now; None when QUIET."""
        if self.mode is ProgressMode.QUIET:
            return None
        self._close_tiles()
        self._tiles = _SlideTiles(self, slide_id)
        return self._tiles

    def slide_done(self, outcome: Any) -> None:
        """Count a finished slide (``pipeline.batch.local.SlideOutcome``) and show it."""
        self._close_tiles()
        if outcome.status == STATUS_FAILED:
            self.failed += 1
        else:  # done, or skipped: finished in an earlier run
            self.done += 1
        self.finished += 1
        if self.mode is ProgressMode.BARS:
            self._overall.set_postfix_str(f"{self._counts()}; {outcome.slide_id}: {outcome.status}")
            self._overall.update(1)
        elif self.mode is ProgressMode.LINES:
            what = outcome.status
            if outcome.category:
                what += f" ({outcome.category})"
            if outcome.error:
                what += f": {outcome.error}"
            self.line(
                printable(f"[{self.finished}/{self.n_slides}] {outcome.slide_id}: {what} ")
                + f"in {outcome.seconds:.1f} s; {self._counts()}"
            )

    def _close_tiles(self) -> None:
        if self._tiles is not None:
            self._tiles.close()
            self._tiles = None

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._close_tiles()
        if self._overall is not None:
            self._overall.close()
