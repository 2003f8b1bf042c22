"""What a tracker receives for one finished experiment (`RunRecord`): parameters, final metrics,
the training curve parsed from its log, tags, the log file. Pure: no tracker client here."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_server.domain.metric import Metric
from mcp_server.domain.models import Experiment

#: a progress line of train.py: `step 00025 | loss 5.1679 | lr x1.00 | 41ms | 24,795 tok/s | ...`
_STEP = re.compile(r"^step\s+(\d+)\s*\|(.*)$")
_NAMED = re.compile(r"^([A-Za-z_][\w.]*)\s+x?([-+]?[\d.,]+(?:[eE][-+]?\d+)?)$")       # loss 5.1, lr x1.00
_UNIT = re.compile(r"^([-+]?[\d.,]+(?:[eE][-+]?\d+)?)\s*([A-Za-z%][\w/%]*)$")          # 41ms, 24,795 tok/s
MAX_CURVE_POINTS = 5000


def _num(text: str) -> float | None:
    try:
        v = float(text.replace(",", ""))
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def parse_curve(log_text: str) -> list[tuple[int, dict[str, float]]]:
    """The step metrics train.py prints: one (step, {name: value}) per `step N | name value | ...`
    line (`loss 5.2` -> loss; `lr x1.00` -> lr; `41ms` -> ms; `24,795 tok/s` -> tok_per_s). Lines of
    other shapes are ignored; the last MAX_CURVE_POINTS steps are kept."""
    out: list[tuple[int, dict[str, float]]] = []
    for line in log_text.splitlines():
        m = _STEP.match(line.strip())
        if not m:
            continue
        values: dict[str, float] = {}
        for part in m.group(2).split("|"):
            part = part.strip()
            named, unit = _NAMED.match(part), _UNIT.match(part)
            if named:
                name, v = named.group(1), _num(named.group(2))
            elif unit:
                name, v = unit.group(2).replace("/", "_per_").replace("%", "pct"), _num(unit.group(1))
            else:
                continue
            if v is not None:
                values[name] = v
        if values:
            out.append((int(m.group(1)), values))
    return out[-MAX_CURVE_POINTS:]


@dataclass
class RunRecord:
    experiment_id: str
    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    curve: list[tuple[int, dict[str, float]]]
    tags: dict[str, str]
    log_path: Path | None
    succeeded: bool
    created_at: float = 0.0
    ended_at: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _str(v: Any) -> str:
    return "" if v is None else str(v)[:500]


def build_record(e: Experiment, verdict: str | None, metric: Metric, session_tag: str) -> RunRecord:
    """The run for experiment `e` (terminal). `verdict` is its verdict label against its same-GPU-type
    reference (the only comparison a tracker run carries: never one across GPU types)."""
    gpu = e.ran_on_gpu or "unknown"
    params = {"description": _str(e.description), "seed": _str(e.seed), "gpu_type": gpu,
              "gpu_requested": _str(e.gpu_type or "any"), "cluster": _str(e.cluster), "wave": _str(e.wave_id),
              "parent": _str(e.parent_id), "parent_commit": _str(e.parent_commit), "commit": _str(e.commit),
              "code_hash": _str(e.code_hash), "attempts": _str(e.attempts)}
    for k, v in sorted(e.overrides.items()):
        params[f"override.{k}"] = _str(v)
    metrics: dict[str, float] = {}
    for k, v in {**e.metrics.__dict__, **(e.metrics.model_extra or {})}.items():
        if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
            metrics[k] = float(v)
    text = ""
    log_path = Path(e.log_path) if e.log_path else None
    if log_path is not None:
        try:
            text = log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            log_path = None
    tags = {"autoresearch.experiment_id": e.id, "autoresearch.session": session_tag, "status": e.status.value,
            "decision": e.decision.value if e.decision else "none", "verdict": verdict or "none",
            "gpu_type": gpu, "metric": metric.name, "metric_direction": metric.direction,
            "comparable_with": f"runs with gpu_type={gpu} only (fixed time budget: a faster GPU fits more steps)"}
    return RunRecord(experiment_id=e.id, name=f"{e.id} {e.description}"[:250], params=params, metrics=metrics,
                     curve=parse_curve(text), tags=tags, log_path=log_path, succeeded=e.status.value == "done",
                     created_at=e.created_at, ended_at=e.ended_at)
