"""Run the hostile-input sweep of issue 22 (pipeline/benchmarks/hostile_sweep.py) and report it.

    nice -n 19 .venv/bin/python scripts/hostile_sweep.py --write-docs

Resumes where results.jsonl in --work stops; --only and --rerun run chosen cases again.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import random
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.benchmarks import hostile_report, hostile_sweep  # noqa: E402
from pipeline.benchmarks.hostile_filecases import all_cases  # noqa: E402
from pipeline.cli import main as cli_main  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path("/tmp/micromet-hostile-sweep"),
                        help="fixtures, case folders and results.jsonl")
    parser.add_argument("--seed", type=int, default=22,
        help="seed of the generated damage and of --sample (22)")
    parser.add_argument("--timeout-s", type=float, default=60.0, help="a case running longer is a hang (60)")
    parser.add_argument("--jobs", type=int, default=2, help="cases at once (2)")
    parser.add_argument("--sample", type=int, default=0, help="run only this many cases, drawn with --seed")
    parser.add_argument("--only", action="append", default=[], help="only cases whose id contains this")
    parser.add_argument("--rerun", action="store_true", help="run chosen cases again even if recorded")
    parser.add_argument("--list", action="store_true", help="print the case ids, run nothing")
    parser.add_argument("--keep", action="store_true", help="keep each case's folder and output")
    parser.add_argument("--write-docs", action="store_true",
                        help="write the section of docs/hostile_inputs.md and docs/hostile_sweep.json")
    return parser.parse_args()


def write_docs(records: list[dict[str, object]], summary: dict[str, object], seed: int) -> None:
    date = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    machine = f"{platform.machine()} Linux, {os.cpu_count()} CPUs, Python {platform.python_version()}"
    command = "nice -n 19 .venv/bin/python scripts/hostile_sweep.py --write-docs" + (
        f" --seed {seed}" if seed != 22 else "")
    section = hostile_report.markdown_section(summary, machine, command, date)
    hostile_report.write_docs_section(REPO / "docs" / "hostile_inputs.md", section)
    outcomes = [[r["case_id"], r["verdict"], r["exit_code"]] for r in records]
    compact = {**summary, "date": date, "machine": machine, "command": command, "outcomes": outcomes}
    (REPO / "docs" / "hostile_sweep.json").write_text(json.dumps(compact, indent=1) + "\n", encoding="utf-8")


def main() -> int:
    args = parse_args()
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    results.touch()
    fixtures = hostile_sweep.build_fixtures(work, cli_main)
    cases = all_cases(fixtures, args.seed)
    if args.only:
        cases = [case for case in cases if any(text in case.case_id for text in args.only)]
    if args.sample:
        cases = sorted(random.Random(args.seed).sample(cases, min(args.sample, len(cases))), key=cases.index)
    if args.list:
        for case in cases:
            print(case.case_id, "refuse" if case.must_refuse else "any")
        print(f"{len(cases)} cases", file=sys.stderr)
        return 0
    done = hostile_report.read_results(results)
    todo = [case for case in cases if args.rerun or case.case_id not in done]
    print(f"{len(cases)} cases, {len(cases) - len(todo)} already in {results}, running {len(todo)}",
        file=sys.stderr)
    hostile_sweep.import_warm_modules(fixtures)
    with results.open("a", encoding="utf-8") as stream:

        def record(outcome: hostile_sweep.Outcome) -> None:
            stream.write(json.dumps(hostile_report.outcome_record(outcome)) + "\n")
            stream.flush()
            if outcome.verdict in hostile_sweep.FAILURES:
                print(f"{outcome.verdict}: {outcome.case_id}: {outcome.detail[:200]}", file=sys.stderr)

        hostile_sweep.run_cases(todo, cli_main, fixtures, work, args.timeout_s, args.jobs, record,
            keep=args.keep)
    wanted = {case.case_id for case in cases}
    records = [r for r in hostile_report.read_results(results).values() if r["case_id"] in wanted]
    summary = hostile_report.summarise(records)
    print(json.dumps(summary["verdicts"]), file=sys.stderr)
    if args.write_docs:
        write_docs(records, summary, args.seed)
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
