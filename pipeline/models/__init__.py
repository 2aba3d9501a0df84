"""Models stage: tile classifiers, the model card, the checkpoint file that carries both, device choice.

Reads a checkpoint file and the device and precision asked for; produces an ``nn.Module`` with
its ``ModelCard`` and the torch device and autocast to run it under. Each name below loads its
module (and torch) when first used, so torch-free code can read ``pipeline.models.device``'s
precision names (``pipeline.config``); ``import pipeline`` alone does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipeline.models.architectures import (
        ARCHITECTURES,
        MicroNet,
        UnknownArchitectureError,
        available_architectures,
        build_model,
        check_architecture,
    )
    from pipeline.models.card import (
        CLASS_NAMES,
        FORMAT_VERSION,
        IMAGENET_MEAN,
        IMAGENET_STD,
        ModelCard,
        card_from_dict,
        card_to_dict,
        software_versions,
    )
    from pipeline.models.checkpoint import (
        FORMAT_TAG,
        check_plain,
        check_state_dict,
        default_model_path,
        file_sha256,
        load_checkpoint,
        load_training_state,
        read_card,
        resolve_model_path,
        save_checkpoint,
        weights_sha256,
    )
    from pipeline.models.device import (
        DeviceUnavailableError,
        autocast_dtype,
        choose_device,
        native_cpu_bf16,
        precision_name,
        scoring_autocast_dtype,
    )

__all__ = [
    "ARCHITECTURES",
    "CLASS_NAMES",
    "FORMAT_TAG",
    "FORMAT_VERSION",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DeviceUnavailableError",
    "MicroNet",
    "ModelCard",
    "UnknownArchitectureError",
    "autocast_dtype",
    "available_architectures",
    "build_model",
    "card_from_dict",
    "card_to_dict",
    "check_architecture",
    "check_plain",
    "check_state_dict",
    "choose_device",
    "default_model_path",
    "file_sha256",
    "load_checkpoint",
    "load_training_state",
    "native_cpu_bf16",
    "precision_name",
    "read_card",
    "resolve_model_path",
    "save_checkpoint",
    "scoring_autocast_dtype",
    "software_versions",
    "weights_sha256",
]

# The module of this package that defines each public name.
_NAMES_BY_MODULE = {
    "architectures": (
        "ARCHITECTURES", "MicroNet", "UnknownArchitectureError", "available_architectures",
        "build_model", "check_architecture",
    ),
    "card": (
        "CLASS_NAMES", "FORMAT_VERSION", "IMAGENET_MEAN", "IMAGENET_STD", "ModelCard",
        "card_from_dict", "card_to_dict", "software_versions",
    ),
    "checkpoint": (
        "FORMAT_TAG", "check_plain", "check_state_dict", "default_model_path", "file_sha256",
        "load_checkpoint", "load_training_state", "read_card", "resolve_model_path",
        "save_checkpoint", "weights_sha256",
    ),
    "device": (
        "DeviceUnavailableError", "autocast_dtype", "choose_device", "native_cpu_bf16",
        "precision_name", "scoring_autocast_dtype",
    ),
}
_MODULE_OF = {name: module for module, names in _NAMES_BY_MODULE.items() for name in names}

def __getattr__(name: str) -> Any:
    """Load a public name from its module on first use (PEP 562)."""
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module 'pipeline.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"pipeline.models.{module}"), name)
    globals()[name] = value
    return value
