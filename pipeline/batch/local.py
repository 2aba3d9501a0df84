"""Batch runs: reads a list of slides, produces one output folder per slide plus a manifest.

A slide's results are built in a temporary folder and renamed into place when complete,
so an interrupted run never leaves a result that looks finished. The manifest records
every slide's status and the settings key its result was computed with; re-running the
same command skips slides already done with the same key and resumes the rest. A
slide that fails with a package error (or runs out of memory) is recorded and the
batch carries on; anything else is a bug and propagates. Ctrl-C (SIGINT) always ends
the batch with KeyboardInterrupt, also one that was swallowed on its way up (see
``watch_interrupts``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from pipeline import __version__
from pipeline.batch.folder import (
    LOCK_FILE,
    STATUS_DONE,
    STATUS_FAILED,
    STATUS_SKIPPED,
    Manifest,
    ManifestEntry,
    partial_folder,
    read_or_start_manifest,
    report_path,
    slide_folder,
    unique_slide_ids,
    write_manifest,
)
from pipeline.errors import MicrometError, OutputError, SlideOpenError
from pipeline.outputs import check_writable_folder
from pipeline.review.reviews import keep_superseded_review
from pipeline.slides.formats import SLIDE_SUFFIXES
from pipeline.slides.slide import is_dicom_folder

log = logging.getLogger(__name__)


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
        try:
            paths.extend(_expand_input(item))
        except OSError as exc:
            raise SlideOpenError(
                f"{item}: cannot read this input ({exc.strerror or exc}); check it exists and is readable"
            ) from exc
    unique: dict[Path, None] = {}
    for path in paths:
        unique.setdefault(_resolve_slide_path(path), None)
    if not unique:
        raise SlideOpenError(f"no slide files found in {', '.join(inputs)}; pass slide files or folders")
    return list(unique)


def _resolve_slide_path(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError) as exc:  # RuntimeError: a symbolic link loop (Python < 3.13)
        raise SlideOpenError(f"{path}: a symbolic link loop ({exc}); fix or remove the link") from exc


def _expand_input(item: str) -> list[Path]:
    """The slide paths one input names (``collect_slides``)."""
    paths: list[Path] = []
    path = Path(item)
    if is_dicom_folder(path):
        paths.append(path)  # one DICOM WSI series is one slide
    elif path.is_dir() and path.suffix.lower() != ".mrxs":
        found = _slide_files_in(path)
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
        _refuse_unreadable_folders(item)
        paths.extend(Path(p) for p in sorted(glob.glob(item, recursive=True)))
    else:
        raise SlideOpenError(f"{item}: no such file, folder or matching glob; check the path")
    return paths


def _refuse_unreadable_folders(pattern: str) -> None:
    """A glob skips folders it cannot list without a word, so a batch would silently miss their
    slides: raise SlideOpenError naming the first such folder the pattern reaches."""
    parts = Path(pattern).parts
    fixed = next((i for i, part in enumerate(parts) if any(ch in part for ch in "*?[")), len(parts))
    root = Path(*parts[:fixed]) if fixed else Path(".")
    rest = parts[fixed:]
    depth = None if "**" in rest else max(len(rest) - 1, 0)  # folder levels the pattern lists
    refused: list[OSError] = []
    for folder, subfolders, _ in os.walk(root, onerror=refused.append):
        level = len(Path(folder).relative_to(root).parts)
        subfolders[:] = [] if depth is not None and level >= depth else [
            name for name in subfolders if not name.startswith(".")
        ]  # fmt: skip
    refused = [e for e in refused if not isinstance(e, (FileNotFoundError, NotADirectoryError))]
    if refused:
        error = refused[0]
        raise SlideOpenError(
            f"{error.filename}: cannot read this folder ({error.strerror}), which {pattern!r} reaches, so "
            "its slides would be left out; fix its permissions or narrow the pattern"
        )


def _slide_files_in(folder: Path) -> list[Path]:
    """The slide and image files of ``folder`` (sorted); the other entries are logged as skipped
    with the reason, so a user sees what a mixed folder left out."""
    found: list[Path] = []
    skipped: list[str] = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_file():
            skipped.append(f"{entry.name} (a folder)" if entry.is_dir() else f"{entry.name} (not a file)")
        elif entry.suffix.lower() in SLIDE_SUFFIXES:
            found.append(entry)
        else:
            skipped.append(f"{entry.name} (not a slide or image suffix)")
    if found and skipped:
        log.warning(
            "%s: skipped %d of its entries: %s; slides and images end in %s",
            folder, len(skipped), ", ".join(skipped), ", ".join(SLIDE_SUFFIXES),
        )
    return found


def settings_key(settings: dict[str, Any]) -> str:
    """A short stable hash of everything that changes a slide's result."""
    payload = json.dumps({"version": __version__, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def is_done(manifest: Manifest, out_dir: Path, slide_id: str, path: Path, key: str) -> bool:
    """True if the slide finished earlier with the same settings and its report exists."""
    entry = manifest.slides.get(slide_id)
    if entry is None or not entry.done or entry.settings_key != key:
        return False
    if entry.path != str(path):
        return False
    return report_path(out_dir, slide_id, entry).is_file()


def _replace_folder(staging: Path, final: Path) -> None:
    """Move a completed staging folder into place, replacing an older result (a pathologist's
    review of it is kept: ``pipeline.review.reviews.keep_superseded_review``)."""
    if final.exists():
        keep_superseded_review(final, staging)
        trash = final.with_name(f".{final.name}.old-{time.time_ns()}")
        final.rename(trash)
        staging.rename(final)
        if trash.is_dir() and not trash.is_symlink():
            shutil.rmtree(trash, ignore_errors=True)
        else:  # a file or link in the result's place: the link goes, never what it points to
            trash.unlink(missing_ok=True)
    else:
        staging.rename(final)


def _is_out_of_memory(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    return type(exc).__name__ == "OutOfMemoryError"  # torch.cuda.OutOfMemoryError


SlideFunction = Callable[[Path, str, Path], dict[str, Any]]


@dataclasses.dataclass
class InterruptWatch:
    """Whether a SIGINT arrived while ``watch_interrupts`` was active."""

    seen: bool = False

    def raise_if_seen(self) -> None:
        """Raise KeyboardInterrupt if a SIGINT arrived, even one that was swallowed."""
        if self.seen:
            raise KeyboardInterrupt


@contextlib.contextmanager
def watch_interrupts() -> Iterator[InterruptWatch]:
    """Record every SIGINT (and SIGTERM) while active; it still raises KeyboardInterrupt as usual.

    A KeyboardInterrupt that lands inside a finaliser (a DataLoader iterator's ``__del__``
    while reader processes start or stop) is printed as "Exception ignored" and dropped, and
    a reader killed by the same Ctrl-C looks like a failed slide; the batch checks the
    watch after each slide instead. Such dropped interrupts are not printed. Outside the
    main thread, or when SIGINT is not Python's default handler (ignored, or the caller's
    own), nothing is installed.
    """
    watch = InterruptWatch()
    if (
        threading.current_thread() is not threading.main_thread()
        or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield watch
        return
    previous_hook = sys.unraisablehook

    def on_sigint(signum: int, frame: object) -> None:
        watch.seen = True
        raise KeyboardInterrupt

    def on_unraisable(unraisable: Any) -> None:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            watch.seen = True
        if not watch.seen:  # after Ctrl-C, teardown noise of half-started readers is dropped
            previous_hook(unraisable)

    signal.signal(signal.SIGINT, on_sigint)
    # SIGTERM (``kill``, a scheduler's stop) ends the batch like Ctrl-C: the slide under way
    # removes its staging folder instead of leaving it for the next run.
    terminate = signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    if terminate:
        signal.signal(signal.SIGTERM, on_sigint)
    sys.unraisablehook = on_unraisable
    try:
        yield watch
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        if terminate:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
        sys.unraisablehook = previous_hook


@contextlib.contextmanager
def lock_batch_folder(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the batch folder while a run writes into it.

    A second run on the same folder (same machine, or a file system with working locks)
    raises OutputError at once instead of mixing its manifest and staging folders with the
    first one's. The lock goes with the process, so a killed run leaves none behind.
    """
    import fcntl

    path = out_dir / LOCK_FILE
    try:
        handle = path.open("a+")
    except OSError as exc:
        raise OutputError(
            f"{path}: cannot create the batch lock ({exc.strerror}); choose another --out"
        ) from exc
    with handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            raise OutputError(
                f"{out_dir}: another micromet run is writing to this batch folder; wait for it to "
                "finish, or choose another --out"
            ) from exc
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def remove_path(path: Path) -> None:
    """Remove a file, a link (never what it points to) or a folder tree; nothing if absent."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def run_slide_safely(
    analyze: SlideFunction, path: Path, slide_id: str, out_dir: Path
) -> tuple[dict[str, Any] | None, str | None]:
    """Run ``analyze`` into a staging folder; returns (report, None) or (None, error)."""
    staging = partial_folder(out_dir, slide_id)
    try:
        remove_path(staging)
        staging.mkdir(parents=True)
    except OSError as exc:
        raise OutputError(
            f"{staging}: cannot make the slide's working folder ({exc.strerror}); remove it and re-run"
        ) from exc
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
    _replace_folder(staging, slide_folder(out_dir, slide_id))
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
    Raises KeyboardInterrupt after Ctrl-C; the manifest then holds every finished slide,
    and a slide that failed during the interrupt is not recorded (it reruns next time).
    """
    check_writable_folder(out_dir)
    with lock_batch_folder(out_dir):
        return _run_locked(slides, out_dir, analyze, settings, overwrite, on_slide_done)


def _run_locked(
    slides: Sequence[Path],
    out_dir: Path,
    analyze: SlideFunction,
    settings: dict[str, Any],
    overwrite: bool,
    on_slide_done: Callable[[SlideOutcome], None] | None,
) -> list[SlideOutcome]:
    manifest = read_or_start_manifest(out_dir)
    key = settings_key(settings)
    start_run(manifest, settings, key)
    outcomes: list[SlideOutcome] = []
    with watch_interrupts() as interrupts:
        for path, slide_id in unique_slide_ids(slides).items():
            if not overwrite and is_done(manifest, out_dir, slide_id, path, key):
                outcome = skipped_outcome(manifest, slide_id, path)
            else:
                started = time.perf_counter()
                report, error = run_slide_safely(analyze, path, slide_id, out_dir)
                if report is None:
                    interrupts.raise_if_seen()  # the failure may be the interrupt's doing
                seconds = round(time.perf_counter() - started, 3)
                outcome = record_outcome(manifest, out_dir, path, slide_id, key, report, error, seconds)
            interrupts.raise_if_seen()
            outcomes.append(outcome)
            if on_slide_done is not None:
                on_slide_done(outcome)
    return outcomes


def start_run(manifest: Manifest, settings: dict[str, Any], key: str) -> None:
    """Record this run's version, settings and their key in the manifest (written with the
    first slide's entry)."""
    manifest.micromet_version = __version__
    manifest.settings = settings
    manifest.settings_key = key


def skipped_outcome(manifest: Manifest, slide_id: str, path: Path) -> SlideOutcome:
    """The outcome of a slide finished earlier, from its manifest entry."""
    entry = manifest.slides[slide_id]
    return SlideOutcome(slide_id, str(path), STATUS_SKIPPED, None, entry.category, entry.score)


def record_outcome(
    manifest: Manifest,
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
    done = report is not None
    category = report.get("category") if report is not None else None
    score = report.get("score") if report is not None else None
    entry = ManifestEntry(
        path=str(path),
        status=STATUS_DONE if done else STATUS_FAILED,
        output_dir=slide_id,
        error=None if done else error,
        settings_key=key,
        category=category,
        score=score,
        seconds=seconds,
        finished=time.strftime("%Y-%m-%dT%H:%M:%S"),
        extra=dict(extra or {}),
    )
    if done:
        outcome = SlideOutcome(slide_id, str(path), STATUS_DONE, None, category, score, seconds)
    else:
        log.info("%s failed: %s", slide_id, error)
        outcome = SlideOutcome(slide_id, str(path), STATUS_FAILED, error, seconds=seconds)
    manifest.slides[slide_id] = entry
    write_manifest(out_dir, manifest)
    return outcome
