"""Training data split by place: reads patches (N, H, W, 3) uint8, produces groups of patches
that share pixels, so that overlapping crops of one place never sit on both sides of a split.

PatchCamelyon patches are overlapping crops of CAMELYON16 slides and carry no slide id: two
patches may share an identical region at any shift. Every textured ``window_px`` x
``window_px`` window of every patch, at every position, is hashed exactly (a random linear hash
of its pixels modulo 2**64); the windows of each patch on a grid of step ``window_px`` are looked
up among them. Two patches holding the same textured window are one place (union-find). A
shared region at least ``2 * window_px - 1`` px wide and high always holds one whole grid
window, so such overlaps are never missed; identical blank (glass) windows are ignored, since
glass is no place.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from numpy.typing import NDArray

__all__ = ["PlaceConfig", "find_places", "split_places"]


@dataclasses.dataclass(frozen=True)
class PlaceConfig:
    """window_px: side of the hashed windows. min_window_std: a window is textured when the
    standard deviation of its pixel values (0-255, all channels) is at least this. chunk: patches
    hashed at once (memory ~ chunk x 100 kB)."""

    window_px: int = 8
    min_window_std: float = 6.0
    chunk: int = 512

    def __post_init__(self) -> None:
        if not 2 <= self.window_px <= 64:
            raise ValueError(f"window_px={self.window_px!r} is out of range; allowed 2 to 64")
        if not (np.isfinite(self.min_window_std) and self.min_window_std >= 0):
            raise ValueError(f"min_window_std={self.min_window_std!r}; expected a number >= 0")
        if self.chunk < 1:
            raise ValueError(f"chunk={self.chunk!r}; expected at least 1")


def _weights(window_px: int) -> tuple[NDArray[np.uint64], NDArray[np.uint64]]:
    rng = np.random.default_rng(20261207)
    row = rng.integers(1, 2**63, size=(window_px, 3), dtype=np.uint64) | np.uint64(1)
    col = rng.integers(1, 2**63, size=window_px, dtype=np.uint64) | np.uint64(1)
    return row, col


def _window_hashes(patches: NDArray[np.uint8], window_px: int) -> NDArray[np.uint64]:
    """(N, H - w + 1, W - w + 1) exact linear hashes of every w x w window (mod 2**64)."""
    row_w, col_w = _weights(window_px)
    n, height, width, _ = patches.shape
    out_h, out_w = height - window_px + 1, width - window_px + 1
    values = patches.astype(np.uint64)
    with np.errstate(over="ignore"):
        rows = np.zeros((n, height, out_w), dtype=np.uint64)
        for dx in range(window_px):
            for channel in range(3):
                rows += values[:, :, dx : dx + out_w, channel] * row_w[dx, channel]
        hashes = np.zeros((n, out_h, out_w), dtype=np.uint64)
        for dy in range(window_px):
            hashes += rows[:, dy : dy + out_h, :] * col_w[dy]
    return hashes


def _box_sum(values: NDArray[np.float64], window_px: int) -> NDArray[np.float64]:
    """(N, H - w + 1, W - w + 1) sums of every w x w window of (N, H, W) values."""
    padded = np.pad(values, ((0, 0), (1, 0), (1, 0))).cumsum(axis=1).cumsum(axis=2)
    w = window_px
    return np.asarray(padded[:, w:, w:] - padded[:, :-w, w:] - padded[:, w:, :-w] + padded[:, :-w, :-w])


def _window_std(patches: NDArray[np.uint8], window_px: int) -> NDArray[np.float64]:
    """(N, H - w + 1, W - w + 1) standard deviation of the pixel values of every w x w x 3 window."""
    values = patches.astype(np.float64)
    count = 3.0 * window_px * window_px
    mean = _box_sum(values.sum(axis=3), window_px) / count
    square = _box_sum((values * values).sum(axis=3), window_px) / count
    return np.asarray(np.sqrt(np.maximum(square - mean * mean, 0.0)))


def _find(parent: NDArray[np.int64], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = int(parent[i])
    return i


def find_places(patches: NDArray[np.uint8], config: PlaceConfig | None = None) -> NDArray[np.int64]:
    """Place id of every patch: patches sharing a textured window get the same id.

    patches: (N, H, W, 3) uint8, all the same size. Returns (N,) int64 ids, 0..P-1, numbered by
    each place's first patch.
    """
    config = config or PlaceConfig()
    w = config.window_px
    all_hashes: list[NDArray[np.uint64]] = []
    all_owner: list[NDArray[np.int64]] = []
    grid_hashes: list[NDArray[np.uint64]] = []
    grid_owner: list[NDArray[np.int64]] = []
    for start in range(0, len(patches), config.chunk):
        part = patches[start : start + config.chunk]
        hashes = _window_hashes(part, w)
        textured = _window_std(part, w) >= config.min_window_std
        owner = np.broadcast_to(np.arange(start, start + len(part))[:, None, None], hashes.shape)
        all_hashes.append(hashes[textured])
        all_owner.append(owner[textured])
        grid = np.zeros(hashes.shape, dtype=bool)
        grid[:, ::w, ::w] = True
        grid &= textured
        grid_hashes.append(hashes[grid])
        grid_owner.append(owner[grid])
    keys = np.concatenate(all_hashes)
    owners = np.concatenate(all_owner)
    order = np.argsort(keys, kind="stable")
    keys, owners = keys[order], owners[order]
    queries = np.concatenate(grid_hashes)
    query_owner = np.concatenate(grid_owner)
    low = np.searchsorted(keys, queries, side="left")
    high = np.searchsorted(keys, queries, side="right")
    parent = np.arange(len(patches), dtype=np.int64)
    for index in np.flatnonzero(high - low > 1):
        a = _find(parent, int(query_owner[index]))
        for other in np.unique(owners[low[index] : high[index]]):
            b = _find(parent, int(other))
            if a != b:
                parent[b] = a
    roots = np.array([_find(parent, i) for i in range(len(patches))], dtype=np.int64)
    _, first = np.unique(roots, return_index=True)
    rank = {int(roots[i]): r for r, i in enumerate(sorted(first))}
    return np.array([rank[int(r)] for r in roots], dtype=np.int64)


def split_places(
    places: NDArray[np.int64], labels: NDArray[np.int64], fractions: dict[str, float], seed: int
) -> NDArray[np.str_]:
    """Part name of every patch, whole places at a time.

    fractions: part name -> share of patches (the rest goes to the first part, "train"). Places
    are shuffled (seeded) and dealt to the parts, each class's share kept close to the target by
    dealing places holding tumor and tumor-free places separately.
    """
    names = list(fractions)
    rng = np.random.default_rng(seed)
    parts = np.full(len(places), names[0], dtype=object)
    has_tumor = np.zeros(int(places.max()) + 1, dtype=bool)
    np.logical_or.at(has_tumor, places, labels == 1)
    sizes = np.bincount(places)
    for tumor_kind in (True, False):
        ids = np.flatnonzero(has_tumor == tumor_kind)
        ids = ids[rng.permutation(len(ids))]
        total = sizes[ids].sum()
        filled = {name: 0 for name in names}
        for place in ids:
            # the part furthest below its target share takes the place
            name = min(names, key=lambda n: filled[n] / total - fractions[n])
            filled[name] += int(sizes[place])
            parts[places == place] = name
    return parts.astype(str)
