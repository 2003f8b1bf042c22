"""Export to an MLflow tracking server through the official client (`pip install
'autoresearch-fleet[mlflow]'`). One MLflow experiment per session (`autoresearch/<tag>`), one run
per finished experiment."""

from __future__ import annotations

import os
import time
from typing import Any

from mcp_server.trackers.record import RunRecord

DEFAULT_URI = "http://127.0.0.1:5000"


class MlflowTracker:
    name = "mlflow"

    def __init__(self, uri: str | None, session_tag: str) -> None:
        self.uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
        self.experiment_name = f"autoresearch/{session_tag}"
        self._client: Any = None
        self._experiment_id: str | None = None
        # the client prints run links to stdout, which is the MCP protocol's channel in stdio mode
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        # a tracker that is down must fail fast: the exporter retries with its own backoff
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")

    def describe(self) -> str:
        return f"MLflow at {self.uri} (experiment {self.experiment_name})"

    def _ready(self) -> tuple[Any, str]:
        if self._client is None:
            try:
                from mlflow.tracking import MlflowClient
            except ImportError as exc:
                raise RuntimeError("the mlflow client is not installed: pip install 'autoresearch-fleet[mlflow]'"
                                   ) from exc
            self._client = MlflowClient(tracking_uri=self.uri)
        if self._experiment_id is None:
            exp = self._client.get_experiment_by_name(self.experiment_name)
            self._experiment_id = (exp.experiment_id if exp is not None
                                   else self._client.create_experiment(self.experiment_name))
        return self._client, self._experiment_id

    def create(self, rec: RunRecord, partial_run_id: str | None, started: Any) -> str:
        """Log the whole run; `started(run_id)` is called as soon as the run exists (so a failure
        after it leaves a known partial run, which the next try deletes first)."""
        from mlflow.entities import Metric, Param

        client, exp_id = self._ready()
        if partial_run_id:
            try:
                client.delete_run(partial_run_id)
            except Exception as exc:  # noqa: BLE001 - already gone is fine; anything else retries later
                if "RESOURCE_DOES_NOT_EXIST" not in str(exc) and "not found" not in str(exc).lower():
                    raise
        run = client.create_run(exp_id, start_time=int(rec.created_at * 1000) or None, run_name=rec.name,
                                tags=rec.tags)
        run_id = run.info.run_id
        started(run_id)
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in rec.params.items()]
        metrics = [Metric(k, v, now, 0) for k, v in rec.metrics.items()]
        for step, values in rec.curve:
            metrics += [Metric(f"train/{k}", v, now, step) for k, v in values.items()]
        for i in range(0, max(len(params), 1), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        if rec.log_path is not None:
            client.log_artifact(run_id, str(rec.log_path))
        client.set_terminated(run_id, status="FINISHED" if rec.succeeded else "FAILED",
                              end_time=int(rec.ended_at * 1000) if rec.ended_at else None)
        return run_id

    def update(self, run_id: str, rec: RunRecord) -> None:
        """A decision or verdict changed after the export: the run's tags follow."""
        from mlflow.entities import RunTag

        client, _ = self._ready()
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in rec.tags.items()])

    def close(self) -> None:
        self._client = None
