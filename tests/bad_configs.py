"""Bad settings for the bad-input corpus (tests/bad_inputs.py): TOML files for ``infer --config``
and ``train --config``, ``--mpp-csv`` files, CAMELYON16 reference and CAMELYON17 stage CSVs, and
flag values; each one must be refused with one line naming it (issue 22 and earlier rounds).
"""

from __future__ import annotations

from pathlib import Path

from bad_inputs import BadFile

DEEP_TOML = "a = " + "[" * 5000 + "]" * 5000 + "\n"

INFER_CONFIGS: dict[str, str | bytes] = {
    "section_number.toml": "tissue = 5\n",
    "section_string.toml": "tiling = 'x'\n",
    "section_list.toml": "inference = [1, 2]\n",
    "unknown_section.toml": "[model]\npath = 'x'\n",
    "unknown_key.toml": "[tissue]\nmask_um = 8\n",
    "deep.toml": DEEP_TOML,
    "not_toml.toml": "[tissue\nmask_mpp = \n",
    "binary.toml": bytes(range(256)),
    "latin1.toml": b"[tissue]\nmask_mpp = 8 # \xe9\n",
    "cascade_string.toml": "[inference]\ncascade = 'false'\n",
    "cascade_number.toml": "[inference]\ncascade = 0\n",
    "compile_string.toml": "[inference]\ncompile = 'no'\n",
    "batch_size_float.toml": "[inference]\nbatch_size = 16.5\n",
    "batch_size_zero.toml": "[inference]\nbatch_size = 0\n",
    "batch_size_bool.toml": "[inference]\nbatch_size = true\n",
    "region_tiles_huge.toml": "[inference]\nregion_tiles = 100000\n",
    "device_bogus.toml": "[inference]\ndevice = 'tpu'\n",
    "device_number.toml": "[inference]\ndevice = 1\n",
    "precision_bogus.toml": "[inference]\nprecision = 'fp8'\n",
    "screen_nan.toml": "[inference]\ncascade_screen_threshold = nan\n",
    "stride_float.toml": "[tiling]\nstride_px = 16.5\n",
    "stride_zero.toml": "[tiling]\nstride_px = 0\n",
    "stride_string.toml": "[tiling]\nstride_px = '16'\n",
    "tile_size_given.toml": "[tiling]\ntile_size_px = 64\n",
    "tiling_mpp_given.toml": "[tiling]\nmpp = 0.5\n",
    "tissue_fraction_2.toml": "[tiling]\nmin_tissue_fraction = 2.0\n",
    "mask_mpp_inf.toml": "[tissue]\nmask_mpp = inf\n",
    "mask_mpp_negative.toml": "[tissue]\nmask_mpp = -8.0\n",
    "reject_pen_string.toml": "[tissue]\nreject_pen = 'yes'\n",
    "saturation_nan.toml": "[tissue]\nmin_saturation = nan\n",
    "threshold_2.toml": "[deposits]\nthreshold = 2.0\n",
    "threshold_string.toml": "[deposits]\nthreshold = '0.5'\n",
    "seed_below_threshold.toml": "[deposits]\nthreshold = 0.6\nseed_threshold = 0.3\n",
    "refine_string.toml": "[deposits]\nrefine = 'false'\n",
    "cell_rule_bogus.toml": "[deposits]\ncell_rule = 'loose'\n",
    "cells_diameter_nan.toml": "[deposits]\nmax_cell_count_diameter_mm = nan\n",
    "qc_accept_string.toml": "[qc]\naccept_qc_failures = 'true'\n",
    "qc_tiles_float.toml": "[qc]\nmax_tiles = 4.5\n",
    "qc_focus_negative.toml": "[qc]\nmin_focus = -1.0\n",
    "qc_unknown.toml": "[qc]\nstain = 'any'\n",
    "qc_tile_mpp_zero.toml": "[qc]\ntile_mpp = 0.0\n",
    "qc_dark_fraction_string.toml": "[qc]\nmax_dark_fraction = 'half'\n",
    "workers_negative.toml": "[inference]\nnum_workers = -1\n",
    "workers_float.toml": "[inference]\nnum_workers = 1.5\n",
    "hole_area_inf.toml": "[tissue]\nmax_hole_area_mm2 = inf\n",
    "deposits_list.toml": "deposits = ['threshold']\n",
    "qc_number.toml": "qc = 1\n",
    "empty_key.toml": "[tissue]\n'' = 1\n",
}

TRAIN_CONFIGS: dict[str, str | bytes] = {
    "train_number.toml": "train = 5\n",
    "data_string.toml": "data = 'x'\n",
    "sampling_list.toml": "sampling = [1]\n",
    "sampling_tissue_number.toml": "[sampling]\ntissue = 5\n",
    "unknown_section.toml": "[model]\narch = 'x'\n",
    "unknown_key.toml": "[train]\nlearning_rate = 0.1\n",
    "deep.toml": DEEP_TOML,
    "not_toml.toml": "[train\n",
    "momentum_nan.toml": "[train]\noptimizer = 'sgd'\nmomentum = nan\n",
    "momentum_negative.toml": "[train]\nmomentum = -1.0\n",
    "momentum_two.toml": "[train]\nmomentum = 2.0\n",
    "lr_zero.toml": "[train]\nlr = 0.0\n",
    "lr_nan.toml": "[train]\nlr = nan\n",
    "lr_string.toml": "[train]\nlr = '1e-3'\n",
    "epochs_float.toml": "[train]\nepochs = 2.5\n",
    "epochs_zero.toml": "[train]\nepochs = 0\n",
    "batch_one.toml": "[train]\nbatch_size = 1\n",
    "seed_huge.toml": f"[train]\nseed = {2**63 - 1}\n",
    "seed_negative.toml": "[train]\nseed = -1\n",
    "deterministic_string.toml": "[train]\ndeterministic = 'false'\n",
    "optimizer_bogus.toml": "[train]\noptimizer = 'lion'\n",
    "scheduler_bogus.toml": "[train]\nscheduler = 'step'\n",
    "architecture_bogus.toml": "[train]\narchitecture = 'vit_huge'\n",
    "tile_size_odd.toml": "[train]\ntile_size_px = 20000\n",
    "model_mpp_zero.toml": "[train]\nmpp = 0.0\n",
    "max_steps_zero.toml": "[train]\nmax_steps = 0\n",
    "patch_mpp_string.toml": "[data]\npatches = ['p']\npatch_mpp = 'x'\n",
    "patch_mpp_zero.toml": "[data]\npatches = ['p']\npatch_mpp = 0.0\n",
    "patch_mpp_inf.toml": "[data]\npatches = ['p']\npatch_mpp = inf\n",
    "patch_mpp_huge.toml": "[data]\npatches = ['p']\npatch_mpp = 1e308\n",
    "slide_mpp_negative.toml": "[data]\nslide_mpp = -0.5\n",
    "index_number.toml": "[data]\nindex = 5\n",
    "val_fraction_one.toml": "[data]\nval_fraction = 1.0\n",
    "tumor_per_slide_float.toml": "[sampling]\ntumor_per_slide = 2.5\n",
    "margin_nan.toml": "[sampling]\nnormal_margin_um = nan\n",
    "augment_unknown.toml": "[augment]\nspin = true\n",
}

MPP_CSVS: dict[str, str | bytes] = {
    "mpp_extra_cell.csv": "slide,mpp\nvalid.tif,0.5,0.25\n",
    "mpp_duplicate_column.csv": "slide,mpp,mpp\nvalid.tif,0.5,0.25\n",
    "mpp_nul_name.csv": "slide,mpp\nval\x00id.tif,0.5\n",
    "mpp_underscore.csv": "slide,mpp\nvalid.tif,0_5\n",
    "mpp_nan.csv": "slide,mpp\nvalid.tif,nan\n",
    "mpp_tiny.csv": "slide,mpp\nvalid.tif,1e-308\n",
    "mpp_negative.csv": "slide,mpp\nvalid.tif,-0.5\n",
    "mpp_no_column.csv": "slide\nvalid.tif\n",
    "mpp_unknown_slide.csv": "slide,mpp\nother.tif,0.5\n",
    "mpp_twice.csv": "slide,mpp\nvalid.tif,0.5\nvalid,0.5\n",
    "mpp_binary.csv": bytes(range(256)),
    "mpp_empty.csv": "",
    "mpp_inf.csv": "slide,mpp\nvalid.tif,inf\n",
    "mpp_huge.csv": "slide,mpp\nvalid.tif,1e308\n",
    "mpp_empty_name.csv": "slide,mpp\n,0.5\n",
    "mpp_unbalanced_quote.csv": 'slide,mpp\n"valid.tif,0.5\n',
}

REFERENCE_CSVS: dict[str, str | bytes] = {
    "ref_duplicate_slide.csv": "slide,class\ns1,Tumor\ns1,Normal\n",
    "ref_duplicate_other_case.csv": "slide,class\ns1,Tumor\ns1.tif,Tumor\n",
    "ref_nul.csv": b"slide,class\ns1,Tum\x00or\n",
}

STAGE_CSVS: dict[str, str | bytes] = {
    "stages_duplicate_patient.csv": "patient,stage\npatient_001.zip,pN0\npatient_001.zip,pN2\n",
    "stages_binary.csv": bytes(range(256)),
    "stages_latin1.csv": b"patient,stage\npatient_001.zip,pN\xe90\n",
}


def write_settings_corpus(folder: Path) -> list[BadFile]:
    """Write every bad settings file under ``folder``; kinds infer_config, train_config,
    mpp_csv, reference_csv and stages_csv."""
    files: list[BadFile] = []
    for kind, group in (("infer_config", INFER_CONFIGS), ("train_config", TRAIN_CONFIGS),
                        ("mpp_csv", MPP_CSVS), ("reference_csv", REFERENCE_CSVS),
                        ("stages_csv", STAGE_CSVS)):
        sub = folder / kind
        sub.mkdir(parents=True, exist_ok=True)
        for name, text in group.items():
            path = sub / name
            path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
            files.append(BadFile(path, kind))
    return files


# Flag values every command must refuse as a usage error (argparse: exit 2, one line).
BAD_FLAGS: tuple[tuple[str, ...], ...] = tuple(
    [(command, f"--mpp={value}") for command in ("infer", "info", "classify")
     for value in ("nan", "inf", "-inf", "1e308", "1e-308", "1_0", "0", "-0.5", "0x1p-2", "")]
    + [("train", f"{flag}={value}") for flag in ("--patch-mpp", "--slide-mpp", "--model-mpp")
       for value in ("0", "-1", "nan", "inf", "1e308")]
    + [("train", f"--seed={2**64}"), ("train", "--seed=-1"), ("evaluate", "--seed=-1"),
       ("evaluate", f"--seed={2**40}")]
    + [("infer", f"{flag}={value}")
       for flag in ("--threshold", "--seed-threshold", "--cascade-screen-threshold", "--min-tissue-fraction")
       for value in ("nan", "inf", "1_0")]
    + [("infer", "--stride-px=16.5"), ("infer", "--batch-size=1.5"), ("infer", "--region-tiles=x")]
    + [("train", f"{flag}={value}") for flag in ("--lr", "--weight-decay", "--val-fraction")
       for value in ("nan", "1_0")]
    + [("train", "--epochs=1.5"), ("classify", "--batch-size=2.5")]
)
