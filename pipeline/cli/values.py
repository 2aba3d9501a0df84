"""Strict parsers for numeric flags: a clinical quantity is read as written or refused.

Python's ``float`` takes "1_0" as 10, "nan" and "inf", and "1e-308" as a number; a µm/px
flag refuses them all with argparse's one-line usage error.
"""

from __future__ import annotations

import argparse
import math
import re

from pipeline.config import MAX_PLAUSIBLE_MPP, MIN_PLAUSIBLE_MPP

_DECIMAL = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")


def plain_float(text: str) -> float:
    """A finite decimal number as written ("0.25", "2.5e-1"); refuses "1_0", "nan", "inf"."""
    if not _DECIMAL.fullmatch(text.strip()):
        raise argparse.ArgumentTypeError(f"{text!r} is not a plain decimal number")
    value = float(text)
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is too large")
    return value


def mpp_float(text: str) -> float:
    """µm/px from a flag: a plain decimal from MIN_PLAUSIBLE_MPP to MAX_PLAUSIBLE_MPP."""
    value = plain_float(text)
    if not MIN_PLAUSIBLE_MPP <= value <= MAX_PLAUSIBLE_MPP:
        raise argparse.ArgumentTypeError(
            f"{text} µm/px is not a plausible resolution; give {MIN_PLAUSIBLE_MPP} to {MAX_PLAUSIBLE_MPP}"
        )
    return value


def seed_int(text: str) -> int:
    """A random seed from 0 to 2**32 - 1 (what numpy and torch both take)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text} is out of range; give a seed from 0 to {2**32 - 1}")
    return value
