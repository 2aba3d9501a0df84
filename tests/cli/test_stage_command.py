"""End-to-end tests of ``micromet stage`` through pipeline.cli.main."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main

HEADER = (
    "patient,stage,nodes,positive_nodes,macro_nodes,micro_nodes,itc_nodes,node_categories,qc_warnings,"
    "reviewed_nodes,category_warning"
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def camelyon17_labels(tmp_path: Path) -> Path:
    """Two CAMELYON17-style patients in the official labels layout (patient rows skipped)."""
    lines = ["patient,stage"]
    lines += ["patient_004.zip,pN0(i+)"]
    lines += [f"patient_004_node_{i}.tif,{c}" for i, c in enumerate(["negative"] * 4 + ["itc"])]
    lines += ["patient_017.zip,pN2"]
    cats = ["macro", "micro", "micro", "micro", "itc"]
    lines += [f"patient_017_node_{i}.tif,{c}" for i, c in enumerate(cats)]
    return write(tmp_path / "labels.csv", "\n".join(lines) + "\n")


def make_batch(root: Path, slides: dict[str, dict[str, Any]]) -> Path:
    """A batch folder as docs/architecture.md lays it out: manifest.json + report.json files.

    slides: slide id -> {"status", optional "category", optional "output_dir", "error"}.
    """
    manifest: dict[str, Any] = {"slides": {}}
    for slide_id, spec in slides.items():
        output_dir = spec.get("output_dir", slide_id)
        entry = {"status": spec["status"], "output_dir": str(output_dir)}
        if "error" in spec:
            entry["error"] = spec["error"]
        manifest["slides"][slide_id] = entry
        if "category" in spec:
            folder = Path(output_dir) if Path(output_dir).is_absolute() else root / output_dir
            report = {"slide": slide_id, "category": spec["category"], "deposits": []}
            write(folder / "report.json", json.dumps(report))
    write(root / "manifest.json", json.dumps(manifest))
    return root


def test_stages_camelyon17_labels_csv(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results" / "nested" / "stages.csv"
    code = main(["stage", "--categories", str(camelyon17_labels(tmp_path)), "--out", str(out)])
    assert code == 0
    assert out.read_text(encoding="utf-8").splitlines() == [
        HEADER,
        "patient_004,pN0(i+),5,0,0,0,1,"
        "node_0:negative;node_1:negative;node_2:negative;node_3:negative;node_4:itc,,,",
        "patient_017,pN2,5,4,1,3,1,node_0:macro;node_1:micro;node_2:micro;node_3:micro;node_4:itc,,,",
    ]
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == [
        "patient", "stage", "nodes", "positive", "macro", "micro", "itc", "node", "categories",
    ]  # fmt: skip
    # Aligned: the stage column starts at the same place on every line.
    stages = ["stage", "pN0(i+)", "pN2"]
    assert len({line.index(stage) for line, stage in zip(table, stages, strict=True)}) == 1
    assert [p.name for p in out.parent.iterdir()] == ["stages.csv"]  # no temporary file left


def test_ajcc_scheme_and_patient_mapping(tmp_path: Path) -> None:
    slides = [f"ln{i}" for i in range(1, 11)]
    categories = write(
        tmp_path / "cats.csv",
        "slide,category\nln1,macro\n" + "".join(f"{s},micro\n" for s in slides[1:]) + "sx,itc\n",
    )
    mapping = write(
        tmp_path / "map.csv",
        "slide,patient\n" + "".join(f"{s}.tif,P1\n" for s in slides) + "sx,P2\n",
    )
    out_ajcc, out_c17 = tmp_path / "ajcc.csv", tmp_path / "c17.csv"
    base = ["stage", "--categories", str(categories), "--patients", str(mapping)]
    assert main([*base, "--scheme", "ajcc", "--out", str(out_ajcc)]) == 0
    assert main([*base, "--out", str(out_c17)]) == 0
    ajcc, c17 = read_rows(out_ajcc), read_rows(out_c17)
    assert [(r["patient"], r["stage"], r["positive_nodes"]) for r in ajcc] == [
        ("P1", "pN3a", "10"),
        ("P2", "pN0(i+)", "0"),
    ]
    assert [r["stage"] for r in c17] == ["pN2", "pN0(i+)"]
    assert ajcc[0]["node_categories"].split(";")[:3] == ["ln1:macro", "ln2:micro", "ln3:micro"]


def test_mapping_with_unknown_slide_fails_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = write(tmp_path / "map.csv", "slide,patient\npatient_004_node_0,P\nghost,P\n")
    out = write(tmp_path / "stages.csv", "previous results\n")
    args = ["stage", "--categories", str(camelyon17_labels(tmp_path)), "--patients", str(mapping)]
    assert main([*args, "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"{mapping}: line 3: slide 'ghost' is not among the 10 slides" in err
    assert out.read_text(encoding="utf-8") == "previous results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv", "map.csv", "stages.csv"]


def test_unknown_category_fails_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    categories = write(tmp_path / "cats.csv", "slide,category\npatient_001_node_0,large\n")
    out = tmp_path / "stages.csv"
    assert main(["stage", "--categories", str(categories), "--out", str(out)]) == 1
    assert "line 2: unknown category 'large'" in capsys.readouterr().err
    assert not out.exists()


def test_slide_outside_camelyon17_naming_needs_a_mapping(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    categories = write(tmp_path / "cats.csv", "slide,category\nlymph_a.svs,macro\n")
    out = tmp_path / "stages.csv"
    assert main(["stage", "--categories", str(categories), "--out", str(out)]) == 1
    assert "'lymph_a'" in capsys.readouterr().err and not out.exists()


def test_batch_folder_with_a_failed_slide(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    elsewhere = tmp_path / "elsewhere" / "patient_002_node_1"
    batch = make_batch(
        tmp_path / "batch",
        {
            "patient_001_node_0": {"status": "done", "category": "negative"},
            "patient_001_node_1": {"status": "done", "category": "micro"},
            "patient_002_node_0": {"status": "done", "category": "macro"},
            "patient_002_node_1": {"status": "done", "category": "itc", "output_dir": elsewhere},
            "patient_003_node_0": {"status": "done", "category": "macro"},
            "patient_003_node_1": {"status": "failed", "error": "truncated TIFF"},
        },
    )
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--out", str(out)]) == 1
    rows = {row["patient"]: row for row in read_rows(out)}
    assert rows["patient_001"]["stage"] == "pN1mi"
    assert rows["patient_002"]["stage"] == "pN1"
    assert rows["patient_002"]["node_categories"] == "node_0:macro;node_1:itc"
    assert rows["patient_003"]["stage"] == "unstageable"
    assert rows["patient_003"]["node_categories"] == "node_0:macro;node_1:no-result"
    assert (rows["patient_003"]["nodes"], rows["patient_003"]["macro_nodes"]) == ("2", "1")
    err = capsys.readouterr().err
    assert "patient_003 not staged: patient_003_node_1: status 'failed': truncated TIFF" in err


def test_batch_slide_done_without_report_is_unstageable(tmp_path: Path) -> None:
    batch = make_batch(
        tmp_path / "batch",
        {
            "patient_001_node_0": {"status": "done", "category": "macro"},
            "patient_001_node_1": {"status": "done"},
        },
    )
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--out", str(out)]) == 1
    assert read_rows(out)[0]["stage"] == "unstageable"


def test_batch_all_done_prints_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch = make_batch(
        tmp_path / "batch",
        {f"patient_009_node_{i}": {"status": "done", "category": "micro"} for i in range(5)},
    )
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed[0]["patient"] == "patient_009"
    assert printed[0]["stage"] == "pN1mi"
    assert printed[0]["micro_nodes"] == 5
    assert read_rows(out)[0]["stage"] == "pN1mi"


@pytest.mark.parametrize(
    ("report_text", "message"),
    [
        ('{"category": "huge"}', "top-level 'category' is 'huge'"),
        ('{"deposits": []}', "top-level 'category' is None"),
        ("{not json", "cannot read the slide report"),
    ],
)
def test_batch_with_a_bad_report_fails_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], report_text: str, message: str
) -> None:
    batch = make_batch(tmp_path / "batch", {"patient_001_node_0": {"status": "done"}})
    report = write(batch / "patient_001_node_0" / "report.json", report_text)
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert str(report) in err and message in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("manifest_text", "message"),
    [
        (None, "manifest.json: not found"),
        ('{"slides": []}', "expected a 'slides' object"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_batch_with_a_bad_manifest_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], manifest_text: str | None, message: str
) -> None:
    batch = tmp_path / "batch"
    batch.mkdir()
    if manifest_text is not None:
        write(batch / "manifest.json", manifest_text)
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--out", str(out)]) == 1
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_scheme_from_config_file_and_flag_override(tmp_path: Path) -> None:
    categories = write(tmp_path / "cats.csv", "slide,category\npatient_001_node_0,macro\n")
    config = write(tmp_path / "micromet.toml", '[staging]\nscheme = "ajcc"\n')
    out = tmp_path / "stages.csv"
    base = ["stage", "--categories", str(categories), "--config", str(config), "--out", str(out)]
    assert main(base) == 0
    assert read_rows(out)[0]["stage"] == "pN1a"
    assert main([*base, "--scheme", "camelyon17"]) == 0
    assert read_rows(out)[0]["stage"] == "pN1"


def test_bad_scheme_in_config_file_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    categories = write(tmp_path / "cats.csv", "slide,category\npatient_001_node_0,macro\n")
    config = write(tmp_path / "micromet.toml", '[staging]\nscheme = "uicc"\n')
    out = tmp_path / "stages.csv"
    args = ["stage", "--categories", str(categories), "--config", str(config), "--out", str(out)]
    assert main(args) == 1
    assert "scheme='uicc'" in capsys.readouterr().err
    assert not out.exists()


def test_batch_and_categories_together_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        main(["stage", "--batch", "b", "--categories", "c.csv", "--out", "o.csv"])
    assert info.value.code == 2


def test_more_than_five_nodes_warns_under_camelyon17_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cats = "slide,category\n" + "".join(f"patient_001_node_{i}.tif,negative\n" for i in range(7))
    categories = write(tmp_path / "cats.csv", cats)
    assert main(["stage", "--categories", str(categories), "--out", str(tmp_path / "a.csv")]) == 0
    err = capsys.readouterr().err
    assert "patient_001 has 7 nodes; CAMELYON17 stages at most 5" in err
    out_ajcc = tmp_path / "b.csv"
    assert main(["stage", "--categories", str(categories), "--scheme", "ajcc", "--out", str(out_ajcc)]) == 0
    assert "nodes;" not in capsys.readouterr().err


def test_patient_names_cannot_inject_spreadsheet_formulas(tmp_path: Path) -> None:
    names = ['=HYPERLINK("http://x")', "+cmd", "-2+3", "@SUM(A1)", "plain"]
    categories = write(tmp_path / "cats.csv", "slide,category\n" + "".join(
        f"s{i},macro\n" for i in range(len(names))))
    mapping_rows = [[f"s{i}", name] for i, name in enumerate(names)]
    mapping = tmp_path / "map.csv"
    with mapping.open("w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["slide", "patient"], *mapping_rows])
    out = tmp_path / "stages.csv"
    assert main(["stage", "--categories", str(categories), "--patients", str(mapping),
                 "--out", str(out)]) == 0
    patients = sorted(row["patient"] for row in read_rows(out))
    assert patients == sorted(["'" + n for n in names[:-1]] + ["plain"])
    for row in read_rows(out):
        assert not row["node_categories"].startswith(("=", "+", "-", "@"))
        assert row["nodes"] == "1"  # numbers stay numbers


def test_a_node_scored_despite_failing_qc_is_named_in_the_stage_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch = tmp_path / "batch"
    for slide, category, warning in (("n1", "micro", "QC failed: not lymph node"), ("n2", "negative", "")):
        (batch / slide).mkdir(parents=True)
        report = {"slide_id": slide, "category": category, "qc": {"passed": not warning, "warning": warning}}
        (batch / slide / "report.json").write_text(json.dumps(report))
    manifest = {"slides": {s: {"status": "done", "output_dir": s} for s in ("n1", "n2")}}
    (batch / "manifest.json").write_text(json.dumps(manifest))
    mapping = tmp_path / "patients.csv"
    mapping.write_text("slide,patient\nn1,p1\nn2,p1\n")
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--patients", str(mapping), "--out", str(out)]) == 0
    row = out.read_text(encoding="utf-8").splitlines()[1]
    assert row.endswith(",n1: QC failed: not lymph node,,")
    assert "p1 is staged from nodes that failed slide QC" in capsys.readouterr().err


def test_batch_finds_patients_inside_longer_slide_ids(tmp_path: Path) -> None:
    slides = {
        "centre_1_patient_024_node_2": {"status": "done", "category": "itc"},
        "centre_1_patient_024_node_3": {"status": "done", "category": "micro"},
        "centre_3_patient_066_node_1": {"status": "done", "category": "negative"},
    }
    batch = make_batch(tmp_path / "batch", slides)
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--out", str(out)]) == 0
    rows = {row["patient"]: row for row in read_rows(out)}
    assert rows["patient_024"]["stage"] == "pN1mi" and rows["patient_066"]["stage"] == "pN0"
    assert rows["patient_024"]["node_categories"] == "node_2:itc;node_3:micro"


def test_batch_with_a_slide_id_holding_no_patient_names_the_patients_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slides = {"patient_001_node_0": {"status": "done", "category": "negative"},
              "lymph_a": {"status": "done", "category": "macro"}}
    batch = make_batch(tmp_path / "batch", slides)
    out = tmp_path / "stages.csv"
    assert main(["stage", "--batch", str(batch), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "'lymph_a'" in err and "--patients" in err and "patient_NNN_node_N" in err and not out.exists()
