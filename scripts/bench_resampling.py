"""How much a tile's score depends on how the slide's pixels were brought to the model's µm/px.

    python scripts/bench_resampling.py --models models/default.pt runs/other.pt

Takes the three real CAMELYON17 tiles (0.243 µm/px) and the 57 level-0 CAMELYON16 patches,
brings each to 0.972 µm/px in four ways that real readers use (micromet's box filter, PIL
bilinear, PIL Lanczos, and every 4th pixel as a reader without antialiasing does), cuts the
same 96 px grid tiles out of each, and prints per model the mean and largest absolute
difference of the tumor probability from micromet's own reading, with n.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import CAMELYON_LEVEL0_MPP, PCAM_MPP, SHARED_DATA_DIR, InferenceConfig  # noqa: E402
from pipeline.detection.inference import prepare_model  # noqa: E402
from pipeline.models import load_checkpoint  # noqa: E402
from pipeline.training.datasets import load_rgb  # noqa: E402

TILE_PX, STRIDE_PX = 96, 32
FACTOR = PCAM_MPP / CAMELYON_LEVEL0_MPP


def bring_to_model_mpp(rgb: NDArray[np.uint8], method: str) -> NDArray[np.uint8]:
    size = (round(rgb.shape[1] / FACTOR), round(rgb.shape[0] / FACTOR))
    if method == "nearest_every_4th":
        return np.ascontiguousarray(rgb[::4, ::4][: size[1], : size[0]])
    filters = {
        "box": Image.Resampling.BOX,
        "bilinear": Image.Resampling.BILINEAR,
        "lanczos": Image.Resampling.LANCZOS,
    }
    return np.asarray(Image.fromarray(rgb).resize(size, resample=filters[method]))


def grid_tiles(image: NDArray[np.uint8]) -> NDArray[np.uint8]:
    height, width = image.shape[:2]
    if height < TILE_PX or width < TILE_PX:
        padded = np.pad(
            image, ((0, max(0, TILE_PX - height)), (0, max(0, TILE_PX - width)), (0, 0)), "symmetric"
        )
        return padded[None, :TILE_PX, :TILE_PX]
    return np.stack(
        [
            image[y : y + TILE_PX, x : x + TILE_PX]
            for y in range(0, height - TILE_PX + 1, STRIDE_PX)
            for x in range(0, width - TILE_PX + 1, STRIDE_PX)
        ]
    )


def sources(data: Path) -> list[NDArray[np.uint8]]:
    images = [load_rgb(p) for p in sorted((data / "camelyon17_tiles").glob("*.jpeg"))]
    return images + [load_rgb(p) for p in sorted((data / "camelyon16_patches").rglob("*.png"))]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, nargs="+", default=[REPO / "models" / "default.pt"])
    parser.add_argument("--data", type=Path, default=SHARED_DATA_DIR)
    args = parser.parse_args(argv)
    methods = ("box", "bilinear", "lanczos", "nearest_every_4th")
    tiles = {
        m: np.concatenate([grid_tiles(bring_to_model_mpp(s, m)) for s in sources(args.data)]) for m in methods
    }
    print("| model | reading | n tiles | mean abs difference from box | largest |")
    print("| --- | --- | --- | --- | --- |")
    for path in args.models:
        model, card = load_checkpoint(path)
        scorer = prepare_model(model, card, InferenceConfig(device="cpu", precision="fp32")).scorer
        with torch.inference_mode():
            scores = {
                m: np.concatenate(
                    [scorer(torch.from_numpy(t[i : i + 256])).numpy() for i in range(0, len(t), 256)]
                )
                for m, t in tiles.items()
            }
        for method in methods[1:]:
            diff = np.abs(scores[method] - scores["box"])
            print(f"| {path} | {method} | {len(diff)} | {diff.mean():.4f} | {diff.max():.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
