"""Batch runs: reads a list of slides, produces one output folder per slide plus a manifest.

A slide's results are built in a temporary folder and renamed into place when complete,
so an interrupted run never leaves a result that looks finished. The manifest records
every slide's status and the settings key its result was computed with; re-running the
same command skips slides already done with the same key and resumes the rest. A
slide that fails with a package error (or runs out of memory) is recorded and the
batch carries on; anything else is a bug and propagates.
"""

from __future__ import annotations

import dataclasses
import glob
import hashlib
import json
import logging
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.errors import MicrometError, OutputError, SlideOpenError
from pipeline.outputs import (
    SLIDE_SUFFIXES,
    atomic_write_json,
    check_writable_folder,
    unique_slide_ids,
)
from pipeline.slide import is_dicom_folder

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
REPORT = "report.json"
STATUS_DONE = "done"
STATUS_FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class SlideOutcome:
    """What happened to one slide in a batch run."""

    slide_id: str
    path: str
    status: str  # done | failed | skipped
    error: str | None = None
    category: str | None = None
    score: float | None = None
    seconds: float = 0.0


def collect_slides(inputs: Sequence[str]) -> list[Path]:
    """Expand files, folders (their slide files, sorted) and globs into slide paths.

    A named file is kept whatever its suffix (opening it reports any problem); a folder
    holding a DICOM series (.dcm files) is one slide; another folder contributes files with a
    known slide suffix. A folder without slide files is reported:
    one named like a slide (``x.svs/``) is kept, so the batch records it as failed; any
    other is skipped with a warning. Raises SlideOpenError for an input that matches nothing.
    """
    paths: list[Path] = []
    for item in inputs:
        path = Path(item)
        if is_dicom_folder(path):
            paths.append(path)  # one DICOM WSI series is one slide
        elif path.is_dir() and path.suffix.lower() != ".mrxs":
            found = sorted(
                p
                for p in path.iterdir()
                if p.is_file() and p.suffix.lower() in SLIDE_SUFFIXES and not p.name.startswith(".")
            )
            if not found:
                named_like_a_slide = path.suffix.lower() in SLIDE_SUFFIXES
                log.warning(
                    "%s: folder holds no slide files (%s); %s", item, ", ".join(SLIDE_SUFFIXES),
                    "it is named like a slide, so it is recorded as failed" if named_like_a_slide
                    else "skipped",
                )
                found = [path] if named_like_a_slide else []
            paths.extend(found)
        elif path.exists():
            paths.append(path)
        elif any(ch in item for ch in "*?["):
            paths.extend(Path(p) for p in sorted(glob.glob(item, recursive=True)))
        else:
            raise SlideOpenError(f"{item}: no such file, folder or matching glob; check the path")
    unique: dict[Path, None] = {}
    for path in paths:
        unique.setdefault(path.resolve(), None)
    if not unique:
        raise SlideOpenError(f"no slide files found in {', '.join(inputs)}; pass slide files or folders")
    return list(unique)


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of everything that changes a slide's result."""
    payload = json.dumps({"version": __version__, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def read_manifest(out_dir: Path) -> dict[str, Any]:
    """The batch manifest, or an empty one; raises OutputError if it is unreadable."""
    path = out_dir / MANIFEST
    if not path.exists():
        return {"micromet_version": __version__, "slides": {}}
    try:
        manifest: dict[str, Any] = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise OutputError(f"{path}: manifest is unreadable ({exc}); move it away or use a new --out") from exc
    manifest.setdefault("slides", {})
    return manifest


def slide_folder(batch_dir: Path, slide_id: str, entry: Mapping[str, Any]) -> Path:
    """A manifest entry's result folder: its ``output_dir`` (relative to the batch folder, or
    absolute), else the slide id."""
    return batch_dir / str(entry.get("output_dir") or slide_id)


def is_done(manifest: dict[str, Any], out_dir: Path, slide_id: str, path: Path, key: str) -> bool:
    """True if the slide finished earlier with the same settings and its report exists."""
    entry = manifest["slides"].get(slide_id)
    if not entry or entry.get("status") != STATUS_DONE or entry.get("settings_key") != key:
        return False
    if entry.get("path") != str(path):
        return False
    return (slide_folder(out_dir, slide_id, entry) / REPORT).is_file()


def _replace_folder(staging: Path, final: Path) -> None:
    """Move a completed staging folder into place, replacing an older result."""
    if final.exists():
        trash = final.with_name(f".{final.name}.old-{time.time_ns()}")
        final.rename(trash)
        staging.rename(final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        staging.rename(final)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError


SlideFunction = Callable[[Path, str, Path], dict[str, Any]]


def run_slide_safely(
    analyze: SlideFunction, path: Path, slide_id: str, out_dir: Path
) -> tuple[dict[str, Any] | None, str | None]:
    """Run ``analyze`` into a staging folder; returns (report, None) or (None, error)."""
    staging = out_dir / f".{slide_id}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        report = analyze(path, slide_id, staging)
    except (MicrometError, MemoryError, RuntimeError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, RuntimeError) and not _is_out_of_memory(exc):
            raise
        message = str(exc) if isinstance(exc, MicrometError) else f"{path}: out of memory ({exc})"
        return None, message
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _replace_folder(staging, out_dir / slide_id)
    return report, None


def run_batch(
    slides: Sequence[Path],
    out_dir: Path,
    analyze: SlideFunction,
    settings: dict[str, Any],
    overwrite: bool = False,
    on_slide_done: Callable[[SlideOutcome], None] | None = None,
) -> list[SlideOutcome]:
    """Analyse every slide into ``out_dir``, resuming finished ones, recording failures.

    ``analyze(path, slide_id, folder)`` writes a slide's files into ``folder`` and returns
    its report dict. ``settings`` (model checksum, configs) decides when a result is stale.
    """
    check_writable_folder(out_dir)
    manifest = read_manifest(out_dir)
    key = settings_key(settings)
    manifest.update({"micromet_version": __version__, "settings": settings, "settings_key": key})
    outcomes: list[SlideOutcome] = []
    for path, slide_id in unique_slide_ids(slides).items():
        if not overwrite and is_done(manifest, out_dir, slide_id, path, key):
            outcome = skipped_outcome(manifest, slide_id, path)
        else:
            started = time.perf_counter()
            report, error = run_slide_safely(analyze, path, slide_id, out_dir)
            seconds = round(time.perf_counter() - started, 3)
            outcome = record_outcome(manifest, out_dir, path, slide_id, key, report, error, seconds)
        outcomes.append(outcome)
        if on_slide_done is not None:
            on_slide_done(outcome)
    return outcomes


def skipped_outcome(manifest: dict[str, Any], slide_id: str, path: Path) -> SlideOutcome:
    """The outcome of a slide finished earlier, from its manifest entry."""
    entry = manifest["slides"][slide_id]
    return SlideOutcome(slide_id, str(path), "skipped", None, entry.get("category"), entry.get("score"))


def record_outcome(
    manifest: dict[str, Any],
    out_dir: Path,
    path: Path,
    slide_id: str,
    key: str,
    report: dict[str, Any] | None,
    error: str | None,
    seconds: float,
    extra: Mapping[str, Any] | None = None,
) -> SlideOutcome:
    """Write one slide's manifest entry (done with its report, or failed with its error) and
    return its outcome. ``extra`` adds fields to the entry (e.g. Ray attempts and node)."""
    entry: dict[str, Any] = {
        "path": str(path),
        "output_dir": slide_id,
        "settings_key": key,
        "seconds": seconds,
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **(extra or {}),
    }
    if report is None:
        entry.update(status=STATUS_FAILED, error=error)
        log.info("%s failed: %s", slide_id, error)
        outcome = SlideOutcome(slide_id, str(path), STATUS_FAILED, error, seconds=seconds)
    else:
        entry.update(
            status=STATUS_DONE, error=None, category=report.get("category"), score=report.get("score")
        )
        outcome = SlideOutcome(
            slide_id, str(path), STATUS_DONE, None, report.get("category"), report.get("score"), seconds
        )
    manifest["slides"][slide_id] = entry
    atomic_write_json(out_dir / MANIFEST, manifest)
    return outcome
