"""Node-scale benchmark on real tissue: false deposits per mm², detection and size per size class.

    python scripts/bench_node_scale.py score --part dev  [--model models/default.pt] [--work runs/node_scale]
    python scripts/bench_node_scale.py report --part test [--write-docs]
    python scripts/bench_node_scale.py combine --work runs/a --with runs/b --out runs/ab --model PAIRED.pt

``score`` builds the surfaces of one part of the place split (data/pcam_places.csv; dev for
every choice, test reported once) from real material only and scores every tile of each with the
model (the pipeline's prepared model and precision), caching image, heatmap and truth under
--work. ``report`` turns the cached heatmaps into deposits with the pipeline's own deposit code
(``pipeline.deposits.decide``: outline, seed, confirmation, size calibration) and prints the
figures (Markdown), optionally into docs/benchmarks.md and the card's metrics (--write-card).
A model whose card names a partner (``pipeline.models.partner``) is scored as ``infer`` scores
it: the average of both models' heatmaps. ``combine`` makes the same average from two parts
already scored with each model alone (same surfaces, checked pixel for pixel), for --model.

Material (all real, none trained on: the train part of the split never appears):
- negative surfaces: feathered mosaics of the part's PCam normal patches (each patch used once
  per mosaic, random dihedral pose, 16 px blended seams) and, for the test part, the untrained
  right half of the CAMELYON17 centre-3 tile (a negative node); the centre-1 and centre-4 tiles
  (nodes labelled ITC and macro) are reported apart;
- positive surfaces: a deposit of real tumor (the part's PCam tumor patches' central 48 px, and
  for the test part the level-0 CAMELYON16 tumor patches brought to 0.972 µm/px) pasted into a
  mosaic of the part's normals, disc / ellipse / irregular, 0.03-3 mm, at a random offset from the
  heatmap grid, edge blended over 2 µm.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import CAMELYON_LEVEL0_MPP, PCAM_MPP, SHARED_DATA_DIR  # noqa: E402
from pipeline.evaluation.node_scale import (  # noqa: E402
    SHAPES,
    Surface,
    TrueDeposit,
    deposit_mask,
    feathered_mosaic,
    heatmap_of_surface,
    paste_deposit,
)
from pipeline.training.datasets import fit_to_tile, load_rgb  # noqa: E402
from pipeline.training.pcam_split import node_scale_rows  # noqa: E402

SHARED_DATA = SHARED_DATA_DIR
PLACES_CSV = REPO / "data" / "pcam_places.csv"
MODEL_MPP = PCAM_MPP
C16_MPP = C17_MPP = CAMELYON_LEVEL0_MPP
# (true largest dimension mm, placements): ITC-size 0.05-0.2 mm is the hard, common case
SIZES_MM = (
    (0.03, 8), (0.05, 12), (0.08, 12), (0.10, 16), (0.15, 16), (0.19, 12),
    (0.25, 16), (0.5, 8), (1.0, 6), (1.9, 6), (2.1, 6), (3.0, 2),
)  # fmt: skip
MARGIN_MM = 0.15
NEGATIVE_MOSAICS = 3
NEGATIVE_SIDE_MM = 2.2


def part_patches(part: str, data: Path) -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """(normal patches (N, 96, 96, 3), tumor pieces (M, 48, 48, 3)) of one part of the split."""
    normals, tumors = [], []
    for row in node_scale_rows(part, PLACES_CSV):
        rgb = load_rgb(data / row["source"] / row["file"])
        (tumors if row["label"] == "1" else normals).append(rgb[24:72, 24:72] if row["label"] == "1" else rgb)
    if part == "test":
        for path in sorted((data / "camelyon16_patches" / "tumor").glob("*.png")):
            tumors.append(fit_to_tile(load_rgb(path), C16_MPP, MODEL_MPP, 64)[8:56, 8:56])
    return np.stack(normals), np.stack(tumors)


def c17_half(data: Path, stem: str, right_half: bool) -> NDArray[np.uint8]:
    rgb = load_rgb(data / "camelyon17_tiles" / f"{stem}.jpeg")
    side = round(rgb.shape[0] * C17_MPP / MODEL_MPP)
    image = fit_to_tile(rgb, C17_MPP, MODEL_MPP, side)
    return image[:, side // 2 :] if right_half else image


def part_normal_places(part: str) -> list[str]:
    """The place (data/pcam_places.csv) of each of ``part_patches``' normal patches, in order."""
    return [row["place"] for row in node_scale_rows(part, PLACES_CSV) if row["label"] != "1"]


def build_surfaces(
    part: str, data: Path, seed: int, grids: dict[str, NDArray[np.int64]] | None = None
) -> list[Surface]:
    """Every surface of one part (module docs), seeded. grids: when given, receives for each
    surface the normal patch index at each position of its mosaic (``owner_map``)."""
    rng = np.random.default_rng(seed)
    normals, tumors = part_patches(part, data)
    side_px = round(NEGATIVE_SIDE_MM * 1000 / MODEL_MPP)
    placed: list[NDArray[np.int64]] = []
    surfaces = []
    for i in range(NEGATIVE_MOSAICS):
        image = feathered_mosaic(normals, (side_px, side_px), rng, placed=placed)
        surfaces.append(Surface(f"negative_mosaic_{i}", image, MODEL_MPP, ()))
        if grids is not None:
            grids[surfaces[-1].name] = placed[-1]
    if part == "test":
        surfaces.append(
            Surface(
                "c17_centre_3_right_half", c17_half(data, "centre_3_patient_066_node_1", True), MODEL_MPP, ()
            )
        )
    for diameter_mm, placements in SIZES_MM:
        for index in range(placements):
            shape = SHAPES[index % len(SHAPES)]
            mask = deposit_mask(shape, diameter_mm, MODEL_MPP, rng)
            side = mask.shape[0] + 2 * round(MARGIN_MM * 1000 / MODEL_MPP)
            background = feathered_mosaic(normals, (side, side), rng, placed=placed)
            tumor = feathered_mosaic(tumors, (side, side), rng, feather_px=8)
            offset = rng.integers(-16, 17, size=2)
            centre = (side // 2 + int(offset[0]), side // 2 + int(offset[1]))
            image, truth = paste_deposit(background, tumor, mask, centre, MODEL_MPP, shape)
            surfaces.append(
                Surface(f"deposit_{diameter_mm:.2f}mm_{shape}_{index}", image, MODEL_MPP, (truth,))
            )
            if grids is not None:
                grids[surfaces[-1].name] = placed[-1]
    return surfaces


def apart_surfaces(data: Path) -> list[Surface]:
    """The centre-1 and centre-4 tiles (nodes labelled ITC and macro), reported apart."""
    return [
        Surface("c17_centre_1_itc_node", c17_half(data, "centre_1_patient_024_node_2", False), MODEL_MPP, ()),
        Surface(
            "c17_centre_4_macro_node", c17_half(data, "centre_4_patient_097_node_3", False), MODEL_MPP, ()
        ),
    ]


def make_scorer(model_path: Path):  # type: ignore[no-untyped-def]
    """(tile scorer, region scorer or None, card) of a checkpoint (``pipeline.benchmarks.scorers``)."""
    from pipeline.benchmarks.scorers import checkpoint_scorers

    return checkpoint_scorers(model_path)


def grid_stride_px(folder: Path, card) -> int:  # type: ignore[no-untyped-def]
    """The heatmap stride a part was scored at (model.json), the card's by default."""
    settings = json.loads((folder / "model.json").read_text(encoding="utf-8"))
    return int(settings.get("stride_px") or card.stride_px or 32)


def save_surface(folder: Path, surface: Surface, heatmap_values: NDArray[np.float32]) -> None:
    truth = [
        {"diameter_mm": t.diameter_mm, "shape": t.shape, "centre_rc": list(t.centre_rc)}
        for t in surface.truth
    ]
    masks = np.stack([t.mask for t in surface.truth]) if surface.truth else np.zeros((0, 1, 1), bool)
    np.savez_compressed(
        folder / f"{surface.name}.npz", image=surface.image, heatmap=heatmap_values, masks=masks,
        truth=json.dumps(truth), mpp=surface.mpp,
    )  # fmt: skip


def load_surfaces(folder: Path) -> list[tuple[Surface, NDArray[np.float32]]]:
    out = []
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as npz:
            truth = json.loads(str(npz["truth"]))
            deposits = tuple(
                TrueDeposit(npz["masks"][i], t["diameter_mm"], t["shape"], tuple(t["centre_rc"]))
                for i, t in enumerate(truth)
            )
            surface = Surface(path.stem, npz["image"], float(npz["mpp"]), deposits)
            out.append((surface, npz["heatmap"].astype(np.float32)))
    return out


def _partner_scorers(model_path: Path):  # type: ignore[no-untyped-def]
    """(tile scorer, region scorer or None) of the card's partner model, or None without one."""
    from pipeline.models import read_card
    from pipeline.models.partner import load_partner, partner_path

    card = read_card(model_path)
    if load_partner(model_path, card) is None:  # checks file, SHA-256 and geometry
        return None
    score, score_region, _ = make_scorer(partner_path(model_path, card))  # type: ignore[arg-type]
    return score, score_region


def score_part(args: argparse.Namespace) -> int:
    folder = args.work / args.part
    folder.mkdir(parents=True, exist_ok=True)
    score, score_region, card = make_scorer(args.model)
    partner = _partner_scorers(args.model)
    model_stride = card.stride_px or 32
    stride = args.stride_px or model_stride
    surfaces = build_surfaces(args.part, args.data, args.seed)
    if args.part == "test":
        surfaces += apart_surfaces(args.data)
    started, n_tiles = time.perf_counter(), 0
    for surface in surfaces:
        heatmap = heatmap_of_surface(
            surface.image, surface.mpp, card.tile_size_px, stride, score,
            region_score=score_region, model_stride_px=model_stride,
        )  # fmt: skip
        values = heatmap.probabilities
        if partner is not None:
            other = heatmap_of_surface(
                surface.image, surface.mpp, card.tile_size_px, stride, partner[0],
                region_score=partner[1], model_stride_px=model_stride,
            )  # fmt: skip
            values = (values + other.probabilities) / np.float32(2.0)
        n_tiles += values.size
        save_surface(folder, surface, values)
    settings = {"model": str(args.model), "stride_px": stride, "dense": score_region is not None,
                "seed": args.seed}  # fmt: skip
    (folder / "model.json").write_text(json.dumps(settings), encoding="utf-8")
    how, seconds = ("dense" if score_region else "tile by tile"), time.perf_counter() - started
    print(f"{len(surfaces)} surfaces, {n_tiles} tiles ({how}) in {seconds:.0f} s -> {folder}")
    return 0


def _settings(folder: Path) -> dict[str, object]:
    return dict(json.loads((folder / "model.json").read_text(encoding="utf-8")))


def combine_parts(args: argparse.Namespace) -> int:
    """The average of two scored copies of the same surfaces, as the model --model names."""
    if args.other is None or args.out is None:
        raise SystemExit("combine needs --with (a second --work) and --out")
    for part in ("dev", "test"):
        mine, theirs = args.work / part, args.other / part
        if not (mine / "model.json").is_file() or not (theirs / "model.json").is_file():
            continue
        strides = {
            json.loads((f / "model.json").read_text(encoding="utf-8"))["stride_px"] for f in (mine, theirs)
        }
        other = {s.name: (s, v) for s, v in load_surfaces(theirs)}
        out = args.out / part
        out.mkdir(parents=True, exist_ok=True)
        for surface, values in load_surfaces(mine):
            twin, twin_values = other[surface.name]
            if (
                len(strides) != 1
                or not np.array_equal(surface.image, twin.image)
                or twin_values.shape != values.shape
            ):
                raise SystemExit(f"{part}/{surface.name}: the two runs did not score the same surface")
            save_surface(out, surface, (values + twin_values) / np.float32(2.0))
        settings = {"model": str(args.model), "stride_px": strides.pop(), "dense": False,
                    "combined": [str(mine), str(theirs)]}  # fmt: skip
        (out / "model.json").write_text(json.dumps(settings), encoding="utf-8")
        print(f"{part}: {len(other)} surfaces averaged -> {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("score", "calibrate", "report", "combine"))
    parser.add_argument("--part", choices=("dev", "test"), default="dev")
    parser.add_argument("--model", type=Path, default=REPO / "models" / "default.pt")
    parser.add_argument("--data", type=Path, default=SHARED_DATA)
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "node_scale")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--stride-px",
        type=int,
        default=None,
        help="score: heatmap stride px (default: the card's, which it must divide)",
    )
    parser.add_argument(
        "--write-card", action="store_true", help="write rules / figures into the model's card"
    )
    parser.add_argument(
        "--rules", type=Path, default=None, help="report: a calibration.json instead of the card"
    )
    parser.add_argument("--with", dest="other", type=Path, default=None, help="combine: the second --work")
    parser.add_argument("--out", type=Path, default=None, help="combine: the --work of the average")
    args = parser.parse_args(argv)
    if args.command == "score":
        return score_part(args)
    if args.command == "combine":
        return combine_parts(args)
    from node_scale_report import calibrate, report  # the figures, beside this script

    return calibrate(args) if args.command == "calibrate" else report(args)


if __name__ == "__main__":
    raise SystemExit(main())
