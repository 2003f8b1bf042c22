"""Settings of one research session, and the limits the server enforces whatever the agent asks."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, Field

from mcp_server.domain.limits import DEFAULT_MAX_WAIT_S, MAX_WAIT_S
from mcp_server.domain.tool_names import Tool


def _template_dir() -> Path:
    """The built-in task: shipped inside the package by a wheel (mcp_server/train_template), or in
    a checkout the repository's top-level train_template/ (which mcp_server/train_template links to)."""
    package = Path(__file__).resolve().parents[1]
    shipped = package / "train_template"
    if shipped.is_symlink():
        return shipped.resolve()
    return shipped if (shipped / "prepare.py").is_file() else package.parent / "train_template"


TEMPLATE_DIR = _template_dir()


class FleetConfig(BaseModel):
    workspace: Path = Field(Path("research"),
                            description="The research git repo (created from the template if missing).")
    tag: str = Field("default", description="Session tag: the branch is autoresearch/<tag>.")
    backend: str = Field("local", description="local | skypilot")
    profile: str | None = Field(None, description="cpu | gpu; None = gpu if CUDA is available, else cpu.")
    time_budget_s: float | None = Field(None, description="Override of the profile's training budget (tests, demo).")
    timeout_grace_s: float = Field(120.0, description="Hard timeout = budget x 2 + this.")
    max_attempts: int = Field(3,
                              description="Attempts per experiment when its slot vanishes (infrastructure failures).")
    # local backend
    cpu_slots: int = Field(2, description="CPU slots when no GPU is present.")
    slot_labels: list[str] | None = Field(
        None,
        description="SIMULATION: label local slots as GPU types (e.g. ['H100','H200']) to exercise tiering on CPU.",
    )
    # limits enforced by the server
    max_clusters: int = 16
    max_concurrent: int = 64
    max_wait_s: float = Field(DEFAULT_MAX_WAIT_S, gt=0, le=MAX_WAIT_S,
                              description=f"Cap on one {Tool.WAIT_FOR_EXPERIMENTS} call (clients time out near 60 s).")
    gpu_hour_budget: float | None = Field(None, description="Refuse launches once this many GPU-hours are spent.")
    # skypilot backend
    sky_task: Path | None = Field(
        None, description="Task YAML for SkyPilot clusters (default: the workspace's sky_task.yaml).")
    sky_infra: str | None = None
    sky_autostop_minutes: int = 30
    cache_dir: Path | None = Field(None, description="AUTORESEARCH_CACHE for local runs.")
    trackers: list[str] = Field(default_factory=list,
                                description="Experiment trackers every finished run is exported to: "
                                            "'mlflow[=TRACKING_URI]', 'wandb[=PROJECT]'.")
    template_dir: Path = TEMPLATE_DIR
