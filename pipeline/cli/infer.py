"""``micromet infer SLIDES... --out DIR``: heatmaps, deposits, categories and exports per slide."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.batch.folder import MANIFEST_JSON, STATUS_FAILED, SUMMARY_CSV
from pipeline.cli.values import mpp_float, plain_float
from pipeline.errors import ConfigError, MicrometError, printable
from pipeline.models.device import PRECISIONS

if TYPE_CHECKING:
    from pipeline.batch.distributed import RayOptions


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``infer`` subcommand."""
    parser = subparsers.add_parser(
        "infer",
        help="score slides: heatmaps, measured deposits, ITC/micro/macro, exports",
        description="Score every slide with a tile classifier and write, per slide, a heatmap, "
        "an overlay PNG, measured deposits with their category, report.json and exports "
        "(QuPath GeoJSON, ASAP XML, CAMELYON16 CSV). Re-running resumes; failures are "
        "recorded in OUT/manifest.json and the batch carries on.",
    )
    parser.add_argument("slides", nargs="+", metavar="SLIDE", help="slide files, folders or globs")
    parser.add_argument("--out", required=True, type=Path, help="output folder for the batch")
    add_model_options(parser)
    parser.add_argument("--overwrite", action="store_true", help="recompute finished slides")
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="no progress on stderr (default: live bars on a terminal, plain lines otherwise)",
    )
    parser.add_argument(
        "--patients",
        type=Path,
        default=None,
        metavar="CSV",
        help="CSV 'slide,patient' (other columns ignored): kept as OUT/patients.csv, so "
        "report.html and the viewer show each patient's pN stage",
    )
    ray = parser.add_argument_group("distributed (Ray)")
    ray.add_argument(
        "--ray", metavar="auto|ADDRESS", default=None, help="run on a Ray cluster (pip install micromet[ray])"
    )
    ray.add_argument("--gpus-per-slide", type=float, default=None, help="GPUs each slide task asks for")
    ray.add_argument("--cpus-per-slide", type=float, default=None, help="CPUs each slide task asks for")
    parser.set_defaults(run=run)


def add_model_options(parser: argparse.ArgumentParser) -> None:
    """Options shared by every command that runs the slide pipeline."""
    parser.add_argument(
        "--model", type=Path, default=None, help="checkpoint file (default: models/default.pt)"
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with [tissue] [tiling] [inference] [deposits] [qc] sections",
    )
    parser.add_argument(
        "--mpp",
        type=mpp_float,
        default=None,
        help="µm/px of every slide whose metadata has none; refused where it differs from a "
        "slide's own value by more than 1%% unless --force-mpp",
    )
    parser.add_argument(
        "--mpp-csv",
        type=Path,
        default=None,
        metavar="CSV",
        help="CSV 'slide,mpp': each slide's own µm/px (slide id or file name), checked like --mpp",
    )
    parser.add_argument(
        "--force-mpp",
        action="store_true",
        help="use --mpp / --mpp-csv even where the slide records a different µm/px",
    )
    parser.add_argument(
        "--accept-qc-failures",
        action="store_true",
        default=None,
        help="score slides that fail slide QC (not H&E, stain, focus, tissue, not lymph node); "
        "their category then carries the QC warning",
    )
    parser.add_argument(
        "--no-tissue",
        action="store_true",
        dest="whole_slide",
        help="score every tile of the slide, not only detected tissue (e.g. fluorescence)",
    )
    parser.add_argument("--device", default=None, help="auto (default), cpu, cuda[:N] or mps")
    parser.add_argument("--batch-size", type=int, default=None, help="tiles per model batch")
    parser.add_argument("--workers", type=int, default=None, dest="num_workers", help="reader processes")
    parser.add_argument(
        "--region-tiles", type=int, default=None, help="model tiles per side of one slide read"
    )
    parser.add_argument("--precision", choices=PRECISIONS, default=None)
    parser.add_argument("--compile", action="store_true", default=None, help="use torch.compile")
    parser.add_argument(
        "--cascade",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="screen one tile per block first and score densely only near suspicious screen tiles "
        "(the default; --no-cascade scores every tile; see docs/benchmarks.md, Cascade)",
    )
    parser.add_argument(
        "--cascade-screen-threshold",
        type=plain_float,
        default=None,
        help="screen probability that sends a block to dense scoring (0.2)",
    )
    parser.add_argument(
        "--threshold",
        type=plain_float,
        default=None,
        help="tumor probability threshold for deposits (default: the model card's)",
    )
    parser.add_argument(
        "--seed-threshold",
        type=plain_float,
        default=None,
        help="a deposit is kept only if one of its cells reaches this probability "
        "(default: the model card's seed threshold)",
    )
    parser.add_argument(
        "--stride-px",
        type=int,
        default=None,
        help="tile step at the model resolution (default: the model card's stride)",
    )
    parser.add_argument(
        "--min-tissue-fraction",
        type=plain_float,
        default=None,
        help="keep tiles with more tissue than this fraction (default 0.25)",
    )
    parser.add_argument(
        "--no-refine",
        action="store_false",
        dest="refine",
        default=None,
        help="do not rescore deposits near a category boundary",
    )
    parser.add_argument(
        "--no-cells",
        action="store_false",
        dest="count_cells",
        default=None,
        help="do not estimate tumor cell counts",
    )
    parser.add_argument(
        "--cell-rule",
        choices=("size-first", "literal"),
        default=None,
        help="size-first (default): size decides the category and a disagreeing cell count "
        "flags the deposit for review; literal: < 200 counted cells make a deposit up to "
        "2.0 mm ITC, > 200 make it micro (AJCC wording; see docs/staging.md)",
    )


def resolve_mpp_csv(mpp_csv: Path | None, slides: list[Path]) -> dict[str, float]:
    """``--mpp-csv`` read into slide id -> µm/px, checked against the batch's slides before any
    slide runs (empty without the flag)."""
    from pipeline.batch.folder import unique_slide_ids
    from pipeline.slides.slide import mpp_by_slide_id, read_mpp_csv

    if mpp_csv is None:
        return {}
    return mpp_by_slide_id(mpp_csv, read_mpp_csv(mpp_csv), unique_slide_ids(slides))


def ray_options_from_args(args: argparse.Namespace) -> RayOptions | None:
    """The ``RayOptions`` of ``--ray`` and its flags, or None without ``--ray``; raises
    ConfigError for a bad value or a Ray flag without ``--ray``."""
    if args.ray is None:
        if args.gpus_per_slide is not None or args.cpus_per_slide is not None:
            raise ConfigError("--gpus-per-slide and --cpus-per-slide need --ray")
        return None
    from pipeline.batch.distributed import RayOptions

    try:
        return RayOptions(
            address=str(args.ray), gpus_per_slide=args.gpus_per_slide, cpus_per_slide=args.cpus_per_slide
        )
    except ValueError as exc:
        raise ConfigError(f"--ray options: {exc}") from exc


def run(args: argparse.Namespace) -> int:
    """Run the batch and print a summary table; exit 1 if any slide failed."""
    from pipeline.batch.local import collect_slides
    from pipeline.batch.settings import AnalysisSettings

    ray_options = ray_options_from_args(args)
    slides = collect_slides(args.slides)
    # Built once from the flags, for the local and the Ray run alike.
    settings = AnalysisSettings.from_flags(vars(args), resolve_mpp_csv(args.mpp_csv, slides))
    if getattr(args, "patients", None) is not None:
        _keep_patient_mapping(args.patients, args.out)
    from pipeline.cli.progress import BatchProgress, choose_mode

    mode = choose_mode(bool(getattr(args, "quiet", False)), sys.stderr)
    if ray_options is not None:
        from pipeline.batch.distributed import run_batch_on_ray

        # Slides run on remote workers: slides done / failed, without per-slide tile bars.
        with BatchProgress(len(slides), mode, sys.stderr) as progress:
            outcomes = run_batch_on_ray(
                slides, args.out, settings, ray_options, args.overwrite, progress.slide_done
            )
    else:
        from pipeline.batch.analyze import run_local_batch

        context = settings.build()
        with BatchProgress(len(slides), mode, sys.stderr) as progress:
            outcomes = run_local_batch(
                slides, args.out, context, args.overwrite, progress.tile_callback, progress.slide_done
            )
    print_summary(outcomes, args.out)
    return 1 if any(o.status == STATUS_FAILED for o in outcomes) else 0


def _keep_patient_mapping(mapping_csv: Path, out_dir: Path) -> None:
    """Check the mapping CSV before any slide runs, then keep it as OUT/patients.csv."""
    from pipeline.review.viewer.patients import write_patient_mapping
    from pipeline.staging import read_patient_mapping_csv

    mapping = read_patient_mapping_csv(mapping_csv)
    write_patient_mapping(out_dir, mapping)


def _finished_reports(out_dir: Path, outcomes: Any) -> dict[str, dict[str, Any]]:
    """Slide id -> report.json of every slide that did not fail, found through the manifest
    (``pipeline.batch.folder``); a report that cannot be read is left out."""
    from pipeline.batch.folder import read_manifest, read_report_or_none, report_path

    try:
        entries = read_manifest(out_dir).slides
    except MicrometError:
        entries = {}
    reports: dict[str, dict[str, Any]] = {}
    for o in outcomes:
        if o.status != STATUS_FAILED:
            report = read_report_or_none(report_path(out_dir, o.slide_id, entries.get(o.slide_id)))
            if report is not None:
                reports[o.slide_id] = report
    return reports


def _slide_qc(report: dict[str, Any] | None) -> dict[str, str] | None:
    """A finished slide's QC verdict line and warning from its report.json, or None."""
    from pipeline.slides.qc import qc_line

    qc = (report or {}).get("qc")
    if not isinstance(qc, dict):
        return None
    return {"line": qc_line(qc), "warning": str(qc.get("warning") or "")}


def _model_warnings(reports: dict[str, dict[str, Any]]) -> list[str]:
    """The distinct model warnings (near-chance or absent validation AUC) of finished slides."""
    warnings: dict[str, None] = {}
    for report in reports.values():
        model = report.get("model")
        if isinstance(model, dict) and model.get("warning"):
            warnings.setdefault(f"{model.get('path', 'model')}: {model['warning']}", None)
    return list(warnings)


def print_summary(outcomes: Any, out_dir: Path) -> None:
    """A readable table of every slide's outcome."""
    reports = _finished_reports(out_dir, outcomes)
    rows = [("slide", "status", "category", "score", "seconds")]
    qc_lines: list[str] = []
    for o in outcomes:
        score = "" if o.score is None else f"{o.score:.3f}"
        qc = _slide_qc(reports.get(o.slide_id))
        category = o.category or ""
        if qc is not None:
            qc_lines.append(f"{o.slide_id}: {qc['line']}")
            category += f" [{qc['warning']}]" if qc["warning"] else ""
        rows.append((o.slide_id, o.status, category, score, f"{o.seconds:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))
    for line in qc_lines:
        print(line)
    for o in outcomes:
        if o.error:
            print(printable(f"failed: {o.slide_id}: {o.error}"), file=sys.stderr)
    for warning in _model_warnings(reports):
        print(f"micromet infer: warning: {warning} (recorded in every report.json and {SUMMARY_CSV})",
              file=sys.stderr)
    print(f"results: {out_dir}/{SUMMARY_CSV}, manifest: {out_dir}/{MANIFEST_JSON}")
