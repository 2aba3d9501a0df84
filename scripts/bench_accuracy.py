"""Synthetic accuracy benchmark: a fixed, seeded set of synthetic lymph nodes run end to end.

Slides cover negative, ITC-only, micro and macro nodes. Planted lesion diameters are drawn
from the real CAMELYON16 training outlines in ../shared/data/annotations/camelyon16_ncrf_json
(max Feret diameter at 0.243 µm/px) when that folder is present, so lesion sizes follow the
real distribution (most lesions are ITC-sized); otherwise from the published proportions.
Tissue and deposits are painted from real H&E texture (CAMELYON17 lymph-node tiles, CAMELYON16
tumor patches; ``--texture real``) when ../shared/data is present, else drawn (cartoon), which
the real-data default model does not recognise as tumor.
Runs `micromet infer` with the given model and `micromet evaluate` against the generator's
ground truth, and prints (or writes into docs/benchmarks.md) FROC, slide AUC, category
accuracy, size error and runtime.

    .venv/bin/python scripts/bench_accuracy.py --out bench_out/accuracy --write-docs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.batch.folder import read_manifest, read_report, report_path
from pipeline.config import CAMELYON_LEVEL0_MPP, SHARED_DATA_DIR

REPO = Path(__file__).resolve().parents[1]
SHARED_OUTLINES = SHARED_DATA_DIR / "annotations" / "camelyon16_ncrf_json"
SLIDE_MPP = 0.5
# Node categories of the benchmark slides, in order (CAMELYON16 has many small lesions).
NODE_PLAN = ("negative", "negative", "negative", "itc", "itc", "itc", "micro", "micro", "micro", "macro")
SECTION = "## Accuracy: synthetic benchmark (default model)"


def real_lesion_diameters_mm() -> np.ndarray:
    """Max Feret diameters (mm) of the CAMELYON16 training outlines, or a fallback mix."""
    sys.path.insert(0, str(REPO))
    import logging

    from pipeline.slides.annotations import max_feret_diameter_px, read_camelyon16_json

    # repaired outlines are fine here
    logging.getLogger("pipeline.slides.annotations").setLevel(logging.ERROR)
    diameters = []
    for path in sorted(SHARED_OUTLINES.glob("*.json")):
        for annotation in read_camelyon16_json(path):
            if annotation.label == "tumor":
                diameters.append(max_feret_diameter_px(annotation.vertices_xy) * CAMELYON_LEVEL0_MPP / 1000)
    if diameters:
        return np.asarray(diameters)
    rng = np.random.default_rng(0)  # published proportions: 1460 / 600 / 100 of 2162
    return np.concatenate(
        [rng.uniform(0.03, 0.2, 1460), rng.uniform(0.2, 2.0, 600), rng.uniform(2.0, 2.8, 100)]
    )


def plan_slides(seed: int) -> list[tuple[str, tuple[float, ...]]]:
    """(node category, planted diameters) per slide, drawn from the real size distribution."""
    rng = np.random.default_rng(seed)
    diameters = real_lesion_diameters_mm()
    pools = {
        "itc": diameters[(diameters >= 0.05) & (diameters <= 0.2)],
        "micro": diameters[(diameters > 0.25) & (diameters <= 1.8)],
        "macro": diameters[(diameters > 2.1) & (diameters <= 2.8)],
    }
    plan = []
    for category in NODE_PLAN:
        planted: list[float] = []
        if category != "negative":
            planted.append(float(rng.choice(pools[category])))
            extra = int(rng.integers(0, 3))  # smaller companions, as on real slides
            planted += [float(d) for d in rng.choice(pools["itc"], size=extra)]
        plan.append((category, tuple(round(d, 3) for d in planted)))
    return plan


def synthesise(
    folder: Path,
    seed: int,
    texture: str = "cartoon",
    texture_dir: Path | None = None,
    texture_background: str = "any",
) -> list[Path]:
    """Write the benchmark slides (cached: existing files are reused)."""
    from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (category, planted) in enumerate(plan_slides(seed)):
        side_px = 12000 if category == "macro" else 8000
        path = folder / f"bench_{index:02d}_{category}.tif"
        if not path.exists():
            config = SynthConfig(
                width_px=side_px,
                height_px=int(side_px * 0.8),
                mpp=SLIDE_MPP,
                seed=seed * 100 + index,
                deposits=tuple(PlantedDeposit(d) for d in planted),
                texture="real" if texture == "real" else "cartoon",
                texture_dir=texture_dir if texture == "real" else None,
                texture_background="negative-node" if texture_background == "negative-node" else "any",
            )
            generate_slide(config, path)
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> dict[str, object]:
    """Synthesise, infer, evaluate; returns the figures."""
    from pipeline.cli import main

    background = args.texture_background if args.texture == "real" else "any"
    slide_dir = args.out / f"slides_{args.texture}_{background}"  # one cache per texture
    slides = synthesise(slide_dir, args.seed, args.texture, args.texture_data, background)
    batch, evaluation = args.out / "batch", args.out / "evaluation"
    infer = ["infer", *map(str, slides), "--out", str(batch), "--overwrite"]
    if args.model:
        infer += ["--model", str(args.model)]
    if args.no_cascade:
        infer += ["--no-cascade"]
    started = time.perf_counter()
    infer_code = main(infer)
    seconds = time.perf_counter() - started
    main(["evaluate", "--batch", str(batch), "--truth-dir", str(slide_dir), "--out", str(evaluation)])
    result = json.loads((evaluation / "evaluation.json").read_text())
    manifest = read_manifest(batch)
    return {
        "evaluation": result,
        "seconds": seconds,
        "n_slides": len(slides),
        "texture": args.texture,
        "texture_background": background,
        "infer_exit": infer_code,
        "plan": plan_slides(args.seed),
        "model": next(
            iter(read_report(report_path(batch, s, e))["model"] for s, e in manifest.slides.items() if e.done)
        ),
    }


def _fmt(value: object) -> str:
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def render_markdown(figures: dict[str, object], command: str) -> str:
    """The docs/benchmarks.md section."""
    ev = figures["evaluation"]
    assert isinstance(ev, dict)
    froc, auc, nodes, sizes = (ev.get(k) or {} for k in ("froc", "auc", "node_categories", "deposit_sizes"))
    lines = [
        SECTION,
        "",
        f"Measured {time.strftime('%Y-%m-%d')} on {platform.processor() or platform.machine()}, "
        f"{len(figures['plan'])} synthetic slides at {SLIDE_MPP} µm/px "  # type: ignore[arg-type]
        "(node plan and planted diameters below; lesion sizes drawn from the real CAMELYON16 "
        f"outlines), texture `{figures['texture']}` ("
        + (
            "tissue and deposits painted from real CAMELYON17 lymph-node tiles "
            f"({figures['texture_background']}) and CAMELYON16 tumor patches, exact planted outlines"
            if figures["texture"] == "real"
            else "drawn cartoon cells"
        )
        + "). **Synthetic-data figures: they test the pipeline, not clinical accuracy.**",
        "",
        f"Command: `{command}`",
        "",
        "| metric | value |",
        "| --- | --- |",
        f"| FROC score (challenge rule) | {_fmt(froc.get('score_challenge_rule'))} |",
        f"| FROC score (interpolated) | {_fmt(froc.get('score_interpolated'))} |",
        f"| slide AUC (95% CI) | {_fmt(auc.get('auc'))} "
        f"({_fmt(auc.get('ci_low'))}-{_fmt(auc.get('ci_high'))}) |",
        f"| node category accuracy | {_fmt(nodes.get('accuracy'))} |",
        f"| deposit diameter MAE (mm) | {_fmt(sizes.get('mean_abs_error_mm'))} |",
        f"| deposit category accuracy (matched) | {_fmt(sizes.get('category_accuracy'))} |",
        f"| missed / spurious deposits | {sizes.get('n_missed')} / {sizes.get('n_spurious')} |",
        f"| end-to-end runtime | {figures['seconds']:.0f} s for {figures['n_slides']} slides |",  # type: ignore[str-format]
        "",
        "Slides: " + "; ".join(f"{c} {list(d)}" for c, d in figures["plan"]),  # type: ignore[attr-defined]
        "",
        f"Model: `{json.dumps(figures['model'])}`",
        "",
    ]
    if ev.get("skipped"):
        lines += [f"Not computed: {json.dumps(ev['skipped'])}", ""]
    return "\n".join(lines)


def write_docs_section(markdown: str) -> None:
    """Replace this benchmark's section in docs/benchmarks.md, keeping the others."""
    path = REPO / "docs" / "benchmarks.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if SECTION in text:
        before, rest = text.split(SECTION, 1)
        after = rest[rest.find("\n## ") :] if "\n## " in rest else ""
        text = before.rstrip() + "\n\n" + markdown + after
    else:
        text = text.rstrip() + "\n\n" + markdown
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=Path("bench_out/accuracy"))
    parser.add_argument("--seed", type=int, default=2016)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument(
        "--texture",
        choices=("real", "cartoon"),
        default=None,
        help="slide texture (default: real when the texture data folder exists, else cartoon)",
    )
    parser.add_argument(
        "--texture-data",
        type=Path,
        default=SHARED_DATA_DIR,
        metavar="DIR",
        help="reference data folder for real texture (default ../shared/data)",
    )
    parser.add_argument(
        "--texture-background",
        choices=("any", "negative-node"),
        default="negative-node",
        help="lymph-node tiles real tissue is painted from: negative-node (default: the negative "
        "node's tile only, so the ground truth is exact) or any (two come from ITC and macro "
        "nodes, whose tiles may hold tumor cells)",
    )
    parser.add_argument("--no-cascade", action="store_true", help="infer with --no-cascade: score every tile")
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args()
    if args.texture is None:
        args.texture = "real" if args.texture_data.is_dir() else "cartoon"
        if args.texture == "cartoon":
            print(
                f"warning: {args.texture_data} not found: cartoon slides, which the real-data "
                "default model does not recognise as tumor",
                file=sys.stderr,
            )
    if args.texture == "real" and not args.texture_data.is_dir():
        parser.error(f"--texture-data {args.texture_data}: folder not found (pass the reference data folder)")
    figures = run(args)
    command = "python scripts/bench_accuracy.py " + " ".join(sys.argv[1:])
    markdown = render_markdown(figures, command.strip())
    print(markdown)
    if args.write_docs:
        write_docs_section(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
