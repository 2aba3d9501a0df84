"""Tests for pipeline.models.card and pipeline.models.checkpoint: the model card and the checkpoint file."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.architectures import MicroNet, build_model
from pipeline.models.card import (
    CARD_FIELDS,
    FORMAT_VERSION,
    ModelCard,
    card_from_dict,
    card_to_dict,
    software_versions,
)
from pipeline.models.checkpoint import (
    FORMAT_TAG,
    default_model_path,
    file_sha256,
    load_checkpoint,
    load_training_state,
    read_card,
    resolve_model_path,
    save_checkpoint,
    weights_sha256,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# Filled by _Evil.__reduce__ if unpickling ever ran code from a checkpoint.
CODE_RAN: list[str] = []


def _record(tag: str) -> None:
    CODE_RAN.append(tag)


class _Evil:
    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (_record, ("unpickled",))


def _card(**changes: Any) -> ModelCard:
    values: dict[str, Any] = {
        "architecture": "micronet",
        "tile_size_px": 64,
        "mpp": 0.5,
        "threshold": 0.42,
        "stain_normalization": "macenko",
        "training_data": "3 synthetic slides, 40 tumor discs",
        "metrics": {"val_auc": 0.91, "val_loss": 0.3},
        "created": "2024-05-31",
        "notes": "test card",
    }
    values.update(changes)
    return ModelCard(**values)


def _trained_micronet() -> MicroNet:
    """A MicroNet whose BatchNorm running statistics are no longer the defaults."""
    torch.manual_seed(1)
    model = MicroNet()
    model.train()
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))
    return model.eval()


def _payload(model: nn.Module, card: ModelCard) -> dict[str, Any]:
    return {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "card": card_to_dict(card),
        "state_dict": model.state_dict(),
    }


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, MicroNet, ModelCard]:
    model = _trained_micronet()
    card = _card()
    path = save_checkpoint(tmp_path / "model.pt", model, card)
    return path, model, card


# --- the card ----------------------------------------------------------------------------


def test_card_defaults_record_software_and_date() -> None:
    card = ModelCard(architecture="resnet18", tile_size_px=224, mpp=1.0)
    assert card.class_names == ("normal", "tumor")
    assert card.software["torch"] == str(torch.__version__)
    assert set(card.software) >= {"torch", "torchvision", "micromet"}
    assert len(card.created) == 10 and card.created[4] == "-"


def test_software_versions_are_plain_strings() -> None:
    # torch.__version__ is a str subclass that weights_only loading would refuse.
    assert all(type(value) is str for value in software_versions().values())


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("architecture", "vgg16"),
        ("tile_size_px", 16),
        ("tile_size_px", 224.0),
        ("tile_size_px", True),
        ("mpp", 0),
        ("mpp", 25.0),
        ("mpp", float("nan")),
        ("mean", (0.5, 0.5)),
        ("mean", (2.0, 0.5, 0.5)),
        ("std", (0.2, 0.0, 0.2)),
        ("std", (0.2, -0.1, 0.2)),
        ("class_names", ("tumor", "normal")),
        ("class_names", ("normal", "tumor", "other")),
        ("threshold", 1.5),
        ("threshold", -0.01),
        ("stain_normalization", ""),
        ("stain_normalization", "bogus"),
        ("std", (0.2, 1e-300, 0.2)),
        ("std", (0.2, 1e-4, 0.2)),
        ("metrics", {"auc": "high"}),
        ("software", {"torch": 2}),
        ("created", "last tuesday"),
        ("notes", None),
    ],
)
def test_invalid_card_value_names_the_field(field: str, value: Any) -> None:
    with pytest.raises(CheckpointError, match=f"field {field}="):
        _card(**{field: value})


def test_card_boundaries_are_accepted() -> None:
    card = _card(tile_size_px=32, mpp=0.05, threshold=0.0, stain_normalization=None)
    assert card.tile_size_px == 32
    assert _card(mpp=20.0, threshold=1.0).threshold == 1.0


def test_card_dict_round_trip_is_json_ready() -> None:
    card = _card()
    data = card_to_dict(card)
    assert list(data) == list(CARD_FIELDS)
    assert json.loads(json.dumps(data)) == data
    assert data["mean"] == list(card.mean)
    assert card_from_dict(data) == card


def test_card_from_dict_names_missing_and_unknown_fields() -> None:
    data = card_to_dict(_card())
    del data["mpp"]
    data["colour"] = "pink"
    with pytest.raises(CheckpointError, match=r"missing \['mpp'\], unknown \['colour'\]"):
        card_from_dict(data, source="x.pt")


def test_card_from_dict_refuses_a_non_dict() -> None:
    with pytest.raises(CheckpointError, match=r"x\.pt: model card is a list"):
        card_from_dict([1, 2], source="x.pt")


# --- save and load -----------------------------------------------------------------------


def test_round_trip_gives_identical_outputs_and_card(
    saved: tuple[Path, MicroNet, ModelCard],
) -> None:
    path, model, card = saved
    loaded, loaded_card = load_checkpoint(path)
    assert loaded_card == card
    assert isinstance(loaded, MicroNet)
    assert not any(module.training for module in loaded.modules())
    tiles = torch.rand(3, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(tiles), model(tiles))


def test_round_trip_of_a_torchvision_backbone(tmp_path: Path) -> None:
    model = build_model("mobilenet_v3_small").eval()
    card = _card(architecture="mobilenet_v3_small", tile_size_px=96)
    path = save_checkpoint(tmp_path / "sub" / "dir" / "mnv3.pt", model, card)
    loaded, _ = load_checkpoint(str(path), device=torch.device("cpu"))
    tiles = torch.rand(2, 3, 96, 96)
    with torch.inference_mode():
        assert torch.equal(loaded(tiles), model(tiles))


def test_saved_file_loads_with_plain_weights_only_torch_load(
    saved: tuple[Path, MicroNet, ModelCard],
) -> None:
    path, _, card = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["format"] == FORMAT_TAG
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["card"] == card_to_dict(card)
    assert all(isinstance(v, torch.Tensor) for v in raw["state_dict"].values())


def test_read_card_matches_the_saved_card(saved: tuple[Path, MicroNet, ModelCard]) -> None:
    path, _, card = saved
    assert read_card(path) == card


def test_dataparallel_wrapper_is_unwrapped_on_save(tmp_path: Path) -> None:
    model = _trained_micronet()
    path = save_checkpoint(tmp_path / "dp.pt", nn.DataParallel(model), _card())
    keys = torch.load(path, weights_only=True)["state_dict"].keys()
    assert not any(key.startswith("module.") for key in keys)
    loaded, _ = load_checkpoint(path)
    tiles = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded(tiles), model(tiles))


def test_saving_over_an_existing_file_replaces_it_without_leftovers(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    save_checkpoint(path, MicroNet(), _card(threshold=0.1))
    save_checkpoint(path, MicroNet(), _card(threshold=0.7))
    assert read_card(path).threshold == 0.7
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]


def test_training_state_round_trip_resumes_the_optimizer(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = MicroNet()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    loss = nn.functional.cross_entropy(model(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 0, 1]))
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()
    scheduler.step()
    extra = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": 3,
        "config": {"lr": 1e-3, "tile_size_px": 64, "slides": ["a.svs", "b.svs"]},
    }
    path = save_checkpoint(tmp_path / "resume.pt", model, _card(), extra=extra)
    state = load_training_state(path)
    assert set(state) == {"optimizer", "scheduler", "epoch", "config"}
    assert state["epoch"] == 3
    assert state["config"] == extra["config"]
    fresh = torch.optim.AdamW(MicroNet().parameters(), lr=1e-3)
    fresh.load_state_dict(state["optimizer"])
    assert fresh.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"] == 5e-4
    first = next(iter(optimizer.state.values()))["exp_avg"]
    assert torch.equal(next(iter(fresh.state.values()))["exp_avg"], first)


@pytest.mark.parametrize(
    ("extra", "named"),
    [
        ({"best_auc": np.float64(0.9)}, "extra['best_auc']"),
        ({"config": {"out": Path("/tmp/x")}}, "extra['config']['out']"),
        ({"history": [1.0, object()]}, "extra['history'][1]"),
    ],
)
def test_non_plain_extra_is_refused_and_nothing_is_written(
    tmp_path: Path, extra: dict[str, Any], named: str
) -> None:
    path = tmp_path / "model.pt"
    with pytest.raises(CheckpointError) as info:
        save_checkpoint(path, MicroNet(), _card(), extra=extra)
    assert named in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_reserved_extra_key_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"\['card'\] are reserved"):
        save_checkpoint(tmp_path / "m.pt", MicroNet(), _card(), extra={"card": {}})


def test_saving_weights_under_the_wrong_architecture_is_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not match architecture 'resnet18'"):
        save_checkpoint(tmp_path / "m.pt", MicroNet(), _card(architecture="resnet18"))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destination_is_a_checkpoint_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(CheckpointError, match="cannot write checkpoint"):
        save_checkpoint(blocker / "m.pt", MicroNet(), _card())


# --- refusing bad files ------------------------------------------------------------------


def test_missing_file_says_how_to_get_a_model(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "default.pt"
    for load in (load_checkpoint, read_card, load_training_state, file_sha256):
        with pytest.raises(CheckpointError) as info:
            load(path)
        message = str(info.value)
        assert str(path) in message
        assert "micromet train" in message and "--model" in message


def test_a_folder_is_not_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize(
    ("mutate", "named"),
    [
        (lambda card: card.pop("mpp"), "missing ['mpp']"),
        (lambda card: card.update(colour="pink"), "unknown ['colour']"),
        (lambda card: card.update(class_names=["tumor", "normal"]), "field class_names="),
        (lambda card: card.update(mpp=0), "field mpp=0"),
        (lambda card: card.update(architecture="vgg16"), "field architecture='vgg16'"),
        (lambda card: card.update(threshold=2.0), "field threshold=2.0"),
    ],
)
def test_bad_card_in_the_file_is_refused_naming_the_field(tmp_path: Path, mutate: Any, named: str) -> None:
    payload = _payload(MicroNet(), _card())
    mutate(payload["card"])
    path = tmp_path / "bad.pt"
    torch.save(payload, path)
    for load in (load_checkpoint, read_card):
        with pytest.raises(CheckpointError) as info:
            load(path)
        assert named in str(info.value)
        assert str(path) in str(info.value)


def test_shape_mismatch_names_the_key(tmp_path: Path) -> None:
    payload = _payload(MicroNet(num_classes=3), _card())
    path = tmp_path / "three_classes.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "classifier.weight (3, 128) != expected (2, 128)" in str(info.value)


def test_missing_and_unexpected_keys_are_named(tmp_path: Path) -> None:
    payload = _payload(MicroNet(), _card())
    del payload["state_dict"]["classifier.bias"]
    payload["state_dict"]["head.extra"] = torch.zeros(1)
    path = tmp_path / "keys.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "missing keys [classifier.bias]" in str(info.value)
    assert "unexpected keys [head.extra]" in str(info.value)


def test_bare_state_dict_is_refused_with_the_format_field(tmp_path: Path) -> None:
    path = tmp_path / "bare.pt"
    torch.save(MicroNet().state_dict(), path)
    with pytest.raises(CheckpointError, match="field 'format'"):
        load_checkpoint(path)


def test_newer_format_version_is_refused(tmp_path: Path) -> None:
    payload = _payload(MicroNet(), _card())
    payload["format_version"] = FORMAT_VERSION + 1
    path = tmp_path / "future.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="field 'format_version' is 2"):
        read_card(path)


def test_non_dict_payload_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_checkpoint(path)


@pytest.mark.parametrize("seed", range(12))
def test_random_bytes_are_refused(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    head = b"PK\x03\x04" if seed % 3 == 0 else b""  # some look like a zip archive
    path = tmp_path / "noise.pt"
    path.write_bytes(head + rng.randbytes(2048))
    with pytest.raises(CheckpointError, match=r"noise\.pt"):
        load_checkpoint(path)


def test_empty_and_text_files_are_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    text = tmp_path / "text.pt"
    text.write_text("this is not a model\n")
    for path in (empty, text):
        with pytest.raises(CheckpointError, match=re.escape(path.name)):
            load_checkpoint(path)


def test_truncated_checkpoint_is_refused(saved: tuple[Path, MicroNet, ModelCard]) -> None:
    path = saved[0]
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_pickled_custom_object_is_refused_without_running_code(tmp_path: Path) -> None:
    payload = _payload(MicroNet(), _card())
    payload["evil"] = _Evil()
    path = tmp_path / "evil.pt"
    torch.save(payload, path)
    CODE_RAN.clear()
    for load in (load_checkpoint, read_card, load_training_state):
        with pytest.raises(CheckpointError, match="weights_only"):
            load(path)
    assert CODE_RAN == []


# --- checksums and paths -----------------------------------------------------------------


def test_file_sha256_matches_hashlib_and_changes_with_the_file(
    saved: tuple[Path, MicroNet, ModelCard],
) -> None:
    path = saved[0]
    digest = file_sha256(path)
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    save_checkpoint(path, MicroNet(), _card())
    assert file_sha256(path) != digest


def test_default_model_path_is_in_the_repository_models_folder(tmp_path: Path) -> None:
    assert default_model_path() == REPO_ROOT / "models" / "default.pt"
    assert default_model_path(tmp_path) == tmp_path / "models" / "default.pt"


def test_resolve_model_path_prefers_the_argument() -> None:
    assert resolve_model_path(None) == default_model_path()
    assert resolve_model_path("/models/x.pt") == Path("/models/x.pt")
    assert resolve_model_path("~/x.pt") == Path.home() / "x.pt"


def test_card_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        _card().threshold = 0.9  # type: ignore[misc]


# --- damaged and stranger weights ----------------------------------------------------------


def test_bogus_stain_normalization_lists_the_allowed_methods(tmp_path: Path) -> None:
    payload = _payload(MicroNet(), _card())
    payload["card"]["stain_normalization"] = "bogus"
    path = tmp_path / "bogus.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert "stain_normalization='bogus'" in message and "'macenko'" in message
    assert str(path) in message and "\n" not in message


def test_tiny_std_is_refused_at_load(tmp_path: Path) -> None:
    payload = _payload(MicroNet(), _card())
    payload["card"]["std"] = [1e-300, 0.2, 0.2]
    path = tmp_path / "tiny_std.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="field std="):
        load_checkpoint(path)


def test_saved_checkpoint_records_the_weights_digest(saved: tuple[Path, MicroNet, ModelCard]) -> None:
    path, model, _ = saved
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["weights_sha256"] == weights_sha256(model.state_dict())
    assert "weights_sha256" not in load_training_state(path)


def test_weights_digest_changes_with_one_value_dtype_or_key() -> None:
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.tensor(3)}
    digest = weights_sha256(state)
    assert weights_sha256(dict(reversed(state.items()))) == digest
    changed = {**state, "a": state["a"].clone()}
    changed["a"][1, 2] = 5.0000005
    assert weights_sha256(changed) != digest
    assert weights_sha256({**state, "a": state["a"].double()}) != digest
    assert weights_sha256({**state, "a": state["a"].reshape(3, 2)}) != digest
    assert weights_sha256({"a2": state["a"], "b": state["b"]}) != digest


def _stored_record_offset(path: Path, name_suffix: str) -> tuple[int, int]:
    """(file offset, size) of the raw bytes of the archive entry ending with ``name_suffix``."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(name_suffix))
    assert info.compress_type == zipfile.ZIP_STORED
    data = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len, info.file_size


def test_one_flipped_weight_byte_is_refused_as_damaged(saved: tuple[Path, MicroNet, ModelCard]) -> None:
    path = saved[0]
    start, size = _stored_record_offset(path, "/data/0")  # the first conv's weights
    data = bytearray(path.read_bytes())
    data[start + size // 2] ^= 0x01  # torch does not check the zip CRC: only the digest sees it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    assert "damaged" in str(info.value) and str(path) in str(info.value)


def test_rewritten_archive_entry_is_refused_as_damaged(saved: tuple[Path, MicroNet, ModelCard]) -> None:
    import zipfile

    path = saved[0]
    patched = path.with_name("patched.pt")
    with zipfile.ZipFile(path) as source, zipfile.ZipFile(patched, "w", zipfile.ZIP_STORED) as target:
        for info in source.infolist():
            data = bytearray(source.read(info))
            if info.filename.endswith("/data/0"):
                data[7] ^= 0x80  # valid archive, fresh CRC: one float's top bit flipped
            target.writestr(info, bytes(data))
    with pytest.raises(CheckpointError, match="damaged"):
        load_checkpoint(patched)


def test_wrong_digest_field_is_refused(saved: tuple[Path, MicroNet, ModelCard]) -> None:
    path = saved[0]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    raw["weights_sha256"] = 12
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="'weights_sha256' is 12"):
        load_checkpoint(path)


def test_checkpoint_without_digest_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "old.pt"
    torch.save(_payload(_trained_micronet(), _card()), path)
    with caplog.at_level("WARNING", logger="pipeline.models.checkpoint"):
        model, _ = load_checkpoint(path)
    assert isinstance(model, MicroNet)
    assert any("no weights digest" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize("dtype", [torch.int64, torch.complex64])
def test_weights_of_the_wrong_dtype_are_refused(tmp_path: Path, dtype: torch.dtype) -> None:
    state = MicroNet().state_dict()
    key = next(iter(state))
    state[key] = state[key].to(dtype)
    payload = {**_payload(MicroNet(), _card()), "state_dict": state}
    path = tmp_path / "ints.pt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"{key} dtype {dtype}"):
        load_checkpoint(path)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused(tmp_path: Path, value: float) -> None:
    model = _trained_micronet()
    key = next(iter(model.state_dict()))
    with torch.no_grad():
        model.state_dict()[key].view(-1)[3] = value
    path = save_checkpoint(tmp_path / "nan.pt", model, _card())  # the digest matches: only values are bad
    with pytest.raises(CheckpointError, match=f"weights \\[{re.escape(key)}\\] hold NaN or infinite"):
        load_checkpoint(path)


def test_a_seed_threshold_below_the_threshold_or_above_one_is_refused() -> None:
    from pipeline.errors import CheckpointError as Refused

    card = ModelCard(architecture="micronet", tile_size_px=64, mpp=1.0, threshold=0.8, seed_threshold=0.9)
    assert card_from_dict(card_to_dict(card)).seed_threshold == 0.9
    for bad in (0.5, 1.5, "0.9"):
        with pytest.raises(Refused, match="seed_threshold"):
            ModelCard(architecture="micronet", tile_size_px=64, mpp=1.0, threshold=0.8, seed_threshold=bad)
    old = card_to_dict(card)
    del old["seed_threshold"]
    assert card_from_dict(old).seed_threshold is None  # cards written before the field still load
