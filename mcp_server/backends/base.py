"""The one interface every backend implements.

A backend moves code in and logs out. It never decides research policy: which experiment
runs next, what is retried, and what a result means are the scheduler's and the engine's job.

Life of a job: the scheduler picks a free slot (one whose `outstanding < queue_depth`), builds a
clean run directory for the experiment (train.py snapshot, prepare.py, runner.py) and calls
`submit`. It then calls `poll` with every handle it has in flight; `poll` returns a `JobOutcome`
for each handle that has finished or vanished and nothing for those still going. Handles are
persisted by the engine (`JobHandle.to_json`) so that after a restart `poll` can be called with
handles created by an earlier process: a backend must be able to recognise its own jobs from
the handle alone.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mcp_server.domain.models import Cluster


@dataclass
class JobSpec:
    """Everything a backend needs to run one experiment attempt."""

    experiment_id: str
    attempt: int
    run_dir: Path            # local dir holding train.py, prepare.py, runner.py; logs land here
    profile: str             # "cpu" | "gpu"
    timeout_s: float         # hard timeout the runner enforces on train.py
    harness_hash: str        # expected sha256 of prepare.py; mismatch -> status "rejected"
    seed: int
    env: dict[str, str] = field(default_factory=dict)  # extra harness env (e.g. AUTORESEARCH_TIME_BUDGET)


@dataclass
class JobHandle:
    """A submitted job. `backend_ref` is backend-specific (local: pid + start time; sky: job id)."""

    experiment_id: str
    attempt: int
    cluster: str
    run_dir: str
    backend_ref: dict[str, Any] = field(default_factory=dict)
    submitted_at: float = 0.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> JobHandle:
        return cls(**json.loads(text))


@dataclass
class JobOutcome:
    """A job that is over. Exactly one of: `result` (the runner's result dict) or `lost=True`."""

    handle: JobHandle
    result: dict[str, Any] | None = None   # runner result: {"status", "metrics", "error", "log_tail", ...}
    lost: bool = False                     # slot/process vanished without a result (infrastructure)
    log_path: str | None = None            # local copy of the run log, when there is one
    reason: str = ""                       # why it is lost, for the event log


class Backend(ABC):
    """Slots (clusters) and jobs on them."""

    name: str = "base"
    #: True when the slots are this machine's own: fixed when the server starts, nothing to pay for
    #: or to tear down (`provision` refuses with the flags to use instead)
    fixed_slots: bool = False
    #: at most this many jobs in one `submit_many` call of the scheduler's (one per slot): few
    #: where each job is its own exchange, so that results are polled between batches; many where
    #: a batch is one exchange (the local backend: one launcher round trip starts them all)
    max_batch: int = 16
    #: a job is queued ahead on a slot only this long (seconds) before the job running there is
    #: expected to end: enough for its runner to be up and waiting by then. None: as soon as the
    #: running job has started (where starting a queued job takes about as long as a run, or is
    #: unknown). Short leads keep a queued job's start-up work out of the moments when many
    #: slots hand over at once.
    queue_ahead_lead_s: float | None = None

    @abstractmethod
    def clusters(self) -> list[Cluster]:
        """Every slot this backend holds now, with GPU type and state."""

    def queue_depth(self, cluster: str) -> int:
        """How many jobs the scheduler may have outstanding on one slot (1 running + N queued ahead).
        A slot trains one job at a time whatever its depth; the jobs queued ahead start, in
        submission order, as soon as the ones before them end."""
        return 1

    def started_at(self, handle: JobHandle) -> float | None:
        """When the job really started running (epoch seconds): for a job queued ahead, when the
        slot was handed to it. None while it waits, or when the backend cannot tell (the scheduler
        then assumes a job starts when the one ahead of it on the slot ends). Must be cheap."""
        return None

    @abstractmethod
    def provision(self, count: int, gpu_type: str | None = None) -> list[Cluster]:
        """Bring up `count` more slots (of `gpu_type` where the backend can choose). Returns the new ones."""

    @abstractmethod
    def teardown(self, names: list[str] | None = None) -> list[str]:
        """Stop and delete the named slots (None = all of this workspace's). Returns names removed."""

    @abstractmethod
    def submit(self, cluster: str, job: JobSpec) -> JobHandle:
        """Start the runner for `job` on `cluster`. Must not block for the run's duration."""

    def submit_many(self, jobs: list[tuple[str, JobSpec]]) -> list[JobHandle | Exception]:
        """Submit several (cluster, job) pairs, in order; per pair its handle or the exception its
        `submit` raised. Default: one `submit` after another. A backend that can start several
        jobs in one exchange overrides it (the local backend: one launcher round trip)."""
        out: list[JobHandle | Exception] = []
        for cluster, job in jobs:
            try:
                out.append(self.submit(cluster, job))
            except Exception as e:  # noqa: BLE001 - this job's error, for the caller
                out.append(e)
        return out

    @abstractmethod
    def poll(self, handles: list[JobHandle]) -> list[JobOutcome]:
        """Outcomes for the handles that have finished or vanished; nothing for live ones."""

    @abstractmethod
    def cancel(self, handle: JobHandle) -> None:
        """Stop the job (and every process it started). Idempotent."""

    def reconcile(self) -> list[Cluster]:
        """On engine start: adopt this workspace's existing slots. Default: `clusters()`."""
        return self.clusters()

    def close(self) -> None:  # noqa: B027 - an optional hook: most backends hold nothing to release
        """Release resources held by this process (not the slots themselves)."""
