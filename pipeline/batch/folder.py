"""Batch folder: the one reader and writer of a batch output folder's own files.

Reads and writes ``manifest.json`` (the run's settings and one entry per slide), reads each
finished slide's ``<output_dir>/report.json`` (deposits and candidates through
``deposit_from_dict``), and names every other file and folder of the batch: ``summary.csv``,
the lock, a slide's id (from its file name), result folder and working folder. The schema,
with types and units, is docs/batch_folder.md; every reader of a batch folder (the batch
itself, ``stage``, ``evaluate``, the viewer, ``infer``'s summary) goes through here.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import __version__
from pipeline.errors import MicrometError, OutputError
from pipeline.outputs import atomic_write_json, read_json_object
from pipeline.slides.formats import SLIDE_SUFFIXES

if TYPE_CHECKING:
    from pipeline.deposits.measure import Deposit
    from pipeline.staging import Category

MANIFEST_JSON = "manifest.json"
REPORT_JSON = "report.json"
SUMMARY_CSV = "summary.csv"
LOCK_FILE = ".micromet.lock"  # held while a run writes into the batch folder

STATUS_DONE = "done"
STATUS_FAILED = "failed"
STATUS_SKIPPED = "skipped"  # an outcome only (finished earlier); never written to the manifest

# The fields a manifest entry has; any other (a Ray run's "attempts", "node") is kept in
# ``ManifestEntry.extra`` and written back unchanged.
_ENTRY_FIELDS = ("path", "status", "output_dir", "error", "settings_key", "category", "score",
                 "seconds", "finished")  # fmt: skip
_MANIFEST_FIELDS = ("micromet_version", "settings", "settings_key", "slides")
_PASS_A_BATCH = "pass a batch output folder (the --out of `micromet infer`, with manifest.json)"


@dataclasses.dataclass(frozen=True)
class ManifestEntry:
    """One slide of ``manifest.json``.

    path: the slide file the batch read. status: "done" or "failed" (another value, or none,
    from a foreign or damaged manifest is kept as written). output_dir: the slide's result
    folder, relative to the batch folder (or absolute); None means the slide id.
    error: why a failed slide failed. settings_key: hash of the settings its result was made
    with. category, score: the report's, for a done slide. seconds: wall time of the slide.
    finished: local time "YYYY-MM-DDTHH:MM:SS". extra: any other field, kept as written.
    """

    path: str | None
    status: str | None
    output_dir: str | None = None
    error: str | None = None
    settings_key: str | None = None
    category: str | None = None
    score: float | None = None
    seconds: float | None = None
    finished: str | None = None
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def done(self) -> bool:
        """True when the slide finished (its report.json should exist)."""
        return self.status == STATUS_DONE

    def unavailable_reason(self) -> str:
        """Why a slide that is not done has no result: "status 'failed': <error>"."""
        return f"status {self.status!r}" + (f": {self.error}" if self.error else "")

    def to_dict(self) -> dict[str, Any]:
        """The JSON form of the entry (``extra`` fields included)."""
        entry = {name: getattr(self, name) for name in _ENTRY_FIELDS}
        return {**entry, **self.extra}


def entry_from_dict(raw: Any) -> ManifestEntry:
    """A ``ManifestEntry`` from its JSON form; a field of the wrong type reads as None (a
    non-object entry as one without fields), so one damaged entry does not hide the others."""
    data: Mapping[str, Any] = raw if isinstance(raw, dict) else {}

    def text(name: str) -> str | None:
        value = data.get(name)
        return None if value is None else str(value)

    def number(name: str) -> float | None:
        value = data.get(name)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return None
        return float(value)

    return ManifestEntry(
        path=text("path"),
        status=text("status"),
        output_dir=text("output_dir"),
        error=text("error"),
        settings_key=text("settings_key"),
        category=text("category"),
        score=number("score"),
        seconds=number("seconds"),
        finished=text("finished"),
        extra={key: value for key, value in data.items() if key not in _ENTRY_FIELDS},
    )


@dataclasses.dataclass
class Manifest:
    """``manifest.json``: the run that wrote the folder and every slide's entry (slide id ->
    entry, in the order written). settings: the resolved settings of the last run;
    settings_key: their hash (``pipeline.batch.local.settings_key``). extra: any other
    top-level field, kept as written."""

    micromet_version: str
    slides: dict[str, ManifestEntry] = dataclasses.field(default_factory=dict)
    settings: dict[str, Any] | None = None
    settings_key: str | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to ``manifest.json``."""
        document: dict[str, Any] = {**self.extra, "micromet_version": self.micromet_version}
        if self.settings is not None:
            document["settings"] = self.settings
        if self.settings_key is not None:
            document["settings_key"] = self.settings_key
        document["slides"] = {slide_id: entry.to_dict() for slide_id, entry in self.slides.items()}
        return document


# --- slide ids and folders ----------------------------------------------------------------

_UNSAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


def slide_id_for(path: Path) -> str:
    """A file-system-safe id from a slide's file name (stem, unsafe characters replaced)."""
    stem = path.name
    for suffix in SLIDE_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    cleaned = _UNSAFE_ID.sub("_", stem).strip("._")
    return cleaned or "slide"


# A slide id names a folder beside the batch's own files: an id ending like one of them
# (``manifest.json.tif`` -> "manifest.json") has its dots replaced, so no slide folder ever
# takes the place of a batch file.
_BATCH_FILE_SUFFIXES = (".json", ".csv", ".html", ".htm", ".txt", ".log", ".lock", ".tmp", ".png", ".toml")


def _clear_of_batch_files(slide_id: str) -> str:
    if slide_id.lower().endswith(_BATCH_FILE_SUFFIXES):
        return slide_id.replace(".", "_")
    return slide_id


def unique_slide_ids(paths: Iterable[Path]) -> dict[Path, str]:
    """Ids for slides, made unique with ``-2``, ``-3`` suffixes when stems clash; an id that
    could be a batch file's name (``manifest.json``) becomes ``manifest_json``."""
    ids: dict[Path, str] = {}
    used: set[str] = set()
    for path in paths:
        base = _clear_of_batch_files(slide_id_for(path))
        candidate, counter = base, 2
        while candidate in used:
            candidate = f"{base}-{counter}"
            counter += 1
        used.add(candidate)
        ids[path] = candidate
    return ids


def slide_folder(batch_dir: Path, slide_id: str, entry: ManifestEntry | None = None) -> Path:
    """A slide's result folder: its entry's ``output_dir`` (relative to the batch folder, or
    absolute), else the slide id."""
    output_dir = entry.output_dir if entry is not None else None
    return batch_dir / (output_dir or slide_id)


def partial_folder(batch_dir: Path, slide_id: str) -> Path:
    """The working folder a slide's files are built in before it is renamed into place."""
    return batch_dir / f".{slide_id}.partial"


def report_path(batch_dir: Path, slide_id: str, entry: ManifestEntry | None = None) -> Path:
    """Where a slide's ``report.json`` is (it exists once the slide finished)."""
    return slide_folder(batch_dir, slide_id, entry) / REPORT_JSON


def manifest_path(batch_dir: Path) -> Path:
    """Where a batch folder's ``manifest.json`` is."""
    return batch_dir / MANIFEST_JSON


def _manifest_from_dict(document: Mapping[str, Any], path: Path, error: type[MicrometError]) -> Manifest:
    slides = document.get("slides", {})
    if not isinstance(slides, dict):
        raise error(f"{path}: expected a 'slides' object (slide id -> entry); re-run the batch")
    settings = document.get("settings")
    key = document.get("settings_key")
    return Manifest(
        micromet_version=str(document.get("micromet_version", "")),
        slides={str(slide_id): entry_from_dict(raw) for slide_id, raw in slides.items()},
        settings=settings if isinstance(settings, dict) else None,
        settings_key=None if key is None else str(key),
        extra={k: v for k, v in document.items() if k not in _MANIFEST_FIELDS},
    )


def read_manifest(
    batch_dir: Path, error: type[MicrometError] = OutputError, what_to_pass: str = ""
) -> Manifest:
    """The manifest of an existing batch folder (for readers of its results).

    Raises ``error`` naming the file when the folder or its manifest is missing (the message
    ends with ``what_to_pass``, e.g. "pass a batch output folder to --batch"), unreadable, not
    a JSON object, or without a 'slides' object.
    """
    path = manifest_path(batch_dir)
    try:
        found = batch_dir.is_dir() and path.is_file()
    except OSError as exc:  # a folder that cannot be listed or entered
        raise error(f"{batch_dir}: cannot read the batch folder ({exc.strerror or exc}); "
                    "check its permissions") from exc
    if not found:
        hint = what_to_pass or _PASS_A_BATCH
        raise error(f"{path}: not found; {hint}")
    document = read_json_object(path, "batch manifest", error, "; re-run the batch")
    return _manifest_from_dict(document, path, error)


def read_or_start_manifest(out_dir: Path) -> Manifest:
    """The manifest a run continues (an empty one in a new folder); raises OutputError if the
    one there is unreadable."""
    path = manifest_path(out_dir)
    if not path.exists():
        return Manifest(micromet_version=__version__)
    try:
        document = read_json_object(path, "batch manifest", OutputError)
        return _manifest_from_dict(document, path, OutputError)
    except OutputError as exc:
        raise OutputError(f"{exc}; move it away or use a new --out") from exc


def write_manifest(out_dir: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` atomically (``pipeline.outputs.atomic_write_json``)."""
    atomic_write_json(manifest_path(out_dir), manifest.to_dict())


# --- report.json ---------------------------------------------------------------------------


def read_report(
    path: Path, error: type[MicrometError] = OutputError, hint: str = "; re-run the batch"
) -> dict[str, Any]:
    """A slide's ``report.json`` (the whole object; docs/batch_folder.md lists its fields).

    Raises ``error`` naming the file when it is unreadable or not a JSON object.
    """
    return read_json_object(path, "slide report", error, hint)


def read_report_or_none(path: Path) -> dict[str, Any] | None:
    """A slide's ``report.json``, or None when it is missing or unreadable (for summaries
    that show what they can)."""
    try:
        return read_report(path)
    except OutputError:
        return None


def report_category(
    report: Mapping[str, Any], path: Path, error: type[MicrometError] = OutputError
) -> Category:
    """The report's top-level node category; raises ``error`` naming the file for any value
    that is not negative, itc, micro or macro."""
    from pipeline.staging import CATEGORY_ORDER, Category

    value = report.get("category")
    try:
        return Category(str(value).lower())
    except ValueError:
        allowed = ", ".join(category.value for category in CATEGORY_ORDER)
        raise error(
            f"{path}: top-level 'category' is {value!r}; expected one of {allowed}. Re-run the slide"
        ) from None


def report_deposits(
    report: Mapping[str, Any], path: Path, field: str = "deposits", error: type[MicrometError] = OutputError
) -> tuple[Deposit, ...]:
    """The report's ``deposits`` (or ``candidates``), rebuilt with ``deposit_from_dict``.

    A report without the field has none (candidates came later). Raises ``error`` naming the
    file and the entry for a field that is not a list or an entry that is malformed or holds
    a non-finite number.
    """
    from pipeline.deposits.measure import deposit_from_dict

    raw = report.get(field, [])
    if not isinstance(raw, list):
        raise error(f"{path}: '{field}' is not a list; re-run the slide")
    deposits = []
    for index, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise error(f"{path}: {field}[{index}] is not an object; re-run the slide")
        try:
            deposit = deposit_from_dict(entry)
        except ValueError as exc:
            raise error(f"{path}: {field}[{index}]: {exc}; re-run the slide") from None
        numbers = (deposit.max_diameter_mm, deposit.area_mm2, deposit.centroid_x_px, deposit.centroid_y_px)
        if not all(math.isfinite(number) for number in numbers):
            raise error(f"{path}: {field}[{index}] holds a number that is not finite; re-run the slide")
        deposits.append(deposit)
    return tuple(deposits)


def report_warning(report: Mapping[str, Any], section: str) -> str:
    """The ``warning`` of the report's ``qc`` or ``model`` section ("" when there is none)."""
    part = report.get(section)
    warning = part.get("warning") if isinstance(part, dict) else None
    return warning if isinstance(warning, str) else ""
