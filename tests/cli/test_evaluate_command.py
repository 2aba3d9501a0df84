"""``micromet evaluate`` on a hand-made batch folder and hand-made ground truth."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.cli import main
from pipeline.errors import EvaluationError
from pipeline.evaluation.inputs import read_detections_csv

MPP = 0.25
SIZE = (20000, 16000)


def square(x0: float, y0: float, side: float) -> list[list[float]]:
    return [[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]]


def deposit(x: float, y: float, diameter_mm: float, category: str, probability: float) -> dict[str, Any]:
    """A report.json deposit entry (every field of ``Deposit.to_dict``)."""
    return {
        "id": 1,
        "category": category,
        "max_diameter_mm": diameter_mm,
        "max_diameter_uncertainty_mm": 0.01,
        "area_mm2": diameter_mm**2,
        "centroid_x_px": x,
        "centroid_y_px": y,
        "centroid_x_mm": x * MPP / 1000,
        "centroid_y_mm": y * MPP / 1000,
        "bbox_x_px": int(x),
        "bbox_y_px": int(y),
        "bbox_width_px": 1,
        "bbox_height_px": 1,
        "max_probability": probability,
        "mean_probability": probability,
        "cell_count": None,
        "refined": False,
        "outline_xy": [],
    }


def write_slide(
    batch: Path,
    slide_id: str,
    category: str,
    score: float,
    deposits: list[dict[str, Any]],
    status: str = "done",
) -> None:
    manifest_path = batch / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"slides": {}}
    manifest["slides"][slide_id] = {
        "status": status,
        "output_dir": slide_id,
        "path": f"/slides/{slide_id}.tif",
        "error": None if status == "done" else "boom",
    }
    manifest_path.parent.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest))
    if status != "done":
        return
    folder = batch / slide_id
    folder.mkdir(parents=True, exist_ok=True)
    report = {
        "slide_id": slide_id,
        "category": category,
        "score": score,
        "slide": {"mpp": MPP, "dimensions": list(SIZE)},
        "deposits": deposits,
    }
    (folder / "report.json").write_text(json.dumps(report))
    rows = [f"{d['max_probability']},{d['centroid_x_px']},{d['centroid_y_px']}" for d in deposits]
    (folder / "detections.csv").write_text("\n".join(["confidence,X,Y", *rows]) + "\n")


def write_truth(
    truth_dir: Path, slide_id: str, node_category: str, deposits: list[tuple[list[list[float]], float, str]]
) -> None:
    """A synthetic-generator ``<id>.truth.json`` (pipeline.synthetic.generate.read_truth layout)."""
    truth_dir.mkdir(parents=True, exist_ok=True)
    data = {
        "generator": "test",
        "slide": f"{slide_id}.tif",
        "format": "tiff",
        "seed": 0,
        "width_px": SIZE[0],
        "height_px": SIZE[1],
        "mpp": MPP,
        "render_mpp": MPP,
        "level_dimensions": [list(SIZE)],
        "node_category": node_category,
        "tissue": [],
        "deposits": [
            {
                "id": i,
                "requested_diameter_mm": d,
                "diameter_mm": d,
                "area_mm2": 0.0,
                "category": c,
                "n_tumor_nuclei": 0,
                "centroid_xy": [sum(p[0] for p in v) / len(v), sum(p[1] for p in v) / len(v)],
                "vertices_xy": v,
            }
            for i, (v, d, c) in enumerate(deposits)
        ],
    }
    (truth_dir / f"{slide_id}.truth.json").write_text(json.dumps(data))


def asap_xml(polygons: list[list[list[float]]], group: str = "_0") -> str:
    parts = []
    for i, polygon in enumerate(polygons):
        coords = "".join(f'<Coordinate Order="{k}" X="{x}" Y="{y}"/>' for k, (x, y) in enumerate(polygon))
        parts.append(
            f'<Annotation Name="A{i}" Type="Polygon" PartOfGroup="{group}">'
            f"<Coordinates>{coords}</Coordinates></Annotation>"
        )
    return (
        f'<?xml version="1.0"?><ASAP_Annotations><Annotations>{"".join(parts)}'
        "</Annotations></ASAP_Annotations>"
    )


@pytest.fixture
def synthetic_batch(tmp_path: Path) -> tuple[Path, Path]:
    batch, truth = tmp_path / "batch", tmp_path / "truth"
    # t1: a 1 mm (1.41 mm across) macro deposit found; t2: a 0.5 mm micro deposit found
    # as macro plus a false positive; n1: negative, one false positive; f1: failed
    write_slide(batch, "t1", "macro", 0.95, [deposit(4000, 4000, 1.30, "macro", 0.95)])
    write_slide(
        batch,
        "t2",
        "macro",
        0.80,
        [deposit(6000, 6000, 2.20, "macro", 0.8), deposit(18000, 1000, 0.1, "itc", 0.3)],
    )
    write_slide(batch, "n1", "itc", 0.20, [deposit(9000, 9000, 0.1, "itc", 0.2)])
    write_slide(batch, "f1", "", 0.0, [], status="failed")
    write_truth(truth, "t1", "macro", [(square(2000, 2000, 4000), 1.414, "macro")])
    write_truth(truth, "t2", "micro", [(square(5500, 5500, 1400), 0.495, "micro")])
    write_truth(truth, "n1", "negative", [])
    return batch, truth


def test_synthetic_truth_gives_froc_auc_nodes_and_sizes(
    synthetic_batch: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch, truth = synthetic_batch
    out = tmp_path / "eval"
    assert (
        main(
            [
                "evaluate",
                "--batch",
                str(batch),
                "--truth-dir",
                str(truth),
                "--out",
                str(out),
                "--bootstrap",
                "100",
            ]
        )
        == 0
    )
    result = json.loads((out / "evaluation.json").read_text())
    assert result["evaluated_slides"] == ["n1", "t1", "t2"]
    assert result["excluded"]["f1"].startswith("status 'failed'")
    # both lesions are found before any false positive (0.95, 0.8 > 0.3, 0.2)
    assert result["froc"]["score_challenge_rule"] == 1.0
    assert result["froc"]["n_lesions"] == 2
    assert result["auc"]["auc"] == 1.0
    assert (result["auc"]["n_tumor"], result["auc"]["n_normal"]) == (2, 1)
    # nodes: t1 macro=macro, t2 micro!=macro, n1 negative!=itc
    assert result["node_categories"]["accuracy"] == pytest.approx(1 / 3)
    sizes = result["deposit_sizes"]
    assert (sizes["n_pairs"], sizes["n_missed"], sizes["n_spurious"]) == (2, 0, 2)
    assert sizes["mean_abs_error_mm"] == pytest.approx((0.114 + 1.705) / 2)
    assert sizes["category_accuracy"] == pytest.approx(0.5)
    assert "pn_stages" not in result  # not asked for: no --stages
    for name in ("froc.csv", "froc.png", "roc.png", "deposit_pairs.csv"):
        assert (out / name).is_file()
    assert "FROC" in capsys.readouterr().out


def test_asap_outlines_with_a_reference_csv(tmp_path: Path) -> None:
    batch, truth, out = tmp_path / "batch", tmp_path / "xml", tmp_path / "eval"
    write_slide(batch, "Test_001", "macro", 0.9, [deposit(4000, 4000, 1.3, "macro", 0.9)])
    write_slide(batch, "Test_002", "negative", 0.1, [deposit(100, 100, 0.1, "itc", 0.1)])
    truth.mkdir()
    (truth / "Test_001.xml").write_text(asap_xml([square(2000, 2000, 4000)]))
    reference = tmp_path / "reference.csv"
    reference.write_text(
        "slide,class,subtype,metastasis_size\nTest_001,Tumor,IDC,Macro\nTest_002,Normal,,None\n"
    )
    assert (
        main(
            [
                "evaluate",
                "--batch",
                str(batch),
                "--truth-dir",
                str(truth),
                "--reference",
                str(reference),
                "--out",
                str(out),
                "--json",
            ]
        )
        == 0
    )
    result = json.loads((out / "evaluation.json").read_text())
    # one lesion found at 0.9; the normal slide's 0.1 detection comes after it
    assert result["froc"]["score_challenge_rule"] == 1.0
    assert result["auc"]["auc"] == 1.0
    assert result["deposit_sizes"]["n_pairs"] == 1


def test_tumor_slide_without_outlines_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    batch, truth = tmp_path / "batch", tmp_path / "xml"
    write_slide(batch, "Test_001", "macro", 0.9, [])
    truth.mkdir()
    reference = tmp_path / "reference.csv"
    reference.write_text("slide,class\nTest_001,Tumor\n")
    assert (
        main(
            [
                "evaluate",
                "--batch",
                str(batch),
                "--truth-dir",
                str(truth),
                "--reference",
                str(reference),
                "--out",
                str(tmp_path / "eval"),
            ]
        )
        == 1
    )
    assert "Test_001" in capsys.readouterr().err


def test_camelyon17_stage_kappa(tmp_path: Path) -> None:
    batch, out = tmp_path / "batch", tmp_path / "eval"
    write_slide(batch, "patient_001_node_0", "macro", 0.9, [])
    write_slide(batch, "patient_001_node_1", "negative", 0.1, [])
    write_slide(batch, "patient_002_node_0", "itc", 0.4, [])
    write_slide(batch, "patient_003_node_0", "micro", 0.6, [])
    write_slide(batch, "patient_003_node_1", "", 0.0, [], status="failed")
    stages = tmp_path / "stages.csv"
    stages.write_text(
        "patient,stage\npatient_001.zip,pN1\npatient_001_node_0.tif,macro\n"
        "patient_001_node_1.tif,negative\npatient_002.zip,pN1mi\npatient_002_node_0.tif,micro\n"
        "patient_003.zip,pN1mi\npatient_003_node_0.tif,micro\npatient_003_node_1.tif,negative\n"
    )
    assert main(["evaluate", "--batch", str(batch), "--stages", str(stages), "--out", str(out)]) == 0
    result = json.loads((out / "evaluation.json").read_text())
    # patient_001 pN1 = pN1; patient_002 pN0(i+) vs pN1mi; patient_003 has a failed node
    assert result["pn_stages"]["n"] == 2
    assert result["pn_stages"]["accuracy"] == 0.5
    assert result["excluded"]["patient_003"].startswith("unstageable")
    assert result["node_categories"]["n"] == 4
    assert "froc" in result["skipped"]


def test_missing_manifest_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "--batch", str(tmp_path), "--out", str(tmp_path / "e")]) == 1
    assert "manifest.json" in capsys.readouterr().err


def test_detections_csv_with_and_without_header(tmp_path: Path) -> None:
    with_header = tmp_path / "a.csv"
    with_header.write_text("Confidence,X coordinate,Y coordinate\n0.5,10,20\n")
    bare = tmp_path / "b.csv"
    bare.write_text("0.5,10,20\n\n0.25,11,21\n")
    assert [(d.confidence, d.x_px, d.y_px) for d in read_detections_csv(with_header)] == [(0.5, 10.0, 20.0)]
    assert len(read_detections_csv(bare)) == 2
    broken = tmp_path / "c.csv"
    broken.write_text("confidence,X,Y\n0.5,ten,20\n")
    with pytest.raises(EvaluationError, match="line 2"):
        read_detections_csv(broken)


def _evaluate(batch: Path, truth: Path, out: Path, *extra: str) -> int:
    return main(["evaluate", "--batch", str(batch), "--truth-dir", str(truth), "--out", str(out),
                 "--bootstrap", "10", *extra])


def test_normal_slides_without_truth_and_without_reference_is_an_error_naming_reference(
    synthetic_batch: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch, truth = synthetic_batch
    write_slide(batch, "n2", "negative", 0.1, [deposit(700, 700, 0.1, "itc", 0.6)])
    (truth / "n1.truth.json").unlink()
    out = tmp_path / "eval"
    assert _evaluate(batch, truth, out) == 1
    err = capsys.readouterr().err
    assert "--reference" in err and "n1, n2" in err
    assert len(err.strip().splitlines()) == 1
    assert not out.exists()
    # with a reference naming them Normal, they count in the FROC (their detection is a FP)
    reference = tmp_path / "reference.csv"
    reference.write_text("slide,class\nt1,Tumor\nt2,Tumor\nn1,Normal\nn2,Normal\n")
    assert _evaluate(batch, truth, out, "--reference", str(reference)) == 0
    result = json.loads((out / "evaluation.json").read_text())
    assert result["froc"]["n_slides"] == 4
    assert result["evaluated_slides"] == ["n1", "n2", "t1", "t2"]


@pytest.mark.parametrize("mpp", [0, -1, "NaN", 1e300])
def test_synthetic_truth_with_an_impossible_mpp_is_an_error_naming_the_file(
    synthetic_batch: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    mpp: float | str,
) -> None:
    batch, truth = synthetic_batch
    path = truth / "t1.truth.json"
    path.write_text(path.read_text().replace('"mpp": 0.25', f'"mpp": {mpp}'))
    out = tmp_path / "eval"
    assert _evaluate(batch, truth, out) == 1
    err = capsys.readouterr().err
    assert "t1.truth.json: mpp is" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"type": "FeatureCollection", "features": null}', "'features' is NoneType"),
        ('{"positive": null, "negative": []}', "'positive' is NoneType"),
        ('{"positive": [{"name": "sq", "vertices": [[0, 0], [1e15, 0], [1e15, 1e15], [0, 1e15]]}]}',
         "within ±1e\\+07"),
        ('{"positive": [{"name": "sq", "vertices": [[0, 0], [1e300, 0], [0, 1e300]]}]}',
         "within ±1e\\+07"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    ],
)
def test_malformed_outline_files_stop_evaluate_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    batch, truth, out = tmp_path / "batch", tmp_path / "truth", tmp_path / "eval"
    write_slide(batch, "Test_001", "macro", 0.9, [deposit(4000, 4000, 1.3, "macro", 0.9)])
    truth.mkdir()
    (truth / "Test_001.json").write_text(text)
    assert _evaluate(batch, truth, out) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Test_001.json" in err
    assert re.search(message, err)
    assert not out.exists()


def test_outlines_outside_the_slide_are_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    batch, truth, out = tmp_path / "batch", tmp_path / "xml", tmp_path / "eval"
    write_slide(batch, "Test_001", "macro", 0.9, [deposit(4000, 4000, 1.3, "macro", 0.9)])
    truth.mkdir()
    (truth / "Test_001.xml").write_text(asap_xml([square(2000, 2000, 4000), square(50000, 100, 900)]))
    with caplog.at_level(logging.WARNING):
        assert _evaluate(batch, truth, out) == 0
    assert "1 of 2 tumor outline(s) lie entirely outside the slide" in caplog.text


def test_a_reference_csv_listing_none_of_the_batch_says_so_and_names_both_sides(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    batch, out = tmp_path / "batch", tmp_path / "eval"
    write_slide(batch, "node_a", "macro", 0.9, [deposit(4000, 4000, 1.3, "macro", 0.9)])
    write_slide(batch, "node_b", "negative", 0.1, [])
    reference = tmp_path / "reference.csv"
    reference.write_text("slide,class\nTest_001,Tumor\nTest_002,Normal\n")
    argv = ["evaluate", "--batch", str(batch), "--reference", str(reference), "--out", str(out)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "reference.csv: lists none of the 2 finished slides" in err and "node_a, node_b" in err
    assert "Test_001" in err and "pass --truth-dir" not in err and not out.exists()
    reference.write_text("slide,class\nnode_a,Tumor\nTest_002,Normal\n")
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "does not list 1 finished slide(s) (node_b); they are left out" in err
