"""Models stage: tile classifiers, the model card, the checkpoint file that carries both, device choice.

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
