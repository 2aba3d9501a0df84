"""End to end with the default model on synthetic nodes with planted deposits of known size,
painted from real H&E texture (../shared/data: CAMELYON17 lymph node, CAMELYON16 tumor), since
the real-data default model does not take the generator's cartoon cells for tissue it knows.

Every planted micro- and macrometastasis must be found and categorised correctly; the slide
category must match the planted truth; how many ITCs were found is reported (printed), not
required, since ITC-sized deposits are below what a 64 µm tile model can reliably resolve.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from matplotlib.path import Path as PolygonPath

from pipeline.cli import main
from pipeline.models import default_model_path
from pipeline.synthetic.generate import PlantedDeposit, SynthConfig, generate_slide
from tests.conftest import require_shared_data

pytestmark = pytest.mark.slow  # three synthetic nodes through infer: minutes on 2 cores

# (name, width px, height px, mpp, planted diameters mm): a negative node, a micro node with an
# ITC, and a macro node whose deposit sits just above the 2 mm cut-off, so refinement decides.
NODES = (
    ("node_neg", 3000, 2600, 1.0, ()),
    ("node_micro", 4000, 3400, 1.0, (0.9, 0.15)),
    ("node_macro", 5200, 4600, 1.0, (2.15,)),
)


@pytest.fixture(scope="module")
def batch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not default_model_path().is_file():
        pytest.fail(f"{default_model_path()} is missing: the default model is part of the repository")
    textures = require_shared_data()
    root = tmp_path_factory.mktemp("e2e")
    for index, (name, width, height, mpp, planted) in enumerate(NODES):
        config = SynthConfig(
            width_px=width,
            height_px=height,
            mpp=mpp,
            seed=100 + index,
            deposits=tuple(PlantedDeposit(d) for d in planted),
            texture="real",
            texture_dir=textures,
            texture_background="negative-node",
        )
        generate_slide(config, root / "slides" / f"{name}.tif")
    code = main(["infer", str(root / "slides"), "--out", str(root / "out")])
    assert code == 0
    return root


def _truth(root: Path, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((root / "slides" / f"{name}.truth.json").read_text())


def _report(root: Path, name: str) -> dict:  # type: ignore[type-arg]
    return json.loads((root / "out" / name / "report.json").read_text())


@pytest.mark.shared_data
@pytest.mark.parametrize("name", [n[0] for n in NODES])
def test_slide_category_matches_the_planted_truth(batch: Path, name: str) -> None:
    assert _report(batch, name)["category"] == _truth(batch, name)["node_category"]


@pytest.mark.shared_data
@pytest.mark.parametrize("name", ["node_micro", "node_macro"])
def test_every_planted_micro_and_macro_deposit_is_found_with_its_category(batch: Path, name: str) -> None:
    report = _report(batch, name)
    for planted in _truth(batch, name)["deposits"]:
        if planted["category"] == "itc":
            continue
        outline = PolygonPath(np.asarray(planted["vertices_xy"]))
        hits = [
            d for d in report["deposits"] if outline.contains_point((d["centroid_x_px"], d["centroid_y_px"]))
        ]
        assert hits, f"planted {planted['category']} of {planted['diameter_mm']:.2f} mm not found"
        best = max(hits, key=lambda d: d["max_diameter_mm"])
        assert best["category"] == planted["category"]
        assert abs(best["max_diameter_mm"] - planted["diameter_mm"]) <= (
            best["max_diameter_uncertainty_mm"] + 0.15
        )


@pytest.mark.shared_data
def test_itc_detections_are_reported(batch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    truth = _truth(batch, "node_micro")
    planted_itc = [d for d in truth["deposits"] if d["category"] == "itc"]
    report = _report(batch, "node_micro")
    found = 0
    for planted in planted_itc:
        outline = PolygonPath(np.asarray(planted["vertices_xy"]))
        grown = outline.contains_points(
            np.asarray([[d["centroid_x_px"], d["centroid_y_px"]] for d in report["deposits"]]).reshape(-1, 2),
            radius=100.0,
        )
        found += int(grown.any())
    with capsys.disabled():
        print(f"\nITC found: {found} of {len(planted_itc)} planted")
    assert len(planted_itc) == 1


@pytest.mark.shared_data
def test_the_negative_node_has_no_deposit(batch: Path) -> None:
    assert _report(batch, "node_neg")["deposits"] == []


@pytest.mark.shared_data
def test_patient_stage_from_the_batch(batch: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mapping = batch / "patients.csv"
    mapping.write_text("slide,patient\nnode_neg,p1\nnode_micro,p1\nnode_macro,p1\n")
    out = batch / "stages.csv"
    assert main(["stage", "--batch", str(batch / "out"), "--patients", str(mapping), "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[1].startswith("p1,pN1,3,2,1,1,0")


@pytest.mark.shared_data
@pytest.mark.parametrize("name", [n[0] for n in NODES])
def test_no_deposit_over_0_2_mm_is_itc_without_a_review_flag(batch: Path, name: str) -> None:
    report = _report(batch, name)
    assert report["cell_rule"] == "size-first"
    for deposit in report["deposits"]:
        if deposit["category"] == "itc" and deposit["max_diameter_mm"] > 0.2:
            assert deposit["review"], deposit
    html = batch / "report.html"
    if not html.is_file():
        assert main(["report", str(batch / "out"), "--out", str(html), "--thumbnail-px", "200"]) == 0
    assert "Research use only" in html.read_text()


@pytest.mark.shared_data
def test_the_default_cascade_keeps_every_node_category_of_full_scoring_with_fewer_tiles(batch: Path) -> None:
    out = batch / "out_full"
    assert main(["infer", str(batch / "slides"), "--out", str(out), "--no-cascade", "--quiet"]) == 0
    for name, *_ in NODES:
        full = json.loads((out / name / "report.json").read_text())
        report = _report(batch, name)  # the default run: the cascade
        cascade = report["inference"]["cascade"]
        assert report["settings"]["inference"]["cascade"] is True
        assert full["settings"]["inference"]["cascade"] is False and "cascade" not in full["inference"]
        assert cascade["grid_tiles"] == report["n_tiles"] == full["n_tiles"]
        assert 0 < cascade["scored_fraction"] < 1
        assert report["category"] == full["category"], name
        assert len(report["deposits"]) == len(full["deposits"]), name
