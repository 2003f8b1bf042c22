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
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

from pydantic import ValidationError

from mcp_server.backends.base import Backend, JobHandle, JobOutcome, JobSpec
from mcp_server.domain.models import Cluster, Experiment, Metrics, Status
from mcp_server.store.ledger import Ledger

log = logging.getLogger("autoresearch.scheduler")

RESULT_STATUSES = {s.value: s for s in (Status.done, Status.crash, Status.nan, Status.oom, Status.timeout,
                                        Status.rejected, Status.cancelled)}
LOG_TAIL_CHARS = 2000


@dataclass
class Flight:
    """An attempt the scheduler is tracking (submitted, or being submitted when handle is None)."""

    exp_id: str
    attempt: int
    cluster: str
    gpu_type: str | None
    run_dir: str
    handle: JobHandle | None = None
    deadline: float = float("inf")
    submitted_at: float = field(default_factory=time.time)
    cancel_requested: bool = False
    # when it started running: reported by the backend (`started_at`), else estimated (a job
    # that is alone on its slot at submission starts then; one queued ahead when the job before
    # it ends); None while it waits behind another job on its slot
    run_from: float | None = None
    started_at: float | None = None     # reported by the backend: the real start


def _to_epoch(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return datetime.fromisoformat(str(value)).timestamp()
    except ValueError:
        return None


def parse_metrics(raw: Any) -> Metrics:
    """The runner's metrics dict as Metrics; unknown keys and badly typed values are dropped."""
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
    return Metrics(**clean)


class Scheduler:
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
    ) -> None:
        self.ledger = ledger
        self.backend = backend
        self.build_job = build_job
        self.runs_dir = Path(runs_dir)
        self.max_attempts = max_attempts
        self.max_concurrent = max_concurrent
        self.hard_timeout_s = hard_timeout_s
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
        # staging: run directories of the next queued experiments are exported ahead of time by a
        # second thread, so a freed slot is refilled with a rename instead of a git export.
        self._stage_cond = threading.Condition()
        self._staging_now: str | None = None
        self._dispatching: set[str] = set()
        self._stage_wake = threading.Event()
        self._stager: threading.Thread | None = None
        # a backend that reports real starts gets a job queued ahead only behind one that has
        # started: the first round's runners start up without the queued ones competing for CPU,
        # and two runners of one slot are never both starting up
        self._reports_starts = type(backend).started_at is not Backend.started_at
        self.ticks = 0
        self.last_error: str | None = None
        self.stats = {"dispatched": 0, "outcomes": 0, "lost": 0, "watchdog": 0, "tick_seconds": 0.0,
                      "staged": 0, "staged_used": 0, "polls": 0}

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="autoresearch-scheduler", daemon=True)
        self._thread.start()
        if self.stage is not None:
            self._stager = threading.Thread(target=self._stage_loop, name="autoresearch-stager", daemon=True)
            self._stager.start()
            self._stage_wake.set()   # stage the first run dirs while data preparation / the first dispatch run

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        self._stage_wake.set()
        if self._thread:
            self._thread.join(timeout)
        if self._stager:
            self._stager.join(timeout)
        self._thread = self._stager = None

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

    def _typical(self) -> float | None:
        return statistics.median(self._durations) if self._durations else None

    def _due(self, f: Flight, now: float, typical: float | None) -> bool:
        """Is this job expected to end about now (so worth polling at the fast rate)?"""
        return typical is not None and f.run_from is not None and now >= f.run_from + typical - 0.3

    def _next_delay(self) -> float:
        with self._lock:
            flights = list(self._flights.values())
            starting = self._reports_starts and any(
                f.started_at is None and f.run_from is not None and time.time() - f.run_from < 2.0
                for f in self._heads().values())
        if not flights or self.fast_poll_s >= self.poll_interval_s:
            return self.poll_interval_s
        if starting:   # a job is starting: see it start soon, then queue the next one behind it
            return self.fast_poll_s
        typical = self._typical()
        if typical is None:
            return self.poll_interval_s
        now = time.time()
        starts = [f.run_from for f in flights if f.run_from is not None]
        if not starts:
            return self.poll_interval_s
        nearest = min(starts) + typical - 0.3 - now
        if nearest <= 0:
            return self.fast_poll_s
        return max(self.fast_poll_s, min(self.poll_interval_s, nearest))

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
            heads = self._heads()
            return {eid for eid, f in self._flights.items() if heads.get(f.cluster) is not f and f.started_at is None}

    def _heads(self) -> dict[str, Flight]:
        """The first-submitted flight of each slot: the one that runs (caller holds _lock)."""
        heads: dict[str, Flight] = {}
        for f in self._flights.values():
            h = heads.get(f.cluster)
            if h is None or f.submitted_at < h.submitted_at:
                heads[f.cluster] = f
        return heads

    def _update_starts(self) -> None:
        """Learn when the job at the head of each slot started: from the backend where it can
        tell, else estimated as now (the job ahead of it has just been seen to end). Once a real
        start is known the watchdog counts from it."""
        now = time.time()
        with self._lock:
            pending = [f for f in self._heads().values() if f.started_at is None and f.handle is not None]
        for f in pending:
            try:
                t = self.backend.started_at(f.handle)
            except Exception:  # noqa: BLE001 - an optional hint
                t = None
            with self._lock:
                if self._flights.get(f.exp_id) is not f:
                    continue
                if t is None:
                    if f.run_from is not None:
                        continue
                    f.run_from = now
                    if self._reports_starts:
                        continue   # the backend will tell
                    t = now        # it cannot tell: the job ahead has just ended, so this one starts now
                else:
                    f.started_at = f.run_from = t
                    f.deadline = min(f.deadline, t + self.hard_timeout_s + self.watchdog_margin_s)
            if self.on_started is not None:
                try:
                    self.on_started(f.exp_id, f.attempt, t)
                except Exception:  # noqa: BLE001
                    log.exception("on_started of %s failed", f.exp_id)

    # -- recovery ------------------------------------------------------------------------------
    def recover(self) -> dict[str, int]:
        """Adopt the attempts an earlier process left open, then poll them once.

        With a handle: tracked again (the next poll decides: result -> recorded; lost -> requeued
        or lost; alive -> kept). Without one (the process died between marking the attempt and
        submitting it): processes still working in its run directory are stopped (orphan_cleanup),
        then a result file there is recorded, otherwise the attempt is lost and the experiment
        requeued."""
        adopted = requeued = recorded = 0
        changed: list[str] = []
        for row in self.ledger.open_attempts():
            eid, attempt = row["experiment_id"], row["attempt"]
            if row["handle"]:
                handle = JobHandle.from_json(row["handle"])
                depth = max(1, self._depth(row["cluster"]))
                with self._lock:
                    self._flights[eid] = Flight(
                        eid, attempt, row["cluster"], row["gpu_type"], row["run_dir"], handle,
                        deadline=(handle.submitted_at or row["submitted_at"]) + depth * self.hard_timeout_s
                        + self.watchdog_margin_s,
                        submitted_at=handle.submitted_at or row["submitted_at"])
                adopted += 1
                continue
            result_file = Path(row["run_dir"]) / "result.json"
            result = None
            stopped = 0
            if not result_file.is_file() and self.orphan_cleanup is not None:
                # the job may have been started without its handle being saved: stop whatever
                # runs in its run directory before the experiment is requeued
                stopped = self.orphan_cleanup(Path(row["run_dir"]))
            if result_file.is_file():
                try:
                    result = json.loads(result_file.read_text())
                except (OSError, ValueError):
                    result = None
            fake = JobHandle(eid, attempt, row["cluster"], row["run_dir"], {}, row["submitted_at"])
            flight = Flight(eid, attempt, row["cluster"], row["gpu_type"], row["run_dir"], fake)
            if isinstance(result, dict):
                if self._record(flight, JobOutcome(fake, result=result, log_path=str(Path(row["run_dir"]) / "run.log"))):
                    recorded += 1
                    changed.append(eid)
            else:
                why = ("the engine stopped before it saved the handle of the job it had started; that job was "
                       "stopped" if stopped else "the engine stopped before the job was submitted")
                if self.ledger.lose_attempt(eid, attempt, self.max_attempts, why) is not None:
                    requeued += 1
                    changed.append(eid)
        if adopted:
            changed += self._poll()
            self._update_starts()
        if changed:
            self.on_change(changed)
        self.ledger.add_event(None, "recovered", f"adopted {adopted}, recorded {recorded}, requeued {requeued}")
        return {"adopted": adopted, "recorded": recorded, "requeued": requeued}

    # -- one round -----------------------------------------------------------------------------
    def tick(self, full: bool = True) -> list[str]:
        """One round: poll (all handles, or with full=False only those due to end about now),
        watchdog, dispatch."""
        self.ticks += 1
        if full:
            self._last_full_poll = time.monotonic()
        changed = self._poll(due_only=not full)
        self._update_starts()
        changed += self._watchdog()
        changed += self._dispatch()
        if changed:
            self.on_change(changed)
        return changed

    def _poll(self, due_only: bool = False) -> list[str]:
        """Poll in-flight handles (all, or only those expected to end about now) and record outcomes."""
        now, typical = time.time(), self._typical()
        with self._lock:
            handles = [f.handle for f in self._flights.values()
                       if f.handle is not None and (not due_only or self._due(f, now, typical))]
        if not handles:
            return []
        self.stats["polls"] += 1
        outcomes = self.backend.poll(handles)
        changed = []
        for outcome in outcomes:
            h = outcome.handle
            with self._lock:
                flight = self._flights.get(h.experiment_id)
                if flight is None or flight.attempt != h.attempt:
                    continue
                if flight.run_from is not None:
                    self._durations.append(max(0.0, time.time() - flight.run_from))
                if self._record(flight, outcome):
                    changed.append(h.experiment_id)
                self._flights.pop(h.experiment_id, None)
        return changed

    def _record(self, flight: Flight, outcome: JobOutcome) -> bool:
        """Record one outcome in the ledger (idempotent). True if something changed."""
        run_log = str(Path(flight.run_dir) / "run.log")
        log_path = outcome.log_path or run_log
        self.stats["outcomes"] += 1
        if outcome.lost or outcome.result is None:
            self.stats["lost"] += 1   # (the backend cleans up what a vanished job left: Backend.poll)
            self._slots_at = 0.0      # its slot may have vanished too: re-read the slots before the
            #                           requeued attempt is dispatched (not to the dead cluster again)
            return self.ledger.lose_attempt(flight.exp_id, flight.attempt, self.max_attempts,
                                            outcome.reason or "the job vanished without a result",
                                            log_path=log_path) is not None
        res = outcome.result
        raw_status = str(res.get("status", ""))
        status = RESULT_STATUSES.get(raw_status, Status.crash)
        metrics = parse_metrics(res.get("metrics"))
        error = res.get("error")
        if raw_status not in RESULT_STATUSES:
            error = f"runner reported unknown status {raw_status!r}" + (f": {error}" if error else "")
        if status == Status.done and metrics.val_bpb is None:
            status, error = Status.crash, "run finished but reported no val_bpb"
        if status == Status.rejected:
            metrics = Metrics()   # a rejected run has no result
        tail = res.get("log_tail")
        if status not in (Status.done, Status.cancelled) and tail:
            error = ((error or status.value) + "\n--- log tail ---\n" + str(tail)[-LOG_TAIL_CHARS:])
        started, ended = _to_epoch(res.get("started_at")), _to_epoch(res.get("ended_at"))
        busy = (ended - started) if started is not None and ended is not None and ended >= started else None
        return self.ledger.finish_attempt(flight.exp_id, flight.attempt, status, metrics=metrics,
                                          error=str(error)[:20000] if error else None, log_path=log_path,
                                          busy_seconds=busy, detail=(error or "").splitlines()[0][:200] if error else "",
                                          started_at=started)

    def _watchdog(self) -> list[str]:
        now = time.time()
        with self._lock:
            late = [f for f in self._flights.values() if f.handle is not None and now > f.deadline]
        changed = []
        for f in late:
            with self._lock:
                if self._flights.get(f.exp_id) is not f:
                    continue
                self.stats["watchdog"] += 1
                try:
                    self.backend.cancel(f.handle)
                except Exception:  # noqa: BLE001
                    log.exception("watchdog cancel of %s failed", f.exp_id)
                waited = now - f.submitted_at
                if self.ledger.finish_attempt(
                        f.exp_id, f.attempt, Status.timeout, log_path=str(Path(f.run_dir) / "run.log"),
                        error=f"watchdog: no result {waited:.0f} s after submission (hard timeout "
                              f"{self.hard_timeout_s:.0f} s + margin); the runner was unresponsive and the job "
                              f"was cancelled", detail="watchdog"):
                    changed.append(f.exp_id)
                self._flights.pop(f.exp_id, None)
        return changed

    def _depth(self, cluster: str) -> int:
        try:
            return max(1, int(self.backend.queue_depth(cluster)))
        except Exception:  # noqa: BLE001
            return 1

    def _dispatch(self) -> list[str]:
        now = time.monotonic()
        slots = [s for s in self.slots() if s.state == "up" and self._slot_backoff.get(s.name, 0) <= now]
        if not slots:
            return []
        outstanding = self.outstanding()
        depth = {s.name: self._depth(s.name) for s in slots}
        if self._reports_starts:   # queue ahead only behind a job that has started
            with self._lock:
                unstarted = {c for c, f in self._heads().items() if f.started_at is None}
            depth = {name: 1 if name in unstarted else d for name, d in depth.items()}
        in_use = sum(1 for n in outstanding.values() if n)
        if not any(outstanding[s.name] < depth[s.name] and (outstanding[s.name] or in_use < self.max_concurrent)
                   for s in slots):
            return []   # every slot is full: no need to read the queue (most fast ticks)
        queued = self.ledger.queued()
        if not queued:
            return []
        if self.before_dispatch is not None and not self.before_dispatch():
            return []
        changed: list[str] = []
        for eid, gpu_type, _prio in queued:
            if self._stop.is_set():
                break
            # slots in use = experiments running (a slot trains one at a time); a job queued
            # ahead on a slot in use does not add one
            with self._lock:
                in_use = len({f.cluster for f in self._flights.values()})
            mono = time.monotonic()
            free = [s for s in slots if outstanding[s.name] < depth[s.name]
                    and (outstanding[s.name] > 0 or in_use < self.max_concurrent)
                    and self._slot_backoff.get(s.name, 0) <= mono]   # a slot whose submit failed rests
            if not free:
                break
            fits = [s for s in free if gpu_type is None or s.gpu_type == gpu_type]
            if not fits:
                continue
            slot = min(fits, key=lambda s: (outstanding[s.name], s.name))   # idle slots first
            if self._submit(eid, slot, outstanding[slot.name] + 1):
                outstanding[slot.name] += 1
                if self._reports_starts and outstanding[slot.name] == 1:
                    depth[slot.name] = 1        # it has not started yet: nothing queued behind it
            changed.append(eid)
        if self.stage is not None and len(queued) > len(changed):
            self._stage_wake.set()
        return changed

    # -- staging ---------------------------------------------------------------------------------
    def _staged_dir(self, eid: str, attempt: int) -> Path:
        return self.runs_dir / eid / f".staged-a{attempt}"

    def _stage_loop(self) -> None:
        while not self._stop.is_set():
            self._stage_wake.wait(5.0)
            self._stage_wake.clear()
            if self._stop.is_set():
                break
            try:
                self._stage_next()
            except Exception:  # noqa: BLE001 - staging is an optimisation; dispatch exports itself
                log.exception("staging failed")

    def _open_positions(self) -> int:
        """How many queued experiments a dispatch could place now (free queue positions; behind
        a job that has not started, none where the backend reports starts)."""
        outstanding = self.outstanding()
        with self._lock:
            heads = self._heads()
        free = 0
        for s in self._slots:
            if s.state != "up":
                continue
            head = heads.get(s.name)
            depth = 1 if self._reports_starts and (head is None or head.started_at is None) else self._depth(s.name)
            free += max(0, depth - outstanding[s.name])
        return free

    def _stage_next(self) -> None:
        """Export the run directories of the next queued experiments: as many as can be placed
        now, at least one. (Not more: in the first round that would take CPU from the runners
        starting up, and a job queued ahead has a whole run's time to be placed.)"""
        ahead = max(1, self._open_positions())
        for eid, _gpu, _prio in self.ledger.queued()[:ahead]:
            if self._stop.is_set():
                return
            exp = self.ledger.get(eid)
            if exp is None or exp.status != Status.queued or not exp.commit:
                continue
            attempt = exp.attempts + 1
            dest = self._staged_dir(eid, attempt)
            if dest.exists():
                continue
            with self._stage_cond:
                if eid in self._dispatching:
                    continue
                self._staging_now = eid
            try:
                self.stage(exp, attempt, dest)
                self.stats["staged"] += 1
            finally:
                with self._stage_cond:
                    self._staging_now = None
                    self._stage_cond.notify_all()

    def _take_staged(self, eid: str, attempt: int, run_dir: Path) -> bool:
        """Move a staged run directory into place. True if there was one."""
        with self._stage_cond:
            self._dispatching.add(eid)
            while self._staging_now == eid:
                self._stage_cond.wait(5.0)
        staged = self._staged_dir(eid, attempt)
        if not staged.is_dir():
            return False
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.rename(staged, run_dir)
        self.stats["staged_used"] += 1
        return True

    def _drop_staged(self, eid: str) -> None:
        for p in (self.runs_dir / eid).glob(".staged-a*"):
            shutil.rmtree(p, ignore_errors=True)

    def _submit(self, eid: str, slot: Cluster, position: int) -> bool:
        """Submit one queued experiment to `slot`. True if it is now in flight."""
        with self._lock:
            exp = self.ledger.get(eid)
            if exp is None or exp.status != Status.queued:
                return False
            attempt = exp.attempts + 1
            run_dir = self.runs_dir / eid / f"a{attempt}"
            alone = not any(f.cluster == slot.name for f in self._flights.values())
            if not self.ledger.begin_attempt(eid, attempt, slot.name, slot.gpu_type, slot.gpu_count,
                                             slot.cost_per_hour, str(run_dir), waiting=not alone):
                return False
            flight = Flight(eid, attempt, slot.name, slot.gpu_type, str(run_dir))
            self._flights[eid] = flight
            try:
                staged = self._take_staged(eid, attempt, run_dir) if self.stage is not None else False
                spec = self.build_job(exp, attempt, slot, run_dir, staged)
            except Exception as exc:  # noqa: BLE001 - recorded, never raised into the loop
                log.exception("could not build the run dir of %s", eid)
                self.ledger.finish_attempt(eid, attempt, Status.crash,
                                           error=f"could not build the run directory: {type(exc).__name__}: {exc}")
                self._flights.pop(eid, None)
                return False
            finally:
                with self._stage_cond:
                    self._dispatching.discard(eid)
            try:
                handle = self.backend.submit(slot.name, spec)
            except Exception as exc:  # noqa: BLE001 - an infrastructure failure: retried
                log.exception("submit of %s to %s failed", eid, slot.name)
                self._slots_at = 0.0  # the slot may be gone: re-read the slots before the next dispatch
                self._slot_backoff[slot.name] = time.monotonic() + 5.0
                self.ledger.add_event(eid, "submit_failed", f"{slot.name}: {type(exc).__name__}: {exc}"[:500])
                self.ledger.lose_attempt(eid, attempt, self.max_attempts, f"submit to {slot.name} failed: {exc}")
                self._flights.pop(eid, None)
                return False
            submitted = handle.submitted_at or time.time()
            self.ledger.set_handle(eid, attempt, handle.to_json(), submitted)
            flight.handle = handle
            flight.submitted_at = submitted
            flight.run_from = submitted if alone else None
            flight.deadline = submitted + position * self.hard_timeout_s + self.watchdog_margin_s
            self.stats["dispatched"] += 1
            return True

    def _flight_from_ledger(self, eid: str) -> Flight | None:
        """The open attempt of a running experiment this process is not tracking (not recovered yet)."""
        for row in self.ledger.open_attempts():
            if row["experiment_id"] == eid:
                handle = JobHandle.from_json(row["handle"]) if row["handle"] else None
                return Flight(eid, row["attempt"], row["cluster"], row["gpu_type"], row["run_dir"], handle)
        return None

    # -- cancellation --------------------------------------------------------------------------
    def cancel(self, exp_ids: list[str], reason: str = "cancelled by the agent") -> list[str]:
        """Cancel queued (at once) and running (backend.cancel, then recorded) experiments.
        Terminal ones are left as they are. Returns the ids that changed."""
        changed = self.ledger.cancel_queued(exp_ids, reason)
        for eid in changed:
            self._drop_staged(eid)
        for eid in exp_ids:
            if eid in changed:
                continue
            with self._lock:
                flight = self._flights.get(eid) or self._flight_from_ledger(eid)
                if flight is None:
                    continue
                if flight.handle is not None:
                    try:
                        self.backend.cancel(flight.handle)
                    except Exception:  # noqa: BLE001
                        log.exception("cancel of %s failed", eid)
                # busy time: none for a job that was still queued ahead; from its real start when
                # known; else the ledger's default (since submission)
                if flight.started_at is not None:
                    busy: float | None = max(0.0, time.time() - flight.started_at)
                elif eid in self._flights and self._heads().get(flight.cluster) is not flight:
                    busy = 0.0
                else:
                    busy = None
                if self.ledger.finish_attempt(eid, flight.attempt, Status.cancelled,
                                              log_path=str(Path(flight.run_dir) / "run.log"),
                                              error=reason, detail=reason, busy_seconds=busy):
                    changed.append(eid)
                self._flights.pop(eid, None)
        if changed:
            self.on_change(changed)
        self._wake.set()
        return changed
