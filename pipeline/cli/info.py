"""``micromet info SLIDE...``: what the slide access layer knows, as a table or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from pipeline.cli.values import mpp_float
from pipeline.errors import ConfigError, MicrometError, printable


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``info`` subcommand."""
    parser = subparsers.add_parser(
        "info",
        help="show slide metadata (format, size, levels, mpp, tissue fraction)",
        description="Show what micromet reads from each slide: format, dimensions, levels, "
        "downsamples, µm/px, objective power and tissue fraction.",
    )
    parser.add_argument(
        "slides", nargs="+", metavar="SLIDE", help="slide files (or a folder holding one DICOM series)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--mpp",
        type=mpp_float,
        default=None,
        help="µm/px for a slide whose metadata has none (refused beyond 1%% of the slide's own)",
    )
    parser.add_argument(
        "--force-mpp", action="store_true", help="use --mpp even where the slide records another µm/px"
    )
    parser.add_argument(
        "--qc", action="store_true", help="also run slide QC (H&E, stain, focus, tissue, lymph node)"
    )
    parser.add_argument("--no-tissue", action="store_true", help="skip tissue detection (faster)")
    parser.add_argument("--tile-px", type=int, default=None, help="also plan tiles of this size (px)")
    parser.add_argument("--tile-mpp", type=float, default=None, help="at this resolution (µm/px)")
    parser.set_defaults(run=run)


def describe_slide(
    path: str,
    mpp: float | None,
    with_tissue: bool,
    tiling: Any = None,
    force_mpp: bool = False,
    with_qc: bool = False,
) -> dict[str, Any]:
    """Metadata (tissue fraction, a tiling summary for a ``TilingConfig``, and slide QC with
    the default stain reference when ``with_qc``) of one slide."""
    from pipeline.config import TissueConfig
    from pipeline.slides.integrity import check_tile_tables
    from pipeline.slides.metadata import plausible_objective_power
    from pipeline.slides.qc import QCConfig, check_slide
    from pipeline.slides.slide import open_slide_for_user
    from pipeline.slides.tiling import plan_tiles
    from pipeline.slides.tissue import detect_tissue

    with open_slide_for_user(path, mpp, force_mpp) as slide:
        check_tile_tables(slide.path)  # a header whose levels claim more tiles than they hold
        facts = slide.info.to_dict()
        facts["objective_power"] = plausible_objective_power(slide.path, facts.get("objective_power"))
        if with_qc:
            facts["qc"] = check_slide(slide, detect_tissue(slide, TissueConfig()), QCConfig()).to_dict()
        if with_tissue or tiling is not None:
            tissue = detect_tissue(slide, TissueConfig())
            facts["tissue_fraction"] = round(tissue.tissue_fraction, 4)
            facts["tissue_area_mm2"] = round(tissue.tissue_area_mm2, 3)
        if tiling is not None:
            grid = plan_tiles(slide.dimensions, slide.mpp, tissue, tiling)
            facts["tiles"] = {
                "n_tiles": len(grid),
                "grid_rc": list(grid.grid_shape),
                "tile_size_px": tiling.tile_size_px,
                "tile_mpp": tiling.mpp,
                "tile_size_um": round(grid.tile_size_um, 2),
                "tile_size_l0_px": round(grid.tile_size_l0_px, 2),
            }
    return facts


def _mpp_text(facts: dict[str, Any]) -> str:
    """The µm/px and where it came from: the slide, or the user (with the slide's own value)."""
    text = f"{facts['mpp']:.4f} µm/px"
    if facts["mpp_source"] != "user":
        return f"{text} (from the slide)"
    own = facts.get("metadata_mpp")
    recorded = "the slide records none" if own is None else f"the slide records {own:.4f}"
    return f"{text} (given by the user; {recorded})"


def _computed_levels_text(facts: dict[str, Any]) -> str:
    """For a single-level file: which levels micromet computes from level 0."""
    computed = int(facts.get("computed_levels", 0))
    if computed == 0:
        return ""
    return f" (the file stores level 0 only; micromet computes the other {computed} from it)"


def format_table(facts: dict[str, Any]) -> str:
    """A readable block of one slide's facts."""
    levels = ", ".join(
        f"{w}x{h} (/{d:.4g})"
        for (w, h), d in zip(facts["level_dimensions"], facts["level_downsamples"], strict=True)
    )
    rows = [
        ("slide", facts["path"]),
        ("format", facts["vendor"]),
        ("dimensions", f"{facts['dimensions'][0]} x {facts['dimensions'][1]} px"),
        ("levels", f"{facts['level_count']}: {levels}" + _computed_levels_text(facts)),
        ("mpp", _mpp_text(facts)),
        ("objective", "unknown" if facts["objective_power"] is None else f"{facts['objective_power']:g}x"),
    ]
    if "tiles" in facts:
        t = facts["tiles"]
        rows.append(
            (
                "tiles",
                f"{t['n_tiles']} with tissue of a {t['grid_rc'][0]} x {t['grid_rc'][1]} grid "
                f"({t['tile_size_px']} px at {t['tile_mpp']:g} µm/px = {t['tile_size_um']:g} µm)",
            )
        )
    if "tissue_fraction" in facts:
        rows.append(("tissue", f"{facts['tissue_fraction']:.1%} ({facts['tissue_area_mm2']:.2f} mm²)"))
    if "qc" in facts:
        from pipeline.slides.qc import qc_line

        rows.append(("qc", qc_line(facts["qc"])))
    return "\n".join(f"{key:<11} {value}" for key, value in rows)


def run(args: argparse.Namespace) -> int:
    """Describe every slide; a failing slide is reported and the others continue."""
    from pipeline.config import TilingConfig

    if (args.tile_px is None) != (args.tile_mpp is None):
        raise ConfigError("--tile-px and --tile-mpp go together; pass both to plan tiles")
    tiling = None
    if args.tile_px is not None:
        try:
            tiling = TilingConfig(tile_size_px=args.tile_px, mpp=args.tile_mpp)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    results: list[dict[str, Any]] = []
    failures = 0
    for path in args.slides:
        try:
            results.append(
                describe_slide(path, args.mpp, not args.no_tissue, tiling, args.force_mpp, args.qc)
            )
        except MicrometError as exc:
            failures += 1
            print(f"micromet info: error: {printable(str(exc))}", file=sys.stderr)
            results.append({"path": path, "error": str(exc)})
    if args.json:
        print(json.dumps(results if len(results) > 1 else results[0], indent=2))
    else:
        print("\n\n".join(format_table(r) for r in results if "error" not in r))
    return 1 if failures else 0
