"""Models stage: tile classifiers, the checkpoint file with its model card, device choice.

Importing this subpackage imports torch; ``import pipeline`` alone does not import it.
"""

from __future__ import annotations

from pipeline.models.architectures import (
    ARCHITECTURES,
    MicroNet,
    UnknownArchitectureError,
    available_architectures,
    build_model,
    check_architecture,
)
from pipeline.models.checkpoint import (
    CLASS_NAMES,
    FORMAT_TAG,
    FORMAT_VERSION,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelCard,
    card_from_dict,
    card_to_dict,
    check_plain,
    check_state_dict,
    default_model_path,
    file_sha256,
    load_checkpoint,
    load_training_state,
    read_card,
    resolve_model_path,
    save_checkpoint,
    software_versions,
    weights_sha256,
)
from pipeline.models.device import DeviceUnavailableError, autocast_dtype, choose_device

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
    "read_card",
    "resolve_model_path",
    "save_checkpoint",
    "software_versions",
    "weights_sha256",
]
