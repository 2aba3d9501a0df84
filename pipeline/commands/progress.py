"""Console progress bars for batch commands: one overall bar and one per slide (tiles/s, ETA)."""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Any

from tqdm import tqdm


class BatchProgress:
    """An overall slide bar plus a tile bar for the slide in progress (no-op when disabled)."""

    def __init__(self, n_slides: int, enabled: bool) -> None:
        self.enabled = enabled
        self._overall: Any = tqdm(
            total=n_slides, unit="slide", desc="slides", position=0, disable=not enabled
        )
        self._tiles: Any = None

    def tile_callback(self, slide_id: str) -> Callable[[int], None] | None:
        """A callback advancing a fresh per-slide tile bar."""
        if not self.enabled:
            return None
        if self._tiles is not None:
            self._tiles.close()
        self._tiles = tqdm(unit="tile", desc=slide_id[:30], position=1, leave=False)
        return self._tiles.update  # type: ignore[no-any-return]

    def slide_done(self, outcome: Any) -> None:
        """Advance the overall bar."""
        if self._tiles is not None:
            self._tiles.close()
            self._tiles = None
        self._overall.set_postfix_str(f"{outcome.slide_id}: {outcome.status}")
        self._overall.update(1)

    def __enter__(self) -> BatchProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._tiles is not None:
            self._tiles.close()
        self._overall.close()
