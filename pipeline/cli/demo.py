"""``micromet demo``: the whole job on the embedded default (synthetic slides, default model).

Synthesises one patient's three lymph nodes (negative, ITC + micro, macro), painted from real
H&E texture when the reference data folder is there (else drawn, with a warning), runs
``micromet infer`` on them with the default model, stages the patient, writes the static
HTML report, and prints the command that opens the viewer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Final

from pipeline.errors import ConfigError

# (slide name, width px, height px, planted deposit diameters in mm), drawn at DEMO_MPP.
# Real tissue comes from the one lymph-node tile of a node labelled negative, so no tumor is
# there but the planted deposits (the other tiles' nodes were labelled ITC and macro).
DEMO_TEXTURE_BACKGROUND: Final = "negative-node"
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
    parser.add_argument(
        "--texture-data",
        type=Path,
        default=None,
        metavar="DIR",
        help="reference data folder the slides' real tissue texture is read from (default: "
        "../shared/data beside the repository); without it the slides are drawn (cartoon)",
    )
    parser.set_defaults(run=run)


def choose_texture(texture_dir: Path | None) -> tuple[str, Path | None]:
    """("real", folder) when the reference data folder (or else the repository's demo texture
    pack, data/textures) exists, else ("cartoon", None) after a one-line warning on stderr
    that the default model does not recognise cartoon tumor.

    Raises ConfigError when a folder passed explicitly is missing."""
    from pipeline.synthetic.texture import default_texture_dir

    if texture_dir is not None and not texture_dir.is_dir():
        raise ConfigError(
            f"--texture-data {texture_dir}: folder not found; pass the reference data folder "
            "(with camelyon17_tiles/ and camelyon16_patches/), or leave the flag out"
        )
    folder = texture_dir if texture_dir is not None else default_texture_dir()
    if folder.is_dir():
        return "real", folder
    print(
        f"warning: {folder} not found, so the demo slides are drawn (cartoon texture); the default "
        "model learned real tumor and does not recognise cartoon tumor, so the demo's categories "
        "are not meaningful (pass --texture-data DIR with the reference data)",
        file=sys.stderr,
    )
    return "cartoon", None


def _is_current(path: Path, texture: str) -> bool:
    """Whether a demo slide from an earlier run exists with the wanted texture."""
    truth = path.with_name(f"{path.stem}.truth.json")
    background = DEMO_TEXTURE_BACKGROUND if texture == "real" else "any"
    try:
        data = json.loads(truth.read_text())
        return (
            path.exists()
            and data.get("texture", "cartoon") == texture
            and data.get("texture_background", "any") == background
        )
    except (OSError, ValueError, AttributeError):
        return False


def _synthesise(out_dir: Path, seed: int, texture: str, texture_dir: Path | None) -> list[Path]:
    from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide

    slide_dir = out_dir / "slides"
    slide_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, (name, width, height, diameters) in enumerate(DEMO_SLIDES):
        path = slide_dir / f"{name}.tif"
        if not _is_current(path, texture):
            try:
                config = SynthConfig(
                    width_px=width,
                    height_px=height,
                    mpp=DEMO_MPP,
                    seed=seed + index,
                    deposits=tuple(PlantedDeposit(d) for d in diameters),
                    texture="real" if texture == "real" else "cartoon",
                    texture_dir=texture_dir,
                    texture_background=DEMO_TEXTURE_BACKGROUND if texture == "real" else "any",
                )
            except ValueError as exc:
                raise ConfigError(f"demo slide {name}: {exc}") from exc
            generate_slide(config, path)
            planted = ", ".join(f"{d} mm" for d in diameters) or "none"
            print(f"synthesised {path} ({texture} texture; planted: {planted})")
        paths.append(path)
    return paths


def run(args: argparse.Namespace) -> int:
    """Synthesise, infer, stage, report; exit 1 if a step failed."""
    from pipeline.cli import main as cli_main
    from pipeline.models import load_checkpoint, resolve_model_path
    from pipeline.outputs import check_writable_folder

    out_dir: Path = args.out
    check_writable_folder(out_dir)  # a bad --out or --model stops here, not after minutes of synthesis
    load_checkpoint(resolve_model_path(args.model), "cpu")
    texture, texture_dir = choose_texture(args.texture_data)
    slides = _synthesise(out_dir, args.seed, texture, texture_dir)
    batch = out_dir / "batch"
    infer_args = ["infer", *map(str, slides), "--out", str(batch)]
    if args.model is not None:
        infer_args += ["--model", str(args.model)]
    code = cli_main(infer_args)
    if code:
        return code  # infer said why; stage and report would only repeat it
    stage_code = cli_main(["stage", "--batch", str(batch), "--out", str(out_dir / "stages.csv")])
    report_code = cli_main(["report", str(batch), "--out", str(out_dir / "report.html")])
    print()
    print("ground truth beside each slide: " + ", ".join(str(p.with_suffix(".truth.json")) for p in slides))
    print(f"static report: {out_dir / 'report.html'} (open it in a browser)")
    print(f"review in the viewer: .venv/bin/micromet view {batch}")
    return 1 if (code or stage_code or report_code) else 0
