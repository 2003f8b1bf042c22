"""Staging: run directories of the next queued experiments, exported ahead by a second thread.

The stager thread exports (the engine's `stage` callback: a git export) the run directory of
the next queued experiments into `<runs>/<exp>/.staged-a<attempt>`, so a freed slot is refilled
with a rename instead of an export. It stages as many as a dispatch could place now, at least
one (not more: in the first round that would take CPU from the runners starting up, and a job
queued ahead has a whole run's time to be placed). It wakes when the scheduler asks (a dispatch
left work queued; start; stop) and every 5 s.

Rules: staging is an optimisation -- whatever fails here is logged and dispatch exports the run
directory itself. The hand-over is guarded by a condition: an experiment being dispatched is not
staged, and dispatch waits for an export of that experiment in progress before it takes the
directory. This module knows nothing of slots or flights: `positions` says how many to stage.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp_server.domain.models import Experiment, Status
from mcp_server.store.ledger import Ledger

log = logging.getLogger("autoresearch.scheduler")


def staged_dir(runs_dir: Path, eid: str, attempt: int) -> Path:
    """Where the run directory of this attempt is staged."""
    return runs_dir / eid / f".staged-a{attempt}"


def drop_staged(runs_dir: Path, eid: str) -> None:
    """Remove whatever is staged for this experiment (it was cancelled)."""
    for p in (runs_dir / eid).glob(".staged-a*"):
        shutil.rmtree(p, ignore_errors=True)


class Stager:
    """The stager thread and its hand-over to dispatch (`take`, then `release`)."""

    def __init__(self, ledger: Ledger, stage: Callable[[Experiment, int, Path], None], runs_dir: Path,
                 stop: threading.Event, positions: Callable[[], int], stats: dict[str, Any]) -> None:
        self.ledger = ledger
        self.stage = stage
        self.runs_dir = runs_dir
        self._stop = stop                 # the scheduler's: set when it stops
        self._positions = positions       # how many queued experiments a dispatch could place now
        self.stats = stats                # the scheduler's (staged, staged_used)
        self._cond = threading.Condition()
        self._staging_now: str | None = None
        self._dispatching: set[str] = set()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="autoresearch-stager", daemon=True)
        self._thread.start()
        self._wake.set()   # stage the first run dirs while data preparation / the first dispatch run

    def wake(self) -> None:
        self._wake.set()

    def join(self, timeout: float) -> None:
        if self._thread:
            self._thread.join(timeout)
        self._thread = None

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(5.0)
            self._wake.clear()
            if self._stop.is_set():
                break
            try:
                self._stage_next()
            except Exception:  # noqa: BLE001 - staging is an optimisation; dispatch exports itself
                log.exception("staging failed")

    def _stage_next(self) -> None:
        """Export the run directories of the next queued experiments: as many as can be placed
        now, at least one."""
        ahead = max(1, self._positions())
        for eid, _gpu, _prio in self.ledger.queued()[:ahead]:
            if self._stop.is_set():
                return
            exp = self.ledger.get(eid)
            if exp is None or exp.status != Status.queued or not exp.commit:
                continue
            attempt = exp.attempts + 1
            dest = staged_dir(self.runs_dir, eid, attempt)
            if dest.exists():
                continue
            with self._cond:
                if eid in self._dispatching:
                    continue
                self._staging_now = eid
            try:
                # read again now that a dispatch of it waits for us: one may have come and gone
                # since the read above (it begins the attempt before it takes the directory)
                current = self.ledger.get(eid)
                if current is None or current.status != Status.queued or current.attempts + 1 != attempt:
                    continue
                self.stage(exp, attempt, dest)
                self.stats["staged"] += 1
            finally:
                with self._cond:
                    self._staging_now = None
                    self._cond.notify_all()

    def take(self, eid: str, attempt: int, run_dir: Path) -> bool:
        """Move a staged run directory into place. True if there was one. The experiment is
        being dispatched (not staged) until `release`."""
        with self._cond:
            self._dispatching.add(eid)
            while self._staging_now == eid:
                self._cond.wait(5.0)
        staged = staged_dir(self.runs_dir, eid, attempt)
        if not staged.is_dir():
            return False
        if run_dir.exists():
            shutil.rmtree(run_dir)
        os.rename(staged, run_dir)
        self.stats["staged_used"] += 1
        return True

    def release(self, eid: str) -> None:
        """Its dispatch is over (the run directory is built, or it failed)."""
        with self._cond:
            self._dispatching.discard(eid)
