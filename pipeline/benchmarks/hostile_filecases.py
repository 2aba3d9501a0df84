"""The hostile-input sweep's cases built from files (issue 22): damaged slides, CSVs, settings,
checkpoints and annotations (contents from hostile_files), and filesystem traps (links, devices,
name collisions, outputs placed over inputs). ``all_cases`` lists every case of the sweep.
"""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.benchmarks import hostile_files as files
from pipeline.benchmarks.hostile_cases import (
    BASE_STEPS,
    FIXTURE_SLIDE_ID,
    SENTINEL,
    SLIDE,
    Case,
    Guard,
    Step,
    base_argv,
    flag_cases,
    path_cases,
    with_value,
)

__all__ = ["all_cases"]


def slide_cases(slide: Path, seed: int) -> list[Case]:
    """Damaged copies of the fixture slide, each given to ``info`` and to ``infer``."""
    cases: list[Case] = []
    target = "{case}/" + FIXTURE_SLIDE_ID + ".tif"
    for name, payload, refuse in files.slide_payloads(slide, seed):
        step = Step("write", target, payload)
        for base in ("info", "infer"):
            argv = with_value(base_argv(base), "#1", target)
            cases.append(Case(f"slide/{base}/{name}", "slide", base, argv, refuse, (step,)))
    return cases


# (csv kind, base, flag, file name): where each kind of CSV is read.
_CSV_USES = (
    ("mpp_csv", "infer_nompp", "--mpp-csv", "mpp.csv"), ("patients", "infer", "--patients", "patients.csv"),
    ("patients", "stage", "--patients", "patients.csv"), ("patients", "report", "--patients", "patients.csv"),
    ("categories", "stage_categories", "--categories", "categories.csv"),
    ("categories", "evaluate", "--stages", "categories.csv"), ("stages", "evaluate", "--stages",
        "stages.csv"),
    ("reference", "evaluate", "--reference", "reference.csv"),
)


def csv_cases(valid_index: bytes) -> list[Case]:
    """Hostile CSVs for every CSV flag, and damaged ``train --index`` sample indexes."""
    cases: list[Case] = []
    for kind, base, flag, name in _CSV_USES:
        slide_id = "patient_000_node_1" if base == "infer_nompp" else FIXTURE_SLIDE_ID
        path = "{case}/" + name
        for label, payload, refuse in files.csv_payloads(kind, slide_id):
            cases.append(Case(f"csv/{base}/{flag}/{kind}/{label}", "csv", base_argv(base)[0],
                              with_value(base_argv(base), flag, path), refuse, (Step("write", path, payload),
                                  )))
    for label, payload, refuse in files.index_payloads(valid_index):
        path = "{case}/samples.csv"
        cases.append(Case(f"csv/train/--index/{label}", "csv", "train",
                          with_value(base_argv("train_index"), "--index", path), refuse,
                          (Step("write", path, payload),)))
    return cases


# Settings a flag of the base command line also sets: flags win over the file, so the flag is
# dropped where the hostile file sets its key.
_FLAG_OF_KEY = {"device": "--device", "num_workers": "--workers", "batch_size": "--batch-size",
                "epochs": "--epochs", "max_steps": "--max-steps", "tile_size_px": "--tile-size-px",
                "architecture": "--arch", "mpp": "--model-mpp", "patch_mpp": "--patch-mpp",
                    "patches": "--patches"}


def _without_flags_set_by(argv: tuple[str, ...], payload: bytes) -> tuple[str, ...]:
    keys = set(re.findall(r"^\s*([A-Za-z_]+)\s*=", payload.decode("utf-8", "ignore"), flags=re.MULTILINE))
    dropped = {_FLAG_OF_KEY[key] for key in keys if key in _FLAG_OF_KEY}
    words = list(argv)
    for flag in dropped & set(words):
        index = words.index(flag)
        del words[index : index + 2]
    return tuple(words)


def toml_cases() -> list[Case]:
    """Hostile settings files for infer, train and stage ``--config``."""
    cases: list[Case] = []
    path = "{case}/settings.toml"
    for kind in ("infer", "train", "stage"):
        for label, payload, refuse in files.toml_payloads(kind):
            argv = with_value(_without_flags_set_by(base_argv(kind), payload), "--config", path)
            cases.append(Case(f"toml/{kind}/{label}", "toml", kind, argv, refuse, (Step("write", path,
                payload),)))
    return cases


def checkpoint_cases(checkpoint: Path, seed: int) -> list[Case]:
    """Damaged checkpoints for infer/classify --model, train --init-model and --resume; the
    pickle payload's file (PWNED) must never appear."""
    cases: list[Case] = []
    uses = (("infer", "--model"), ("classify", "--model"), ("train", "--init-model"), ("train", "--resume"))
    path = "{case}/model.pt"
    for label, payload, refuse in files.checkpoint_payloads(checkpoint, seed):
        for base, flag in uses:
            cases.append(Case(f"checkpoint/{base}/{flag}/{label}", "checkpoint", base,
                              with_value(base_argv(base), flag, path), refuse, (Step("write", path, payload),
                                  ),
                              (Guard("{case}/PWNED", "absent"),)))
    return cases


def annotation_cases() -> list[Case]:
    """Damaged annotations for ``review import`` and for ``evaluate --truth-dir``."""
    cases: list[Case] = []
    for label, suffix, payload, refuse in files.annotation_payloads():
        path = "{case}/review" + suffix
        cases.append(Case(f"annotation/review/{label}{suffix}", "annotation", "review",
                          with_value(base_argv("review"), "#4", path), refuse,
                          (*BASE_STEPS["review"], Step("write", path, payload))))
        truth = "{case}/truth/" + FIXTURE_SLIDE_ID + suffix
        cases.append(Case(f"annotation/evaluate/{label}{suffix}", "annotation", "evaluate",
                          with_value(base_argv("evaluate"), "--truth-dir", "{case}/truth"), refuse,
                          (Step("mkdir", "{case}/truth"), Step("write", truth, payload))))
    return cases


def _copy_slide(path: str) -> Step:
    return Step("copy", path, target=SLIDE)


_Spec = tuple[str, str, tuple[str, ...], bool, tuple[Step, ...], tuple[Guard, ...]]


def _output_over_input_cases(slide_bytes: bytes, manifest: bytes) -> list[_Spec]:
    """Outputs placed over inputs or inside them, and batch folders with odd members."""
    infer = base_argv("infer")
    batch = Step("copytree", "{case}/batch", target="{fx}/batch")
    keep_manifest = Guard("{case}/batch/manifest.json", "bytes", manifest)
    slides = (Step("mkdir", "{case}/slides"), _copy_slide("{case}/slides/" + FIXTURE_SLIDE_ID + ".tif"))
    partial = "{case}/batch/." + FIXTURE_SLIDE_ID + ".partial"
    overwrite = (*with_value(infer, "--out", "{case}/batch"), "--overwrite")
    evaluate = with_value(base_argv("evaluate"), "--batch", "{case}/batch")
    classify = with_value(base_argv("classify"), "#1", "{case}/p.png")
    train = with_value(base_argv("train"), "--patches", "{case}/patches")
    return [
        ("infer_out_inside_input", "infer", with_value(with_value(infer, "#1", "{case}/slides"), "--out",
                                                       "{case}/slides/out"), False, slides,
         (Guard("{case}/slides/" + FIXTURE_SLIDE_ID + ".tif", "bytes", slide_bytes),)),
        ("infer_out_is_the_slide", "infer", with_value(with_value(infer, "#1", "{case}/s.tif"), "--out",
                                                       "{case}/s.tif"), True,
         (_copy_slide("{case}/s.tif"),), (Guard("{case}/s.tif", "bytes", slide_bytes),)),
        ("infer_out_is_a_folder_of_other_files", "infer", with_value(infer, "--out", "{case}/home"), False,
         (Step("mkdir", "{case}/home"), Step("write", "{case}/home/precious.txt", SENTINEL)),
         (Guard("{case}/home/precious.txt", "bytes", SENTINEL),)),
        ("infer_overwrite_partial_is_a_file", "infer", overwrite, False, (batch, Step("write", partial,
            b"x")), ()),
        ("infer_overwrite_partial_is_a_symlink", "infer", overwrite, False,
         (batch, Step("mkdir", "{case}/elsewhere"), Step("write", "{case}/elsewhere/precious.txt", SENTINEL),
          Step("symlink", partial, target="{case}/elsewhere")),
         (Guard("{case}/elsewhere/precious.txt", "bytes", SENTINEL),)),
        ("stage_out_is_the_manifest", "stage",
         ("stage", "--batch", "{case}/batch", "--out", "{case}/batch/manifest.json"), True, (batch,),
         (keep_manifest,)),
        ("report_out_is_the_manifest", "report", ("report", "{case}/batch", "--out",
            "{case}/batch/manifest.json"),
         True, (batch,), (keep_manifest,)),
        ("report_out_is_the_summary", "report", ("report", "{case}/batch", "--out",
            "{case}/batch/summary.csv"),
         True, (batch,), (keep_manifest,)),
        ("evaluate_out_is_the_batch", "evaluate", with_value(evaluate, "--out", "{case}/batch"), False,
            (batch,),
         (keep_manifest,)),
        ("classify_out_is_the_patch", "classify", with_value(classify, "--out", "{case}/p.png"), True,
         (Step("copy", "{case}/p.png", target="{fx}/patch.png"),), (Guard("{case}/p.png", "same_as",
             b"{fx}/patch.png"),)),
        ("train_out_is_the_patch_folder", "train", with_value(train, "--out", "{case}/patches"), False,
         (Step("copytree", "{case}/patches", target="{fx}/patches"),), ()),
        ("review_manifest_is_a_folder", "review", base_argv("review"), True,
         (batch, Step("rmtree", "{case}/batch/manifest.json"), Step("mkdir", "{case}/batch/manifest.json")),
             ()),
        ("review_unknown_slide", "review", with_value(base_argv("review"), "#3", "../../etc/passwd"), True,
         (batch,), ()),
        ("review_slide_id_traversal", "review", with_value(base_argv("review"), "#3", "../batch"), True,
            (batch,), ()),
    ]


def filesystem_cases(fixtures: Path) -> list[Case]:
    """Links, devices, name collisions and outputs placed over inputs."""
    slide_bytes = (fixtures / "slide" / f"{FIXTURE_SLIDE_ID}.tif").read_bytes()
    manifest = (fixtures / "batch" / "manifest.json").read_bytes()
    infer = base_argv("infer")
    slides = (Step("mkdir", "{case}/slides"), _copy_slide("{case}/slides/" + FIXTURE_SLIDE_ID + ".tif"))
    in_slides = with_value(infer, "#1", "{case}/slides")
    odd_name = "{case}/\u00fc \u2603\nx.tif"
    specs: list[_Spec] = [
        ("infer_folder_with_symlink_loop", "infer", in_slides, False,
         (*slides, Step("symlink", "{case}/slides/loop", target="{case}/slides")), ()),
        ("infer_folder_with_fifo_slide", "infer", in_slides, False, (*slides, Step("fifo",
            "{case}/slides/stuck.tif")),
         ()),
        ("infer_glob_matching_nothing", "infer", with_value(infer, "#1", "{case}/*.svs"), True, (), ()),
        ("infer_two_slides_one_stem", "infer", (*with_value(infer, "#1", "{case}/a/s.tif"),
            "{case}/b/s.tif"), False,
         (Step("mkdir", "{case}/a"), Step("mkdir", "{case}/b"), _copy_slide("{case}/a/s.tif"),
          _copy_slide("{case}/b/s.tif")), ()),
        ("infer_slide_name_unicode_newline", "infer", with_value(infer, "#1", odd_name), False,
         (_copy_slide(odd_name),), ()),
        ("info_folder_with_fifo", "info", ("info", "{case}/dir"), True,
         (Step("mkdir", "{case}/dir"), Step("fifo", "{case}/dir/a.tif")), ()),
        ("infer_ray_unreachable", "infer", (*infer, "--ray", "127.0.0.1:1"), True, (), ()),
        ("infer_ray_empty", "infer", (*infer, "--ray="), True, (), ()),
        *_output_over_input_cases(slide_bytes, manifest),
    ]
    for name in ("manifest.json", "summary.csv", "patients.csv", "report.html"):
        specs.append((f"infer_slide_named_{name}", "infer", in_slides, False,
                      (*slides, _copy_slide("{case}/slides/" + name + ".tif")),
                      (Guard("{case}/out/manifest.json", "json"),)))
    for base, flag in (("info", "#1"), ("infer", "--config"), ("infer_nompp", "--mpp-csv"), ("classify",
        "#1"),
                       ("review", "#4"), ("evaluate", "--stages"), ("train_index", "--index")):
        steps = (*BASE_STEPS.get(base, ()), Step("chardev", "{case}/zero", target="zero"))
        specs.append((f"{base}_{flag}_dev_zero", base_argv(base)[0], with_value(base_argv(base), flag,
            "{case}/zero"),
                      True, steps, ()))
    return [Case(f"filesystem/{name}", "filesystem", command, argv, refuse, steps, guards)
            for name, command, argv, refuse, steps, guards in specs]


def all_cases(fixtures: Path, seed: int) -> list[Case]:
    """Every case of the sweep, in a fixed order (the same for the same fixtures and seed)."""
    slide = fixtures / "slide" / f"{FIXTURE_SLIDE_ID}.tif"
    cases = (flag_cases() + path_cases() + slide_cases(slide, seed)
             + csv_cases((fixtures / "index.csv").read_bytes()) + toml_cases()
             + checkpoint_cases(fixtures / "model.pt",
                 seed) + annotation_cases() + filesystem_cases(fixtures))
    identifiers = [case.case_id for case in cases]
    if len(set(identifiers)) != len(identifiers):
        raise ValueError("hostile sweep: duplicate case ids")
    return cases
