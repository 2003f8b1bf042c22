"""Waiting for experiments: block until they (or the first of them) reach a terminal status, with
a progress report as each one finishes and at least every HEARTBEAT_S while it blocks (MCP
clients restart their request timeout on progress), and say why live work is not progressing.

A wait whose every live experiment is queued behind a permanent condition (data preparation
failed, no slot of the asked GPU type, no slot at all) returns at once with `blocked`: the
reason and the call that fixes it. Waiting again would change nothing."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from typing import Literal

from pydantic import BaseModel, Field

from mcp_server.domain.analysis import Verdict
from mcp_server.domain.errors import Conflict, InvalidInput
from mcp_server.domain.limits import HEARTBEAT_S, MAX_QUEUED, MAX_WAIT_S
from mcp_server.domain.models import LIVE, TERMINAL, Experiment, Status
from mcp_server.domain.tool_names import Tool
from mcp_server.engine.blockers import Blocker
from mcp_server.engine.checks import short
from mcp_server.engine.parts import EngineParts

log = logging.getLogger("autoresearch.engine")

WAIT_COALESCE_S = 0.02   # a wait looks at its targets at most this often


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
    blocked: list[Blocker] = Field(default_factory=list, description="Live experiments that cannot progress until "
                                   "something is fixed; when every live one is blocked the wait returns at once.")


class WaitingMixin(EngineParts):
    def wait(
        self,
        experiment_ids: list[str] | None = None,
        wave_id: str | None = None,
        until: Literal["all", "first"] = "all",
        timeout_s: float = 600.0,
        on_progress: Callable[[Progress], None] | None = None,
        heartbeat_s: float = HEARTBEAT_S,
    ) -> WaitResult:
        """Block until all (or the first) of the given experiments / the wave's experiments reach a
        terminal status, or `timeout_s` passes, or the engine closes. Neither given = every
        experiment live now. `on_progress(Progress)` is called (from this thread) once per
        experiment as it reaches a terminal status (its message e.g. "e0007 done val_bpb=1.2345 (H100)"),
        and at least every `heartbeat_s` while nothing finishes (how many run, are queued, and when
        the next one is expected). Returns the finished experiments with their verdicts, the ids
        still live and, when live ones cannot progress, why (`blocked`): a wait whose every live
        experiment is blocked returns at once."""
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
        ended: set[str] = set()    # targets seen terminal (a terminal status is final): not read again
        total = len(targets)
        timed_out = interrupted = False
        last_report = time.monotonic()
        blocked: list[Blocker] = []
        if on_progress is not None and total:    # at once: a client re-calling after an early return sees no gap
            statuses = self.ledger.statuses(targets)
            self._report(on_progress, Progress(done=0, total=total, message=self._live_summary(
                0, total, [i for i in targets if statuses.get(i) not in TERMINAL])))
        while True:
            with self._cond:
                gen = self._generation
            # each look reads only the targets still live: over a session of hundreds of targets
            # its cost falls as they end instead of staying at every target per change
            pending = [i for i in targets if i not in ended]
            statuses = self.ledger.statuses(pending)
            newly = [i for i in pending if statuses.get(i) in TERMINAL]
            if newly and on_progress is not None:
                for k, e in enumerate(self.ledger.get_many(newly), start=len(ended) + 1):
                    self._report(on_progress, Progress(done=k, total=total, message=self._progress_message(e),
                                                       experiment_id=e.id, status=e.status))
                last_report = time.monotonic()
            ended.update(newly)
            done_ids = [i for i in targets if i in ended]
            if len(done_ids) == total or (until == "first" and done_ids):
                break
            if self._closed.is_set():
                interrupted = True
                break
            live_ids = [i for i in pending if i not in ended]
            # (only while none runs can every live one be blocked: the blockers read each queued
            # experiment, which at hundreds of targets and a change every few ms is the cost)
            if not any(statuses.get(i) == Status.running for i in live_ids):
                blocked = self._blockers([i for i in live_ids if statuses.get(i) == Status.queued])
                if blocked and {i for b in blocked for i in b.experiment_ids} >= set(live_ids):
                    break               # nothing can progress: say why now, not after the timeout
            now = time.monotonic()
            remaining = deadline - now
            if remaining <= 0:
                timed_out = True
                break
            if on_progress is not None and now - last_report >= heartbeat_s:
                self._report(on_progress, Progress(done=len(ended), total=total,
                                                   message=self._live_summary(len(ended), total, live_ids)))
                last_report = now
            pause = min(remaining, 5.0, max(0.05, heartbeat_s - (now - last_report)))
            with self._cond:
                if self._generation == gen:
                    self._cond.wait(pause)
            # changes come every few ms at a hundred slots: look at most every WAIT_COALESCE_S
            # (each look reads every live target's status), gathering the changes in between
            rest = WAIT_COALESCE_S - (time.monotonic() - now)
            if rest > 0 and not self._closed.is_set():
                self._closed.wait(min(rest, max(0.0, deadline - time.monotonic())))
        # the verdicts come from the experiment cache, which the writer refreshes just after its
        # COMMIT: a look in between read these results from the ledger, so bring the cache up to them
        _, cached = self.cache.some(done_ids)
        behind = set(done_ids) - {e.id for e in cached if e.status in TERMINAL}
        if behind:
            self.cache.refresh(sorted(behind))
        finished = self.ledger.get_many(done_ids)
        still = [i for i in targets if i not in ended]
        if self._tsv_pending:
            try:
                self.export_results()
            except Exception:  # noqa: BLE001
                log.exception("results.tsv export failed")
        verdicts = self._verdicts(finished) if finished else []
        blocked = self._blockers([e.id for e in self.ledger.get_many(still) if e.status == Status.queued])
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
                          interrupted=interrupted, notes=notes, blocked=blocked)

    @staticmethod
    def _report(on_progress: Callable[[Progress], None] | None, progress: Progress) -> None:
        if on_progress is None:
            return
        try:
            on_progress(progress)
        except Exception:  # noqa: BLE001 - a progress sink must not break the wait
            log.exception("on_progress failed")

    def _live_summary(self, done: int, total: int, live_ids: list[str]) -> str:
        """One line for a heartbeat: how many finished, run, wait for a slot, are queued, and when
        the next run is expected to end (from its start and the training budget)."""
        live = self.ledger.get_many(live_ids)
        training = [e for e in live if e.status == Status.running and not e.waiting_for_slot]
        ahead = sum(1 for e in live if e.status == Status.running and e.waiting_for_slot)
        queued = sum(1 for e in live if e.status == Status.queued)
        parts = [f"{done}/{total} finished", f"{len(training)} training"]
        if ahead:
            parts.append(f"{ahead} waiting for their slot")
        if queued:
            parts.append(f"{queued} queued")
        starts = [(e.started_at, e.id) for e in training if e.started_at is not None]
        if starts:
            started, exp_id = min(starts)
            left = started + self.time_budget_s - time.time()
            parts.append(f"next expected to finish: {exp_id} in ~{max(0, round(left))} s of training"
                         + (" plus evaluation" if left > 0 else " (evaluating)"))
        return ", ".join(parts)

    def _blockers(self, queued_ids: list[str]) -> list[Blocker]:
        """The permanent conditions that keep these queued experiments from being dispatched."""
        if not queued_ids:
            return []
        out: list[Blocker] = []
        if self.data.state == "failed":
            out.append(Blocker(
                reason=f"Data preparation failed, so nothing is dispatched: {self.data.error or 'see prepare.log'}",
                experiment_ids=list(queued_ids),
                fix=("Fix what prepare.py reports (its log is .autoresearch/prepare.log in the workspace: data "
                     "source, network, disk), then restart the server; it also retries on its own every minute. "
                     "The experiments stay queued meanwhile.")))
            return out
        types = self.checks.gpu_types_available()
        exps = self.ledger.get_many(queued_ids)
        if not types:
            out.append(Blocker(
                reason="No cluster or slot is up, so queued experiments cannot start.",
                experiment_ids=[e.id for e in exps],
                fix=(f"{Tool.PROVISION_CLUSTERS}(count=N, gpu_type='H100') brings clusters up."
                     if self.backend.name != "local" else
                     "Restart the server: the local backend's slots come from this machine.")))
            return out
        wanted: dict[str, list[str]] = {}
        for e in exps:
            if e.gpu_type and e.gpu_type not in types:
                wanted.setdefault(e.gpu_type, []).append(e.id)
        for gpu, ids in sorted(wanted.items()):
            fix = (f"{Tool.PROVISION_CLUSTERS}(count=1, gpu_type='{gpu}') adds one, or "
                   if self.backend.name != "local" else "")
            out.append(Blocker(
                reason=f"No slot of GPU type {gpu} is up (available: {self.checks.describe_types()}).",
                experiment_ids=ids,
                fix=(f"{fix}{Tool.CANCEL_EXPERIMENTS}(experiment_ids=[...]) and launch them again on an available "
                     "type.")))
        return out

    def _progress_message(self, e: Experiment) -> str:
        where = f" ({e.ran_on_gpu})" if e.ran_on_gpu else ""
        value = self.metric.raw(e) if e.status == Status.done else None
        if value is not None:
            return f"{e.id} done {self.metric.name}={value:.4f}{where}"
        reason = (e.error or "").splitlines()[0][:160] if e.error else ""
        return f"{e.id} {e.status.value}{where}" + (f": {reason}" if reason else "")
