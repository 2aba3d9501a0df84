"""``micromet demo``: the whole job on the embedded default (synthetic slides, default model).

Synthesises one patient's three lymph nodes (negative, ITC + micro, macro), runs
``micromet infer`` on them with the default model, stages the patient, writes the static
HTML report, and prints the command that opens the viewer.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.errors import ConfigError

# (slide name, width px, height px, planted deposit diameters in mm), drawn at DEMO_MPP.
DEMO_MPP = 0.5
DEMO_SLIDES = (
    ("patient_000_node_0", 6000, 5000, ()),
    ("patient_000_node_1", 8000, 6400, (0.15, 0.8)),
    ("patient_000_node_2", 14000, 11000, (2.4, 0.6)),
)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``demo`` subcommand."""
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline on generated slides with the default model",
        description="Generate three synthetic lymph-node slides of one patient with planted "
        "ITC, micro- and macrometastases, score them with the default model, stage the "
        "patient and write the HTML report.",
    )
    parser.add_argument("--out", type=Path, default=Path("demo_out"), help="output folder")
    parser.add_argument("--seed", type=int, default=7, help="seed of the synthetic slides")
    parser.add_argument("--model", type=Path, default=None, help="checkpoint (default: models/default.pt)")
    parser.set_defaults(run=run)


def _synthesise(out_dir: Path, seed: int) -> list[Path]:
    from pipeline.synthetic import PlantedDeposit, SynthConfig, generate_slide

    slide_dir = out_dir / "slides"
    slide_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, width, height, diameters) in enumerate(DEMO_SLIDES):
        path = slide_dir / f"{name}.tif"
        if not path.exists():
            try:
                config = SynthConfig(
                    width_px=width,
                    height_px=height,
                    mpp=DEMO_MPP,
                    seed=seed + index,
                    deposits=tuple(PlantedDeposit(d) for d in diameters),
                )
            except ValueError as exc:
                raise ConfigError(f"demo slide {name}: {exc}") from exc
            generate_slide(config, path)
            print(f"synthesised {path} (planted: {', '.join(f'{d} mm' for d in diameters) or 'none'})")
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    """Synthesise, infer, stage, report; exit 1 if a step failed."""
    from pipeline.cli import main as cli_main

    out_dir: Path = args.out
    slides = _synthesise(out_dir, args.seed)
    batch = out_dir / "batch"
    infer_args = ["infer", *map(str, slides), "--out", str(batch)]
    if args.model is not None:
        infer_args += ["--model", str(args.model)]
    code = cli_main(infer_args)
    stage_code = cli_main(["stage", "--batch", str(batch), "--out", str(out_dir / "stages.csv")])
    report_code = cli_main(["report", str(batch), "--out", str(out_dir / "report.html")])
    print()
    print("ground truth beside each slide: " + ", ".join(str(p.with_suffix(".truth.json")) for p in slides))
    print(f"static report: {out_dir / 'report.html'} (open it in a browser)")
    print(f"review in the viewer: .venv/bin/micromet view {batch}")
    return 1 if (code or stage_code or report_code) else 0
