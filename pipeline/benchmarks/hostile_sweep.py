"""The hostile-input sweep (issue 22): runs cases of hostile_cases / hostile_filecases, each in
its own forked process with a timeout, and sorts the outcomes into passes and failures.

Reads nothing but what it generates: small fixtures (a pyramidal TIFF, an untrained checkpoint,
patches, a finished batch, training runs) built once under the work folder. A case's process is
forked from a parent that already imported everything the commands import, in its own folder
(its working and temporary folder), in its own process group (killed at the timeout), with its
address space capped; a case that makes a file unreadable runs as ``nobody`` where the sweep
runs as root.

Verdicts: refused (non-zero exit, one error line), accepted (exit 0, the input may be valid),
refused_unclear (non-zero exit without exactly one error line), setup_error (the case could not
be prepared); the failures: traceback (an exception escaped, the crash-log handler ran, or a
signal killed it), hang (past the timeout), silent_acceptance (exit 0 on an input that must be
refused), data_loss (a guarded file changed, the fixtures changed, a file written outside the
case folder), security (a pickle payload ran or a local file's content was printed).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import resource
import shutil
import signal
import stat
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from pipeline.benchmarks.hostile_cases import FIXTURE_SLIDE_ID, Case, Guard, Step, base_argv

__all__ = ["FAILURES", "Outcome", "build_fixtures", "classify", "import_warm_modules", "run_cases"]

FAILURES = ("traceback", "hang", "silent_acceptance", "data_loss", "security")
NOBODY = 65534
MEMORY_HEADROOM_BYTES = 4 << 30
_OUTPUT_LIMIT_BYTES = 1 << 20
# Modules a hostile input may need that the fixture runs did not import (codecs, process pools).
_MORE_MODULES = ("encodings.unicode_escape", "encodings.idna", "encodings.utf_16", "encodings.utf_32",
                 "encodings.latin_1", "encodings.ascii", "encodings.cp1252", "concurrent.futures.process",
                 "concurrent.futures.thread", "multiprocessing.popen_fork",
                     "multiprocessing.popen_spawn_posix",
                 "socketserver", "http.server", "webbrowser", "mimetypes")


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one case did."""

    case_id: str
    category: str
    command: str
    must_refuse: bool
    verdict: str
    exit_code: int | None
    seconds: float
    detail: str


def expand(text: str, case_dir: Path, fixtures: Path) -> str:
    """``text`` with {case} and {fx} replaced by the case's folder and the fixtures folder."""
    return text.replace("{case}", str(case_dir)).replace("{fx}", str(fixtures))


# --- fixtures ---------------------------------------------------------------------------------


# The micromet command line (pipeline.cli.main), handed in by the caller: nothing in pipeline/
# outside pipeline/cli/ imports the command line.
Command = Callable[[list[str]], int]


def _write_fixtures(fixtures: Path, main: Command) -> None:
    """The valid inputs every case changes one thing of (runs in a forked child)."""
    import numpy as np
    import torch
    from PIL import Image

    from pipeline.models import ModelCard, build_model, save_checkpoint
    from pipeline.synthetic.pyramid_tiff import draw_tissue_rgb, write_pyramid_tiff

    for sub in ("slide", "nompp", "patches/tumor", "patches/normal"):
        (fixtures / sub).mkdir(parents=True, exist_ok=True)
    slide = fixtures / "slide" / f"{FIXTURE_SLIDE_ID}.tif"
    write_pyramid_tiff(slide, draw_tissue_rgb(520, 380), 0.5, n_levels=2)
    write_pyramid_tiff(fixtures / "nompp" / "patient_000_node_1.tif", draw_tissue_rgb(520, 380, seed=1), None,
                       n_levels=2)
    torch.manual_seed(0)
    card = ModelCard(architecture="micronet", tile_size_px=32, mpp=2.0, threshold=0.5,
                     training_data="untrained hostile-sweep model")
    save_checkpoint(fixtures / "model.pt", build_model("micronet"), card)
    Image.fromarray(draw_tissue_rgb(64, 64)).save(fixtures / "patch.png")
    for index in range(6):
        tissue = draw_tissue_rgb(64, 64, seed=10 + index)
        Image.fromarray(tissue).save(fixtures / "patches" / "normal" / f"n{index}.png")
        dark = (tissue.astype(np.float32) * 0.6).astype(np.uint8)
        Image.fromarray(dark).save(fixtures / "patches" / "tumor" / f"t{index}.png")
    rows = [f"{slide},{100 + 40 * i}.0,{150 + 10 * i}.0,{i % 2},{'train' if i < 6 else 'val'},"
            f"{'tumor' if i % 2 else 'normal'}" for i in range(8)]
    (fixtures / "index.csv").write_text("slide,x_px,y_px,label,split,kind\n" + "\n".join(rows) + "\n")
    (fixtures / "categories.csv").write_text(f"slide,category\n{FIXTURE_SLIDE_ID},negative\n")
    polygon = [[[100, 100], [200, 100], [200, 200], [100, 100]]]
    (fixtures / "review.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"classification": {"name": "Tumor"}},
         "geometry": {"type": "Polygon", "coordinates": polygon}}]}))
    runs = {"infer": "batch", "train": "run", "train_index": "index_run", "info": ""}
    for name, out in runs.items():
        argv = [expand(word, fixtures / out, fixtures) for word in base_argv(name)]
        if out:
            argv[argv.index("--out") + 1] = str(fixtures / out)
        if main(argv) != 0:
            raise RuntimeError(f"hostile sweep fixture: micromet {' '.join(argv)} failed")
    warm = fixtures / "warm"  # every other command once, so the sweep's parent imports what they import
    shutil.copytree(fixtures / "batch", warm / "batch")
    for name in ("stage", "classify", "evaluate", "report", "review", "synth"):
        main([expand(word, warm, fixtures) for word in base_argv(name)])
    (fixtures / "modules.txt").write_text("\n".join(sorted(sys.modules)) + "\n")


def build_fixtures(work: Path, main: Command, timeout_s: float = 600.0) -> Path:
    """Build (once) the fixtures under ``work``/fixtures in a child process; returns the folder."""
    fixtures = work / "fixtures"
    if (fixtures / "modules.txt").is_file():
        return fixtures
    shutil.rmtree(fixtures, ignore_errors=True)
    fixtures.mkdir(parents=True)
    code, timed_out = _run_forked(lambda: _write_fixtures(fixtures, main), work / "fixtures.log", timeout_s)
    if code != 0 or timed_out:
        raise RuntimeError(f"hostile sweep: building the fixtures failed; see {work / 'fixtures.log.err'}")
    for path in [work, *fixtures.rglob("*")]:
        mode = path.stat().st_mode
        path.chmod(mode | stat.S_IROTH | (stat.S_IXOTH if stat.S_ISDIR(mode) else 0))
    return fixtures


def import_warm_modules(fixtures: Path) -> None:
    """Import in this process every module the fixture runs imported, so a forked case starts warm;
    torch then uses one thread (a forked child must not inherit a thread pool)."""
    import importlib

    import torch

    torch.set_num_threads(1)
    for name in [*(fixtures / "modules.txt").read_text().split(), *_MORE_MODULES]:
        if name == "__main__" or name.startswith("__mp_main__"):
            continue
        with contextlib.suppress(Exception):  # a module that imports only in its own context
            importlib.import_module(name)


def fingerprint(folder: Path) -> dict[str, tuple[int, int, int]]:
    """(size, mtime_ns, mode) of every path under ``folder``."""
    prints: dict[str, tuple[int, int, int]] = {}
    for path in folder.rglob("*"):
        info = path.lstat()
        prints[str(path.relative_to(folder))] = (info.st_size, info.st_mtime_ns, info.st_mode)
    return prints


# --- one case ---------------------------------------------------------------------------------


def _apply(step: Step, case_dir: Path, fixtures: Path) -> None:
    path = Path(expand(step.path, case_dir, fixtures))
    target = expand(step.target, case_dir, fixtures)
    if step.action == "write":
        path.write_bytes(step.data)
    elif step.action == "mkdir":
        path.mkdir(parents=True, exist_ok=True)
    elif step.action == "fifo":
        os.mkfifo(path)
    elif step.action == "chardev":  # a case's own device node: a bug that replaces it harms no /dev
        minor = 5 if step.target == "zero" else 3
        if os.geteuid() == 0:
            os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, minor))
        else:
            path.symlink_to("/dev/zero" if minor == 5 else "/dev/null")
    elif step.action == "symlink":
        path.symlink_to(target)
    elif step.action == "copy":
        shutil.copyfile(target, path)
    elif step.action == "copytree":
        shutil.copytree(target, path, symlinks=True)
    elif step.action == "rmtree":
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    elif step.action == "chmod":
        path.chmod(step.mode)
    else:
        raise ValueError(f"unknown step {step.action!r}")


def _drop_privileges(case: Case, case_dir: Path) -> None:
    """Run as nobody where the sweep runs as root and the case made a file unreadable (chmod 000
    means nothing to root). Only those cases: Python itself may live where nobody cannot read."""
    if os.geteuid() != 0 or not any(step.action == "chmod" for step in case.steps):
        return
    for root, dirs, names in os.walk(case_dir):
        for name in [*dirs, *names]:
            os.lchown(os.path.join(root, name), NOBODY, NOBODY)
    os.lchown(case_dir, NOBODY, NOBODY)
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _limit_memory() -> None:
    """Address space capped at what the warm parent maps plus MEMORY_HEADROOM_BYTES."""
    with open("/proc/self/statm") as stream:
        mapped = int(stream.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (mapped + MEMORY_HEADROOM_BYTES, resource.RLIM_INFINITY))


def _run_case_in_child(case: Case, case_dir: Path, fixtures: Path, main: Command) -> int:
    """The body of a case's forked process; returns its exit code."""
    import tempfile

    try:
        os.chdir(case_dir)
        (case_dir / "tmp").mkdir()
        tempfile.tempdir = str(case_dir / "tmp")
        os.environ.update(TMPDIR=str(case_dir / "tmp"), HOME=str(case_dir))
        for step in case.steps:
            _apply(step, case_dir, fixtures)
        _drop_privileges(case, case_dir)
        _limit_memory()
    except Exception as exc:  # a case that could not be prepared is reported as such
        print(f"SWEEP-SETUP-ERROR: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 97
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        return main([expand(word, case_dir, fixtures) for word in case.argv])
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # what escapes main is exactly what the sweep looks for
        import traceback

        traceback.print_exc()
        print("SWEEP-UNCAUGHT: an exception escaped micromet's main", file=sys.stderr)
        return 3


def _start(body: Callable[[], int | None], log: Path) -> int:
    """Fork a child in its own process group, its stdout and stderr in ``log``.out and .err."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        with contextlib.suppress(OSError):  # the child already did it, or already ended
            os.setpgid(pid, pid)
        return pid
    code = 99
    try:
        os.setpgid(0, 0)
        for fd, suffix in ((1, ".out"), (2, ".err")):
            handle = os.open(f"{log}{suffix}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(handle, fd)
            os.close(handle)
        # a parent whose sys.stdout / sys.stderr are not fds 1 and 2 (pytest's capture)
        sys.stdout = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
        result = body()
        code = result if isinstance(result, int) else 0
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code & 0xFF if code >= 0 else 1)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _run_forked(body: Callable[[], int | None], log: Path, timeout_s: float) -> tuple[int | None, bool]:
    pid = _start(body, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            _kill_group(pid)
            return os.waitstatus_to_exitcode(status), False
        time.sleep(0.05)
    _kill_group(pid)
    os.waitpid(pid, 0)
    return None, True


# --- verdicts ---------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as stream:
            return stream.read(_OUTPUT_LIMIT_BYTES).decode("utf-8", "replace")
    except OSError:
        return ""


def _guard_broken(guard: Guard, case_dir: Path, fixtures: Path) -> str:
    """Why ``guard`` no longer holds, or ""."""
    path = Path(expand(guard.path, case_dir, fixtures))
    if guard.kind == "absent":
        return f"{path.name} appeared (a payload ran)" if os.path.lexists(path) else ""
    try:
        info = path.stat() if guard.kind == "chardev" else path.lstat()
    except OSError:
        return f"{path.name} is gone"
    checks: dict[str, Callable[[], bool]] = {
        "chardev": lambda: stat.S_ISCHR(info.st_mode),
        "fifo": lambda: stat.S_ISFIFO(info.st_mode),
        "dir": lambda: stat.S_ISDIR(info.st_mode),
        "bytes": lambda: stat.S_ISREG(info.st_mode) and path.read_bytes() == guard.data,
        "same_as": lambda: path.read_bytes() == Path(expand(guard.data.decode(), case_dir,
            fixtures)).read_bytes(),
        "json": lambda: isinstance(json.loads(path.read_text()), dict),
    }
    try:
        return "" if checks[guard.kind]() else f"{path.name} was changed ({guard.kind})"
    except (OSError, ValueError):
        return f"{path.name} was changed ({guard.kind})"


def classify(case: Case, code: int | None, timed_out: bool, stdout: str, stderr: str,
             broken: Iterable[str]) -> tuple[str, str]:
    """(verdict, detail) of one run: see the module docstring for the verdicts."""
    broken = [reason for reason in broken if reason]
    # an error line: "micromet CMD: error: ...", or a batch's "failed: SLIDE: why" for a slide it gave up
    error_lines = [line for line in stderr.splitlines() if "error:" in line or line.startswith("failed: ")]
    lines = [line for line in stderr.splitlines() if line.strip()]
    if "root:x:0:0" in stdout + stderr or any("payload" in reason for reason in broken):
        return "security", "; ".join(broken) or "a local file's content was printed"
    if broken:
        return "data_loss", "; ".join(broken)
    if timed_out:
        if case.serves:
            return ("silent_acceptance" if case.must_refuse else "accepted"), "served until the timeout"
        return "hang", f"no exit before the timeout; last output: {(stdout + stderr)[-200:]!r}"
    if code == 97 and "SWEEP-SETUP-ERROR" in stderr:
        return "setup_error", stderr.strip()[-300:]
    as_nobody = any(step.action == "chmod" for step in case.steps)
    if as_nobody and ("ModuleNotFoundError" in stderr or f"Permission denied: '{sys.executable}" in stderr):
        return "setup_error", "run as nobody, Python could not read its own files"
    if ("Traceback (most recent call last)" in stdout + stderr or "internal error:" in stderr
            or "SWEEP-UNCAUGHT" in stderr or code is None or code < 0):
        reason = next((line for line in lines if "internal error:" in line),
            lines[-1] if lines else f"exit {code}")
        return "traceback", reason[:300]
    if code == 0:
        return ("silent_acceptance",
            f"exit 0: {stderr.strip()[-200:]!r}") if case.must_refuse else ("accepted", "")
    first = error_lines[0] if error_lines else lines[-1] if lines else ""
    return ("refused" if len(error_lines) == 1 else "refused_unclear"), first[:300]


def _outcome(case: Case, case_dir: Path, fixtures: Path, code: int | None, timed_out: bool, seconds: float,
             extra: list[str]) -> Outcome:
    stdout, stderr = _read(case_dir.with_suffix(".out")), _read(case_dir.with_suffix(".err"))
    crash_logs = list((case_dir / "tmp").glob("micromet-crash-*")) if (case_dir / "tmp").is_dir() else []
    if crash_logs and "internal error:" not in stderr:
        stderr += "\ninternal error: crash log " + crash_logs[0].name
    broken = [_guard_broken(guard, case_dir, fixtures) for guard in case.guards] + extra
    verdict, detail = classify(case, code, timed_out, stdout, stderr, broken)
    return Outcome(case.case_id, case.category, case.command, case.must_refuse, verdict, code, round(seconds,
        3),
                   detail)


def _clean(case_dir: Path) -> None:
    """Remove a case's folder and output, whatever modes the case left in its folder."""
    for root, dirs, _names in os.walk(case_dir):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), 0o755)
    shutil.rmtree(case_dir, ignore_errors=True)
    for suffix in (".out", ".err"):
        case_dir.with_suffix(suffix).unlink(missing_ok=True)


def _changes(work: Path, fixtures: Path, seen: dict[str, object]) -> list[str]:
    """Changes a case made outside its own folder: the fixtures, new entries in ``work``."""
    found: list[str] = []
    now = fingerprint(fixtures)
    if now != seen["fixtures"]:
        previous = seen["fixtures"]
        assert isinstance(previous, dict)
        changed = sorted(name for name in now.keys() | previous.keys() if now.get(name) != previous.get(name))
        found.append(f"the shared fixtures changed: {changed[:5]}")
        seen["fixtures"] = now
    entries = set(os.listdir(work))
    known = seen["work"]
    assert isinstance(known, set)
    if entries - known:
        found.append(f"files written outside the case folder: {sorted(entries - known)[:5]}")
        seen["work"] = entries
    return found


def run_cases(cases: list[Case], main: Command, fixtures: Path, work: Path, timeout_s: float, jobs: int,
              on_outcome: Callable[[Outcome], None], keep: bool = False) -> list[Outcome]:
    """Run ``cases`` (at most ``jobs`` at once), calling ``on_outcome`` as each ends; returns the
    outcomes in the order they ended. Case folders are removed unless ``keep``."""
    runs = work / "cases"
    runs.mkdir(parents=True, exist_ok=True)
    seen: dict[str, object] = {"fixtures": fingerprint(fixtures), "work": set(os.listdir(work))}
    pending = list(enumerate(cases))
    running: dict[int, tuple[Case, Path, float]] = {}
    outcomes: list[Outcome] = []
    while pending or running:
        while pending and len(running) < jobs:
            index, case = pending.pop(0)
            case_dir = runs / f"{index:05d}"
            _clean(case_dir)
            case_dir.mkdir()
            pid = _start(functools.partial(_run_case_in_child, case, case_dir, fixtures, main), case_dir)
            running[pid] = (case, case_dir, time.monotonic())
        time.sleep(0.02)
        for pid, (case, case_dir, started) in list(running.items()):
            done, status = os.waitpid(pid, os.WNOHANG)
            timed_out = not done and time.monotonic() - started > timeout_s
            if not done and not timed_out:
                continue
            _kill_group(pid)
            if timed_out:
                os.waitpid(pid, 0)
            del running[pid]
            code = None if timed_out else os.waitstatus_to_exitcode(status)
            outcome = _outcome(case, case_dir, fixtures, code, timed_out, time.monotonic() - started,
                               _changes(work, fixtures, seen))
            outcomes.append(outcome)
            on_outcome(outcome)
            if not keep:
                _clean(case_dir)
    return outcomes
