"""The second stage of the deposit decision (``pipeline.deposits.decide``, step 3): reads the
8-pose probabilities of a seeded deposit's best cell and its size, produces the probability that
it is tumor. Its weights live on the model card (``confirm_model``), fitted on the node-scale dev
part by ``scripts/node_scale_candidates.py``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

__all__ = ["MIN_SIZE_MM", "ConfirmModel"]


@dataclasses.dataclass(frozen=True)
class ConfirmModel:
    """Second stage of ``pipeline.deposits.decide``'s step 3: a seeded deposit is confirmed when
    sigmoid(intercept + pose_mean * m + pose_min * n + ln_size_mm * ln(size mm)) >= threshold,
    where m and n are the mean and the lowest of its best cell's 8 pose probabilities and size
    is its (calibrated) largest dimension. The weights are fitted on the dev part
    (``scripts/node_scale_candidates.py``). Raises ValueError for a non-finite weight or a
    threshold outside 0-1."""

    intercept: float
    pose_mean: float
    pose_min: float
    ln_size_mm: float
    threshold: float

    def __post_init__(self) -> None:
        weights = (self.intercept, self.pose_mean, self.pose_min, self.ln_size_mm)
        if not all(isinstance(w, (int, float)) and np.isfinite(w) for w in weights):
            raise ValueError(f"confirm model weights {weights} must be finite numbers")
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"confirm model threshold {self.threshold} must be a probability from 0 to 1")

    def probability(self, pose_mean: float, pose_min: float, size_mm: float) -> float:
        """The second stage's probability that the deposit is tumor."""
        logit = (
            self.intercept + self.pose_mean * pose_mean + self.pose_min * pose_min
            + self.ln_size_mm * float(np.log(max(size_mm, MIN_SIZE_MM)))
        )  # fmt: skip
        return float(1.0 / (1.0 + np.exp(-logit)))

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> ConfirmModel:
        """From ``to_dict``'s output; ValueError naming the keys expected otherwise."""
        names = [f.name for f in dataclasses.fields(cls)]
        if not isinstance(data, dict) or set(data) != set(names):
            raise ValueError(f"a confirm model needs exactly the keys {', '.join(names)}")
        return cls(**{k: float(data[k]) for k in names})


# sizes below this are read as this in the second stage's ln(size): a grid cell is 0.03 mm
MIN_SIZE_MM = 0.01
