"""Run directories: what a run of one experiment attempt gets on disk, and the job that runs it.

* `RunDirs.stage` exports an experiment's snapshot ahead of its dispatch (atomically);
* `RunDirs.build_job` makes the run directory (unless staged) and the `JobSpec` for the backend."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from mcp_server.backends.base import JobSpec
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.models import Cluster, Experiment
from mcp_server.runtime.runner import ENV_CACHE, TASK_JSON
from mcp_server.store.workspace import Workspace


class RunDirs:
    def __init__(self, workspace: Workspace, config: FleetConfig, *, profile: str, hard_timeout_s: float,
                 harness_hash: str, task: dict[str, Any] | None = None) -> None:
        """`task`: a task's own description for the runner (runtime/runner.TASK_JSON), written into
        every run directory; None for the built-in task."""
        self.workspace = workspace
        self.config = config
        self.profile = profile
        self.hard_timeout_s = hard_timeout_s
        self.harness_hash = harness_hash
        self.task = task

    def _write_task(self, run_dir: Path) -> None:
        if self.task is not None:
            (run_dir / TASK_JSON).write_text(json.dumps(self.task, sort_keys=True), encoding="utf-8")

    def stage(self, exp: Experiment, attempt: int, dest: Path) -> None:
        """Export an experiment's snapshot ahead of its dispatch (atomically: tmp dir + rename)."""
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        assert exp.commit is not None  # every experiment is inserted with its snapshot's commit (launch)
        self.workspace.export(exp.commit, tmp)
        self._write_task(tmp)
        os.rename(tmp, dest)

    def build_job(self, exp: Experiment, attempt: int, slot: Cluster, run_dir: Path, staged: bool = False) -> JobSpec:
        """A fresh run directory with the snapshot's files (unless staged ahead), and the job for it."""
        if not staged:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            assert exp.commit is not None  # every experiment is inserted with its snapshot's commit (launch)
            self.workspace.export(exp.commit, run_dir)
            self._write_task(run_dir)
        env: dict[str, str] = {}
        if self.config.time_budget_s is not None:
            env["AUTORESEARCH_TIME_BUDGET"] = repr(float(self.config.time_budget_s))
        if self.config.cache_dir is not None:
            env[ENV_CACHE] = str(self.config.cache_dir)
        return JobSpec(experiment_id=exp.id, attempt=attempt, run_dir=run_dir, profile=self.profile,
                       timeout_s=self.hard_timeout_s, harness_hash=self.harness_hash, seed=exp.seed, env=env)
