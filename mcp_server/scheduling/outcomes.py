"""Result interpretation: what a runner's result (`result.json`, read by the backend) means.

`interpret(result)` turns the runner's dict into the experiment's terminal status, its metrics,
the error text and the busy time the ledger records. A status the runner may not report is a
crash; `done` without the task's metric (val_bpb by default) is a crash; a `rejected` run has no
metrics; a failed run's error ends with the tail of its log.

Rules: pure functions of their arguments -- no I/O, no ledger, no threads, no clock. The
scheduler does the recording (`Ledger.finish_attempt` with these values).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import ValidationError

from mcp_server.domain.limits import MAX_EXTRA_CHARS, MAX_EXTRA_METRICS
from mcp_server.domain.models import RUNNER_STATUSES, Metrics, Status

#: the status strings a runner may report -> the status recorded
RESULT_STATUSES = {s.value: s for s in RUNNER_STATUSES}
LOG_TAIL_CHARS = 2000        # characters of the log tail appended to a failed run's error
ERROR_CHARS = 20000          # characters of error text recorded
DETAIL_CHARS = 200           # characters of the one-line detail of the ledger event


@dataclass(frozen=True)
class Verdict:
    """How one attempt ended, as the ledger records it (`Ledger.finish_attempt`'s arguments)."""

    status: Status
    metrics: Metrics
    error: str | None
    detail: str
    busy_seconds: float | None
    started_at: float | None


def to_epoch(value: Any) -> float | None:
    """A time as epoch seconds: a number as is, an ISO string parsed; None if neither."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def parse_metrics(raw: Any) -> Metrics:
    """The runner's metrics dict as Metrics; badly typed values of the known keys are dropped, and
    other keys (a task's own metric, karpathy's extra summary lines) are kept when they are a
    number or a short string."""
    if not isinstance(raw, dict):
        return Metrics()
    clean: dict[str, Any] = {}
    for key in Metrics.model_fields:
        value = raw.get(key)
        if value is None:
            continue
        try:
            clean[key] = getattr(Metrics.model_validate({key: value}), key)
        except ValidationError:
            continue
    extra: dict[str, Any] = {}
    for key, value in raw.items():
        if (key in Metrics.model_fields or not isinstance(key, str) or len(key) > MAX_EXTRA_CHARS
                or len(extra) >= MAX_EXTRA_METRICS):
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)) or (isinstance(value, str) and len(value) <= MAX_EXTRA_CHARS):
            extra[key] = value
    return Metrics.model_validate({**clean, **extra})


def interpret(res: dict[str, Any], metric: str = "val_bpb") -> Verdict:
    """A runner's result dict as the status, metrics, error and times to record (a done run
    must have reported `metric`, the task's)."""
    raw_status = str(res.get("status", ""))
    status = RESULT_STATUSES.get(raw_status, Status.crash)
    metrics = parse_metrics(res.get("metrics"))
    error = res.get("error")
    if raw_status not in RESULT_STATUSES:
        error = f"runner reported unknown status {raw_status!r}" + (f": {error}" if error else "")
    reported = getattr(metrics, metric, None)
    if reported is None:
        reported = (metrics.model_extra or {}).get(metric)
    if status == Status.done and (reported is None or isinstance(reported, (str, bool))):
        status, error = Status.crash, f"run finished but reported no {metric}"
    if status == Status.rejected:
        metrics = Metrics()   # a rejected run has no result
    tail = res.get("log_tail")
    if status not in (Status.done, Status.cancelled) and tail:
        error = ((error or status.value) + "\n--- log tail ---\n" + str(tail)[-LOG_TAIL_CHARS:])
    started, ended = to_epoch(res.get("started_at")), to_epoch(res.get("ended_at"))
    busy = (ended - started) if started is not None and ended is not None and ended >= started else None
    return Verdict(status, metrics,
                   error=str(error)[:ERROR_CHARS] if error else None,
                   detail=(error or "").splitlines()[0][:DETAIL_CHARS] if error else "",
                   busy_seconds=busy, started_at=started)
