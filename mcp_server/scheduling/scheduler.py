"""The scheduler: moves queued experiments onto free slots and records how each attempt ends.

The queue is the ledger itself (status `queued`, ordered by priority desc then launch order), so a
restart loses nothing. One background thread runs `tick()` in a loop:

1. poll every in-flight handle (`Backend.poll`) and record each outcome:
   a runner result -> the experiment's terminal status (done/crash/nan/oom/timeout/rejected/...),
   metrics, error and log; `lost` -> requeued while attempts remain, else `lost`;
2. watchdog: a job with no outcome long after its hard timeout (runner unresponsive) is cancelled
   and recorded as `timeout`;
3. dispatch: while a slot has `outstanding < backend.queue_depth(slot)`, the first queued
   experiment that fits the slot (any slot, or only slots of its `gpu_type`) gets a fresh run
   directory and is submitted. `max_concurrent` caps the experiments that RUN at once: a slot
   trains one job at a time, so it caps the slots in use; a job queued ahead on a slot that is
   already in use does not count (it only starts when the one ahead of it ends).

A job queued ahead (depth 2) is submitted while the slot's current job runs, so the backend
starts it the moment that one ends: the slot gap is a lock hand-off, not result detection +
submit + runner start. Each flight knows whether it is at the head of its slot and, where the
backend can tell (`Backend.started_at`), when it really started; `queued_ahead()` lists the ones
still waiting. (The ledger status of a dispatched job is `running` from submission, as it always
was for SkyPilot; a job queued ahead is `waiting_for_slot` with no start time and no GPU-hours
until `on_started` reports its start -- the backend's, or for a backend that cannot tell, when the
job ahead of it was seen to end -- and the engine records it with `Ledger.mark_started`.)

It sleeps between ticks on an Event that launches and cancels set, so new work is dispatched at
once; while a job is expected to end soon (learned from earlier runs, counted from when each job
started) it polls faster, so a result is seen within ~20-50 ms rather than a full poll interval.

This module holds the Scheduler's state, its thread and loop, its life cycle and its public
methods (and cancellation). The concerns live beside it in this package:

- `flights`: the `Flight` record, the head of each slot, adaptive polling (pure);
- `tracking`: each tick's poll + record of outcomes, learned starts, the watchdog;
- `outcomes`: what a runner's result means -- status, metrics, error (pure);
- `dispatch`: placing queued experiments on free slots;
- `recovery`: adopting the attempts an earlier process left open;
- `staging`: the second thread, exporting run directories ahead.

Rules: the state (`_flights`, `_slots`, ...) belongs to the Scheduler; the modules above read
and change it through the scheduler they are given, flights only under `_lock` (an RLock: it also
serialises the submit and the cancel of one experiment). Two threads: this one's loop and the
stager's (`staging.Stager`), both started and stopped here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path

from mcp_server.backends.base import Backend, JobHandle, JobOutcome, JobSpec
from mcp_server.domain.models import Cluster, Experiment, Status
from mcp_server.runtime.runner import LOG_FILE
from mcp_server.scheduling import dispatch, flights, recovery, tracking
from mcp_server.scheduling.flights import Flight
from mcp_server.scheduling.staging import Stager, drop_staged
from mcp_server.store.ledger import Ledger

log = logging.getLogger("autoresearch.scheduler")


class Scheduler:
    """Moves queued experiments onto free slots and records how each attempt ends (see the module)."""

    def __init__(
        self,
        ledger: Ledger,
        backend: Backend,
        build_job: Callable[[Experiment, int, Cluster, Path, bool], JobSpec],
        runs_dir: Path,
        *,
        max_attempts: int = 3,
        max_concurrent: int = 64,
        hard_timeout_s: float = 720.0,
        watchdog_margin_s: float = 30.0,
        poll_interval_s: float = 0.5,
        fast_poll_s: float = 0.05,
        cluster_refresh_s: float = 10.0,
        before_dispatch: Callable[[], bool] | None = None,
        on_change: Callable[[list[str]], None] | None = None,
        stage: Callable[[Experiment, int, Path], None] | None = None,
        orphan_cleanup: Callable[[Path], int] | None = None,
        on_started: Callable[[str, int, float], None] | None = None,
        expected_run_s: float | None = None,
    ) -> None:
        self.ledger = ledger
        #: the key a done run must report (the task's metric; the engine sets it)
        self.metric_name = "val_bpb"
        self.backend = backend
        self.build_job = build_job
        self.runs_dir = Path(runs_dir)
        self.max_attempts = max_attempts
        self.max_concurrent = max_concurrent
        self.hard_timeout_s = hard_timeout_s
        # how long a run is expected to take before any has ended (the time budget): with the
        # backend's queue_ahead_lead_s, when the first round's next jobs are queued ahead
        self.expected_run_s = expected_run_s
        self.watchdog_margin_s = watchdog_margin_s
        self.poll_interval_s = poll_interval_s
        self.fast_poll_s = fast_poll_s
        self.cluster_refresh_s = cluster_refresh_s
        self.before_dispatch = before_dispatch
        self.on_change = on_change or (lambda ids: None)
        self.stage = stage
        self.orphan_cleanup = orphan_cleanup
        # (exp id, attempt, start) once the backend reports the real start of a job, or, for a
        # backend that cannot, when a job queued ahead reaches the head of its slot (estimated)
        self.on_started = on_started

        self._lock = threading.RLock()          # flights + submit/cancel of one experiment
        self._flights: dict[str, Flight] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._slots: list[Cluster] = []
        self._slots_at = 0.0
        self._slot_backoff: dict[str, float] = {}
        self._durations: deque[float] = deque(maxlen=50)   # submit -> outcome seen, recent runs
        self._last_full_poll = 0.0
        # a backend that reports real starts gets a job queued ahead only behind one that has
        # started: the first round's runners start up without the queued ones competing for CPU,
        # and two runners of one slot are never both starting up
        self._reports_starts = type(backend).started_at is not Backend.started_at
        self.ticks = 0
        self.last_error: str | None = None
        self.stats = {"dispatched": 0, "outcomes": 0, "lost": 0, "watchdog": 0, "tick_seconds": 0.0,
                      "staged": 0, "staged_used": 0, "polls": 0}
        # staging: run directories of the next queued experiments are exported ahead of time by a
        # second thread, so a freed slot is refilled with a rename instead of a git export.
        self._stager = (Stager(ledger, stage, self.runs_dir, self._stop, lambda: dispatch.open_positions(self),
                               self.stats) if stage is not None else None)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="autoresearch-scheduler", daemon=True)
        self._thread.start()
        if self._stager is not None:
            self._stager.start()   # stages the first run dirs while data preparation / the first dispatch run

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._stager is not None:
            self._stager.wake()
        if self._thread:
            self._thread.join(timeout)
        if self._stager is not None:
            self._stager.join(timeout)
        self._thread = None

    @property
    def running(self) -> bool:
        return bool(self._thread and self._thread.is_alive())

    def wake(self) -> None:
        self._wake.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            t0 = time.monotonic()
            try:
                self.tick(full=time.monotonic() - self._last_full_poll >= self.poll_interval_s)
                self.last_error = None
            except Exception as exc:  # noqa: BLE001 - the loop must survive any one failure
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("scheduler tick failed")
            self.stats["tick_seconds"] += time.monotonic() - t0
            self._wake.wait(self._next_delay())
            self._wake.clear()

    def _next_delay(self) -> float:
        lead = self.queue_ahead_lead_s
        typical_s = flights.typical(self._durations)   # the median, once per loop
        with self._lock:
            in_flight = list(self._flights.values())
            head = flights.heads(in_flight)
            starting = self._reports_starts and flights.starting(head.values(), time.time())
            queue_at: list[float] = []
            if self._reports_starts and lead is not None:   # wake when a slot may take its next job
                behind = self.outstanding()
                run_s = typical_s or self.expected_run_s    # = self.run_s()
                queue_at = [t for c, h in head.items()
                            if behind[c] == 1 and (t := flights.queue_behind_at(h, run_s, lead)) is not None]
        return flights.next_delay(in_flight, starting, typical_s, time.time(),
                                  self.poll_interval_s, self.fast_poll_s, queue_at)

    @property
    def queue_ahead_lead_s(self) -> float | None:
        """The backend's lead for jobs queued ahead (Backend.queue_ahead_lead_s)."""
        lead = getattr(self.backend, "queue_ahead_lead_s", None)
        return float(lead) if isinstance(lead, (int, float)) else None

    def run_s(self) -> float | None:
        """How long a run takes: the median of recent ones, else the expected run time."""
        return flights.typical(self._durations) or self.expected_run_s

    # -- one round -----------------------------------------------------------------------------
    def tick(self, full: bool = True) -> list[str]:
        """One round: poll (all handles, or with full=False only those due to end about now),
        watchdog, dispatch."""
        self.ticks += 1
        if full:
            self._last_full_poll = time.monotonic()
        changed = tracking.poll(self, due_only=not full)
        tracking.update_starts(self)
        changed += tracking.watchdog(self)
        changed += dispatch.dispatch(self)
        if changed:
            self.on_change(changed)
        return changed

    def recover(self) -> dict[str, int]:
        """Adopt the attempts an earlier process left open, then poll them once (`recovery`)."""
        return recovery.recover(self)

    # -- slots ---------------------------------------------------------------------------------
    def refresh_clusters(self, clusters: list[Cluster] | None = None) -> list[Cluster]:
        self._slots = list(clusters) if clusters is not None else self.backend.clusters()
        self._slots_at = time.monotonic()
        self._wake.set()
        return self._slots

    def slots(self) -> list[Cluster]:
        if not self._slots_at or time.monotonic() - self._slots_at > self.cluster_refresh_s:
            self.refresh_clusters()
        return self._slots

    def in_flight(self) -> dict[str, Flight]:
        with self._lock:
            return dict(self._flights)

    def outstanding(self) -> Counter[str]:
        with self._lock:
            return Counter(f.cluster for f in self._flights.values())

    def queued_ahead(self) -> set[str]:
        """Ids of the dispatched experiments that wait behind another job on their slot (not
        started yet, as far as the scheduler knows)."""
        with self._lock:
            return flights.waiting(self._flights)

    # -- cancellation --------------------------------------------------------------------------
    def _flight_from_ledger(self, eid: str) -> Flight | None:
        """The open attempt of a running experiment this process is not tracking (not recovered yet)."""
        for row in self.ledger.open_attempts():
            if row["experiment_id"] == eid:
                handle = JobHandle.from_json(row["handle"]) if row["handle"] else None
                return Flight(eid, row["attempt"], row["cluster"], row["gpu_type"], row["run_dir"], handle)
        return None

    def cancel(self, exp_ids: list[str], reason: str = "cancelled by the agent") -> list[str]:
        """Cancel queued (at once) and running (backend.cancel, then recorded) experiments.
        Terminal ones are left as they are, and so is one whose job has ended but whose outcome
        was not polled yet: its result is recorded, not thrown away. Returns the ids cancelled."""
        changed = self.ledger.cancel_queued(exp_ids, reason)
        for eid in changed:
            drop_staged(self.runs_dir, eid)
        ended: list[str] = []           # finished before the cancel reached them: recorded as they ended
        for eid in exp_ids:
            if eid in changed:
                continue
            with self._lock:
                flight = self._flights.get(eid)
                if flight is None:
                    status = self.ledger.statuses([eid]).get(eid)
                    if status == Status.queued:
                        # requeued since cancel_queued looked (a lost run is retried): cancel it as queued
                        if self.ledger.cancel_queued([eid], reason):
                            drop_staged(self.runs_dir, eid)
                            changed.append(eid)
                        continue
                    if status != Status.running:
                        continue            # finished (or unknown): left as it is
                    flight = self._flight_from_ledger(eid)
                    if flight is None:
                        continue
                if flight.handle is not None:
                    outcome = self._ended_outcome(flight.handle)
                    if outcome is not None:
                        if tracking.record(self, flight, outcome):
                            ended.append(eid)
                        self._flights.pop(eid, None)
                        continue
                    try:
                        self.backend.cancel(flight.handle)
                    except Exception:  # noqa: BLE001
                        log.exception("cancel of %s failed", eid)
                # busy time: none for a job that was still queued ahead; from its real start when
                # known; else the ledger's default (since submission)
                if flight.started_at is not None:
                    busy: float | None = max(0.0, time.time() - flight.started_at)
                elif eid in self._flights and flights.heads(self._flights.values()).get(flight.cluster) is not flight:
                    busy = 0.0
                else:
                    busy = None
                if self.ledger.finish_attempt(eid, flight.attempt, Status.cancelled,
                                              log_path=str(Path(flight.run_dir) / LOG_FILE),
                                              error=reason, detail=reason, busy_seconds=busy):
                    changed.append(eid)
                self._flights.pop(eid, None)
        if changed or ended:
            self.on_change(changed + ended)
        self._wake.set()
        return changed

    def _ended_outcome(self, handle: JobHandle) -> JobOutcome | None:
        """The outcome of a job that has ended with a result, if the backend has one now."""
        try:
            outcomes = self.backend.poll([handle])
        except Exception:  # noqa: BLE001 - cannot tell: cancel it as asked
            log.exception("polling %s before its cancel failed", handle.experiment_id)
            return None
        return next((o for o in outcomes if not o.lost and o.result is not None), None)
