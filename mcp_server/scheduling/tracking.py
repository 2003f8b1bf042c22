"""Following the jobs in flight each tick: poll and record outcomes, learn starts, the watchdog.

- `poll`: `Backend.poll` on every in-flight handle (or only those due to end about now) and
  `record` each outcome: a runner result -> the terminal status, metrics, error and log
  (`outcomes.interpret`, then `Ledger.finish_attempt`); `lost` -> requeued while attempts remain,
  else `lost` (`Ledger.lose_attempt`).
- `update_starts`: when the job at the head of each slot started (the backend's `started_at`,
  else estimated), reported through the scheduler's `on_started`.
- `watchdog`: a job with no outcome long after its hard timeout (runner unresponsive) is
  cancelled and recorded as `timeout`.

Rules: functions of the scheduler's state, called on its thread (or by `recover` before it
starts); flights are read and changed under `sched._lock`; `record` is idempotent (the ledger
ignores an attempt that is already closed) and returns whether something changed.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_server.backends.base import JobOutcome
from mcp_server.domain.models import Status
from mcp_server.runtime.runner import LOG_FILE
from mcp_server.scheduling.flights import Flight, due, heads, typical
from mcp_server.scheduling.outcomes import interpret

if TYPE_CHECKING:
    from mcp_server.scheduling.scheduler import Scheduler

log = logging.getLogger("autoresearch.scheduler")


def poll(sched: Scheduler, due_only: bool = False) -> list[str]:
    """Poll in-flight handles (all, or only those expected to end about now) and record outcomes."""
    now, typical_s = time.time(), typical(sched._durations)
    # One hold of the lock from the poll to the last record: a backend may hand an outcome out only
    # once (SkyPilot's), so a cancel must never run between the two (it would see the job still in
    # flight, record it cancelled, and the result would be dropped here). Both backends' polls are
    # in-memory or a file check.
    with sched._lock:
        handles = [f.handle for f in sched._flights.values()
                   if f.handle is not None and (not due_only or due(f, now, typical_s))]
        if not handles:
            return []
        sched.stats["polls"] += 1
        outcomes = sched.backend.poll(handles)
        return [outcome.handle.experiment_id for outcome in outcomes if _record_polled(sched, outcome)]


def _record_polled(sched: Scheduler, outcome: JobOutcome) -> bool:
    """Record one polled outcome if its attempt is still in flight (under the scheduler's lock)."""
    h = outcome.handle
    flight = sched._flights.get(h.experiment_id)
    if flight is None or flight.attempt != h.attempt:
        return False
    if flight.run_from is not None:
        sched._durations.append(max(0.0, time.time() - flight.run_from))
    changed = record(sched, flight, outcome)
    sched._flights.pop(h.experiment_id, None)
    return changed


def record(sched: Scheduler, flight: Flight, outcome: JobOutcome) -> bool:
    """Record one outcome in the ledger (idempotent). True if something changed."""
    run_log = str(Path(flight.run_dir) / LOG_FILE)
    log_path = outcome.log_path or run_log
    sched.stats["outcomes"] += 1
    if outcome.lost or outcome.result is None:
        sched.stats["lost"] += 1   # (the backend cleans up what a vanished job left: Backend.poll)
        sched._slots_at = 0.0      # its slot may have vanished too: re-read the slots before the
        #                            requeued attempt is dispatched (not to the dead cluster again)
        return sched.ledger.lose_attempt(flight.exp_id, flight.attempt, sched.max_attempts,
                                         outcome.reason or "the job vanished without a result",
                                         log_path=log_path) is not None
    v = interpret(outcome.result, getattr(sched, "metric_name", "val_bpb"))
    return sched.ledger.finish_attempt(flight.exp_id, flight.attempt, v.status, metrics=v.metrics,
                                       error=v.error, log_path=log_path, busy_seconds=v.busy_seconds,
                                       detail=v.detail, started_at=v.started_at)


def update_starts(sched: Scheduler) -> None:
    """Learn when the job at the head of each slot started: from the backend where it can
    tell, else estimated as now (the job ahead of it has just been seen to end). Once a real
    start is known the watchdog counts from it."""
    now = time.time()
    with sched._lock:
        # (a flight's handle is set once, at submission, and never cleared)
        pending = [(f, f.handle) for f in heads(sched._flights.values()).values()
                   if f.started_at is None and f.handle is not None]
    for f, handle in pending:
        try:
            t = sched.backend.started_at(handle)
        except Exception:  # noqa: BLE001 - an optional hint
            t = None
        with sched._lock:
            if sched._flights.get(f.exp_id) is not f:
                continue
            if t is None:
                if f.run_from is not None:
                    continue
                f.run_from = now
                if sched._reports_starts:
                    continue   # the backend will tell
                t = now        # it cannot tell: the job ahead has just ended, so this one starts now
            else:
                f.started_at = f.run_from = t
                f.deadline = min(f.deadline, t + sched.hard_timeout_s + sched.watchdog_margin_s)
        if sched.on_started is not None:
            try:
                sched.on_started(f.exp_id, f.attempt, t)
            except Exception:  # noqa: BLE001
                log.exception("on_started of %s failed", f.exp_id)


def watchdog(sched: Scheduler) -> list[str]:
    """Cancel and record as `timeout` the jobs past their deadline. Returns the ids that changed."""
    now = time.time()
    with sched._lock:
        late = [(f, f.handle) for f in sched._flights.values() if f.handle is not None and now > f.deadline]
    changed = []
    for f, handle in late:
        with sched._lock:
            if sched._flights.get(f.exp_id) is not f:
                continue
            sched.stats["watchdog"] += 1
            try:
                sched.backend.cancel(handle)
            except Exception:  # noqa: BLE001
                log.exception("watchdog cancel of %s failed", f.exp_id)
            waited = now - f.submitted_at
            if sched.ledger.finish_attempt(
                    f.exp_id, f.attempt, Status.timeout, log_path=str(Path(f.run_dir) / LOG_FILE),
                    error=f"watchdog: no result {waited:.0f} s after submission (hard timeout "
                          f"{sched.hard_timeout_s:.0f} s + margin); the runner was unresponsive and the job "
                          f"was cancelled", detail="watchdog"):
                changed.append(f.exp_id)
            sched._flights.pop(f.exp_id, None)
    return changed
