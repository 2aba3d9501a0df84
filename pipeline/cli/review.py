"""``micromet review import BATCH_DIR SLIDE_ID FILE``: load a slide's review edited in QuPath
(GeoJSON) or ASAP (XML) back into ``<slide>/review.geojson``.

The file is typically the slide's review.geojson / review.xml (or the automated
deposits.geojson / deposits.xml) after editing: annotations named "deposit N" update automated
deposit N (class Rejected rejects it, Pending leaves it open, Tumor confirms it, a moved outline
corrects it), other tumor outlines are added deposits, and an automated deposit deleted from the
file is rejected. report.json is never changed. Rules: docs/viewer.md.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``review`` subcommand (with its ``import`` action)."""
    parser = subparsers.add_parser(
        "review",
        help="load a pathologist review edited in QuPath or ASAP into a batch",
        description="Pathologist reviews of a batch's slides (docs/viewer.md). Reviews are made "
        "in `micromet view --review` or edited in QuPath / ASAP and loaded back here.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    load = actions.add_parser(
        "import",
        help="load a QuPath GeoJSON or ASAP XML file into a slide's review",
        description="Load a QuPath GeoJSON (.geojson/.json) or ASAP XML (.xml) file into "
        "<slide>/review.geojson (and review.xml), then refresh summary.csv.",
    )
    load.add_argument("batch_dir", type=Path, metavar="BATCH_DIR", help="batch output folder")
    load.add_argument("slide_id", metavar="SLIDE_ID", help="the slide's id in manifest.json")
    load.add_argument("file", type=Path, metavar="FILE", help="QuPath GeoJSON or ASAP XML file")
    load.add_argument("--reviewer", required=True, help="who reviewed (recorded with every change)")
    load.add_argument("--complete", action="store_true", help="mark the slide's review complete")
    parser.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Import the file; prints the slide's reviewed category."""
    from pipeline.errors import ReviewError
    from pipeline.review.reviews import review_counts
    from pipeline.review.viewer.batch_index import BatchIndex
    from pipeline.review.viewer.review_edits import import_review_file

    index = BatchIndex(args.batch_dir)
    record = index.record(args.slide_id)
    if record is None:
        known = ", ".join(list(index.records())[:5])
        raise ReviewError(f"{index.manifest_path}: no slide {args.slide_id!r} in this batch "
                          f"(slides: {known}{', ...' if len(index.records()) > 5 else ''})")
    review = import_review_file(index, record, args.file, args.reviewer, args.complete)
    counts = ", ".join(f"{n} {decision}" for decision, n in review_counts(review).items() if n)
    print(f"micromet review: {args.slide_id}: revision {review.revision}, review {review.status}; "
          f"reviewed category {review.reviewed_category} (automated {review.automated_category}); "
          f"{counts or 'no deposits'}")
    return 0

