"""In-flight tracking and adaptive polling: the attempts the scheduler follows, and when to look.

A `Flight` is one attempt the scheduler has submitted (or is submitting: `handle` None). On a
slot the first-submitted flight is its head, the one that runs; the others are queued ahead and
start when it ends. While a job is expected to end soon (the median of recent run times, counted
from when each job started) the scheduler polls at its fast rate, and so it does while a job at
the head of a slot is starting up (to queue the next one behind it once it has started).

Rules: data and pure functions only -- no I/O, no threads, no locks (the caller holds the
scheduler's lock where it reads its flights), and the time comes in as `now`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from mcp_server.backends.base import JobHandle

EARLY_S = 0.3       # poll fast from this long before a job's expected end
STARTING_S = 2.0    # a head job counts as starting up this long after it began (until its start is reported)


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
    # when it started running: reported by the backend (`started_at`), else estimated (a job
    # that is alone on its slot at submission starts then; one queued ahead when the job before
    # it ends); None while it waits behind another job on its slot
    run_from: float | None = None
    started_at: float | None = None     # reported by the backend: the real start


def heads(flights: Iterable[Flight]) -> dict[str, Flight]:
    """The first-submitted flight of each slot: the one that runs."""
    first: dict[str, Flight] = {}
    for f in flights:
        h = first.get(f.cluster)
        if h is None or f.submitted_at < h.submitted_at:
            first[f.cluster] = f
    return first


def waiting(flights: dict[str, Flight]) -> set[str]:
    """Ids of the flights that wait behind another job on their slot (not known to have started)."""
    first = heads(flights.values())
    return {eid for eid, f in flights.items() if first.get(f.cluster) is not f and f.started_at is None}


def queue_behind_at(head: Flight, run_s: float | None, lead_s: float) -> float | None:
    """When a job may be queued ahead behind `head` (epoch seconds) on a backend with a lead;
    None while it has not started.

    Halfway through its expected run (`run_s` from its start), or `lead_s` before its expected
    end if that is sooner. Slots that ended together start together, and halfway is where the
    queued jobs' start-up work is furthest from both such moments; at least `lead_s` is left for
    it. Without an expected run time: at its start."""
    if head.started_at is None:
        return None
    if run_s is None:
        return head.started_at
    return head.started_at + max(0.0, min(run_s / 2, run_s - lead_s))


def typical(durations: Iterable[float]) -> float | None:
    """The typical run time (median of recent ones), None before any run ended."""
    durations = list(durations)
    return statistics.median(durations) if durations else None


def due(f: Flight, now: float, typical_s: float | None) -> bool:
    """Is this job expected to end about now (so worth polling at the fast rate)?"""
    return typical_s is not None and f.run_from is not None and now >= f.run_from + typical_s - EARLY_S


def starting(head_flights: Iterable[Flight], now: float) -> bool:
    """Is a job at the head of its slot starting up (begun lately, its real start not reported yet)?"""
    return any(f.started_at is None and f.run_from is not None and now - f.run_from < STARTING_S
               for f in head_flights)


def next_delay(flights: list[Flight], is_starting: bool, typical_s: float | None, now: float,
               poll_interval_s: float, fast_poll_s: float, queue_at: Iterable[float] = ()) -> float:
    """How long the scheduler sleeps before its next tick (a launch or cancel wakes it sooner).
    `queue_at`: when slots may next take a job queued ahead (the tick after dispatches it)."""
    delay = _next_delay(flights, is_starting, typical_s, now, poll_interval_s, fast_poll_s)
    later = [t - now for t in queue_at if t > now]
    return max(fast_poll_s, min(delay, *later)) if later else delay


def _next_delay(flights: list[Flight], is_starting: bool, typical_s: float | None, now: float,
                poll_interval_s: float, fast_poll_s: float) -> float:
    if not flights or fast_poll_s >= poll_interval_s:
        return poll_interval_s
    if is_starting:   # a job is starting: see it start soon, then queue the next one behind it
        return fast_poll_s
    if typical_s is None:
        return poll_interval_s
    starts = [f.run_from for f in flights if f.run_from is not None]
    if not starts:
        return poll_interval_s
    nearest = min(starts) + typical_s - EARLY_S - now
    if nearest <= 0:
        return fast_poll_s
    return max(fast_poll_s, min(poll_interval_s, nearest))
