"""The engine's core records, shared by every layer.

These are plain pydantic models: the ledger stores them, the scheduler moves them through
their states, the MCP tools return (subsets of) them. Nothing here does I/O.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class Status(str, Enum):
    """Where an experiment is. `queued` and `running` are live; everything else is terminal."""

    queued = "queued"        # waiting for a free slot of the right tier
    running = "running"      # handed to a backend (waiting_for_slot: queued ahead, not started yet)
    done = "done"            # finished, val_bpb recorded
    crash = "crash"          # train.py exited non-zero (code failure: not retried)
    nan = "nan"              # loss became NaN / exploded (code failure: not retried)
    oom = "oom"              # out of memory (code failure: not retried)
    timeout = "timeout"      # exceeded the hard timeout (budget x 2 + grace)
    rejected = "rejected"    # harness hash mismatch: prepare.py was changed; no result recorded
    cancelled = "cancelled"  # cancelled by the agent or by teardown
    lost = "lost"            # the slot vanished more times than the retry limit allows


LIVE = frozenset({Status.queued, Status.running})
TERMINAL = frozenset(set(Status) - LIVE)
#: the failure-status sets (the one home: the scheduler and the plot import them):
#: the run itself failed (never retried: only a vanished slot is)
CODE_FAILURES = frozenset({Status.crash, Status.nan, Status.oom, Status.timeout, Status.rejected})
#: every failed ending: a code failure, or the slot vanished more often than the retries allow
FAILED = CODE_FAILURES | {Status.lost}
#: the statuses a runner's result may report (the scheduler records any other as a crash)
RUNNER_STATUSES = CODE_FAILURES | {Status.done, Status.cancelled}


class Decision(str, Enum):
    """What the agent decided about a finished experiment (separate from its status)."""

    keep = "keep"
    discard = "discard"


class Metrics(BaseModel):
    """The summary block train.py prints; every field optional because failures have none. Keys
    beyond these (a task's own metric, other summary lines) are kept as extras (`model_extra`)."""

    model_config = ConfigDict(extra="allow")

    val_bpb: float | None = None
    training_seconds: float | None = None
    total_seconds: float | None = None
    peak_vram_mb: float | None = None
    mfu_percent: float | None = None
    total_tokens_M: float | None = None
    num_steps: int | None = None
    num_params_M: float | None = None
    depth: int | None = None
    device: str | None = None


class Experiment(BaseModel):
    id: str = Field(description="Experiment id, e.g. 'e0042'.")
    description: str
    wave_id: str | None = None
    parent_id: str | None = Field(None, description="Experiment whose code this one was derived from.")
    parent_commit: str | None = Field(None, description="Commit the snapshot was built on.")
    commit: str | None = Field(None, description="Commit of the code snapshot (hidden ref).")
    code_hash: str | None = Field(None, description="Git blob sha of the snapshot's train.py: equal code => equal hash "
                                  "(replicates, controls, promotions).")
    parent_code_hash: str | None = Field(None, description="Blob sha of train.py at parent_commit: the reference this "
                                         "experiment is compared with.")
    harness_hash: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    seed: int = 0
    gpu_type: str | None = Field(None, description="Requested GPU tier; None = any slot.")
    priority: int = 0
    status: Status = Status.queued
    decision: Decision | None = None
    cluster: str | None = Field(None, description="Slot/cluster it ran on (last attempt).")
    ran_on_gpu: str | None = Field(None, description="GPU type of the slot it actually ran on.")
    attempts: int = 0
    metrics: Metrics = Field(default_factory=Metrics)
    error: str | None = None
    log_path: str | None = None
    created_at: float = 0.0
    started_at: float | None = Field(
        None, description="When it started training; null while queued or waiting for its slot.")
    ended_at: float | None = None
    waiting_for_slot: bool = Field(False, description="Running, but queued ahead on its slot behind another job: "
                                   "it starts (and costs GPU time) when that one ends.")
    imported: bool = Field(False, description="History loaded from an earlier results.tsv (import-results): "
                           "ranked with the rest, never used as a noise estimate; its seed is unknown.")
    hypothesis: str | None = Field(None, description="What the launch tests, as the agent stated it.")
    reason: str | None = Field(None, description="Why it was kept or discarded, as the agent stated it.")
    time_budget_s: float | None = Field(None, description="Training budget (s) of the session that launched it.")


class Wave(BaseModel):
    id: str = Field(description="Wave id, e.g. 'w0003'.")
    description: str
    kind: str = Field(description="factorial | replicates | promotion | single")
    design: dict[str, Any] = Field(default_factory=dict, description="Axes and levels, replicates, control.")
    experiment_ids: list[str] = Field(default_factory=list)
    created_at: float = 0.0


class Cluster(BaseModel):
    """A place where one experiment runs at a time: a local GPU/CPU slot or a SkyPilot cluster."""

    name: str
    backend: str = Field(description="local | skypilot")
    gpu_type: str = Field(description="e.g. H100, H200, CPU")
    gpu_count: int = 1
    state: str = Field(description="up | provisioning | stopped | gone")
    cost_per_hour: float | None = None
    simulated: bool = Field(False, description="True when the GPU type is a label on a local slot (a simulation).")
    running: list[str] = Field(default_factory=list, description="Experiment ids training on this cluster now.")
    queued_ahead: list[str] = Field(default_factory=list, description="Experiment ids submitted to this cluster that "
                                    "start when the running one ends.")
    created_at: float = 0.0
