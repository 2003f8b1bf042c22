"""The background exporter: every terminal experiment reaches every configured tracker, whatever
the tracker does. Never blocks and never loses an experiment:

* it runs in its own thread; the ledger's change hook only marks experiments dirty and wakes it;
* what was exported lives in the outbox (`outbox.Outbox`), so at start every terminal experiment
  the tracker does not hold in its current state is pending again (a restart resumes);
* a failed export (tracker down, misconfigured, client missing) keeps the experiment pending and
  retries with exponential backoff (2 s doubling to 1 min); `notes()` says so, for budget_status;
* a verdict can change with no change to its experiment's row (a new run of the same GPU type
  moves the noise floor or the reference): at most `RESCAN_S` after results arrive, every
  terminal experiment's signature is compared with the outbox again and the changed ones are
  updated, so the trackers' verdict tags follow the leaderboard.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from mcp_server.domain.metric import Metric
from mcp_server.domain.models import TERMINAL, Experiment
from mcp_server.store.ledger import Ledger
from mcp_server.trackers.outbox import Outbox
from mcp_server.trackers.record import RunRecord, build_record

log = logging.getLogger("autoresearch.trackers")

BACKOFF_START_S = 2.0
BACKOFF_MAX_S = 60.0
RESCAN_S = 30.0
#: verdict labels of experiments, by id (from the engine's analysis index: same-GPU-type references only)
VerdictsOf = Callable[[list[Experiment]], dict[str, str]]


class Tracker(Protocol):
    name: str

    def describe(self) -> str: ...
    def create(self, rec: RunRecord, partial_run_id: str | None, started: Callable[[str], None]) -> str: ...
    def update(self, run_id: str, rec: RunRecord) -> None: ...
    def close(self) -> None: ...


def signature(e: Experiment, verdict: str | None, metric: Metric) -> str:
    return f"{e.status.value}|{e.decision.value if e.decision else ''}|{verdict or ''}|{metric.raw(e)}"


class _State:
    def __init__(self, tracker: Tracker) -> None:
        self.tracker = tracker
        self.pending: set[str] = set()      # marked by the hook or a scan, not yet taken
        self.taken: set[str] = set()        # taken by the loop's current pass, not yet exported
        self.failures = 0
        self.next_try = 0.0
        self.last_error: str | None = None
        self.exported = 0

    def waiting(self) -> int:
        """How many experiments wait to be exported (under the exporter's lock)."""
        return len(self.pending | self.taken)


class Exporter:
    def __init__(self, ledger: Ledger, trackers: list[Tracker], outbox_path: Path, *, metric: Metric,
                 session_tag: str, verdicts_of: VerdictsOf, rescan_s: float = RESCAN_S) -> None:
        self.ledger = ledger
        self.metric = metric
        self.session_tag = session_tag
        self.verdicts_of = verdicts_of
        self.outbox = Outbox(outbox_path)
        self._states = [_State(t) for t in trackers]
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._scanned = False
        self.rescan_s = rescan_s
        self._rescan_at: float | None = None      # when results arrived: compare every verdict again then
        self._unsubscribe: Callable[[], None] | None = None
        self._drain_s = 5.0

    # -- life cycle ------------------------------------------------------------------------------
    def start(self) -> None:
        self._unsubscribe = self.ledger.subscribe(self._changed)
        self._thread = threading.Thread(target=self._loop, name="autoresearch-trackers", daemon=True)
        self._thread.start()

    def close(self, drain_s: float = 5.0) -> None:
        """Stop (after a short last try to export what is pending; the rest waits for the next start)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
        self._drain_s = drain_s
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(drain_s + 30)
            self._thread = None
        for s in self._states:
            try:
                s.tracker.close()
            except Exception:  # noqa: BLE001
                log.exception("closing tracker %s failed", s.tracker.name)
        self.outbox.close()

    def _changed(self, ids: list[str]) -> None:
        """The ledger's change hook (in the writer's thread): mark and wake, nothing else."""
        with self._lock:
            for s in self._states:
                s.pending.update(ids)
        self._wake.set()

    # -- status ----------------------------------------------------------------------------------
    def notes(self) -> list[str]:
        out = []
        with self._lock:
            for s in self._states:
                if s.last_error is not None:
                    wait = max(0.0, s.next_try - time.monotonic())
                    out.append(f"tracker {s.tracker.describe()}: {s.waiting()} experiment(s) waiting to be exported "
                               f"(nothing is lost; retrying in {wait:.0f} s). Last error: {s.last_error}")
        return out

    def status(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"tracker": s.tracker.name, "target": s.tracker.describe(), "pending": s.waiting(),
                     "exported": s.exported, "last_error": s.last_error} for s in self._states]

    def flush(self, timeout_s: float = 60.0) -> bool:
        """Wait until nothing is pending (tests, shutdown). True if so."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                if self._scanned and not any(s.waiting() for s in self._states):
                    return True
            self._wake.set()
            time.sleep(0.1)
        return False

    # -- the loop ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                if not self._scanned or (self._rescan_at is not None and time.monotonic() >= self._rescan_at):
                    self._rescan_at = None
                    self._scan()
                self._export_due()
            except Exception:  # noqa: BLE001 - the exporter never dies; the next wake tries again
                log.exception("tracker export loop failed")
            if self._stop.is_set():
                return
            self._wake.wait(self._sleep_s())
            self._wake.clear()
            if self._stop.is_set():
                try:
                    self._export_due(final=True, until=time.monotonic() + self._drain_s)
                except Exception:  # noqa: BLE001
                    log.exception("tracker export on close failed")
                return

    def _sleep_s(self) -> float:
        now = time.monotonic()
        with self._lock:
            due = [s.next_try - now for s in self._states if s.pending]
        if self._rescan_at is not None:
            due.append(self._rescan_at - now)
        return max(0.05, min(due)) if due else 30.0

    def _scan(self) -> None:
        """At start: every terminal experiment a tracker does not hold in its current state."""
        exps = self.ledger.all_experiments(statuses=[s.value for s in TERMINAL])
        verdicts = self.verdicts_of(exps)
        for s in self._states:
            held = self.outbox.state(s.tracker.name)
            todo = {e.id for e in exps
                    if held.get(e.id, ("", None))[1] != signature(e, verdicts.get(e.id), self.metric)}
            with self._lock:
                s.pending |= todo
        self._scanned = True

    def _export_due(self, final: bool = False, until: float | None = None) -> None:
        now = time.monotonic()
        for s in self._states:
            if not s.pending or (s.next_try > now and not final):
                continue
            # Take the marks and clear them in one step: a mark the hook sets while this pass reads
            # the ledger lands in the fresh set and is seen by the next pass. (Removing the ids read
            # as running afterwards lost an experiment that ended between the read and the removal.)
            with self._lock:
                s.taken, s.pending = s.pending, set()
            try:
                self._export_taken(s, now, final, until)
            finally:
                with self._lock:
                    s.pending |= s.taken        # not exported (failure, stop, the drain's end): pending again
                    s.taken = set()

    def _export_taken(self, s: _State, now: float, final: bool, until: float | None) -> None:
        exps = [e for e in self.ledger.get_many(sorted(s.taken)) if e.status in TERMINAL]
        with self._lock:
            s.taken &= {e.id for e in exps}     # not finished yet: the hook marks them again when they are
        verdicts = self.verdicts_of(exps) if exps else {}
        if exps and self._rescan_at is None and not final:
            self._rescan_at = now + self.rescan_s      # these results may change others' verdicts
        for e in exps:
            if (self._stop.is_set() and not final) or (until is not None and time.monotonic() > until):
                return          # the rest stays pending (and in the ledger: the next start exports it)
            try:
                self._export_one(s, e, verdicts.get(e.id))
            except Exception as exc:  # noqa: BLE001 - down or misconfigured: keep it pending, back off
                with self._lock:
                    s.failures += 1
                    delay = min(BACKOFF_MAX_S, BACKOFF_START_S * 2 ** (s.failures - 1))
                    s.next_try = time.monotonic() + delay
                    s.last_error = (f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300])
                log.warning("tracker %s: export of %s failed (retry in %.0f s): %s", s.tracker.name, e.id,
                            delay, s.last_error)
                return
            with self._lock:
                s.taken.discard(e.id)
                s.failures, s.last_error, s.next_try = 0, None, 0.0
                s.exported += 1

    def _export_one(self, s: _State, e: Experiment, verdict: str | None) -> None:
        name = s.tracker.name
        sig = signature(e, verdict, self.metric)
        held = self.outbox.get(name, e.id)
        if held is not None and held[1] == sig:
            return
        rec = build_record(e, verdict, self.metric, self.session_tag)
        if held is not None and held[1] is not None:
            s.tracker.update(held[0], rec)          # exported before: a decision or verdict changed
            self.outbox.record(name, e.id, held[0], sig)
            return

        def started(run_id: str) -> None:           # the run exists: remember it as partial until complete
            self.outbox.record(name, e.id, run_id, None)
        run_id = s.tracker.create(rec, held[0] if held is not None else None, started)
        self.outbox.record(name, e.id, run_id, sig)
