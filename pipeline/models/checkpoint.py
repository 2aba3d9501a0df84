"""Models stage: the micromet checkpoint file, which carries weights and the model card.

Reads and writes one ``torch.save`` file per model::

    {"format": "micromet-checkpoint", "format_version": 1,
     "card": {...plain str/int/float/list/dict...}, "state_dict": {...tensors...},
     "weights_sha256": "<hex digest of the state_dict, see weights_sha256()>",
     ...training state for resuming (optimizer, scheduler, epoch, config)...}

Everything in it is a plain type, so it loads with ``torch.load(weights_only=True)`` and a
checkpoint can never run code on load. Produces an ``nn.Module`` in eval mode and its
``ModelCard`` (``pipeline.models.card``, which validates the card and gives its plain dict).
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import tempfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.errors import CheckpointError
from pipeline.models.architectures import build_model
from pipeline.models.card import FORMAT_VERSION, ModelCard, card_from_dict, card_to_dict

logger = logging.getLogger(__name__)

FORMAT_TAG = "micromet-checkpoint"
DIGEST_KEY = "weights_sha256"
RESERVED_KEYS = ("format", "format_version", "card", "state_dict", DIGEST_KEY)
# Weight dtypes a checkpoint may hold: floats for parameters, integers only for counters
# such as BatchNorm's num_batches_tracked (int64), which have no float meaning to break.
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_HOW_TO_GET_ONE = "train one with `micromet train` or pass --model PATH to an existing micromet checkpoint"
_MAX_LISTED = 5


def _plain_type_error(where: str, value: object) -> CheckpointError:
    return CheckpointError(
        f"cannot save {where}: a {type(value).__module__}.{type(value).__qualname__} is not a "
        "plain type; store only tensors, str, int, float, bool, None, lists, tuples and dicts "
        "(convert numpy values with float()/int() and paths with str())"
    )


def check_plain(value: object, where: str = "value") -> None:
    """Raise CheckpointError naming ``where`` if ``value`` would not load with weights_only=True.

    Allowed: tensors, str, int, float, bool, None, and lists, tuples and dicts of those.
    """
    # Exact types: subclasses (numpy scalars, namedtuples, TorchVersion) fail weights_only.
    kind = type(value)
    if value is None or kind in (str, int, float, bool, torch.Tensor, nn.Parameter):
        return
    if isinstance(value, (list, tuple)) and kind in (list, tuple, torch.Size):
        for index, item in enumerate(value):
            check_plain(item, f"{where}[{index}]")
        return
    if isinstance(value, dict) and kind in (dict, OrderedDict):
        for key, item in value.items():
            if type(key) not in (str, int):
                raise _plain_type_error(f"{where} key {key!r}", key)
            check_plain(item, f"{where}[{key!r}]")
        return
    raise _plain_type_error(where, value)


def _unwrap(model: nn.Module) -> nn.Module:
    # torch.compile keeps the original module in _orig_mod; DataParallel/DDP in .module.
    # Saving the inner module keeps state_dict keys free of "_orig_mod." / "module." prefixes.
    while True:
        inner = getattr(model, "_orig_mod", None)
        if inner is None and isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = model.module
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = len(items) - _MAX_LISTED
    return f"[{shown}{f', +{more} more' if more > 0 else ''}]"


def check_state_dict(state_dict: Mapping[str, Any], card: ModelCard, source: str = "checkpoint") -> None:
    """Raise CheckpointError if ``state_dict`` does not fit ``card.architecture``.

    Names missing keys, unexpected keys and tensors whose shape differs.
    """
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        expected = build_model(card.architecture, len(card.class_names)).state_dict()
    _compare_state_dicts(state_dict, expected, card.architecture, source)


def _dtype_fits(value: torch.dtype, reference: torch.dtype) -> bool:
    """Float weights may be stored in any real float dtype; integer counters exactly."""
    if reference.is_floating_point:
        return value in _FLOAT_DTYPES
    return value == reference


def _compare_state_dicts(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, torch.Tensor],
    architecture: str,
    source: str,
) -> None:
    missing = [key for key in expected if key not in state_dict]
    unexpected = [str(key) for key in state_dict if key not in expected]
    wrong: list[str] = []
    for key, reference in expected.items():
        value = state_dict.get(key)
        if value is None:
            continue
        if not isinstance(value, torch.Tensor):
            wrong.append(f"{key} is a {type(value).__name__}, not a tensor")
        elif value.shape != reference.shape:
            wrong.append(f"{key} {tuple(value.shape)} != expected {tuple(reference.shape)}")
        elif not _dtype_fits(value.dtype, reference.dtype):
            wrong.append(f"{key} dtype {value.dtype} != expected {reference.dtype}")
    if missing or unexpected or wrong:
        raise CheckpointError(
            f"{source}: state_dict does not match architecture {architecture!r}: "
            f"missing keys {_listed(missing)}, unexpected keys {_listed(unexpected)}, "
            f"wrong shapes or dtypes {_listed(wrong)}; the card's architecture may be wrong "
            "or the weights come from another model"
        )


def weights_sha256(state_dict: Mapping[str, torch.Tensor]) -> str:
    """Hex SHA-256 of a state_dict's tensors, independent of the file they are stored in.

    Keys in sorted order; for each, a JSON header [key, dtype, shape, n_bytes] and then the
    tensor's raw bytes (C order, CPU). Any changed weight, dtype, shape or key changes it.
    """
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous().reshape(-1)
        raw = tensor.view(torch.uint8) if tensor.numel() else torch.zeros(0, dtype=torch.uint8)
        header = [str(key), str(tensor.dtype), list(state_dict[key].shape), int(raw.numel())]
        digest.update(json.dumps(header).encode("utf-8") + b"\n")
        digest.update(raw.numpy().tobytes())
    return digest.hexdigest()


def _check_weights_digest(payload: Mapping[str, Any], path: Path) -> None:
    recorded = payload.get(DIGEST_KEY)
    if recorded is None:
        logger.warning(
            "%s: no weights digest (saved by an older micromet), so damage to its weights "
            "cannot be detected; load it and save it again with save_checkpoint to add one",
            path,
        )
        return
    if not isinstance(recorded, str) or len(recorded) != 64:
        raise CheckpointError(
            f"{path}: field {DIGEST_KEY!r} is {recorded!r}, expected a 64-digit hex SHA-256; "
            "the file is damaged; copy it again from its source or retrain"
        )
    if weights_sha256(payload["state_dict"]) != recorded:
        raise CheckpointError(
            f"{path}: the weights do not match the SHA-256 digest recorded when the checkpoint "
            "was saved: the file is damaged; copy it again from its source or retrain"
        )


def _check_finite_weights(state_dict: Mapping[str, torch.Tensor], path: Path) -> None:
    bad = [
        str(key)
        for key, value in state_dict.items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if bad:
        raise CheckpointError(
            f"{path}: weights {_listed(bad)} hold NaN or infinite values; the model is broken "
            "(training diverged or the file was edited); retrain or use another --model"
        )


def _atomic_torch_save(payload: dict[str, Any], path: Path) -> None:
    # Serialised in memory first: torch.save writing straight to a full disk raises an opaque
    # RuntimeError ("unexpected pos"); a plain write raises OSError (ENOSPC), named to the user.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle_fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp_path = Path(tmp_name)
    try:
        with os.fdopen(handle_fd, "wb") as handle:
            handle.write(buffer.getvalue())
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp makes 0600; a model file is meant to be shared
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def save_checkpoint(
    path: Path | str,
    model: nn.Module,
    card: ModelCard,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights, ``card`` and ``extra`` training state to one file, atomically.

    extra: plain-typed resume state such as {"optimizer": ..., "scheduler": ..., "epoch": 3}.
    Weights are stored on the CPU; compiled/DataParallel wrappers are unwrapped.
    Returns the path written. Raises CheckpointError if the weights do not fit the card's
    architecture, ``extra`` uses a reserved key or a non-plain type, or the file cannot be written.
    """
    path = Path(path)
    state_dict = {key: value.detach().cpu() for key, value in _unwrap(model).state_dict().items()}
    check_state_dict(state_dict, card, source=f"{path} (saving)")
    extra = dict(extra or {})
    clashes = sorted(set(extra) & set(RESERVED_KEYS))
    if clashes:
        raise CheckpointError(f"cannot save {path}: extra keys {clashes} are reserved")
    check_plain(extra, "extra")
    payload: dict[str, Any] = {
        "format": FORMAT_TAG,
        "format_version": FORMAT_VERSION,
        "card": card_to_dict(card),
        "state_dict": state_dict,
        DIGEST_KEY: weights_sha256(state_dict),
        **extra,
    }
    check_plain(payload["card"], "card")
    try:
        _atomic_torch_save(payload, path)
    except OSError as exc:
        raise CheckpointError(
            f"{path}: cannot write checkpoint ({exc}); check that the folder is writable"
        ) from exc
    logger.info("saved checkpoint %s (%s)", path, card.architecture)
    return path


def _check_file(path: Path) -> None:
    if not path.exists():
        raise CheckpointError(f"{path}: model checkpoint not found; {_HOW_TO_GET_ONE}")
    if not path.is_file():
        raise CheckpointError(f"{path}: is not a file; {_HOW_TO_GET_ONE}")


# What torch.load raises for files that are not (intact) torch checkpoints: weights_only
# refusals, bad pickle opcodes, truncated zip archives, short reads (found by fuzzing).
_LOAD_ERRORS: tuple[type[Exception], ...] = (
    pickle.UnpicklingError,
    RuntimeError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    OSError,
)


def _short(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _check_format(payload: object, path: Path) -> dict[str, Any]:
    if not isinstance(payload, dict):
        raise CheckpointError(
            f"{path}: holds a {type(payload).__name__}, not a micromet checkpoint; " + _HOW_TO_GET_ONE
        )
    tag = payload.get("format")
    if tag != FORMAT_TAG:
        raise CheckpointError(
            f"{path}: field 'format' is {tag!r}, expected {FORMAT_TAG!r}; a bare torch state_dict "
            f"must be wrapped with its model card by save_checkpoint; {_HOW_TO_GET_ONE}"
        )
    version = payload.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: field 'format_version' is {version!r}, this micromet reads version "
            f"{FORMAT_VERSION}; use the micromet version that wrote it or retrain"
        )
    if not isinstance(payload.get("state_dict"), dict):
        raise CheckpointError(f"{path}: field 'state_dict' is missing or not a dict")
    if "card" not in payload:
        raise CheckpointError(f"{path}: field 'card' is missing")
    return payload


def _load_payload(path: Path | str, device: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    _check_file(path)
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except _LOAD_ERRORS as exc:
        raise CheckpointError(
            f"{path}: cannot be loaded as a safe (weights_only) torch checkpoint: {_short(exc)}; "
            f"the file may be truncated, corrupt or contain code objects; {_HOW_TO_GET_ONE}"
        ) from exc
    return _check_format(payload, path)


def read_card(path: Path | str) -> ModelCard:
    """The model card of the checkpoint at ``path``, without building the model.

    Raises CheckpointError for a missing, unreadable or inconsistent file.
    """
    payload = _load_payload(path)
    return card_from_dict(payload["card"], source=str(path))


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelCard]:
    """The model (in eval mode, on ``device``) and card stored at ``path``.

    Loads with ``weights_only=True``, so a file holding arbitrary Python objects is refused.
    Raises CheckpointError naming the path and the field or key for a missing file, an
    unreadable file, a bad card, weights that do not fit the card's architecture (keys,
    shapes, dtypes), weights that differ from their recorded digest (a damaged file) or
    weights holding NaN or inf. A file without a digest (older micromet) loads with a warning.
    """
    path = Path(path)
    payload = _load_payload(path)
    card = card_from_dict(payload["card"], source=str(path))
    state_dict = payload["state_dict"]
    model = build_model(card.architecture, len(card.class_names))
    _compare_state_dicts(state_dict, model.state_dict(), card.architecture, str(path))
    _check_weights_digest(payload, path)
    _check_finite_weights(state_dict, path)
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: state_dict cannot be loaded: {_short(exc)}") from exc
    model.to(device)
    model.eval()
    logger.info("loaded %s from %s", card.architecture, path)
    return model, card


def load_training_state(path: Path | str, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The resume state saved beside the weights (every key except format, card, state_dict).

    Tensors are mapped to ``device``. Raises CheckpointError for a missing or unreadable file.
    """
    payload = _load_payload(path, device)
    return {key: value for key, value in payload.items() if key not in RESERVED_KEYS}


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of the file at ``path``, for recording which model produced a result.

    Raises CheckpointError if the file is missing or unreadable.
    """
    path = Path(path)
    _check_file(path)
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint ({exc})") from exc
    return digest.hexdigest()


def default_model_path(repo_root: Path | None = None) -> Path:
    """``<repo>/models/default.pt``; repo defaults to the checkout holding this package.

    repo_root: another root to look in (an explicit argument; no environment variable is read).
    """
    root = repo_root if repo_root is not None else Path(__file__).resolve().parents[2]
    return root / "models" / "default.pt"


def resolve_model_path(model_path: Path | str | None = None) -> Path:
    """``model_path`` if given (``~`` expanded), else ``default_model_path()``.

    Does not check that the file exists; ``load_checkpoint`` does, with a helpful message.
    """
    if model_path is None:
        return default_model_path()
    return Path(model_path).expanduser()
