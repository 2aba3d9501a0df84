"""The harness every benchmark shares: the machine it ran on, the peak memory of a process
tree, and the rewriting of its own section of docs/benchmarks.md.

``machine_facts`` (CPU model and kind, cores, RAM, OS, Python, load) heads every section;
``TreeRssSampler`` samples the summed resident memory of a measured process and its workers;
``replace_section`` / ``write_docs_section`` put one benchmark's ``## `` section into the
Markdown file, keeping the others. Standard library only.
"""

from __future__ import annotations

import os
import platform
import threading
from pathlib import Path
from typing import Any

__all__ = [
    "TreeRssSampler", "cpu_flags", "cpu_kind", "machine_facts", "process_tree", "replace_section", "rss_mb",
    "write_docs_section",
]

_SAMPLE_INTERVAL_S = 0.2


def _proc_value(path: str, key: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            for line in handle:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        return None
    return None


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none)."""
    return set((_proc_value("/proc/cpuinfo", "flags") or "").split())


def cpu_kind() -> str:
    """The CPU model and the vector extensions that decide CPU scoring speed (bf16 or not)."""
    model = _proc_value("/proc/cpuinfo", "model name") or platform.processor() or "unknown CPU"
    flags = cpu_flags()
    shown = [name for name in ("avx2", "avx512f", "avx512_bf16", "amx_tile") if name in flags]
    native_bf16 = "native bf16" if {"avx512_bf16", "amx_tile"} & flags else "no native bf16"
    return f"{model} ({', '.join(shown) or 'no AVX2'}; {native_bf16})"


def machine_facts() -> dict[str, Any]:
    """CPU model and kind, cores, RAM, OS, Python and the current load average."""
    memory_kib = _proc_value("/proc/meminfo", "MemTotal")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_kind(),
        "cores": os.cpu_count(),
        "usable_cores": usable,
        "ram_gib": round(int(memory_kib.split()[0]) / 2**20, 1) if memory_kib else None,
        "os": platform.platform(),
        "python": platform.python_version(),
        "load_average": round(os.getloadavg()[0], 1) if hasattr(os, "getloadavg") else None,
    }


def _parent_map() -> dict[int, int]:
    """pid -> parent pid of every process, from /proc (empty where there is no /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text(encoding="utf-8")
        except OSError:
            continue  # the process ended while we looked
        fields = stat[stat.rfind(")") + 2 :].split()
        parents[int(entry.name)] = int(fields[1])
    return parents


def process_tree(root_pid: int) -> set[int]:
    """``root_pid`` and all its descendants (just ``root_pid`` where there is no /proc)."""
    parents = _parent_map()
    tree, frontier = {root_pid}, [root_pid]
    while frontier:
        pid = frontier.pop()
        children = [child for child, parent in parents.items() if parent == pid]
        tree.update(children)
        frontier.extend(children)
    return tree


def rss_mb(pid: int) -> float | None:
    """Resident set size of ``pid`` in MB from /proc/PID/statm (None if unreadable)."""
    try:
        pages = int(Path(f"/proc/{pid}/statm").read_text(encoding="utf-8").split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


class TreeRssSampler:
    """Samples the summed RSS of a process tree in a thread; ``peak_mb`` is the largest seen.

    The tree is re-listed every ``rescan_every`` samples only: listing means reading every
    process's /proc entry, which would otherwise cost the benchmarked processes CPU time.
    """

    def __init__(self, root_pid: int, interval_s: float = _SAMPLE_INTERVAL_S, rescan_every: int = 5) -> None:
        self.root_pid, self.interval_s, self.rescan_every = root_pid, interval_s, rescan_every
        self.peak_mb: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        tree, count = {self.root_pid}, 0
        while not self._stop.is_set():
            if count % self.rescan_every == 0:
                tree = process_tree(self.root_pid)
            count += 1
            values = [v for v in (rss_mb(pid) for pid in tree) if v is not None]
            if values:
                self.peak_mb = max(self.peak_mb or 0.0, sum(values))
            self._stop.wait(self.interval_s)

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def replace_section(text: str, heading: str, section: str) -> str:
    """``text`` with the ``## `` section starting at ``heading`` replaced by ``section``
    (appended when absent); other sections are kept as they are."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == heading), None)
    body = section.strip("\n") + "\n"
    if start is None:
        return (text.rstrip("\n") + "\n\n" if text.strip() else "") + body
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    rest = "".join(lines[end:])
    return "".join(lines[:start]) + body + ("\n" + rest if rest else "")


def write_docs_section(path: Path, heading: str, section: str) -> None:
    """Replace (or append) the section under ``heading`` in the Markdown file ``path``, keeping
    its other sections; a missing file starts as ``# Benchmarks``."""
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    path.write_text(replace_section(text, heading, section), encoding="utf-8")
