"""Experiment trackers: every finished experiment becomes a run in MLflow or Weights & Biases
(`serve --track mlflow[=URI]`, `--track wandb[=PROJECT]`), exported in the background from the
ledger (`exporter.Exporter`), with a durable outbox so a tracker that is down or misconfigured
never blocks or loses an experiment.

Layer: beside `scheduling` (it reads the ledger, the domain's metric and models; the engine owns it).
"""

from __future__ import annotations

from pathlib import Path

from mcp_server.domain.errors import InvalidInput
from mcp_server.trackers.exporter import Exporter, Tracker, VerdictsOf

KINDS = ("mlflow", "wandb")


def parse_spec(spec: str) -> tuple[str, str | None]:
    """`mlflow`, `mlflow=http://host:5000`, `wandb`, `wandb=project` -> (kind, target or None)."""
    kind, _, target = str(spec).partition("=")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise InvalidInput(f"--track must be mlflow[=TRACKING_URI] or wandb[=PROJECT], got {str(spec)[:80]!r}.")
    target = target.strip()
    if kind == "mlflow" and target and not (target.startswith(("http://", "https://", "file:", "sqlite:",
                                                                "databricks", "postgresql", "mysql"))
                                            or target.startswith("/")):
        raise InvalidInput(f"--track mlflow=URI needs a tracking URI such as http://127.0.0.1:5000, "
                           f"got {target[:80]!r}.")
    return kind, target or None


def make_trackers(specs: list[str], session_tag: str, state_dir: Path) -> list[Tracker]:
    out: list[Tracker] = []
    for spec in specs:
        kind, target = parse_spec(spec)
        if kind == "mlflow":
            from mcp_server.trackers.mlflow_tracker import MlflowTracker
            out.append(MlflowTracker(target, session_tag))
        else:
            from mcp_server.trackers.wandb_tracker import WandbTracker
            out.append(WandbTracker(target, session_tag, state_dir / "wandb"))
    if len({t.name for t in out}) != len(out):
        raise InvalidInput("give each tracker once (--track mlflow and/or --track wandb).")
    return out


__all__ = ["KINDS", "Exporter", "Tracker", "VerdictsOf", "make_trackers", "parse_spec"]
