"""Output helpers shared by every stage that writes files: atomic writes, CSV cells, JSON reading.

A file is written to a temporary name in the same folder and renamed, so an interrupted
run never leaves a half-written file under its final name.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import MicrometError, OutputError

# A cell starting with one of these is run as a formula by Excel, LibreOffice and Google
# Sheets (OWASP "CSV injection"); tab and carriage return hide such a start.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def csv_safe(value: Any) -> Any:
    """A CSV cell a spreadsheet will show as text, never run as a formula.

    A string starting with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets a leading
    single quote, unless it is a plain number ("-0.5", "+1e-3"), which stays a number.
    Anything else (numbers, None, other strings) is returned unchanged.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(value):
        return "'" + value
    return value


def csv_safe_row(values: Iterable[Any]) -> list[Any]:
    """``csv_safe`` of every cell of a row (for ``csv.writer.writerow``)."""
    return [csv_safe(value) for value in values]


def csv_safe_dict(row: Mapping[str, Any]) -> dict[str, Any]:
    """``csv_safe`` of every value of a row (for ``csv.DictWriter.writerow``)."""
    return {key: csv_safe(value) for key, value in row.items()}


def csv_unquote(cell: str) -> str:
    """The inverse of ``csv_safe`` for a cell micromet wrote: drops the quote it added."""
    if cell.startswith("'") and cell[1:].startswith(_FORMULA_START):
        return cell[1:]
    return cell


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write ``payload`` to ``path`` via a temporary file and ``os.replace``.

    Every atomic write of micromet goes through here, so a folder that cannot be written
    (missing permission, a file in the way, a full disk) is one OutputError naming the file.
    """
    if path.exists() and not path.is_file():
        kind = "a folder" if path.is_dir() else "not a regular file but a device, FIFO or socket"
        raise OutputError(f"{path}: cannot write here ({kind}, which micromet never replaces)")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise _write_error(path, exc) from exc
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(payload)
        os.chmod(temporary, 0o666 & ~_current_umask())  # mkstemp creates files 0600
        os.replace(temporary, path)
    except OSError as exc:
        Path(temporary).unlink(missing_ok=True)
        raise _write_error(path, exc) from exc
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _write_error(path: Path, exc: OSError) -> OutputError:
    reason = exc.strerror or str(exc)
    return OutputError(f"{path}: cannot write here ({reason}); check the folder is writable and has space")


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write strict JSON (indented, UTF-8, non-ASCII kept) atomically.

    NaN and infinity are not JSON: a payload holding them raises ValueError (a bug: write
    undefined values as None) and nothing is written.
    """
    text = json.dumps(payload, indent=2, ensure_ascii=False, allow_nan=False)
    atomic_write_text(path, text + "\n")


def refuse_replacing_batch_file(batch_dir: Path, out_path: Path, flag: str, allowed_name: str = "") -> None:
    """OutputError where ``out_path`` would replace an existing file of the batch folder
    ``batch_dir`` (its manifest, summary, a slide's outputs), except one named ``allowed_name``."""
    try:
        inside = out_path.resolve().is_relative_to(batch_dir.resolve())
        taken = out_path.exists() or out_path.is_symlink()
    except (OSError, RuntimeError):
        return  # a path the system refuses: its writer names it
    if inside and taken and out_path.name != allowed_name:
        raise OutputError(f"{out_path}: {flag} would replace a file of the batch folder {batch_dir}; "
                          "write it outside the batch folder")


def check_writable_folder(folder: Path) -> None:
    """Create ``folder`` if needed and prove it is writable; raises OutputError otherwise."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-", delete=True):
            pass
    except OSError as exc:
        raise OutputError(
            f"{folder}: output folder is not writable ({exc.strerror}); choose another --out"
        ) from exc


def require_regular_file(path: Path, what: str, error: type[MicrometError]) -> None:
    """Raise ``error`` naming ``path`` when it exists but is no regular file (a folder, device or
    FIFO): reading a FIFO or a device would block or never end. A missing file is left to the
    reader, which names it."""
    if path.exists() and not path.is_file():
        raise error(f"{path}: the {what} is not a regular file; pass a CSV file")


def read_json_object(
    path: Path, what: str, error: type[MicrometError] = OutputError, hint: str = ""
) -> dict[str, Any]:
    """Read a JSON file that must hold an object; raises ``error`` naming the file and ``what``.

    ``hint`` (e.g. "; re-run the batch") is appended to the message.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise error(f"{path}: cannot read the {what} ({exc}){hint}") from exc
    except RecursionError as exc:
        raise error(f"{path}: cannot read the {what} (nested too deeply){hint}") from exc
    if not isinstance(data, dict):
        raise error(f"{path}: the {what} is not a JSON object{hint}")
    return data

