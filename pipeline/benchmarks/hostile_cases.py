"""The cases of the hostile-input sweep (issue 22): what a case is, the valid command line of
every ``micromet`` command, and the cases that change one flag or path of it.

A ``Case`` is a command line with placeholders ({case}: the case's own empty folder, {fx}: the
shared read-only fixtures), the ``Step``s that prepare its folder, whether the input must be
refused, and the files that must survive it. Nothing here runs a command.
"""

from __future__ import annotations

import dataclasses
import math

__all__ = ["FIXTURE_SLIDE_ID", "Case", "Guard", "Rule", "Step", "base_argv", "flag_cases",
           "must_refuse_value", "path_cases", "with_value"]

FIXTURE_SLIDE_ID = "patient_000_node_0"
SLIDE = "{fx}/slide/" + FIXTURE_SLIDE_ID + ".tif"
NOMPP_SLIDE = "{fx}/nompp/patient_000_node_1.tif"


@dataclasses.dataclass(frozen=True)
class Step:
    """One preparation of a case folder. action: write (data to path), mkdir, fifo, chardev
    (a /dev/null-like node; /dev/zero-like where target is "zero"), symlink (path -> target),
    copy / copytree (target to path), rmtree, chmod (mode on path); paths may use {case}, {fx}."""

    action: str
    path: str
    data: bytes = b""
    target: str = ""
    mode: int = 0


@dataclasses.dataclass(frozen=True)
class Guard:
    """A path that must look the same after the run. kind: bytes (these exact bytes), same_as
    (the bytes of the path in ``data``), chardev, fifo, dir, json (a JSON object), absent."""

    path: str
    kind: str
    data: bytes = b""


@dataclasses.dataclass(frozen=True)
class Case:
    """One hostile run of one command."""

    case_id: str
    category: str  # flag, path, slide, csv, toml, checkpoint, annotation, filesystem
    command: str
    argv: tuple[str, ...]
    must_refuse: bool
    steps: tuple[Step, ...] = ()
    guards: tuple[Guard, ...] = ()
    serves: bool = False  # a server when accepted (view): a timeout is then an acceptance


# --- command lines ----------------------------------------------------------------------------

_INFER_TAIL = ("--out", "{case}/out", "--model", "{fx}/model.pt", "--accept-qc-failures", "--quiet",
               "--device", "cpu", "--workers", "0")
_TRAIN_TAIL = ("--arch", "micronet", "--tile-size-px", "32", "--model-mpp", "2.0", "--epochs", "1",
               "--max-steps", "2", "--batch-size", "4", "--workers", "0", "--device", "cpu",
               "--out", "{case}/run", "--no-progress")
_BASE: dict[str, tuple[str, ...]] = {
    "info": ("info", SLIDE),
    "info_nompp": ("info", NOMPP_SLIDE),
    "infer": ("infer", SLIDE, *_INFER_TAIL),
    "infer_nompp": ("infer", NOMPP_SLIDE, *_INFER_TAIL),
    "stage": ("stage", "--batch", "{fx}/batch", "--out", "{case}/stages.csv"),
    "stage_categories": ("stage", "--categories", "{fx}/categories.csv", "--out", "{case}/stages.csv"),
    "classify": ("classify", "{fx}/patch.png", "--mpp", "0.5", "--out", "{case}/scores.csv",
                 "--model", "{fx}/model.pt", "--device", "cpu", "--no-progress"),
    "train": ("train", "--patches", "{fx}/patches", "--patch-mpp", "0.5", *_TRAIN_TAIL),
    "train_index": ("train", "--index", "{fx}/index.csv", *_TRAIN_TAIL),
    "evaluate": ("evaluate", "--batch", "{fx}/batch", "--stages", "{fx}/categories.csv",
                 "--bootstrap", "20", "--out", "{case}/eval"),
    "report": ("report", "{fx}/batch", "--out", "{case}/report.html"),
    "view": ("view", "{fx}/batch", "--no-browser", "--port", "0"),
    "review": ("review", "import", "{case}/batch", FIXTURE_SLIDE_ID, "{fx}/review.geojson",
               "--reviewer", "sweep"),
    "synth": ("synth", "--out", "{case}/synth", "--width", "600", "--height", "500", "--name", "s"),
    "bench": ("bench", "--width", "600", "--height", "600", "--skip-tiatoolbox", "--repeats", "1",
              "--model", "{fx}/model.pt", "--work-dir", "{case}/bench", "--device", "cpu",
              "--timeout-s", "30"),
    "demo": ("demo", "--out", "{case}/demo", "--model", "{fx}/model.pt"),
}
# Steps every case of a command needs (review writes into its batch: a copy of its own).
BASE_STEPS: dict[str, tuple[Step, ...]] = {"review": (Step("copytree", "{case}/batch", target="{fx}/batch"),)}


def base_argv(name: str) -> tuple[str, ...]:
    """The valid command line a case changes one thing of."""
    return _BASE[name]


def with_value(argv: tuple[str, ...], flag: str, value: str) -> tuple[str, ...]:
    """argv with ``flag`` set to ``value``: "#N" is the N-th word, a flag in argv is replaced,
    otherwise "flag=value" is appended (so "-1" and "" reach the flag's own parser)."""
    words = list(argv)
    if flag.startswith("#"):
        words[int(flag[1:])] = value
        return tuple(words)
    if flag in words:
        index = words.index(flag)
        del words[index : index + 2]
    return (*words, f"{flag}={value}")


# --- flag values ------------------------------------------------------------------------------

HOSTILE_VALUES = ("nan", "inf", "-inf", "-1", "0", "1e308", "1e-308", "1_0", "", "99999999999999999999999999",
                  "-99999999999999999999", "\uff10.\uff15", "0x10", " 0.5 ", "1e5", "7" * 5000, "--",
                  "0.5,0.5", "true", "\u0663", "-0", "4.5", "2")


@dataclasses.dataclass(frozen=True)
class Rule:
    """What a numeric flag takes: int or float, its range, and whether it is a clinical quantity
    (then "1_0" must be refused, as Python's own parsers read it as 10)."""

    kind: str
    low: float
    high: float
    clinical: bool = False
    low_open: bool = False


MPP = Rule("float", 0.05, 20.0, clinical=True)
BENCH_MPP = Rule("float", 0.05, 20.0)  # a benchmark's resolution: no patient's measurement
PROB = Rule("float", 0.0, 1.0, clinical=True)
COUNT = Rule("int", 1, math.inf)
SIZE = Rule("int", 1, 10**6)
NONNEG = Rule("int", 0, math.inf)
SEED = Rule("int", 0, 2**32 - 1)
POSITIVE = Rule("float", 0.0, math.inf, low_open=True)
NONNEG_FLOAT = Rule("float", 0.0, math.inf)


def must_refuse_value(rule: Rule, text: str) -> bool:
    """True where ``text`` can only be refused: no number of the flag's kind, or outside its range."""
    try:
        value = float(int(text)) if rule.kind == "int" else float(text)
    except ValueError:
        return True
    if rule.clinical and "_" in text:
        return True
    if not math.isfinite(value) or value < rule.low or value > rule.high:
        return True
    return rule.low_open and value == rule.low


FLAGS: dict[str, tuple[tuple[str, Rule], ...]] = {
    "info_nompp": (("--mpp", MPP), ("--tile-px", SIZE), ("--tile-mpp", MPP)),
    "infer_nompp": (("--mpp", MPP),),
    "infer": (("--batch-size", COUNT), ("--workers", NONNEG), ("--region-tiles", COUNT),
              ("--cascade-screen-threshold", PROB), ("--threshold", PROB), ("--seed-threshold", PROB),
              ("--stride-px", COUNT), ("--min-tissue-fraction", PROB), ("--gpus-per-slide", NONNEG_FLOAT),
              ("--cpus-per-slide", NONNEG_FLOAT)),
    "classify": (("--mpp", MPP), ("--batch-size", COUNT)),
    "train": (("--patch-mpp", MPP), ("--model-mpp", MPP), ("--val-fraction", PROB), ("--tile-size-px", SIZE),
              ("--epochs", COUNT), ("--batch-size", COUNT), ("--lr", POSITIVE), ("--weight-decay",
                  NONNEG_FLOAT),
              ("--max-steps", COUNT), ("--hard-negative-rounds", NONNEG), ("--workers", NONNEG),
              ("--seed", SEED), ("--review-tiles-per-deposit", COUNT), ("--tumor-per-slide", NONNEG),
              ("--normal-per-slide", NONNEG)),
    "evaluate": (("--tolerance-um", NONNEG_FLOAT), ("--bootstrap", NONNEG), ("--seed", SEED)),
    "report": (("--thumbnail-px", SIZE),),
    "view": (("--port", Rule("int", 0, 65535)),),
    "synth": (("--width", SIZE), ("--height", SIZE), ("--mpp", MPP), ("--seed", SEED), ("--deposit",
        POSITIVE)),
    "bench": (("--width", SIZE), ("--height", SIZE), ("--mpp", BENCH_MPP), ("--seed", SEED),
              ("--tile-size-px", SIZE), ("--model-mpp", BENCH_MPP), ("--workers", NONNEG),
              ("--batch-size", COUNT), ("--region-tiles", COUNT), ("--repeats", COUNT), ("--timeout-s",
                  POSITIVE)),
    "demo": (("--seed", SEED),),
}
# Commands that run for minutes (or serve) on a valid value: only values that must be refused.
LONG_WHEN_ACCEPTED = frozenset({"demo", "bench", "view"})


def flag_cases() -> list[Case]:
    """Every numeric flag of every command with every hostile value."""
    cases: list[Case] = []
    for base, flags in FLAGS.items():
        command = _BASE[base][0]
        for flag, rule in flags:
            for index, value in enumerate(HOSTILE_VALUES):
                refuse = must_refuse_value(rule, value)
                if base in LONG_WHEN_ACCEPTED and not refuse:
                    continue
                cases.append(Case(f"flag/{base}/{flag}/{index:02d}", "flag", command,
                                  with_value(_BASE[base], flag, value), refuse, BASE_STEPS.get(base, ()),
                                  serves=command == "view"))
    return cases


# --- paths ------------------------------------------------------------------------------------

SENTINEL = b"precious: must survive the run\n"
# (name, value, steps): hostile values of an input path; none names a usable input.
_INPUT_PATHS: tuple[tuple[str, str, tuple[Step, ...]], ...] = (
    ("empty", "", ()),
    ("missing", "{case}/missing/nothing.x", ()),
    ("chardev", "{case}/null", (Step("chardev", "{case}/null"),)),
    ("empty_dir", "{case}/emptydir", (Step("mkdir", "{case}/emptydir"),)),
    ("long_name", "{case}/" + "n" * 300, ()),
    ("symlink_loop", "{case}/loop", (Step("symlink", "{case}/loop", target="{case}/loop"),)),
    ("fifo", "{case}/fifo", (Step("fifo", "{case}/fifo"),)),
    ("unreadable", "{case}/unreadable.x",
     (Step("write", "{case}/unreadable.x", b"x"), Step("chmod", "{case}/unreadable.x", mode=0))),
    ("unreadable_dir", "{case}/closed", (Step("mkdir", "{case}/closed"), Step("write", "{case}/closed/a.tif",
        b"x"),
                                         Step("chmod", "{case}/closed", mode=0))),
    ("dash", "-", ()),
    ("newline", "{case}/a\nb", ()),
    ("unicode_missing", "{case}/\u00fc\u00f1\u00ef \u2603.x", ()),
    ("empty_file", "{case}/empty.x", (Step("write", "{case}/empty.x"),)),
)
# (base, flag) whose value is an input path.
INPUT_FLAGS: tuple[tuple[str, str], ...] = (
    ("info", "#1"), ("infer", "#1"), ("infer", "--model"), ("infer", "--config"), ("infer", "--mpp-csv"),
    ("infer", "--patients"), ("stage", "--batch"), ("stage_categories", "--categories"), ("stage",
        "--patients"),
    ("stage", "--config"), ("classify", "#1"), ("classify", "--model"), ("train", "--config"),
    ("train", "--patches"), ("train", "--val-patches"), ("train", "--init-model"), ("train", "--resume"),
    ("train_index", "--index"), ("evaluate", "--batch"), ("evaluate", "--truth-dir"), ("evaluate",
        "--reference"),
    ("evaluate", "--stages"), ("report", "#1"), ("report", "--patients"), ("view", "#1"), ("view",
        "--patients"),
    ("review", "#2"), ("review", "#4"), ("bench", "--model"), ("demo", "--model"),
)
# An empty truth folder leaves every slide without an outline: read as a normal slide.
# An empty TOML file sets nothing: the defaults.
_MAY_BE_ACCEPTED = frozenset({("evaluate", "--truth-dir", "empty_dir"), ("infer", "--config", "empty_file"),
                              ("stage", "--config", "empty_file"), ("train", "--config", "empty_file")})


def _output_paths(kind: str) -> tuple[tuple[str, str, tuple[Step, ...], tuple[Guard, ...], bool], ...]:
    """Hostile output targets: (name, value, steps, guards, must_refuse); kind is file or dir."""
    sentinel = Step("write", "{case}/precious.txt", SENTINEL)
    keep = Guard("{case}/precious.txt", "bytes", SENTINEL)
    read_only = (Step("mkdir", "{case}/ro"), Step("chmod", "{case}/ro", mode=0o555))
    loop = Step("symlink", "{case}/loop", target="{case}/loop")
    dangling = Step("symlink", "{case}/dangling", target="{case}/nowhere/x")
    return (
        ("empty", "", (), (), True),
        ("chardev", "{case}/null", (Step("chardev", "{case}/null"),), (Guard("{case}/null", "chardev"),),
            True),
        ("fifo", "{case}/fifo", (Step("fifo", "{case}/fifo"),), (Guard("{case}/fifo", "fifo"),), True),
        # a file output named over an existing file replaces it, as asked; a folder output must not
        ("existing_file", "{case}/precious.txt", (sentinel,), (keep,) if kind == "dir" else (),
         kind == "dir"),
        ("existing_dir", "{case}/adir", (Step("mkdir", "{case}/adir"),), (Guard("{case}/adir", "dir"),),
         kind == "file"),
        ("read_only_dir", "{case}/ro/out", read_only, (), True),
        ("long_name", "{case}/" + "n" * 300, (), (), True),
        ("symlink_loop", "{case}/loop", (loop,), (), kind == "dir"),  # a file output replaces the link
        ("under_a_file", "{case}/precious.txt/out", (sentinel,), (keep,), True),
        ("dangling_symlink", "{case}/dangling", (dangling,), (), False),
        ("unicode", "{case}/\u00fc\u00f1\u00ef \u2603", (), (), False),
        ("missing_parents", "{case}/a/b/c/out", (), (), False),
    )


OUTPUT_FLAGS: tuple[tuple[str, str, str], ...] = (
    ("infer", "--out", "dir"), ("classify", "--out", "file"), ("stage", "--out", "file"),
    ("evaluate", "--out", "dir"), ("report", "--out", "file"), ("train", "--out", "dir"),
    ("synth", "--out", "dir"), ("bench", "--work-dir", "dir"), ("demo", "--out", "dir"),
)


def path_cases() -> list[Case]:
    """Hostile input paths for every path flag, hostile output targets for every output flag."""
    cases: list[Case] = []
    for base, flag in INPUT_FLAGS:
        command = _BASE[base][0]
        for name, value, steps in _INPUT_PATHS:
            refuse = (base, flag, name) not in _MAY_BE_ACCEPTED
            cases.append(Case(f"path/{base}/{flag}/{name}", "path", command, with_value(_BASE[base], flag,
                value),
                              refuse, BASE_STEPS.get(base, ()) + steps, serves=command == "view"))
    for base, flag, kind in OUTPUT_FLAGS:
        for name, value, steps, guards, refuse in _output_paths(kind):
            if base in LONG_WHEN_ACCEPTED and not refuse:
                continue
            cases.append(Case(f"out/{base}/{flag}/{name}", "path", base, with_value(_BASE[base], flag, value),
                              refuse, steps, guards))
    return cases
