"""Waiting for experiments: block until they (or the first of them) reach a terminal status, with
a progress report as each one finishes, and say why live work may not be progressing."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from mcp_server.domain.analysis import Verdict
from mcp_server.domain.errors import Conflict, InvalidInput
from mcp_server.domain.limits import MAX_QUEUED, MAX_WAIT_S
from mcp_server.domain.models import LIVE, TERMINAL, Experiment, Status
from mcp_server.engine.checks import short
from mcp_server.engine.parts import EngineParts

log = logging.getLogger("autoresearch.engine")


class Progress(BaseModel):
    """One progress report of a wait: `done` of `total` finished; `experiment_id` is the one that
    just finished, `message` says it in a line (e.g. "e0007 done val_bpb=1.2345 (H100)")."""

    done: int
    total: int
    message: str
    experiment_id: str | None = None
    status: Status | None = None


class WaitResult(BaseModel):
    finished: list[Experiment]
    verdicts: list[Verdict]
    still_running: list[str]
    timed_out: bool
    interrupted: bool = Field(False, description="True when the engine was closed while waiting.")
    notes: list[str] = Field(default_factory=list, description="Why live experiments may not progress (data "
                             "preparation failed, no slot of their GPU type, ...).")


class WaitingMixin(EngineParts):
    def wait(
        self,
        experiment_ids: list[str] | None = None,
        wave_id: str | None = None,
        until: Literal["all", "first"] = "all",
        timeout_s: float = 600.0,
        on_progress: Callable[[Progress], None] | None = None,
    ) -> WaitResult:
        """Block until all (or the first) of the given experiments / the wave's experiments reach a
        terminal status, or `timeout_s` passes, or the engine closes. Neither given = every
        experiment live now. `on_progress(Progress)` is called (from this thread) once per
        experiment as it reaches a terminal status (its message e.g. "e0007 done val_bpb=1.2345 (H100)").
        Returns the finished experiments with their verdicts and the ids still live."""
        if until not in ("all", "first"):
            raise InvalidInput(f"until must be 'all' or 'first', got {short(until)}.")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s)\
                or not 0 <= timeout_s <= MAX_WAIT_S:
            raise InvalidInput(f"timeout_s must be a number of seconds from 0 to {MAX_WAIT_S:g}, "
                               f"got {short(timeout_s)}.")
        if on_progress is not None and not callable(on_progress):
            raise InvalidInput("on_progress must be callable.")
        targets: list[str] = []
        if experiment_ids is not None:
            targets += self.checks.experiment_ids(experiment_ids)
        if wave_id is not None:
            targets += self.checks.wave(wave_id).experiment_ids
        if experiment_ids is None and wave_id is None:
            live, _ = self.ledger.list_experiments(statuses=[s.value for s in LIVE], limit=MAX_QUEUED)
            targets = [e.id for e in live]
        targets = list(dict.fromkeys(targets))
        if not self._started and any(s in LIVE for s in self.ledger.statuses(targets).values()):
            raise Conflict("The engine is not started, so nothing would progress: call start() first.")
        deadline = time.monotonic() + float(timeout_s)
        reported: set[str] = set()
        total = len(targets)
        timed_out = interrupted = False
        while True:
            with self._cond:
                gen = self._generation
            statuses = self.ledger.statuses(targets)
            newly = [i for i in targets if statuses.get(i) in TERMINAL and i not in reported]
            if newly and on_progress is not None:
                for e in self.ledger.get_many(newly):
                    reported.add(e.id)
                    try:
                        on_progress(Progress(done=len(reported), total=total, message=self._progress_message(e),
                                             experiment_id=e.id, status=e.status))
                    except Exception:  # noqa: BLE001 - a progress sink must not break the wait
                        log.exception("on_progress failed")
            reported.update(newly)
            done_ids = [i for i in targets if statuses.get(i) in TERMINAL]
            if len(done_ids) == total or (until == "first" and done_ids):
                break
            if self._closed.is_set():
                interrupted = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            with self._cond:
                if self._generation == gen:
                    self._cond.wait(min(remaining, 5.0))
        finished = self.ledger.get_many(done_ids)
        still = [i for i in targets if statuses.get(i) not in TERMINAL]
        if self._tsv_pending:
            try:
                self.export_results()
            except Exception:  # noqa: BLE001
                log.exception("results.tsv export failed")
        verdicts = self._verdicts(finished) if finished else []
        notes: list[str] = []
        if still:
            if self.data.error:
                notes.append(self.data.error)
            if self.scheduler.last_error:
                notes.append(f"scheduler: {self.scheduler.last_error}")
            types = self.checks.gpu_types_available()
            stuck = sorted({e.gpu_type for e in self.ledger.get_many(still) if e.gpu_type and e.gpu_type not in types})
            if stuck:
                notes.append(f"No slot of GPU type {', '.join(stuck)} is up, so experiments that need it stay queued; "
                             f"available: {self.checks.describe_types()}.")
        return WaitResult(finished=finished, verdicts=verdicts, still_running=still, timed_out=timed_out,
                          interrupted=interrupted, notes=notes)

    @staticmethod
    def _progress_message(e: Experiment) -> str:
        where = f" ({e.ran_on_gpu})" if e.ran_on_gpu else ""
        if e.status == Status.done and e.metrics.val_bpb is not None:
            return f"{e.id} done val_bpb={e.metrics.val_bpb:.4f}{where}"
        reason = (e.error or "").splitlines()[0][:160] if e.error else ""
        return f"{e.id} {e.status.value}{where}" + (f": {reason}" if reason else "")
