"""Decisions about experiments: keep (the session branch moves to the snapshot), discard, and
cancel (by ids or a whole wave's live experiments)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from mcp_server.domain.errors import Conflict, NotFound
from mcp_server.domain.models import LIVE, Decision, Experiment, Status
from mcp_server.domain.tool_names import Tool
from mcp_server.engine.checks import check_bool, check_reason
from mcp_server.engine.parts import EngineParts


class DecisionOutcome(BaseModel):
    """A keep or discard: the experiment as recorded now, and for a keep where the branch went."""

    experiment: Experiment
    branch: str | None = Field(None, description="The session branch (keep only).")
    commit: str | None = Field(None, description="The commit the branch points to now (keep only).")
    fast_forward: bool | None = Field(None, description="False when the keep reset the branch (force).")
    verdict: str | None = Field(None, description="Its verdict vs its reference when decided.")
    within_noise: bool = Field(False, description="True when it was within the noise of its reference.")


class DecisionsMixin(EngineParts):
    def cancel(self, experiment_ids: list[str]) -> list[Experiment]:
        """Cancel experiments: queued ones at once, running ones after the backend stopped them.
        Those already finished are returned unchanged."""
        ids = self.checks.experiment_ids(experiment_ids)
        self.scheduler.cancel(ids)
        return self.ledger.get_many(ids)

    def cancel_wave(self, wave_id: str) -> list[Experiment]:
        """Cancel every live experiment of a wave (as `cancel`). NotFound for an unknown or empty
        wave; Conflict when all of them have finished already (nothing to cancel)."""
        wave = self.checks.wave(wave_id)
        if not wave.experiment_ids:
            raise NotFound(f"Wave {wave.id!r} has no experiments. Call {Tool.FETCH_RESULTS} to see the waves. "
                           "Nothing was cancelled.")
        statuses = self.ledger.statuses(wave.experiment_ids)
        live = [i for i in wave.experiment_ids if statuses.get(i) in LIVE]
        if not live:
            raise Conflict(f"Every experiment of wave {wave.id} has already finished; nothing to cancel. "
                           f"Call {Tool.FETCH_RESULTS}(wave_id='{wave.id}') to read them.")
        return self.cancel(live)

    def keep(self, experiment_id: str, force: bool = False, reason: str | None = None) -> DecisionOutcome:
        """Keep a done experiment: the session branch moves to its snapshot (fast-forward; `force`
        resets when the branch moved since) and the working tree is updated. Records decision keep
        and the agent's `reason`. A result within the noise of its reference needs a reason."""
        exp = self.checks.experiment(experiment_id)
        force = check_bool("force", force)
        why_kept = check_reason(reason, "reason")
        if exp.status != Status.done:
            why = f" ({(exp.error or '').splitlines()[0][:200]})" if exp.error else ""
            raise Conflict(f"{exp.id} is {exp.status.value}{why}: only done experiments can be kept. "
                           f"Keep a done one (see {Tool.LEADERBOARD}), or fix the code and launch again.")
        [verdict] = self._verdicts([exp])
        noisy = verdict.verdict == "within_noise"
        if noisy and why_kept is None:
            raise Conflict(
                f"{exp.id} is within_noise of its reference {verdict.reference_id} (delta {verdict.delta:+.6f}, "
                f"threshold {verdict.threshold if verdict.threshold is None else f'{verdict.threshold:.6f}'}): "
                "it may be seed luck. Nothing was changed. Keep it only for a reason (e.g. simpler code): "
                f"{Tool.KEEP_EXPERIMENT}(experiment_id='{exp.id}', reason='...'); or launch replicates to tell.")
        # every experiment is inserted with its snapshot's commit (launch), and the ledger never clears it
        assert exp.commit is not None
        with self._launch_lock:
            result = self.workspace.keep(exp.commit, force=force)
            detail = f"branch {result.get('branch')} -> {str(result.get('commit'))[:12]}"
            if not result.get("fast_forward", True):
                detail += " (reset: not a fast-forward)"
            self.ledger.set_decision(exp.id, Decision.keep, detail, reason=why_kept)
        return DecisionOutcome(experiment=self.checks.experiment(exp.id), branch=result.get("branch"),
                               commit=result.get("commit"), fast_forward=bool(result.get("fast_forward", True)),
                               verdict=verdict.verdict, within_noise=noisy)

    def discard(self, experiment_id: str, reason: str | None = None) -> DecisionOutcome:
        """Record decision discard (and the agent's `reason`) for a done experiment (the branch does
        not move). Refused for a kept experiment while the session branch holds its commit (ledger
        and git would disagree)."""
        exp = self.checks.experiment(experiment_id)
        why_discarded = check_reason(reason, "reason")
        # under keep's lock, read again: a keep of it in progress finishes first, and is then seen
        with self._launch_lock:
            exp = self.checks.experiment(exp.id)
            if exp.status != Status.done:
                raise Conflict(f"{exp.id} is {exp.status.value}: only done experiments take a keep/discard "
                               "decision (failed ones are already out of the running).")
            if exp.decision == Decision.keep and exp.commit:
                head = self.workspace.head_commit()
                if head == exp.commit or self.workspace.contains(exp.commit, head):
                    where = "is at" if head == exp.commit else "has moved on from (and still contains)"
                    raise Conflict(
                        f"{exp.id} was kept: the session branch {self.workspace.branch} {where} its commit "
                        f"{exp.commit[:12]}, so a discard would contradict git. Nothing was changed. To move on, "
                        f"keep another experiment: {Tool.KEEP_EXPERIMENT}(experiment_id='<id>'); when that one "
                        f"does not descend from this commit, {Tool.KEEP_EXPERIMENT}(experiment_id='<id>', "
                        "force=true) resets the branch to it.")
            self.ledger.set_decision(exp.id, Decision.discard, reason=why_discarded)
        [verdict] = self._verdicts([exp])
        return DecisionOutcome(experiment=self.checks.experiment(exp.id), verdict=verdict.verdict,
                               within_noise=verdict.verdict == "within_noise")
