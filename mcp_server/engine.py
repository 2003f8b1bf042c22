"""The experiment engine: the one object the MCP tools call. Knows nothing about MCP.

STUB: signatures agreed between layers (see docs/contracts.md); the bodies are being written.
"""

from __future__ import annotations

from typing import Any, Callable, Literal

from pydantic import BaseModel

from .analysis import Leaderboard, LeaderboardRow, Verdict  # noqa: F401 (re-exported: the engine API returns them)
from .backends.base import Backend
from .config import FleetConfig
from .models import Cluster, Experiment, Wave


class WaitResult(BaseModel):
    finished: list[Experiment]
    verdicts: list[Verdict]
    still_running: list[str]
    timed_out: bool


class Engine:
    def __init__(self, config: FleetConfig, backend: Backend | None = None) -> None:
        raise NotImplementedError

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Reconcile running experiments with the backend, then start the scheduler thread."""

    def close(self) -> None:
        """Stop the scheduler thread. Running experiments keep running (recovered on next start)."""

    # clusters ------------------------------------------------------------------------------
    def list_clusters(self) -> list[Cluster]: ...
    def provision_clusters(self, count: int, gpu_type: str | None = None) -> list[Cluster]: ...
    def teardown_clusters(self, names: list[str] | None = None) -> list[str]: ...
    def gpu_info(self) -> dict[str, Any]: ...
    def budget_status(self) -> dict[str, Any]: ...

    # experiments ---------------------------------------------------------------------------
    def launch_experiment(
        self,
        description: str,
        overrides: dict[str, Any] | None = None,
        source: str | None = None,        # a file in the workspace to snapshot instead of train.py
        commit: str | None = None,        # or an existing commit / experiment id to derive from
        gpu_type: str | None = None,
        replicates: int = 1,
        seed: int | None = None,
        priority: int = 0,
    ) -> list[Experiment]: ...

    def launch_wave(
        self,
        description: str,
        axes: dict[str, list[Any]],
        replicates: int = 1,
        include_control: bool = True,
        base: str | None = None,          # experiment id or commit the wave derives from (default: branch head + working train.py)
        gpu_type: str | None = None,
    ) -> Wave: ...

    def promote(self, experiment_ids: list[str], gpu_type: str, replicates: int = 3) -> Wave: ...

    def wait(
        self,
        experiment_ids: list[str] | None = None,
        wave_id: str | None = None,
        until: Literal["all", "first"] = "all",
        timeout_s: float = 600.0,
        on_progress: Callable[[int, int, str], None] | None = None,
    ) -> WaitResult: ...

    def cancel(self, experiment_ids: list[str]) -> list[Experiment]: ...
    def keep(self, experiment_id: str) -> Experiment: ...
    def discard(self, experiment_id: str) -> Experiment: ...
    def get_experiment(self, experiment_id: str) -> Experiment: ...
    def read_log(self, experiment_id: str, offset: int = 0, limit: int = 4000) -> tuple[str, int | None]: ...
    def experiments(self, status: str | None = None, wave_id: str | None = None,
                    offset: int = 0, limit: int = 50) -> tuple[list[Experiment], int]: ...
    def verdicts(self, experiment_ids: list[str]) -> list[Verdict]: ...
    def leaderboard(self, gpu_type: str | None = None, limit: int = 20) -> Leaderboard: ...
