"""``micromet synth --out DIR``: write a synthetic lymph-node slide with planted deposits."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError

if TYPE_CHECKING:
    from pipeline.synthetic.generate import SynthResult


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``synth`` subcommand."""
    parser = subparsers.add_parser(
        "synth",
        help="write a synthetic H&E lymph-node slide with planted tumor deposits",
        description="Write a synthetic pyramidal slide (tif or Aperio svs) with tumor deposits "
        "of known size, plus NAME.truth.json and NAME.xml (ASAP) ground truth.",
    )
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument("--width", type=int, default=8000, help="level-0 width in px (8000)")
    parser.add_argument("--height", type=int, default=6000, help="level-0 height in px (6000)")
    resolution = parser.add_mutually_exclusive_group()
    resolution.add_argument("--mpp", type=float, default=0.25, help="µm per px (0.25)")
    resolution.add_argument(
        "--no-mpp", action="store_true", help="write no resolution metadata (drawn at 0.25 µm/px)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (0)")
    parser.add_argument(
        "--deposit",
        type=float,
        action="append",
        default=[],
        metavar="MM",
        help="plant a deposit with this longest diameter in mm (repeatable)",
    )
    parser.add_argument("--format", choices=("tif", "svs"), default="tif", help="file format")
    parser.add_argument(
        "--texture",
        choices=("cartoon", "real"),
        default="cartoon",
        help="cartoon: drawn cells (default); real: tissue and deposits painted from real H&E "
        "texture (CAMELYON17 lymph-node tiles, CAMELYON16 tumor patches), mpp at most 1.0",
    )
    parser.add_argument(
        "--texture-data",
        type=Path,
        default=None,
        metavar="DIR",
        help="reference data folder for --texture real (default: ../shared/data beside the repository)",
    )
    parser.add_argument(
        "--texture-background",
        choices=("any", "negative-node"),
        default="any",
        help="lymph-node tiles real tissue is painted from: any (default) or negative-node (only "
        "the tile of the node labelled negative)",
    )
    parser.add_argument("--name", default=None, help="file stem (default synth_seedN)")
    parser.add_argument("--list", action="store_true", help="print the planted deposits")
    parser.set_defaults(run=run)


def format_deposits(result: SynthResult) -> str:
    """A table of the planted deposits: id, diameter, area, category, nuclei, centroid."""
    lines = [
        f"{'id':>3} {'diameter_mm':>11} {'area_mm2':>9} {'category':>8} "
        f"{'nuclei':>7} {'centroid_x':>10} {'centroid_y':>10}"
    ]
    for d in result.deposits:
        lines.append(
            f"{d.id:>3} {d.diameter_mm:>11.4f} {d.area_mm2:>9.4f} {d.category:>8} "
            f"{d.n_tumor_nuclei:>7} {d.centroid_xy[0]:>10.1f} {d.centroid_xy[1]:>10.1f}"
        )
    lines.append(f"node category: {result.node_category}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Build the config from the flags, generate the slide, print where it went."""
    from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide

    try:
        config = SynthConfig(
            width_px=args.width,
            height_px=args.height,
            mpp=None if args.no_mpp else args.mpp,
            seed=args.seed,
            deposits=tuple(PlantedDeposit(mm) for mm in args.deposit),
            format=args.format,
            texture=args.texture,
            texture_dir=args.texture_data,
            texture_background=args.texture_background,
        )
    except ValueError as exc:  # names the field, the value and the allowed range
        raise ConfigError(str(exc)) from exc
    name = args.name or f"synth_seed{args.seed}"
    if not name or "/" in name or "\\" in name:
        raise ConfigError(f"--name {name!r}: expected a plain file stem without folders")
    started = time.perf_counter()
    result = generate_slide(config, args.out / f"{name}.{args.format}")
    print(
        f"wrote {result.slide_path} ({config.width_px} x {config.height_px} px, "
        f"{len(result.level_dimensions)} levels, {len(result.deposits)} deposit(s), "
        f"{time.perf_counter() - started:.1f} s), {result.truth_path.name}, "
        f"{result.xml_path.name}"
    )
    if args.list:
        print(format_deposits(result))
    return 0
