"""What the engine's concern modules share: the parts an `Engine` holds, declared once so each
mixin (clusters, waiting, decisions, queries) is typed against them. `facade.Engine` builds them."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from mcp_server.backends.base import Backend
    from mcp_server.domain.analysis import Verdict
    from mcp_server.domain.config import FleetConfig
    from mcp_server.domain.metric import Metric
    from mcp_server.domain.models import Cluster, Experiment
    from mcp_server.engine.blockers import Blocker
    from mcp_server.engine.checks import Checks
    from mcp_server.engine.data_prep import DataPreparation
    from mcp_server.engine.experiment_cache import ExperimentCache
    from mcp_server.engine.launch_planning import LaunchPlanner
    from mcp_server.scheduling.scheduler import Scheduler
    from mcp_server.store.ledger import Ledger
    from mcp_server.store.workspace import Workspace
    from mcp_server.trackers import Exporter


class EngineParts:
    config: FleetConfig
    workspace: Workspace
    ledger: Ledger
    backend: Backend
    scheduler: Scheduler
    checks: Checks
    planner: LaunchPlanner
    cache: ExperimentCache
    data: DataPreparation
    trackers: Exporter | None
    notes: list[str]
    metric: Metric
    profile: str
    time_budget_s: float
    results_tsv: Path
    _cond: threading.Condition
    _generation: int
    _closed: threading.Event
    _launch_lock: threading.RLock
    _started: bool
    _tsv_pending: bool


    if TYPE_CHECKING:  # pragma: no cover - implemented by the mixins and the facade
        def _on_change(self, ids: list[str]) -> None: ...
        def export_results(self, dest: str | os.PathLike[str] | None = None) -> Path: ...
        def list_clusters(self) -> list[Cluster]: ...
        def _verdicts(self, targets: list[Experiment]) -> list[Verdict]: ...
        def _blockers(self, queued_ids: list[str]) -> list[Blocker]: ...
