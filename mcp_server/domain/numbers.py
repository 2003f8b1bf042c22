"""How numbers are written where a person or a model reads them: the one home of the digest's
fixed-decimal text, the wait notes' short numbers, the wave analysis's significant-digit rounding
and the tool results' rounding.
Pure."""

from __future__ import annotations

import math


def fixed(v: float | None, decimals: int = 6) -> str:
    """`v` with a fixed number of decimals, or 'n/a' for no value (the digest's numbers)."""
    return "n/a" if v is None else f"{v:.{decimals}f}"


def general(v: float | None, digits: int) -> str:
    """`v` with `digits` significant digits as text ('%g'), or 'n/a' for no value (one-line notes)."""
    return "n/a" if v is None else f"{v:.{digits}g}"


def significant(v: float, digits: int) -> float:
    """`v` rounded to `digits` significant digits (JSON stays small; the models keep full precision)."""
    return float(f"{v:.{digits}g}")


def lean(x: float) -> float:
    """A float in a tool result: 6 significant digits (val_bpb needs no more), small ones
    (|x| < 0.1: deltas, noise floors, std) 4, large ones (seconds, timestamps) 3 decimals."""
    if not math.isfinite(x) or x == 0:
        return x
    if abs(x) >= 1000:
        return round(x, 3)
    return significant(x, 4) if abs(x) < 0.1 else significant(x, 6)
