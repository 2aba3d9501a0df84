"""Every deposit the outline and a low seed find on a scored node-scale part, with what a second
stage could decide by: one CSV row per deposit (dev part; issue 21 item 2); and the second stage
fitted on them (``pipeline.deposits.decide.ConfirmModel``).

    python scripts/node_scale_candidates.py collect --work runs/ns_default --part dev --seed 0.7
    python scripts/node_scale_candidates.py fit --work runs/ns_default [--write-card]

``fit`` chooses the seed and the second stage's threshold on the dev part: the most ITC-size
deposits found with at most DEV_FALSE_PER_MM2 false deposits per mm² (a quarter of issue 21's
target: the test part's rate has been 3-4x the dev part's in every run), micro sensitivity at
least 0.95 and at most MAX_CANDIDATES_PER_MM2 candidates for review on tumor-free tissue (what a
reviewer is asked to look at), judged on out-of-fold probabilities (5 folds by surface); the
weights written are a fit on every dev deposit the chosen seed keeps.

Columns: the surface, whether the deposit matches a pasted true deposit (and that deposit's
true size), its measured size, heatmap figures (max / mean probability, cells, the mean
probability of a ring 64-160 µm around it), the 8-pose rescoring of its best cells (mean of the
best cell, and its lowest pose) and nuclear figures of the best cell's central 48 px
(``pipeline.slides.nuclei``: nuclei, tumor-like nuclei, median area and hematoxylin OD).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_node_scale import grid_stride_px, load_surfaces, make_scorer  # noqa: E402
from node_scale_report import (  # noqa: E402
    APART_SURFACES,
    MATCH_REACH_PX,
    dihedral_scorer,
    heatmap_for,
    matches,
    rules_from_card,
    write_card,
)

from pipeline.deposits.cells import tumor_like  # noqa: E402
from pipeline.deposits.confirm import MIN_SIZE_MM, ConfirmModel  # noqa: E402
from pipeline.deposits.decide import best_cell_poses  # noqa: E402
from pipeline.deposits.measure import find_deposits, keep_seeded  # noqa: E402
from pipeline.slides.nuclei import measure_nuclei  # noqa: E402

CENTRE_PX = 48
RING_UM = (64.0, 160.0)


def nuclear_figures(tile: NDArray[np.uint8], mpp: float) -> dict[str, float]:
    margin = (tile.shape[0] - CENTRE_PX) // 2
    centre = tile[margin : margin + CENTRE_PX, margin : margin + CENTRE_PX]
    area, od = measure_nuclei(centre, mpp)
    big = area >= 20.0
    like = tumor_like(area, od)
    return {
        "nuclei": float(big.sum()),
        "tumor_like": float(like.sum()),
        "nucleus_area_um2": float(np.median(area[big])) if big.any() else 0.0,
        "nucleus_od": float(np.median(od[big])) if big.any() else 0.0,
        "nuclear_fraction": float(area[big].sum() / (CENTRE_PX * mpp) ** 2),
    }


def ring_mean(values: NDArray[np.float32], row: float, col: float, cell_um: float) -> float:
    rows, cols = np.indices(values.shape)
    distance = np.hypot(rows - row, cols - col) * cell_um
    ring = (distance >= RING_UM[0]) & (distance <= RING_UM[1])
    return float(np.nanmean(values[ring])) if ring.any() else float("nan")


def collect(args: argparse.Namespace) -> int:
    folder = args.work / args.part
    model_path = Path(json.loads((folder / "model.json").read_text(encoding="utf-8"))["model"])
    score, _, card = make_scorer(model_path)
    tile_px, stride_px = card.tile_size_px, grid_stride_px(folder, card)
    rules = dataclasses.replace(rules_from_card(card), seed_threshold=args.seed)
    rows: list[dict[str, object]] = []
    truths: list[float] = []
    negative_mm2 = 0.0
    for surface, values in load_surfaces(folder):
        if surface.name in APART_SURFACES:
            continue
        truths += [t.diameter_mm for t in surface.truth]
        truth_mm2 = sum(float(t.mask.sum()) for t in surface.truth) * (surface.mpp / 1000) ** 2
        negative_mm2 += surface.area_mm2 - truth_mm2
        heatmap = heatmap_for(surface, values, tile_px, stride_px)
        poses_of = dihedral_scorer(surface, tile_px, score)
        found = keep_seeded(find_deposits(heatmap, rules.threshold, calibration=rules.size), args.seed)
        for deposit in found:
            truth = [t for t in surface.truth if matches(deposit, t.mask, max(stride_px, MATCH_REACH_PX))]
            best = best_cell_poses(heatmap, deposit, rules.threshold, poses_of)
            assert best is not None  # a seeded deposit has cells at or above the outline threshold
            corner, poses = best
            x, y = int(corner[0]), int(corner[1])
            col, row = (x / stride_px), (y / stride_px)
            rows.append({
                "surface": surface.name,
                "true": int(bool(truth)),
                "true_mm": truth[0].diameter_mm if truth else "",
                "measured_mm": round(deposit.max_diameter_mm, 4),
                "max_prob": round(deposit.max_probability, 4),
                "mean_prob": round(deposit.mean_probability, 4),
                "cells": round(deposit.area_mm2 / (stride_px * surface.mpp / 1000) ** 2),
                "ring_prob": round(ring_mean(values, row, col, stride_px * surface.mpp), 4),
                "confirm": round(float(poses.mean()), 4),
                "pose_min": round(float(poses.min()), 4),
                **{k: round(v, 4) for k, v in nuclear_figures(
                    surface.image[y : y + tile_px, x : x + tile_px], surface.mpp).items()},
            })  # fmt: skip
    out = args.out or folder / "candidates.csv"
    with out.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    facts = {"seed_floor": args.seed, "negative_mm2": negative_mm2, "true_mm": truths}
    out.with_suffix(".json").write_text(json.dumps(facts), encoding="utf-8")
    print(f"{len(rows)} deposits ({sum(int(r['true']) for r in rows)} true) -> {out}")
    return 0


DEV_FALSE_PER_MM2 = 0.05
MAX_CANDIDATES_PER_MM2 = 1.0
MIN_MICRO_SENSITIVITY = 0.95
SEEDS = (0.7, 0.75, 0.8, 0.85, 0.9)
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.95, 0.02))
ITC_BAND_MM, MICRO_BAND_MM = (0.045, 0.2), (0.2, 2.0)


def _features(rows: list[dict[str, str]]) -> NDArray[np.float64]:
    return np.array(
        [[float(r["confirm"]), float(r["pose_min"]), np.log(max(float(r["measured_mm"]), MIN_SIZE_MM))]
         for r in rows]
    )  # fmt: skip


def _figures(rows: list[dict[str, str]], keep: NDArray[np.bool_], facts: dict) -> dict[str, float]:  # type: ignore[type-arg]
    """false per mm², ITC-size and micro sensitivity of the deposits kept (one truth per surface)."""
    kept = [r for r, k in zip(rows, keep, strict=True) if k]
    found = {r["surface"]: float(r["true_mm"]) for r in kept if r["true"] == "1"}
    false = sum(r["true"] == "0" for r in kept)
    candidates = sum(r["true"] == "0" for r in rows) - false
    truths = np.array(facts["true_mm"])

    def share(band: tuple[float, float]) -> float:
        n = int(((truths > band[0]) & (truths <= band[1])).sum())
        return sum(band[0] < t <= band[1] for t in found.values()) / max(n, 1)

    return {"false_per_mm2": false / facts["negative_mm2"], "false": false,
            "candidates_per_mm2": candidates / facts["negative_mm2"],
            "itc_sensitivity": share(ITC_BAND_MM), "micro_sensitivity": share(MICRO_BAND_MM)}  # fmt: skip


def fit(args: argparse.Namespace) -> int:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold

    table = args.work / "dev" / "candidates.csv"
    with table.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    facts = json.loads(table.with_suffix(".json").read_text(encoding="utf-8"))
    best: tuple[tuple[float, float], float, float, dict[str, float]] | None = None
    for seed in (s for s in SEEDS if s >= facts["seed_floor"]):
        pool = [r for r in rows if float(r["max_prob"]) >= seed]
        x, y = _features(pool), np.array([int(r["true"]) for r in pool])
        held_out = np.zeros(len(pool))
        for train, test in GroupKFold(5).split(x, y, [r["surface"] for r in pool]):
            fold = LogisticRegression(max_iter=1000).fit(x[train], y[train])
            held_out[test] = fold.predict_proba(x[test])[:, 1]
        for threshold in THRESHOLDS:
            keep = (held_out >= threshold) | (np.array([float(r["measured_mm"]) for r in pool]) > 0.2)
            figures = _figures(pool, keep, facts)
            ok = (
                figures["false_per_mm2"] <= DEV_FALSE_PER_MM2
                and figures["micro_sensitivity"] >= MIN_MICRO_SENSITIVITY
                and figures["candidates_per_mm2"] <= MAX_CANDIDATES_PER_MM2
            )
            shown = ", ".join(f"{k} {v:.3f}" for k, v in figures.items())
            print(f"seed {seed} threshold {threshold}: {shown}")
            key = (figures["itc_sensitivity"], -figures["false_per_mm2"])
            if ok and (best is None or key > best[0]):
                best = (key, seed, threshold, figures)
    if best is None:
        raise SystemExit(f"no seed and threshold met {DEV_FALSE_PER_MM2} false deposits per mm² on dev")
    _, seed, threshold, figures = best
    pool = [r for r in rows if float(r["max_prob"]) >= seed]
    model = LogisticRegression(max_iter=1000).fit(_features(pool), [int(r["true"]) for r in pool])
    stage = ConfirmModel(float(model.intercept_[0]), *(float(w) for w in model.coef_[0]), threshold)
    out = {"seed_threshold": seed, "confirm_model": stage.to_dict(), "dev_out_of_fold": figures,
           "dev_false_per_mm2_allowed": DEV_FALSE_PER_MM2,
           "dev_candidates_per_mm2_allowed": MAX_CANDIDATES_PER_MM2}  # fmt: skip
    (args.work / "dev" / "confirm_model.json").write_text(json.dumps(out, indent=1), encoding="utf-8")
    print(json.dumps(out))
    if args.write_card:
        model_path = Path(json.loads((args.work / "dev" / "model.json").read_text(encoding="utf-8"))["model"])
        write_card(model_path, {"seed_threshold": seed, "confirm_model": stage.to_dict()}, {})
        print(f"wrote the seed and the second stage into {model_path}'s card")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("collect", "fit"))
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--part", choices=("dev", "test"), default="dev")
    parser.add_argument("--seed", type=float, default=0.7, help="collect: the lowest seed kept")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--write-card", action="store_true", help="fit: write into the model's card")
    args = parser.parse_args()
    return collect(args) if args.command == "collect" else fit(args)


if __name__ == "__main__":
    raise SystemExit(main())
