"""Training: torch datasets of labelled tiles from slides, patch folders and PatchCamelyon.

Reads sample indexes (``pipeline.training.sampling``), image files and PatchCamelyon HDF5 files;
produces (tile, label) pairs, the tile a (T, T, 3) uint8 tensor at the model's µm/px (the
layout inference feeds the model), the label 0 = normal, 1 = tumor. Patches of another
resolution are resized by physical scale (their µm/px over the model's), then centre-cropped
or mirror-padded to T x T: never resized by pixel count. Slide datasets open their slide
handles lazily in each DataLoader worker. ``build_datasets`` assembles a run's training and
validation sets from its settings; ``make_loader`` shards them (DistributedSampler) and can
start part-way into an epoch for an exact resume.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler

from pipeline.config import PCAM_MPP
from pipeline.errors import ConfigError, MicrometError
from pipeline.slides.slide import Slide, SlideSource, check_readable_folder, resize_rgb, rgba_to_rgb
from pipeline.slides.stain import normalize_stain
from pipeline.training.config import DataConfig, TrainSettings
from pipeline.training.sampling import (
    SLIDE_MPP_SETTING,
    AnnotatedSlide,
    PatchSample,
    balance_classes,
    find_slides,
)

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp")
CLASS_FOLDERS = {"normal": 0, "tumor": 1}
PCAM_SPLITS = ("train", "valid", "test")

TileItem = tuple[torch.Tensor, int]


class PatchImageError(MicrometError):
    """A patch image file is missing, unreadable or not an image."""


# The largest patch image read (64 MP, e.g. 8000 x 8000 px): a patch is a tile or a small
# field, and a header may declare any size (20000 x 20000 px decodes to 1.6 GB).
MAX_PATCH_PIXELS = 64_000_000


def load_rgb(path: Path) -> NDArray[np.uint8]:
    """(H, W, 3) uint8 RGB of an image file; transparency is composited onto white.

    Raises PatchImageError naming the file when it is missing or cannot be decoded.
    """
    if not path.is_file():
        raise PatchImageError(f"{path}: patch image not found")
    try:
        with Image.open(path) as image:
            _check_patch_size(path, image.size)
            image.load()
            rgba = np.asarray(image.convert("RGBA"))
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PatchImageError(
            f"{path}: cannot read the patch image ({exc}); expected PNG, JPEG, TIFF or WebP"
        ) from exc
    return rgba_to_rgb(rgba)


def _check_patch_size(path: Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_PATCH_PIXELS:
        raise PatchImageError(
            f"{path}: declares {width} x {height} px, more than a patch may hold "
            f"({MAX_PATCH_PIXELS:,} px); crop it into patches first"
        )


def check_patch_header(path: Path) -> None:
    """Raise PatchImageError naming ``path`` unless its header is a readable image of at most
    MAX_PATCH_PIXELS (reads the header only, so a folder is checked before training starts)."""
    try:
        with Image.open(path) as image:
            _check_patch_size(path, image.size)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        raise PatchImageError(
            f"{path}: cannot read the patch image ({exc}); expected PNG, JPEG, TIFF or WebP"
        ) from exc


def _crop_or_pad(rgb: NDArray[np.uint8], size_px: int) -> NDArray[np.uint8]:
    height, width = rgb.shape[:2]
    top, left = max(0, (height - size_px) // 2), max(0, (width - size_px) // 2)
    rgb = rgb[top : top + size_px, left : left + size_px]
    pad_h, pad_w = size_px - rgb.shape[0], size_px - rgb.shape[1]
    if pad_h or pad_w:
        widths = ((pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0))
        rgb = np.pad(rgb, widths, mode="symmetric")
    return np.ascontiguousarray(rgb)


def fit_to_tile(
    rgb: NDArray[np.uint8], source_mpp: float, target_mpp: float, tile_size_px: int
) -> NDArray[np.uint8]:
    """A (tile_size_px, tile_size_px, 3) tile at ``target_mpp`` from an image at ``source_mpp``.

    The image is resized by source_mpp / target_mpp (physical scale), then centre-cropped
    if larger than the tile or mirror-padded (numpy "symmetric") if smaller.
    """
    if not (source_mpp > 0 and target_mpp > 0):
        raise ValueError(f"mpp must be > 0, got source {source_mpp!r}, target {target_mpp!r}")
    scale = source_mpp / target_mpp
    height, width = rgb.shape[:2]
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    if (new_w, new_h) != (width, height):
        rgb = resize_rgb(np.ascontiguousarray(rgb), new_w, new_h)
    return _crop_or_pad(rgb, tile_size_px)


def list_patch_folder(root: Path) -> list[tuple[Path, int]]:
    """(image path, label) for every image in ``root/tumor`` (1) and ``root/normal`` (0).

    Raises ConfigError when ``root`` has neither folder.
    """
    items: list[tuple[Path, int]] = []
    check_readable_folder(root)
    for name, label in CLASS_FOLDERS.items():
        folder = root / name
        if folder.is_dir():
            check_readable_folder(folder)  # unread, a class would silently go missing
            items.extend(
                (p, label)
                for p in sorted(folder.rglob("*"))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
    if not items:
        raise ConfigError(
            f"{root}: no images in {root / 'tumor'} or {root / 'normal'}; a patch folder holds "
            f"tumor/ and normal/ subfolders of {', '.join(IMAGE_SUFFIXES)} files"
        )
    for path, _ in items:  # a bad image stops the run here, not in a reader process mid-epoch
        check_patch_header(path)
    return items


class PatchFolderDataset(Dataset[TileItem]):
    """Labelled patch images at ``patch_mpp`` µm/px, served as model tiles."""

    def __init__(
        self,
        items: Sequence[tuple[Path, int]],
        patch_mpp: float,
        tile_size_px: int,
        mpp: float,
        stain_normalization: str | None = None,
    ) -> None:
        self.items = list(items)
        self.patch_mpp = patch_mpp
        self.tile_size_px = tile_size_px
        self.mpp = mpp
        self.stain_normalization = stain_normalization

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> TileItem:
        path, label = self.items[index]
        tile = fit_to_tile(load_rgb(path), self.patch_mpp, self.mpp, self.tile_size_px)
        tile = normalize_stain(tile, self.stain_normalization)
        return torch.from_numpy(tile), label

    @property
    def labels(self) -> list[int]:
        """Label of every item, in order."""
        return [label for _, label in self.items]


class SlideTileDataset(Dataset[TileItem]):
    """Tiles centred on ``PatchSample`` centres, read on the fly at ``mpp`` µm/px.

    Each process (each DataLoader worker) opens its own slide handles on first use.
    slide_mpp: µm/px for slides whose metadata lacks it.
    """

    def __init__(
        self,
        samples: Sequence[PatchSample],
        tile_size_px: int,
        mpp: float,
        stain_normalization: str | None = None,
        slide_mpp: float | None = None,
    ) -> None:
        self.samples = list(samples)
        self.tile_size_px = tile_size_px
        self.mpp = mpp
        self.stain_normalization = stain_normalization
        self.slide_mpp = slide_mpp
        self._pid = -1
        self._slides: dict[str, Slide] = {}

    def __len__(self) -> int:
        return len(self.samples)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_slides"], state["_pid"] = {}, -1  # handles never cross process boundaries
        return state

    def _slide(self, path: str) -> Slide:
        if self._pid != os.getpid():
            self._slides, self._pid = {}, os.getpid()
        slide = self._slides.get(path)
        if slide is None:
            slide = SlideSource.for_path(path, self.slide_mpp, SLIDE_MPP_SETTING).open()
            self._slides[path] = slide
        return slide

    def read_tile(self, sample: PatchSample) -> NDArray[np.uint8]:
        """(T, T, 3) uint8 tile centred on the sample at the dataset's µm/px."""
        slide = self._slide(sample.slide)
        half_l0 = 0.5 * self.tile_size_px * self.mpp / slide.mpp
        x0, y0 = round(sample.x_px - half_l0), round(sample.y_px - half_l0)
        size = self.tile_size_px
        try:
            tile = slide.read_region_at_mpp(x0, y0, size, size, self.mpp)
        except MicrometError:
            self._slides.pop(sample.slide, None)  # the handle was closed after the error
            raise
        return normalize_stain(tile, self.stain_normalization)

    def __getitem__(self, index: int) -> TileItem:
        sample = self.samples[index]
        return torch.from_numpy(self.read_tile(sample)), sample.label

    @property
    def labels(self) -> list[int]:
        """Label of every sample, in order."""
        return [s.label for s in self.samples]

    def close(self) -> None:
        """Close this process's slide handles."""
        for slide in self._slides.values():
            slide.close()
        self._slides = {}


def _import_h5py() -> Any:
    try:
        import h5py  # type: ignore[import-not-found,import-untyped,unused-ignore]
    except ImportError as exc:
        raise ConfigError(
            "reading PatchCamelyon .h5 files needs h5py, which is not installed; "
            "run `pip install h5py` (or convert the patches to a tumor/ normal/ image folder)"
        ) from exc
    return h5py


def find_pcam_files(folder: Path) -> dict[str, tuple[Path, Path]]:
    """Split name ("train", "valid", "test") -> (x .h5, y .h5) found in ``folder``.

    Looks for ``camelyonpatch_level_2_split_<split>_x.h5`` and ``..._y.h5``. Raises
    ConfigError when the folder holds no complete pair.
    """
    found: dict[str, tuple[Path, Path]] = {}
    for split in PCAM_SPLITS:
        x_path = folder / f"camelyonpatch_level_2_split_{split}_x.h5"
        y_path = folder / f"camelyonpatch_level_2_split_{split}_y.h5"
        if x_path.is_file() and y_path.is_file():
            found[split] = (x_path, y_path)
    if not found:
        raise ConfigError(
            f"{folder}: no PatchCamelyon files camelyonpatch_level_2_split_<train|valid|test>"
            "_x.h5 / _y.h5 found"
        )
    return found


class PCamDataset(Dataset[TileItem]):
    """PatchCamelyon patches (HDF5 ``x``: (N, 96, 96, 3) uint8, ``y``: (N, 1, 1, 1)).

    Patches at ``pcam_mpp`` are brought to the model's ``mpp`` by physical scale, then
    centre-cropped or padded to ``tile_size_px``. The files are opened lazily per process.
    Raises ConfigError if h5py is missing or the files do not hold ``x`` / ``y``.
    """

    def __init__(
        self,
        x_path: Path,
        y_path: Path,
        tile_size_px: int,
        mpp: float,
        pcam_mpp: float = PCAM_MPP,
        stain_normalization: str | None = None,
    ) -> None:
        h5py = _import_h5py()
        self.x_path, self.y_path = x_path, y_path
        self.tile_size_px, self.mpp, self.pcam_mpp = tile_size_px, mpp, pcam_mpp
        self.stain_normalization = stain_normalization
        try:
            with h5py.File(y_path, "r") as handle:
                raw_labels = np.asarray(handle["y"]).reshape(-1)
            with h5py.File(x_path, "r") as handle:
                x_shape, x_dtype = tuple(handle["x"].shape), handle["x"].dtype
        except (OSError, KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"{x_path} / {y_path}: not PatchCamelyon HDF5 files with datasets 'x' and 'y' ({exc})"
            ) from exc
        _check_pcam_arrays(x_path, y_path, x_shape, x_dtype, raw_labels)
        self._labels = raw_labels.astype(np.int64)
        self._pid = -1
        self._file: Any = None

    def __len__(self) -> int:
        return len(self._labels)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"], state["_pid"] = None, -1
        return state

    def __getitem__(self, index: int) -> TileItem:
        if self._pid != os.getpid() or self._file is None:
            self._file, self._pid = _import_h5py().File(self.x_path, "r"), os.getpid()
        patch = np.asarray(self._file["x"][index], dtype=np.uint8)
        tile = fit_to_tile(patch, self.pcam_mpp, self.mpp, self.tile_size_px)
        tile = normalize_stain(tile, self.stain_normalization)
        return torch.from_numpy(tile), int(self._labels[index])

    @property
    def labels(self) -> list[int]:
        """Label of every patch, in order."""
        return [int(v) for v in self._labels]


def _check_pcam_arrays(
    x_path: Path, y_path: Path, x_shape: tuple[int, ...], x_dtype: Any, labels: NDArray[Any]
) -> None:
    """Raise ConfigError unless ``x`` is (N > 0, H, W, 3) uint8 and ``y`` holds N labels 0/1."""
    if len(x_shape) != 4 or x_shape[3] != 3 or x_dtype != np.uint8:
        raise ConfigError(
            f"{x_path}: 'x' is {x_dtype} of shape {x_shape}; PatchCamelyon patches are (N, 96, 96, 3) "
            "uint8 RGB (convert floats in [0, 1] with x * 255 and grey or RGBA patches to RGB first)"
        )
    if x_shape[0] == 0:
        raise ConfigError(f"{x_path}: holds 0 patches; remove the pair or point --pcam at full files")
    if x_shape[0] != len(labels):
        raise ConfigError(f"{x_path}: {x_shape[0]} patches but {y_path} has {len(labels)} labels")
    if labels.dtype.kind not in "biuf" or not np.isin(labels, (0, 1)).all():
        found = sorted({str(v) for v in np.unique(labels)[:5]})
        raise ConfigError(f"{y_path}: labels must be 0 (normal) or 1 (tumor); found {', '.join(found)}")


def check_both_classes(parts: Sequence[Dataset[TileItem]], what: str) -> None:
    """Raise ConfigError unless the datasets (each with ``labels``) hold tumor and normal tiles."""
    counts = np.bincount([label for part in parts for label in getattr(part, "labels", [])], minlength=2)
    if counts[0] == 0 or counts[1] == 0:
        raise ConfigError(
            f"{what} holds {counts[1]} tumor and {counts[0]} normal tiles; a tumor/normal classifier "
            "needs both (add tumor/ and normal/ patches, annotated slides, or normal slides)"
        )


class ArrayTileDataset(Dataset[TileItem]):
    """Tiles already in memory: (N, T, T, 3) uint8 with (N,) labels 0/1."""

    def __init__(self, tiles: NDArray[np.uint8], labels: NDArray[np.int64]) -> None:
        if tiles.ndim != 4 or tiles.shape[3] != 3 or len(tiles) != len(labels):
            raise ValueError(f"tiles {tiles.shape} and labels {labels.shape} do not match")
        self.tiles = torch.from_numpy(np.ascontiguousarray(tiles))
        self._labels = [int(v) for v in labels]

    def __len__(self) -> int:
        return len(self._labels)

    def __getitem__(self, index: int) -> TileItem:
        return self.tiles[index], self._labels[index]

    @property
    def labels(self) -> list[int]:
        """Label of every tile, in order."""
        return list(self._labels)


# --- training data --------------------------------------------------------------------------------


def slide_sources(data: DataConfig) -> list[AnnotatedSlide]:
    """The slides named in ``data`` with their annotation files (empty without slides)."""
    if not data.slides:
        return []
    return find_slides([Path(p) for p in data.slides], [Path(p) for p in data.annotations])


def build_datasets(
    settings: TrainSettings, samples: Sequence[PatchSample]
) -> tuple[Dataset[TileItem], Dataset[TileItem] | None]:
    """Training and validation datasets: slide tiles (training classes balanced by repeating
    the rarer one), patch folders and PatchCamelyon. Validation is None when empty."""
    t, data = settings.train, settings.data
    geometry = (t.tile_size_px, t.mpp, t.stain_normalization)
    train_parts: list[Dataset[TileItem]] = []
    val_parts: list[Dataset[TileItem]] = []
    train_samples = balance_classes([s for s in samples if s.split == "train"], t.seed)
    val_samples = [s for s in samples if s.split == "val"]
    for part, chosen in ((train_parts, train_samples), (val_parts, val_samples)):
        if chosen:
            part.append(SlideTileDataset(chosen, *geometry, slide_mpp=data.slide_mpp))
    patch_mpp = data.patch_mpp or 0.0
    for part, folders in ((train_parts, data.patches), (val_parts, data.val_patches)):
        for folder in folders:
            part.append(PatchFolderDataset(list_patch_folder(Path(folder)), patch_mpp, *geometry))
    for folder in data.pcam:
        files = find_pcam_files(Path(folder))
        for split, part in (("train", train_parts), ("valid", val_parts)):
            if split in files:
                part.append(
                    PCamDataset(
                        *files[split], t.tile_size_px, t.mpp, stain_normalization=t.stain_normalization
                    )
                )
    if not train_parts:
        raise ConfigError("no training tiles: every slide went to validation and no patches were given")
    check_both_classes(train_parts, "the training data")
    if val_parts and len({label for part in val_parts for label in getattr(part, "labels", [])}) < 2:
        log.warning("the validation data holds one class only: its AUC is undefined and best.pt is last.pt")
    return ConcatDataset(train_parts), (ConcatDataset(val_parts) if val_parts else None)


class ResumableSampler(DistributedSampler[int]):
    """DistributedSampler that can start part-way into an epoch (``start`` samples skipped)."""

    start = 0

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.start)


def make_loader(
    dataset: Dataset[TileItem],
    batch_size: int,
    num_workers: int,
    train: bool,
    epoch_seed: tuple[int, int],
    shard: tuple[int, int] = (0, 1),
    start_sample: int = 0,
) -> DataLoader[TileItem]:
    """A loader over shard (rank, world size): shuffled per (seed, epoch) when ``train``, in
    order otherwise; ``start_sample`` skips samples already seen this epoch (a resumed epoch)."""
    seed, epoch = epoch_seed
    rank, world_size = shard
    sampler = ResumableSampler(dataset, num_replicas=world_size, rank=rank, shuffle=train, seed=seed)
    sampler.set_epoch(epoch)
    sampler.start = start_sample
    drop_last = train and len(sampler) >= batch_size
    left_out = len(sampler) % batch_size if drop_last else 0
    if left_out and epoch == 0 and start_sample == 0:
        log.warning(
            "training: %d of the %d training patches sit out each epoch (a different %d each time, "
            "shuffled): the last incomplete batch is dropped so every step has %d patches; "
            "choose a --batch-size that divides %d to use them all",
            left_out, len(sampler), left_out, batch_size, len(sampler),
        )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.cuda.is_available(),
        generator=torch.Generator().manual_seed(seed * 100_003 + epoch),
    )
