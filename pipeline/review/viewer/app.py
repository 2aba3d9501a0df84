"""Review: reads a batch output folder, produces the deep-zoom web viewer (a Flask app).

Pages: ``/`` (slide list), ``/slide/<id>`` (OpenSeadragon viewer with heatmap, deposit
outlines, deposit table, candidates for review drawn dashed and listed apart, scale bar).
Data: ``/api/slides``, ``/api/slide/<id>``, ``/dz/<id>.dzi``,
``/dz/<id>_files/<level>/<col>_<row>.jpeg``, ``/heatmap/<id>.png``.
OpenSeadragon is served from ``node_modules`` (``npm ci``) under ``/vendor/openseadragon/``.

Review (``create_app(review=True)``, ``micromet view --review``): ``GET /api/review/<id>``
gives the slide's pathologist review, ``POST /api/review/<id>`` saves one edit of it
(``pipeline.review.viewer.review_edits``) into the slide's result folder.

Security: a slide id is only ever looked up in the manifest, never joined into a path;
output files are served only when they resolve inside the batch folder; templates
autoescape. ``check_request`` guards every request: the Host header must name this machine
(or a host the user gave), so a DNS-rebinding page cannot read the batch; a request that
writes must come from the viewer's own page (Origin, Sec-Fetch-Site) and carry the run's
review token (header X-Micromet-Token). Without ``review`` nothing is written anywhere.
"""

from __future__ import annotations

import dataclasses
import hmac
import io
import logging
import secrets
import threading
import urllib.parse
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flask import (
    Flask,
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    send_from_directory,
    url_for,
)
from PIL import Image
from werkzeug.wrappers import Response as WerkzeugResponse

import pipeline
from pipeline.config import StagingConfig
from pipeline.detection.heatmap import Heatmap
from pipeline.errors import OutputError, ReviewConflictError, ReviewError, SlideOpenError
from pipeline.review.cartoon import cartoon_context
from pipeline.review.colors import CATEGORY_COLORS
from pipeline.review.overlay import heatmap_layer, heatmap_rect_px
from pipeline.review.reviews import report_candidates
from pipeline.review.viewer.batch_index import (
    BatchIndex,
    SlideRecord,
    SlideSummary,
    load_heatmap_or_none,
)
from pipeline.review.viewer.patients import load_patient_view
from pipeline.review.viewer.review_edits import MAX_REQUEST_BYTES, review_payload, save_edit
from pipeline.review.viewer.templating import (
    STATIC_DIR,
    TEMPLATES_DIR,
    format_number,
    template_globals,
)
from pipeline.review.viewer.tiles import DeepZoomCache, TileConfig
from pipeline.staging import read_patient_mapping_csv

log = logging.getLogger(__name__)

OPENSEADRAGON_DIR = (
    Path(pipeline.__file__).resolve().parents[1] / "node_modules" / "openseadragon" / "build"
    / "openseadragon"
)
# The heatmap PNG is upscaled (nearest neighbour) to about this many pixels on its long
# side, so the browser's smoothing blurs only the cell edges, not whole cells.
HEATMAP_TARGET_PX = 1024
MAX_HEATMAP_UPSCALE = 32

CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'none'"
)
# Host names that reach only this machine; requests naming any other host are refused.
LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
TOKEN_HEADER = "X-Micromet-Token"
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclasses.dataclass(frozen=True)
class ViewerState:
    """What every request needs: the batch, the open slides, where OpenSeadragon lives."""

    index: BatchIndex
    tiles: DeepZoomCache
    openseadragon_dir: Path
    patients_csv: Path | None = None
    staging: StagingConfig = dataclasses.field(default_factory=StagingConfig)
    review_token: str | None = None  # None: review is off, nothing can be written
    allowed_hosts: frozenset[str] = LOCAL_HOSTS
    review_lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def openseadragon_available(self) -> bool:
        """True when ``npm ci`` has installed OpenSeadragon."""
        return (self.openseadragon_dir / "openseadragon.min.js").is_file()


def create_app(
    batch_dir: Path,
    tile_config: TileConfig | None = None,
    openseadragon_dir: Path = OPENSEADRAGON_DIR,
    patients_csv: Path | None = None,
    staging: StagingConfig | None = None,
    review: bool = False,
    allowed_hosts: Iterable[str] = (),
) -> Flask:
    """The viewer app for one batch folder; raises OutputError if it has no manifest,
    StagingError for a bad ``patients_csv`` (slide,patient; see ``pipeline.review.viewer.patients``).

    review: allow pathologist reviews to be saved, with a new random token
    (``review_token(app)``) that every write must carry. allowed_hosts: host names accepted
    in the Host header besides LOCAL_HOSTS.
    """
    state = ViewerState(
        index=BatchIndex(batch_dir),
        tiles=DeepZoomCache(tile_config or TileConfig()),
        openseadragon_dir=openseadragon_dir,
        patients_csv=patients_csv,
        staging=staging or StagingConfig(),
        review_token=secrets.token_urlsafe(24) if review else None,
        allowed_hosts=LOCAL_HOSTS | {host.lower().strip("[]") for host in allowed_hosts},
    )
    if patients_csv is not None:
        read_patient_mapping_csv(patients_csv)  # fail at start, not on the first page
    if not state.openseadragon_available:
        log.warning(
            "%s: OpenSeadragon is missing; run `npm ci` in %s to install it (the slide "
            "list works, the slide viewer does not)",
            openseadragon_dir,
            OPENSEADRAGON_DIR.parents[3],
        )
    app = Flask(__name__, template_folder=str(TEMPLATES_DIR), static_folder=str(STATIC_DIR))
    app.url_map.merge_slashes = False  # '/dz//etc/passwd.dzi' must 404, not redirect
    app.extensions["micromet_viewer"] = state
    app.jinja_env.filters["fmt"] = format_number
    app.jinja_env.globals.update(template_globals())
    app.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    app.before_request(check_request)
    app.after_request(_security_headers)
    _register_routes(app)
    return app


def _state() -> ViewerState:
    state: ViewerState = current_app.extensions["micromet_viewer"]
    return state


def review_token(app: Flask) -> str | None:
    """The token review writes must carry, None when review is off."""
    state: ViewerState = app.extensions["micromet_viewer"]
    return state.review_token


def _refuse(code: int, message: str) -> tuple[Any, int]:
    log.warning("refused %s %s: %s", request.method, request.path, message)
    if request.path.startswith("/api/"):
        return jsonify({"error": message}), code
    return render_template("error.html", code=code, description=message), code


def check_request() -> tuple[Any, int] | None:
    """The one gate of every request (None lets it through).

    The Host header must name this machine or a host the user gave: a page of another site
    whose name resolves here (DNS rebinding) is refused. A request that writes must also come
    from the viewer's own page (Origin and Sec-Fetch-Site, when the browser sends them) and
    carry the run's review token in the X-Micromet-Token header.
    """
    state = _state()
    hostname = urllib.parse.urlsplit("//" + request.host).hostname
    if hostname not in state.allowed_hosts:
        return _refuse(403, f"Host {request.host!r} is not this viewer; open the address "
                            "`micromet view` printed (http://127.0.0.1:PORT/)")
    if request.method in READ_METHODS:
        return None
    origin = request.headers.get("Origin")
    if origin is not None and urllib.parse.urlsplit(origin).netloc != request.host:
        return _refuse(403, f"a write from {origin!r} is refused; edit in the viewer's own page")
    if request.headers.get("Sec-Fetch-Site", "same-origin") != "same-origin":
        return _refuse(403, "a write from another site is refused; edit in the viewer's own page")
    if state.review_token is None:
        return _refuse(403, "review is off: restart with `micromet view --review` to save reviews")
    token = request.headers.get(TOKEN_HEADER, "")
    if not hmac.compare_digest(token.encode("utf-8"), state.review_token.encode("utf-8")):
        return _refuse(403, "the review token is missing or wrong; open the link with ?token= that "
                            "`micromet view --review` printed")
    return None


def _security_headers(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _record_or_404(slide_id: str) -> SlideRecord:
    record = _state().index.record(slide_id)
    if record is None:
        abort(404, description="This slide is not part of the batch.")
    return record


def _slide_file_or_404(record: SlideRecord) -> Path:
    if record.slide_path is None:
        abort(404, description="The manifest records no slide file for this slide.")
    return record.slide_path


def _register_routes(app: Flask) -> None:
    app.add_url_rule("/", "index", index_page)
    app.add_url_rule("/slide/<path:slide_id>", "slide_page", slide_page)
    app.add_url_rule("/api/slides", "api_slides", api_slides)
    app.add_url_rule("/api/slide/<path:slide_id>", "api_slide", api_slide)
    app.add_url_rule("/dz/<path:slide_id>.dzi", "dzi", dzi)
    app.add_url_rule(
        "/dz/<path:slide_id>_files/<int:level>/<int:col>_<int:row>.jpeg", "tile", tile
    )
    app.add_url_rule("/heatmap/<path:slide_id>.png", "heatmap_png", heatmap_png)
    app.add_url_rule("/api/review/<path:slide_id>", "api_review", api_review, methods=["GET"])
    app.add_url_rule("/api/review/<path:slide_id>", "api_review_edit", api_review_edit, methods=["POST"])
    app.add_url_rule("/vendor/openseadragon/<path:filename>", "openseadragon", openseadragon)
    app.register_error_handler(404, _error_page)
    app.register_error_handler(500, _error_page)
    app.register_error_handler(503, _error_page)
    app.register_error_handler(OutputError, _batch_error_page)


def _error_page(error: Any) -> tuple[str, int]:
    code = int(getattr(error, "code", 500) or 500)
    description = str(getattr(error, "description", "Internal error"))
    return render_template("error.html", code=code, description=description), code


def _batch_error_page(error: OutputError) -> tuple[str, int]:
    log.error("%s", error)
    return render_template("error.html", code=500, description=str(error)), 500


def index_page() -> str:
    """The slide list, grouped by patient (with each pN stage) when slides map to patients."""
    state = _state()
    summaries = state.index.summaries()
    by_id = {
        summary.record.slide_id: {
            "summary": summary,
            "href": url_for("slide_page", slide_id=summary.record.slide_id),
        }
        for summary in summaries
    }
    rows = list(by_id.values())
    patients = load_patient_view(state.index, summaries, state.patients_csv, state.staging)
    patient_rows = {}
    if patients is not None:
        patient_rows = {
            p.patient: [by_id[n.slide_id] for n in p.nodes if n.slide_id in by_id] for p in patients.patients
        }
    return render_template(
        "index.html",
        batch_dir=state.index.root,
        rows=rows,
        hrefs={slide_id: url_for("slide_page", slide_id=slide_id) for slide_id in by_id},
        patients=patients,
        patient_rows=patient_rows,
        unassigned_rows=[by_id[s.record.slide_id] for s in patients.unassigned] if patients else [],
        **cartoon_context((s.record.slide_id, s.record.slide_path) for s in summaries),
    )


def slide_page(slide_id: str) -> str:
    """The viewer page of one slide; data comes from /api/slide/<id>."""
    state = _state()
    record = _record_or_404(slide_id)
    summary = state.index.summary(record)
    report: dict[str, Any] = {}
    if summary.problem is None:
        report = state.index.report(record) or {}
    summaries = state.index.summaries()
    patients = load_patient_view(state.index, summaries, state.patients_csv, state.staging)
    patient = next(
        (p for p in (patients.patients if patients else ()) if any(n.slide_id == slide_id for n in p.nodes)),
        None,
    )
    return render_template(
        "slide.html",
        summary=summary,
        report=report,
        candidates=report_candidates(report),
        patient=patient,
        openseadragon_available=state.openseadragon_available,
        review_api_url=url_for("api_review", slide_id=slide_id),
        review_writable=state.review_token is not None,
        **cartoon_context((s.record.slide_id, s.record.slide_path) for s in summaries),
    )


def _summary_payload(summary: SlideSummary) -> dict[str, Any]:
    record = summary.record
    return {
        "slide_id": record.slide_id,
        "status": record.status,
        "error": record.error,
        "problem": summary.problem,
        "category": summary.category,
        "score": summary.score,
        "largest_deposit_mm": summary.largest_deposit_mm,
        "n_deposits": summary.n_deposits,
        "n_candidates": summary.n_candidates,
        "largest_deposit_text": summary.largest_deposit_text,
        "review": list(summary.review),
        "cell_rule": summary.cell_rule,
        "url": url_for("slide_page", slide_id=record.slide_id),
    }


def api_slides() -> Response:
    """Every slide's headline numbers as JSON."""
    slides = [_summary_payload(summary) for summary in _state().index.summaries()]
    return jsonify({"slides": slides})


def _heatmap_payload(slide_id: str, heatmap: Heatmap) -> dict[str, Any]:
    x_px, y_px, width_px, height_px = heatmap_rect_px(heatmap)
    rows, cols = heatmap.shape
    return {
        "url": url_for("heatmap_png", slide_id=slide_id),
        "x_px": x_px,
        "y_px": y_px,
        "width_px": width_px,
        "height_px": height_px,
        "rows": rows,
        "cols": cols,
        "origin_x_px": heatmap.origin_x_px,
        "origin_y_px": heatmap.origin_y_px,
        "stride_l0_px": heatmap.stride_l0_px,
        "tile_size_l0_px": heatmap.tile_size_l0_px,
        "mpp": heatmap.slide_mpp,
    }


def api_slide(slide_id: str) -> Response:
    """One slide: manifest entry, report, its candidates for review (none for a report written
    before they existed), heatmap geometry, tile and overlay URLs."""
    state = _state()
    record = _record_or_404(slide_id)
    summary = state.index.summary(record)
    report = state.index.report(record) if summary.problem is None else None
    heatmap = load_heatmap_or_none(state.index, record)
    slide_facts = (report or {}).get("slide") or {}
    mpp = slide_facts.get("mpp") or (heatmap.slide_mpp if heatmap else None)
    payload = {
        **_summary_payload(summary),
        "report": report,
        "candidates": report_candidates(report),
        "mpp": mpp,
        "dzi_url": url_for("dzi", slide_id=slide_id),
        "heatmap": None if heatmap is None else _heatmap_payload(slide_id, heatmap),
        "category_colors": CATEGORY_COLORS,
    }
    return jsonify(payload)


def api_review(slide_id: str) -> tuple[Response, int]:
    """The slide's pathologist review (a new one when none is saved) and whether it can be edited."""
    state = _state()
    record = _record_or_404(slide_id)
    try:
        return jsonify(review_payload(state.index, record, state.review_token is not None)), 200
    except ReviewError as exc:
        return jsonify({"error": str(exc)}), 409


def api_review_edit(slide_id: str) -> tuple[Response, int]:
    """Save one review edit (check_request has checked Host, Origin and token). 409 with the
    current review when the edit was made on an outdated revision."""
    state = _state()
    record = _record_or_404(slide_id)
    body = request.get_json(silent=True)
    try:
        return jsonify(save_edit(state.index, record, body, state.review_lock)), 200
    except ReviewConflictError as exc:
        current = review_payload(state.index, record, True)
        return jsonify({"error": str(exc), "conflict": True, **current}), 409
    except ReviewError as exc:
        return jsonify({"error": str(exc)}), 400
    except OutputError as exc:
        return jsonify({"error": str(exc)}), 500


def dzi(slide_id: str) -> Response:
    """The Deep Zoom descriptor of a manifest slide."""
    path = _slide_file_or_404(_record_or_404(slide_id))
    try:
        xml = _state().tiles.dzi(path)
    except SlideOpenError as exc:
        log.warning("%s", exc)
        abort(404, description=f"The slide file cannot be opened: {exc}")
    return Response(xml, mimetype="application/xml")


def tile(slide_id: str, level: int, col: int, row: int) -> Response:
    """One JPEG tile of a manifest slide."""
    path = _slide_file_or_404(_record_or_404(slide_id))
    try:
        payload = _state().tiles.tile_jpeg(path, level, col, row)
    except SlideOpenError as exc:
        log.warning("%s", exc)
        abort(404, description="The slide file cannot be read.")
    if payload is None:
        abort(404, description="No such tile.")
    response = Response(payload, mimetype="image/jpeg")
    response.headers["Cache-Control"] = "private, max-age=3600"
    return response


def heatmap_png(slide_id: str) -> Response:
    """The slide's heatmap layer (``pipeline.review.overlay.heatmap_layer``) as an RGBA PNG, one
    upscaled block per cell; the browser composites it by overlay.png's rule."""
    state = _state()
    heatmap = load_heatmap_or_none(state.index, _record_or_404(slide_id))
    if heatmap is None:
        abort(404, description="This slide has no heatmap.")
    rows, cols = heatmap.shape
    factor = max(1, min(MAX_HEATMAP_UPSCALE, HEATMAP_TARGET_PX // max(rows, cols, 1)))
    buffer = io.BytesIO()
    Image.fromarray(heatmap_layer(heatmap, factor)).save(buffer, "PNG")
    response = Response(buffer.getvalue(), mimetype="image/png")
    response.headers["Cache-Control"] = "no-cache"
    return response


def openseadragon(filename: str) -> WerkzeugResponse:
    """OpenSeadragon's files from node_modules (never committed to the repository)."""
    state = _state()
    if not state.openseadragon_available:
        abort(
            503,
            description=f"OpenSeadragon is not installed ({state.openseadragon_dir} is missing): "
            "run `npm ci` in the micromet repository, then reload.",
        )
    return send_from_directory(state.openseadragon_dir, filename, max_age=86400)

