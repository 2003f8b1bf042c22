"""The engine's read-only answers: GPU and budget reports, experiments and their logs, waves,
events, verdicts and the leaderboard (answered from the experiment cache and its analysis index)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp_server.domain import analysis
from mcp_server.domain.analysis import Leaderboard, Verdict
from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.limits import MAX_LIST_LIMIT, MAX_LOG_LIMIT
from mcp_server.domain.models import Experiment, Status, Wave
from mcp_server.engine import reports
from mcp_server.engine.checks import check_int, short
from mcp_server.engine.parts import EngineParts


class QueriesMixin(EngineParts):
    def gpu_info(self) -> reports.GpuInfo:
        """Per GPU type: slots, table figures (memory, peak bf16 TFLOP/s, bandwidth, $/h) and the
        throughput MEASURED by finished runs (steps and tokens within the budget)."""
        return reports.gpu_info(self.list_clusters(), self.cache.throughput(), self.time_budget_s, self.profile)

    def budget_status(self) -> reports.BudgetStatus:
        """GPU-hours and estimated cost spent, the limits, clusters alive, experiments live."""
        notes = list(self.notes)
        if self.data.error:
            notes.append(self.data.error)
        if self.scheduler.last_error:
            notes.append(f"scheduler: {self.scheduler.last_error}")
        if self.trackers is not None:
            notes.extend(self.trackers.notes())
        queued, _ = self.ledger.list_experiments(status=Status.queued.value, limit=MAX_LIST_LIMIT)
        return reports.budget_status(self.ledger.usage(), self.ledger.count_by_status(), self.scheduler.slots(),
                                     self.config, notes, waiting_for_slot=self.ledger.count_waiting_for_slot(),
                                     blocked=self._blockers([e.id for e in queued]))

    def get_experiment(self, experiment_id: str) -> Experiment:
        """One experiment in full."""
        return self.checks.experiment(experiment_id)

    def _log_text(self, exp: Experiment) -> str:
        if not exp.log_path:
            return ""
        path = Path(exp.log_path)
        try:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")

    def read_log(self, experiment_id: str, offset: int = 0, limit: int = 4000) -> tuple[str, int | None]:
        """A page of the experiment's run log (its current attempt): `limit` characters from
        character `offset` (a negative offset counts from the end: -4000 = the last 4000). Returns
        (text, next offset) with next None at the end of the log. Empty while queued."""
        exp = self.checks.experiment(experiment_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > 10**12:
            raise InvalidInput(f"offset must be an integer (negative = from the end), got {short(offset)}.")
        limit = check_int("limit", limit, 1, MAX_LOG_LIMIT)
        text = self._log_text(exp)
        start = max(0, len(text) + offset) if offset < 0 else offset
        end = start + limit
        return text[start:end], (end if end < len(text) else None)

    def log_size(self, experiment_id: str) -> int:
        """Length of the experiment's run log in characters (for paging from the end)."""
        return len(self._log_text(self.checks.experiment(experiment_id)))

    def experiments(self, status: str | None = None, wave_id: str | None = None,
                    offset: int = 0, limit: int = 50) -> tuple[list[Experiment], int]:
        """A page of experiments in launch order (optionally one status / one wave) and the total."""
        if status is not None and status not in {s.value for s in Status}:
            raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)}, got {short(status)}.")
        if wave_id is not None:
            self.checks.wave(wave_id)
        offset = check_int("offset", offset, 0, 10**9)
        limit = check_int("limit", limit, 1, MAX_LIST_LIMIT)
        return self.ledger.list_experiments(status=status, wave_id=wave_id, offset=offset, limit=limit)

    def get_wave(self, wave_id: str) -> Wave:
        """One wave with its design and experiment ids."""
        return self.checks.wave(wave_id)

    def waves(self) -> list[Wave]:
        return self.ledger.waves()

    def events(self, experiment_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The event log (queued/submitted/finished/lost/requeued/cancelled/kept/...)."""
        if experiment_id is not None:
            self.checks.experiment(experiment_id)
        return self.ledger.events(experiment_id, check_int("limit", limit, 1, 100_000))

    def verdicts(self, experiment_ids: list[str]) -> list[Verdict]:
        """Verdict of each experiment vs its same-GPU-type reference (see analysis), answered from
        the analysis index (O(1) each; the index follows every change of the ledger)."""
        ids = self.checks.experiment_ids(experiment_ids)
        return self._verdicts(self.ledger.get_many(ids))

    def _verdicts(self, targets: list[Experiment]) -> list[Verdict]:
        with self.cache.indexed() as idx:
            return idx.verdicts(targets)

    def leaderboard(self, gpu_type: str | None = None, limit: int = 20) -> Leaderboard:
        """Groups of identical code ranked by mean val_bpb, per GPU type, with deltas and verdicts.
        Answered from the analysis index (updated per changed experiment, not recomputed over all of
        them) and cached until the index version moves."""
        if gpu_type is not None and (not isinstance(gpu_type, str) or len(gpu_type) > 64):
            raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100', got {short(gpu_type)}.")
        analysis.check_leaderboard_args(gpu_type, limit)
        return self.cache.leaderboard(gpu_type, limit)
