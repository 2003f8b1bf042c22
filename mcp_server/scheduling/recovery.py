"""Recovery on restart: adopting the attempts an earlier process left open.

An open attempt with a saved handle is tracked again (the next poll decides: result ->
recorded; lost -> requeued or lost; alive -> kept). One without (the process died between
marking the attempt and submitting it, or before it saved the handle of a job it had started):
processes still working in its run directory are stopped (`orphan_cleanup`), then a result file
there is recorded, otherwise the attempt is lost and the experiment requeued.

Rules: runs once, before the scheduler's thread starts (`Scheduler.recover`); the adopted
flights get the watchdog deadline of a job at the back of its slot's queue (depth x hard timeout
from submission); one `recovered` event sums it up.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from mcp_server.backends.base import JobHandle, JobOutcome
from mcp_server.runtime.runner import LOG_FILE, RESULT_FILE
from mcp_server.scheduling import tracking
from mcp_server.scheduling.dispatch import queue_depth
from mcp_server.scheduling.flights import Flight

if TYPE_CHECKING:
    from mcp_server.scheduling.scheduler import Scheduler


def recover(sched: Scheduler) -> dict[str, int]:
    """Adopt the open attempts, then poll them once. Returns the counts adopted, recorded, requeued."""
    adopted = requeued = recorded = 0
    changed: list[str] = []
    for row in sched.ledger.open_attempts():
        eid, attempt = row["experiment_id"], row["attempt"]
        if row["handle"]:
            handle = JobHandle.from_json(row["handle"])
            depth = max(1, queue_depth(sched.backend, row["cluster"]))
            with sched._lock:
                sched._flights[eid] = Flight(
                    eid, attempt, row["cluster"], row["gpu_type"], row["run_dir"], handle,
                    deadline=(handle.submitted_at or row["submitted_at"]) + depth * sched.hard_timeout_s
                    + sched.watchdog_margin_s,
                    submitted_at=handle.submitted_at or row["submitted_at"])
            adopted += 1
            continue
        result_file = Path(row["run_dir"]) / RESULT_FILE
        result = None
        stopped = 0
        if not result_file.is_file() and sched.orphan_cleanup is not None:
            # the job may have been started without its handle being saved: stop whatever
            # runs in its run directory before the experiment is requeued
            stopped = sched.orphan_cleanup(Path(row["run_dir"]))
        if result_file.is_file():
            try:
                result = json.loads(result_file.read_text())
            except (OSError, ValueError):
                result = None
        fake = JobHandle(eid, attempt, row["cluster"], row["run_dir"], {}, row["submitted_at"])
        flight = Flight(eid, attempt, row["cluster"], row["gpu_type"], row["run_dir"], fake)
        if isinstance(result, dict):
            outcome = JobOutcome(fake, result=result, log_path=str(Path(row["run_dir"]) / LOG_FILE))
            if tracking.record(sched, flight, outcome):
                recorded += 1
                changed.append(eid)
        else:
            why = ("the engine stopped before it saved the handle of the job it had started; that job was "
                   "stopped" if stopped else "the engine stopped before the job was submitted")
            if sched.ledger.lose_attempt(eid, attempt, sched.max_attempts, why) is not None:
                requeued += 1
                changed.append(eid)
    if adopted:
        changed += tracking.poll(sched)
        tracking.update_starts(sched)
    if changed:
        sched.on_change(changed)
    sched.ledger.add_event(None, "recovered", f"adopted {adopted}, recorded {recorded}, requeued {requeued}")
    return {"adopted": adopted, "recorded": recorded, "requeued": requeued}
