"""``micromet infer`` command-line behaviour that needs no model: the patient mapping."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import write_pyramid_tiff

from pipeline.cli import main


@pytest.fixture
def slide(tmp_path: Path) -> Path:
    image = np.full((300, 400, 3), 240, dtype=np.uint8)
    return write_pyramid_tiff(tmp_path / "patient_1_node_0.tif", image, mpp=0.5)


def test_infer_keeps_the_patient_mapping_beside_the_batch(slide: Path, tmp_path: Path) -> None:
    mapping = tmp_path / "map.csv"
    mapping.write_text("slide,patient,site\ndata/patient_1_node_0.tif,P1,axilla\nother,P2,axilla\n")
    out = tmp_path / "out"
    # No model: the run stops after the mapping was checked and kept.
    args = ["infer", str(slide), "--out", str(out), "--patients", str(mapping)]
    main([*args, "--model", str(tmp_path / "no.pt")])
    assert (out / "patients.csv").read_text() == "slide,patient\nother,P2\npatient_1_node_0,P1\n"


def test_infer_rejects_a_bad_patient_mapping_before_any_slide(
    slide: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mapping = tmp_path / "map.csv"
    mapping.write_text("slide,stage\nx,pN0\n")
    out = tmp_path / "out"
    assert main(["infer", str(slide), "--out", str(out), "--patients", str(mapping)]) == 1
    assert "map.csv" in capsys.readouterr().err
    assert not (out / "patients.csv").exists()
