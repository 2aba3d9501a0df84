"""``micromet view BATCH_DIR``: serve the deep-zoom viewer of a batch folder on this machine."""

from __future__ import annotations

import argparse
import ipaddress
import sys
import threading
import webbrowser
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``view`` subcommand."""
    parser = subparsers.add_parser(
        "view",
        help="browse a batch's slides, heatmaps and deposits in a web viewer",
        description="Serve an interactive viewer of a batch output folder: deep zoom of each "
        "slide with its heatmap, deposit outlines and measurements. Reads the batch only. "
        "Needs OpenSeadragon from `npm ci` in the micromet repository.",
    )
    parser.add_argument("batch_dir", type=Path, metavar="BATCH_DIR", help="batch output folder")
    parser.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help=f"address to listen on (default {DEFAULT_HOST}: this machine only)",
    )
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
    parser.add_argument(
        "--no-browser", action="store_true", help="do not open a web browser"
    )
    parser.add_argument(
        "--allow-host",
        action="append",
        metavar="NAME",
        help="also answer requests that name this host (the machine's name or address others "
        "use with --host 0.0.0.0); by default only localhost names and --host are answered, so "
        "no other web site can read the batch through this viewer (DNS rebinding). Repeatable",
    )
    parser.add_argument(
        "--review",
        action="store_true",
        help="let pathologists confirm, reject and draw deposits and mark slides reviewed; saved "
        "as <slide>/review.geojson beside the automated result, which is never changed. Edits need "
        "the link with ?token= printed at start (docs/viewer.md)",
    )
    from pipeline.cli.report import add_patient_options

    add_patient_options(parser)
    parser.set_defaults(run=run)


def is_loopback(host: str) -> bool:
    """True for addresses reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args: argparse.Namespace) -> int:
    """Serve until interrupted; exit status 1 when the port cannot be opened."""
    from werkzeug.serving import make_server

    from pipeline.review.viewer.app import create_app, review_token

    if not 0 <= args.port <= 65535:
        print(f"micromet view: error: --port {args.port} is not a port (0-65535)", file=sys.stderr)
        return 2
    from pipeline.config import StagingConfig

    app = create_app(
        args.batch_dir,
        patients_csv=getattr(args, "patients", None),
        staging=StagingConfig(scheme=getattr(args, "scheme", "camelyon17")),
        review=getattr(args, "review", False),
        allowed_hosts=(args.host, *(getattr(args, "allow_host", None) or ())),
    )
    if not is_loopback(args.host):
        print(
            f"micromet view: warning: listening on {args.host} makes the slides and results "
            "readable by anyone who can reach this machine; there is no login. "
            "Others reach it only by the names given with --allow-host. "
            f"Use --host {DEFAULT_HOST} unless you mean it.",
            file=sys.stderr,
        )
    try:
        server = make_server(args.host, args.port, app, threaded=True)
    except OSError as exc:
        print(
            f"micromet view: error: cannot listen on {args.host}:{args.port} ({exc.strerror}); "
            "pass another --port",
            file=sys.stderr,
        )
        return 1
    url_host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{url_host}:{server.server_port}/"
    token = review_token(app)
    if token is not None:
        url += f"?token={token}"
        print("micromet view: review mode: edits are saved in each slide's review.geojson; only "
              "pages opened from the link below (it holds this run's token) can save them", flush=True)
    print(f"micromet view: serving {args.batch_dir} at {url} (Ctrl+C to stop)", flush=True)
    if not args.no_browser:
        threading.Timer(0.5, webbrowser.open, args=(url,)).start()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("micromet view: stopped", file=sys.stderr)
    finally:
        server.server_close()
    return 0
