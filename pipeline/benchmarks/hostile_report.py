"""The hostile-input sweep's results (issue 22): reads the JSON lines the sweep writes, counts
verdicts by category and command, and writes the Markdown section of docs/hostile_inputs.md."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline.benchmarks.hostile_sweep import FAILURES, Outcome

__all__ = ["PASSES", "markdown_section", "outcome_record", "read_results", "summarise", "write_docs_section"]

DOCS_START = "<!-- hostile-sweep:start -->"
DOCS_END = "<!-- hostile-sweep:end -->"
PASSES = ("refused", "accepted", "refused_unclear", "setup_error")
VERDICTS = (*FAILURES, *PASSES)


def outcome_record(outcome: Outcome) -> dict[str, Any]:
    """A JSON-ready dict of an outcome."""
    return dataclasses.asdict(outcome)


def read_results(path: Path) -> dict[str, dict[str, Any]]:
    """The outcomes recorded so far in a results.jsonl, by case id (the last record wins)."""
    records: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                records[record["case_id"]] = record
    return records


def summarise(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Counts by verdict, by category and by command, and the failing cases."""
    records = list(records)

    def table(key: str) -> dict[str, dict[str, int]]:
        rows: dict[str, dict[str, int]] = {}
        for record in records:
            row = rows.setdefault(record[key], dict.fromkeys(VERDICTS, 0))
            row[record["verdict"]] += 1
        return dict(sorted(rows.items()))

    counts = dict.fromkeys(VERDICTS, 0)
    for record in records:
        counts[record["verdict"]] += 1
    failures = [record for record in records if record["verdict"] in FAILURES]
    return {"cases": len(records), "verdicts": counts, "by_category": table("category"),
            "by_command": table("command"), "failures": failures}


def _name(verdict: str) -> str:
    return verdict.replace("_", " ")


def markdown_section(summary: dict[str, Any], machine: str, command_line: str, date: str) -> str:
    """The Markdown section of docs/hostile_inputs.md that reports a sweep."""
    verdicts = summary["verdicts"]
    lines = [
        DOCS_START, "## The hostile sweep: every command against generated hostile cases", "",
        f"{summary['cases']} cases on {machine}, each in its own process (60 s limit), summarised {date} "
        "(a resumed or partly rerun sweep counts each case's last run):", "",
        f"    {command_line}", "",
        "Failures: " + ", ".join(f"{verdicts[v]} {_name(v)}" for v in FAILURES) + ". "
        "Passes: " + ", ".join(f"{verdicts[v]} {_name(v)}" for v in PASSES) + ".", "",
        "*refused*: non-zero exit with one error line; *accepted*: exit 0 where the input may be valid; "
        "*refused unclear*: non-zero exit without exactly one error line; *silent acceptance*: exit 0 on "
        "an input that must be refused; *data loss*: a guarded file changed or a file was written outside "
        "the case's folder; *traceback*: an exception reached the crash-log handler. Cases: "
        "`pipeline/benchmarks/hostile_cases.py`, `hostile_filecases.py`, `hostile_files.py`; runner and "
        "verdicts: `hostile_sweep.py`; every outcome: `docs/hostile_sweep.json`.", "",
    ]
    for title, key in (("category", "by_category"), ("command", "by_command")):
        lines += [f"| {title} | cases | " + " | ".join(_name(v) for v in VERDICTS) + " |",
                  "|---|---:|" + "---:|" * len(VERDICTS)]
        for name, row in summary[key].items():
            cells = " | ".join(str(row[v]) for v in VERDICTS)
            lines.append(f"| {name} | {sum(row.values())} | {cells} |")
        lines.append("")
    if summary["failures"]:
        lines += ["Failures left:", ""]
        lines += [f"- `{r['case_id']}`: {_name(r['verdict'])}: {r['detail'][:160]}"
                  for r in summary["failures"]]
        lines.append("")
    lines.append(DOCS_END)
    return "\n".join(lines) + "\n"


def write_docs_section(path: Path, section: str) -> None:
    """Replace the sweep's section of ``path`` (between its markers), or append it."""
    text = path.read_text(encoding="utf-8")
    if DOCS_START in text and DOCS_END in text:
        head, rest = text.split(DOCS_START, 1)
        text = head + section.rstrip("\n") + rest.split(DOCS_END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")
