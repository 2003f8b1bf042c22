"""Dispatch: placing queued experiments on free slots of the right GPU type.

While a slot has `outstanding < backend.queue_depth(slot)`, the first queued experiment that
fits the slot (any slot, or only slots of its `gpu_type`) gets a fresh run directory (the staged
one when there is one) and is submitted; idle slots are filled first. `max_concurrent` caps the
experiments that RUN at once: a slot trains one job at a time, so it caps the slots in use; a
job queued ahead on a slot already in use does not count. Where the backend reports real starts
a job is queued ahead only behind one that has started. A slot whose submit failed rests 5 s and
the slots are re-read before the next dispatch. One dispatch submits for at most DISPATCH_SLICE_S,
then the loop polls before it places the rest (results are seen while a hundred slots fill), and
its cost per placed experiment does not grow with the number of slots or of queued experiments.
Placed experiments are submitted in batches of up to the backend's `max_batch`, at most one
per slot (`submit_batch` -> `Backend.submit_many`: the local backend starts a batch's runners
in one launcher exchange, so a hundred slots fill in one round trip instead of one per runner).

Rules: functions of the scheduler's state, called on its thread (`open_positions` on the
stager's); flights are read and changed under `sched._lock`, which `submit` holds throughout
(a cancel of the same experiment waits for it). Nothing here raises into the loop: a run
directory that cannot be built is a crash, a failed submit a lost attempt (retried).
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from mcp_server.backends.base import Backend
from mcp_server.domain.models import Cluster, Status
from mcp_server.scheduling.flights import Flight, heads, queue_behind_at

if TYPE_CHECKING:
    from mcp_server.scheduling.scheduler import Scheduler

log = logging.getLogger("autoresearch.scheduler")

SUBMIT_BACKOFF_S = 5.0     # a slot whose submit failed gets no job for this long
# one dispatch submits for at most this long, then lets the loop poll (and come straight back):
# filling a hundred slots takes seconds, and results must not wait that long to be seen
DISPATCH_SLICE_S = 0.25
# jobs queued ahead (behind a running one) go in batches of at most this many, between polls:
# nobody waits for them to the second, and a hundred runners starting up at once delay the
# hand-offs of the slots ending meanwhile; jobs for idle slots go in batches of max_batch
QUEUED_AHEAD_BATCH = 16


def queue_depth(backend: Backend, cluster: str) -> int:
    """Jobs the backend takes on this slot at once (the running one and those queued ahead), >= 1."""
    try:
        return max(1, int(backend.queue_depth(cluster)))
    except Exception:  # noqa: BLE001
        return 1


def dispatch(sched: Scheduler) -> list[str]:
    """Submit queued experiments to the free slots. Returns the ids that changed."""
    now = time.monotonic()
    slots = [s for s in sched.slots() if s.state == "up" and sched._slot_backoff.get(s.name, 0) <= now]
    if not slots:
        return []
    outstanding = sched.outstanding()
    depth = {s.name: queue_depth(sched.backend, s.name) for s in slots}
    if sched._reports_starts:   # queue ahead only behind a job that has started, and near its end
        closed = _not_open_behind(sched, time.time())
        depth = {name: 1 if name in closed else d for name, d in depth.items()}
    in_use = sum(1 for n in outstanding.values() if n)
    if not any(outstanding[s.name] < depth[s.name] and (outstanding[s.name] or in_use < sched.max_concurrent)
               for s in slots):
        return []   # every slot is full: no need to read the queue (most fast ticks)
    queued = sched.ledger.queued()
    if not queued:
        return []
    if sched.before_dispatch is not None and not sched.before_dispatch():
        return []
    changed: list[str] = []
    # slots in use = experiments running (a slot trains one at a time); a job queued ahead on a
    # slot in use does not add one. Kept up to date below rather than recounted per queued
    # experiment: at a hundred slots and hundreds queued, recounting made a dispatch O(slots x queue).
    with sched._lock:
        busy = {f.cluster for f in sched._flights.values()}
    in_use = len(busy)
    # the free slots, by (jobs on it, name): idle slots first
    free = sorted((s for s in slots if outstanding[s.name] < depth[s.name]),
                  key=lambda s: (outstanding[s.name], s.name))
    t_end = time.monotonic() + DISPATCH_SLICE_S
    # placed in batches (one Backend.submit_many each: for the local backend one launcher round
    # trip), at most one job per slot in a batch; slots are counted as taken when placed and
    # given back if the submit failed
    batch: list[tuple[str, Cluster, int, bool]] = []
    batch_max = max(1, int(getattr(sched.backend, "max_batch", 1)))
    ahead_in_batch = 0   # jobs in `batch` queued ahead (not alone on their slot)

    def flush() -> None:
        nonlocal in_use, ahead_in_batch
        ahead_in_batch = 0
        results = submit_batch(sched, list(batch))
        for (_eid, slot, _pos, alone), ok in zip(batch, results, strict=True):
            if ok:
                continue
            outstanding[slot.name] -= 1
            if alone:
                busy.discard(slot.name)
                in_use -= 1
            if (slot not in free and outstanding[slot.name] < depth[slot.name]
                    and sched._slot_backoff.get(slot.name, 0) <= time.monotonic()):
                free.append(slot)
        free.sort(key=lambda s: (outstanding[s.name], s.name))
        batch.clear()

    def usable_slots() -> list[Cluster]:
        # a slot whose submit failed rests; an idle slot takes a job only under max_concurrent
        if in_use >= sched.max_concurrent or sched._slot_backoff:
            return [s for s in free if (outstanding[s.name] > 0 or in_use < sched.max_concurrent)
                    and sched._slot_backoff.get(s.name, 0) <= time.monotonic()]
        return free

    def pick(gpu_type: str | None) -> Cluster | None:
        return next((s for s in usable_slots() if gpu_type is None or s.gpu_type == gpu_type), None)

    for eid, gpu_type, _prio in queued:
        if sched._stop.is_set():
            break
        if not free and batch:
            flush()
        if not free:
            break
        if changed and time.monotonic() > t_end:
            sched._wake.set()    # more to place: the next tick comes at once, after a poll
            break
        slot = pick(gpu_type)
        if slot is not None and any(b[1].name == slot.name for b in batch):
            flush()      # one job per slot in a batch: the next one on it waits for this one's runner
            slot = pick(gpu_type)
        if slot is None:
            if not free or not usable_slots():
                break
            continue
        alone = slot.name not in busy
        outstanding[slot.name] += 1
        batch.append((eid, slot, outstanding[slot.name], alone))
        ahead_in_batch += not alone
        if alone:
            busy.add(slot.name)
            in_use += 1
        if sched._reports_starts and outstanding[slot.name] == 1:
            depth[slot.name] = 1        # it has not started yet: nothing queued behind it
        if outstanding[slot.name] >= depth[slot.name]:
            free.remove(slot)
        else:   # still free, with one more job: keep the order (idle slots first)
            free.sort(key=lambda s: (outstanding[s.name], s.name))
        changed.append(eid)
        if len(batch) >= (min(batch_max, QUEUED_AHEAD_BATCH) if ahead_in_batch else batch_max):
            flush()
    if batch:
        flush()
    if sched._stager is not None and len(queued) > len(changed):
        sched._stager.wake()
    return changed


def _not_open_behind(sched: Scheduler, at: float) -> set[str]:
    """Slots whose running job takes no job queued behind it at `at` (epoch seconds): it has not
    started, or it is not yet within the backend's lead of its expected end."""
    run_s, lead = sched.run_s(), sched.queue_ahead_lead_s
    with sched._lock:
        first = heads(sched._flights.values())
    if lead is None:   # open once started (a remote start time is not compared with our clock)
        return {c for c, f in first.items() if f.started_at is None}
    return {c for c, f in first.items() if (t := queue_behind_at(f, run_s, lead)) is None or t > at}


def open_positions(sched: Scheduler) -> int:
    """How many queued experiments a dispatch could place now, or within one lead from now (free
    queue positions; where the backend reports starts, none behind a job that has not started
    or is not near its end): the stager exports their run directories ahead of the dispatch."""
    outstanding = sched.outstanding()
    lead = sched.queue_ahead_lead_s or 0.0
    closed = _not_open_behind(sched, time.time() + lead) if sched._reports_starts else set()
    free = 0
    for s in sched._slots:
        if s.state != "up":
            continue
        depth = 1 if s.name in closed else queue_depth(sched.backend, s.name)
        free += max(0, depth - outstanding[s.name])
    return free


def submit_batch(sched: Scheduler, items: list[tuple[str, Cluster, int, bool | None]]) -> list[bool]:
    """Submit queued experiments in one `Backend.submit_many`. Per item (eid, slot, position:
    its place in the slot's queue, 1 = it runs now; alone: no other job is on the slot, None =
    look it up). Each gets its attempt and run directory, then the backend starts them
    all (the local backend in one launcher exchange), then each handle is recorded. Per item:
    True if it is now in flight."""
    ok = [False] * len(items)
    with sched._lock:
        ready = []   # (index, eid, attempt, flight, spec, position, alone)
        for i, (eid, slot, position, alone) in enumerate(items):
            exp = sched.ledger.get(eid)
            if exp is None or exp.status != Status.queued:
                continue
            attempt = exp.attempts + 1
            run_dir = sched.runs_dir / eid / f"a{attempt}"
            if alone is None:
                alone = not any(f.cluster == slot.name for f in sched._flights.values())
            if not sched.ledger.begin_attempt(eid, attempt, slot.name, slot.gpu_type, slot.gpu_count,
                                              slot.cost_per_hour, str(run_dir), waiting=not alone):
                continue
            flight = Flight(eid, attempt, slot.name, slot.gpu_type, str(run_dir))
            sched._flights[eid] = flight
            try:
                staged = sched._stager.take(eid, attempt, run_dir) if sched._stager is not None else False
                spec = sched.build_job(exp, attempt, slot, run_dir, staged)
            except Exception as exc:  # noqa: BLE001 - recorded, never raised into the loop
                log.exception("could not build the run dir of %s", eid)
                sched.ledger.finish_attempt(eid, attempt, Status.crash,
                                            error=f"could not build the run directory: {type(exc).__name__}: {exc}")
                sched._flights.pop(eid, None)
                continue
            finally:
                if sched._stager is not None:
                    sched._stager.release(eid)
            ready.append((i, eid, attempt, flight, spec, position, alone))
        if not ready:
            return ok
        try:
            got = sched.backend.submit_many([(items[i][1].name, spec) for i, _, _, _, spec, _, _ in ready])
        except Exception as exc:  # noqa: BLE001 - a backend whose batch failed as a whole
            got = [exc] * len(ready)
        for (i, eid, attempt, flight, _spec, position, alone), result in zip(ready, got, strict=True):
            slot = items[i][1]
            if isinstance(result, Exception):   # an infrastructure failure: retried
                log.error("submit of %s to %s failed", eid, slot.name, exc_info=result)
                sched._slots_at = 0.0  # the slot may be gone: re-read the slots before the next dispatch
                sched._slot_backoff[slot.name] = time.monotonic() + SUBMIT_BACKOFF_S
                sched.ledger.add_event(eid, "submit_failed", f"{slot.name}: {type(result).__name__}: {result}"[:500])
                sched.ledger.lose_attempt(eid, attempt, sched.max_attempts, f"submit to {slot.name} failed: {result}")
                sched._flights.pop(eid, None)
                continue
            handle = result
            submitted = handle.submitted_at or time.time()
            sched.ledger.set_handle(eid, attempt, handle.to_json(), submitted)
            flight.handle = handle
            flight.submitted_at = submitted
            flight.run_from = submitted if alone else None
            flight.deadline = submitted + position * sched.hard_timeout_s + sched.watchdog_margin_s
            sched.stats["dispatched"] += 1
            ok[i] = True
    return ok
