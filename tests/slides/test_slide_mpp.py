"""mpp safety: a user's µm/px (--mpp, --mpp-csv) never silently replaces a slide's own, the
missing-mpp error names the flags without suggesting a number, and every output says where
the µm/px came from."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from conftest import FIXTURES, draw_tissue_rgb, write_pyramid_tiff, write_untrained_checkpoint

from pipeline.cli import main
from pipeline.errors import ConfigError, MissingMppError, MppMismatchError
from pipeline.slides.slide import mpp_by_slide_id, open_slide, open_slide_for_user, read_mpp_csv

NO_MPP = FIXTURES / "bad_slides" / "no_resolution.tif"


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two slides at 0.5 µm/px and two without resolution metadata."""
    folder = tmp_path_factory.mktemp("mpp")
    image = draw_tissue_rgb(900, 700)
    return {
        "with_a": write_pyramid_tiff(folder / "with_a.tif", image, mpp=0.5),
        "with_b": write_pyramid_tiff(folder / "with_b.tif", image, mpp=0.5),
        "none_a": write_pyramid_tiff(folder / "none_a.tif", image, mpp=None),
        "none_b": write_pyramid_tiff(folder / "none_b.tif", image, mpp=None),
    }


@pytest.fixture(scope="module")
def model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_untrained_checkpoint(tmp_path_factory.mktemp("model") / "test.pt")


def test_missing_mpp_names_the_flags_without_suggesting_a_number() -> None:
    with pytest.raises(MissingMppError) as caught:
        open_slide(NO_MPP)
    message = str(caught.value)
    assert message.startswith(str(NO_MPP))
    advice = message[len(str(NO_MPP)) :]
    assert "--mpp" in advice and "--mpp-csv" in advice
    assert not any(ch.isdigit() for ch in advice), advice


def test_an_mpp_contradicting_the_slide_is_refused_naming_both_values_and_the_flag(
    slides: dict[str, Path],
) -> None:
    with pytest.raises(MppMismatchError) as caught:
        open_slide_for_user(slides["with_a"], 0.25)
    message = str(caught.value)
    assert "\n" not in message
    assert "0.25 µm/px" in message and "0.5 µm/px" in message and "--force-mpp" in message


def test_an_mpp_within_one_percent_of_the_slides_is_accepted_and_recorded_as_the_users(
    slides: dict[str, Path],
) -> None:
    with open_slide_for_user(slides["with_a"], 0.504) as slide:
        assert slide.mpp == 0.504
        assert (slide.info.mpp_source, slide.info.metadata_mpp) == ("user", pytest.approx(0.5))
    with pytest.raises(MppMismatchError):
        open_slide_for_user(slides["with_a"], 0.506)


def test_force_mpp_uses_the_users_value_and_keeps_the_slides(slides: dict[str, Path]) -> None:
    with open_slide_for_user(slides["with_a"], 0.25, force_mpp=True) as slide:
        assert slide.mpp == 0.25
        assert slide.info.to_dict()["mpp_source"] == "user"
        assert slide.info.to_dict()["metadata_mpp"] == pytest.approx(0.5)


def test_an_mpp_for_a_slide_without_one_is_used(slides: dict[str, Path]) -> None:
    with open_slide_for_user(slides["none_a"], 0.3) as slide:
        assert (slide.mpp, slide.info.mpp_source, slide.info.metadata_mpp) == (0.3, "user", None)


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("slide,mpp\nnone_a,0.3\nnone_a,0.3\n", r"line 3: slide 'none_a' is listed twice"),
        ("slide,mpp\nnone_a,abc\n", r"line 2: mpp 'abc' of 'none_a' is not a number"),
        ("slide,mpp\nnone_a,0\n", r"line 2: mpp 0 of 'none_a' is not a plausible µm/px"),
        ("slide,mpp\nnone_a,-0.5\n", r"line 2: mpp -0.5 of 'none_a' is not a plausible µm/px"),
        ("slide,mpp\nnone_a,\n", r"line 2: mpp '' of 'none_a' is not a number"),
        ("slide,mpp\n,0.3\n", r"line 2: empty slide name"),
        ("name,resolution\nnone_a,0.3\n", r"needs the columns slide and mpp"),
    ],
)
def test_mpp_csv_errors_name_the_file_and_line(tmp_path: Path, text: str, match: str) -> None:
    path = _write_csv(tmp_path / "mpp.csv", text)
    with pytest.raises(ConfigError, match=match) as caught:
        read_mpp_csv(path)
    assert str(caught.value).startswith(str(path))


def test_mpp_csv_names_must_be_slides_of_the_batch(tmp_path: Path, slides: dict[str, Path]) -> None:
    ids = {slides["none_a"]: "none_a", slides["none_b"]: "none_b"}
    assert mpp_by_slide_id(tmp_path / "m.csv", {"none_a": 0.3, "none_b.tif": 0.4}, ids) == {
        "none_a": 0.3,
        "none_b": 0.4,
    }
    with pytest.raises(ConfigError, match=r"slide 'none_c' is not in this batch.*none_a, none_b"):
        mpp_by_slide_id(tmp_path / "m.csv", {"none_c": 0.3}, ids)
    with pytest.raises(ConfigError, match="listed twice"):
        mpp_by_slide_id(tmp_path / "m.csv", {"none_a": 0.3, "none_a.tif": 0.3}, ids)
    with pytest.raises(ConfigError, match="cannot read the --mpp-csv file"):
        read_mpp_csv(tmp_path / "missing.csv")


def _infer(model_path: Path, out: Path, *args: str) -> int:
    return main(
        ["infer", *args, "--out", str(out), "--model", str(model_path), "--device", "cpu", "--workers", "0",
         "--no-refine", "--no-cells", "--accept-qc-failures"]
    )


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with (out / "summary.csv").open() as handle:
        return {row["slide_id"]: row for row in csv.DictReader(handle)}


def test_infer_refuses_an_mpp_contradicting_the_slide(
    slides: dict[str, Path], model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    assert _infer(model_path, out, str(slides["with_a"]), "--mpp", "0.25") == 1
    row = _summary(out)["with_a"]
    assert row["status"] == "failed" and "--force-mpp" in row["error"]
    assert "0.25 µm/px" in capsys.readouterr().err


def test_infer_with_force_mpp_records_the_users_mpp_everywhere(
    slides: dict[str, Path], model_path: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    assert _infer(model_path, out, str(slides["with_a"]), "--mpp", "0.25", "--force-mpp") == 0
    report = json.loads((out / "with_a" / "report.json").read_text())
    assert report["slide"]["mpp"] == 0.25 and report["slide"]["mpp_source"] == "user"
    assert report["slide"]["metadata_mpp"] == pytest.approx(0.5)
    assert report["settings"]["force_mpp"] is True
    assert _summary(out)["with_a"]["mpp_source"] == "user"


def test_infer_mpp_csv_gives_each_slide_its_own_value(
    slides: dict[str, Path], model_path: Path, tmp_path: Path
) -> None:
    table = _write_csv(tmp_path / "mpp.csv", "slide,mpp\nnone_a,0.3\nnone_b.tif,0.45\n")
    out = tmp_path / "out"
    paths = [str(slides["none_a"]), str(slides["none_b"]), str(slides["with_b"])]
    assert _infer(model_path, out, *paths, "--mpp-csv", str(table)) == 0
    rows = _summary(out)
    assert (rows["none_a"]["mpp"], rows["none_a"]["mpp_source"]) == ("0.3", "user")
    assert (rows["none_b"]["mpp"], rows["none_b"]["mpp_source"]) == ("0.45", "user")
    assert (rows["with_b"]["mpp"], rows["with_b"]["mpp_source"]) == ("0.5", "metadata")


def test_infer_mpp_csv_is_checked_like_the_flag(
    slides: dict[str, Path], model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _write_csv(tmp_path / "mpp.csv", "slide,mpp\nwith_a,0.25\n")
    out = tmp_path / "out"
    assert _infer(model_path, out, str(slides["with_a"]), "--mpp-csv", str(table)) == 1
    error = _summary(out)["with_a"]["error"]
    assert "--mpp-csv gives 0.25 µm/px" in error and "--force-mpp" in error


def test_infer_mpp_csv_with_an_unknown_slide_fails_before_any_slide_runs(
    slides: dict[str, Path], model_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = _write_csv(tmp_path / "mpp.csv", "slide,mpp\nnot_here,0.3\n")
    out = tmp_path / "out"
    assert _infer(model_path, out, str(slides["none_a"]), "--mpp-csv", str(table)) == 1
    assert "slide 'not_here' is not in this batch" in capsys.readouterr().err
    assert not (out / "manifest.json").exists()
