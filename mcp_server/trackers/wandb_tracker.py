"""Export to Weights & Biases through the official client (`pip install 'autoresearch-fleet[wandb]'`).
One W&B project per session (`autoresearch-<tag>`, or the one given), one run per finished
experiment. Offline mode (WANDB_MODE=offline) writes the run files under `<workspace>/.autoresearch/
wandb/` for `wandb sync` later."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path
from typing import Any

from mcp_server.trackers.record import RunRecord


class WandbTracker:
    name = "wandb"

    def __init__(self, project: str | None, session_tag: str, directory: Path) -> None:
        self.project = project or os.environ.get("WANDB_PROJECT") or f"autoresearch-{session_tag}"
        self.directory = Path(directory)

    def describe(self) -> str:
        mode = os.environ.get("WANDB_MODE", "online")
        return f"W&B project {self.project} ({mode})"

    def _wandb(self) -> Any:
        try:
            import wandb
        except ImportError as exc:
            raise RuntimeError("the wandb client is not installed: pip install 'autoresearch-fleet[wandb]'") from exc
        self.directory.mkdir(parents=True, exist_ok=True)
        return wandb

    def _init(self, run_id: str, rec: RunRecord) -> Any:
        wandb = self._wandb()
        return wandb.init(project=self.project, id=run_id, name=rec.name, dir=str(self.directory), resume="allow",
                          config=rec.params, tags=[f"{k}:{v}"[:64] for k, v in rec.tags.items()
                                                   if k in ("status", "decision", "verdict", "gpu_type")],
                          notes=rec.tags.get("comparable_with"), reinit="create_new",
                          settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def create(self, rec: RunRecord, partial_run_id: str | None, started: Any) -> str:
        run_id = partial_run_id or (re.sub(r"[^a-z0-9]", "", rec.experiment_id.lower()) + "-" + secrets.token_hex(4))
        started(run_id)
        run = self._init(run_id, rec)
        try:
            for step, values in rec.curve:
                run.log({f"train/{k}": v for k, v in values.items()}, step=step)
            run.summary.update({**rec.metrics, **{f"tag.{k}": v for k, v in rec.tags.items()}})
            if rec.log_path is not None:
                run.save(str(rec.log_path), base_path=str(rec.log_path.parent), policy="now")
        finally:
            run.finish(exit_code=0 if rec.succeeded else 1)
        return run_id

    def update(self, run_id: str, rec: RunRecord) -> None:
        run = self._init(run_id, rec)
        try:
            run.summary.update({f"tag.{k}": v for k, v in rec.tags.items()})
        finally:
            run.finish()

    def close(self) -> None:
        pass
