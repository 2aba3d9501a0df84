"""``micromet report BATCH_DIR``: write one self-contained HTML report of a batch folder."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``report`` subcommand."""
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a batch (opens from disk)",
        description="Write one HTML file listing every slide of a batch: category, score, "
        "largest deposit, a thumbnail with heatmap and deposit outlines, the deposit table, "
        "and failed slides with their error. Images are embedded; no server or network needed.",
    )
    parser.add_argument("batch_dir", type=Path, metavar="BATCH_DIR", help="batch output folder")
    parser.add_argument(
        "--out", type=Path, default=None, metavar="FILE",
        help="HTML file to write (default BATCH_DIR/report.html)",
    )
    parser.add_argument(
        "--thumbnail-px", type=int, default=800, metavar="PX",
        help="longer side of each slide image in px (default 800)",
    )
    add_patient_options(parser)
    parser.set_defaults(run=run)


def add_patient_options(parser: argparse.ArgumentParser) -> None:
    """--patients and --scheme: the patient table (pN stage) of ``report`` and ``view``."""
    parser.add_argument(
        "--patients", type=Path, default=None, metavar="CSV",
        help="CSV 'slide,patient' grouping slides into patients (default: BATCH_DIR/patients.csv "
        "from `micromet infer --patients`, else CAMELYON17 names patient_NNN_node_N)",
    )
    parser.add_argument(
        "--scheme", choices=("camelyon17", "ajcc"), default="camelyon17",
        help="pN scheme of the patient table (default camelyon17; see docs/staging.md)",
    )


def run(args: argparse.Namespace) -> int:
    """Build and write the report; prints where it went."""
    from pipeline.errors import ConfigError
    from pipeline.outputs import refuse_replacing_batch_file
    from pipeline.review.viewer.static_report import (
        DEFAULT_REPORT_NAME,
        StaticReportConfig,
        write_static_report,
    )

    try:
        config = StaticReportConfig(thumbnail_max_px=args.thumbnail_px)
    except ValueError as exc:
        raise ConfigError(f"--thumbnail-px: {exc}") from exc
    out_path = args.out if args.out is not None else args.batch_dir / DEFAULT_REPORT_NAME
    refuse_replacing_batch_file(args.batch_dir, out_path, "--out", allowed_name=DEFAULT_REPORT_NAME)
    from pipeline.config import StagingConfig

    written = write_static_report(
        args.batch_dir, out_path, config, args.patients, StagingConfig(scheme=args.scheme)
    )
    print(f"micromet report: wrote {written}")
    return 0
