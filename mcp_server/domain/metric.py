"""The metric a task is judged by: its name and which direction is better.

The one home of "what number do we compare, and is lower better". Everything that judges results
(verdicts, noise floor, leaderboard, wave analysis, digest, plot, results.tsv) reads the value and
the direction through a `Metric`, never through `val_bpb` by name. The built-in template's metric
is `DEFAULT_METRIC` (val_bpb, lower is better); a task description may name another.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict

from mcp_server.domain.models import Experiment, Status

Direction = Literal["lower", "higher"]


class Metric(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str = "val_bpb"
    direction: Direction = "lower"

    @property
    def lower_is_better(self) -> bool:
        return self.direction == "lower"

    def raw(self, e: Experiment) -> float | None:
        """The metric's value as the run reported it (None when absent or not finite)."""
        v = getattr(e.metrics, self.name, None)
        if v is None:
            extra = e.metrics.model_extra or {}
            v = extra.get(self.name)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        v = float(v)
        return v if math.isfinite(v) else None

    def value(self, e: Experiment) -> float | None:
        """The value of a finished (done) experiment; None for anything without a usable result."""
        return self.raw(e) if e.status == Status.done else None

    def gain(self, new: float, ref: float) -> float:
        """How much better `new` is than `ref`: positive = better, whatever the direction."""
        return ref - new if self.lower_is_better else new - ref

    def better(self, a: float, b: float) -> bool:
        """True when `a` is strictly better than `b`."""
        return self.gain(a, b) > 0

    def best(self, values: list[float]) -> float:
        return min(values) if self.lower_is_better else max(values)

    def sort_key(self, v: float) -> float:
        """Ascending sort puts the best first."""
        return v if self.lower_is_better else -v

    def describe(self) -> str:
        return f"{self.name} ({self.direction} is better)"


DEFAULT_METRIC = Metric()
