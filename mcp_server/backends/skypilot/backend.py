"""SkyPilotBackend: the state every part shares, set up in one place, and the parts composed:
clusters (clusters.py), jobs (jobs.py), the refresher thread (refresher.py); the task YAML and
the job's run command come from task.py, staged workdirs from staging.py."""

from __future__ import annotations

import concurrent.futures as cf
import hashlib
import re
import threading
from collections import deque
from pathlib import Path
from typing import Any

from mcp_server.backends.base import Backend, JobSpec
from mcp_server.backends.skypilot import task as sky_task
from mcp_server.backends.skypilot.clusters import ClustersMixin
from mcp_server.backends.skypilot.jobs import JobsMixin, TrackedJob
from mcp_server.backends.skypilot.records import ClusterInfo
from mcp_server.backends.skypilot.refresher import ClusterWatch, RefresherMixin
from mcp_server.backends.skypilot.staging import stage_run
from mcp_server.domain import paths
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.task import load_task

DEFAULT_PREFIX = "arf"

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_TAG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")


class SkyPilotBackend(ClustersMixin, JobsMixin, RefresherMixin, Backend):
    """Clusters through SkyPilot's SDK; see the package docstring."""

    name = "skypilot"

    def __init__(self, config: FleetConfig, *, sdk: Any = None, prefix: str = DEFAULT_PREFIX,
                 workspace_tag: str | None = None, refresh_interval_s: float = 1.0,
                 unreachable_lost_s: float = 300.0, request_grace_s: float = 180.0,
                 max_workers: int = 32, cluster_cache_s: float = 30.0, max_poll_s: float | None = None) -> None:
        if not _PREFIX_RE.match(prefix or ""):
            raise InvalidInput("cluster name prefix must be 1-10 lowercase letters/digits starting with a letter, "
                               f"got {prefix!r}.")
        self.config = config
        self.prefix = prefix
        self.workspace = Path(config.workspace).resolve()
        self.workspace_tag = workspace_tag if workspace_tag is not None else self.default_workspace_tag(config)
        if not _TAG_RE.match(self.workspace_tag):
            raise InvalidInput("workspace tag must be lowercase letters, digits and '-' (<= 24), "
                               f"got {self.workspace_tag!r}.")
        self.cluster_prefix = f"{prefix}-{self.workspace_tag}-"
        self._name_re = re.compile("^" + re.escape(self.cluster_prefix) + r"(\d{2,4})$")
        self.state_dir = paths.skypilot_dir(self.workspace)
        self.refresh_interval_s = refresh_interval_s
        self.unreachable_lost_s = unreachable_lost_s
        self.request_grace_s = request_grace_s
        self.cluster_cache_s = cluster_cache_s       # how old the cluster view may get (clusters(), submit)
        # the longest wait between two reads of a cluster whose job can have ended (grows further
        # only with the API server's own latency); 30 refresh intervals by default (30 s)
        self.max_poll_s = max_poll_s if max_poll_s is not None else 30 * refresh_interval_s
        # queue / log reads in flight at once. Needed: finish rate x (queue + log latency), e.g.
        # 128 clusters / 320 s x (23 + 5) s ~ 12 at the latencies measured here; 8 (the old pool)
        # fell behind at 128 in the simulation (benchmarks/skypilot_scale.py: results 250 s late).
        self.max_reads_in_flight = max_workers
        if sdk is None:
            import sky as sdk  # noqa: PLC0415 - heavy (~4 s): only when this backend is used
        self.sky = sdk
        self._exc_gone = sdk.exceptions.ClusterDoesNotExist
        self._exc_not_up = sdk.exceptions.ClusterNotUpError
        self._lock = threading.RLock()
        self._provision_lock = threading.Lock()
        self._jobs: dict[tuple[str, int], TrackedJob] = {}
        self._watch: dict[str, ClusterWatch] = {}
        self._clusters: dict[str, ClusterInfo] = {}
        self._clusters_at = 0.0
        self._clusters_asked_at = 0.0      # when the installed listing's `sky.status` was asked
        # name -> time.monotonic() when marked; cleared when a later `sky.status` lists the name again
        self._gone: dict[str, float] = {}        # vanished under us (their jobs are lost)
        self._torn_down: dict[str, float] = {}   # removed by teardown (their jobs are cancelled)
        self._tearing_down: set[str] = set()     # `sky.down` in progress: no submits, no conclusions
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="arf-sky")   # reads
        # execs and the background cluster listing: never behind a slow queue read
        self._exec_pool = cf.ThreadPoolExecutor(max_workers=4, thread_name_prefix="arf-sky-exec")
        self._view_busy = False
        self._reads_in_flight = 0
        self._run_seen: deque[float] = deque(maxlen=64)    # how long finished jobs ran (basis .. end)
        self._latency: dict[str, float] = {}               # smoothed SDK latency by kind (s)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._done: deque[tuple[str, int]] = deque(maxlen=4096)   # outcome handed out, or cancelled: poll/cancel no-ops
        self.exec_log: deque[tuple[str, str, float, float]] = deque(maxlen=1000)   # name, cluster, submit, exec
        self.timings: dict[str, deque[float]] = {k: deque(maxlen=1000) for k in
                                                 ("launch_s", "exec_submit_s", "exec_done_s",
                                                                          "queue_s", "logs_s")}

    @classmethod
    def from_config(cls, config: FleetConfig) -> SkyPilotBackend:
        return cls(config)

    @staticmethod
    def default_workspace_tag(config: FleetConfig) -> str:
        """`<session tag>-<4 hex of the workspace path>`: two workspaces never adopt each other's clusters."""
        tag = re.sub(r"[^a-z0-9-]+", "-", str(config.tag).lower()).strip("-")[:12].strip("-") or "fleet"
        digest = hashlib.sha1(str(Path(config.workspace).resolve()).encode()).hexdigest()[:4]
        return f"{tag}-{digest}"

    # the task YAML and the job's parts (task.py, staging.py) ---------------------------------
    def task_path(self) -> Path:
        return sky_task.task_path(self.config, self.workspace)

    def task_config(self) -> dict[str, Any]:
        return sky_task.read_task_config(self.task_path())

    def launch_task_config(self, gpu_type: str | None, workdir: Path) -> dict[str, Any]:
        """The YAML as launched: pinned GPU type, infra from config, profile/cache envs, workdir."""
        task = load_task(self.workspace)
        prepare: list[str] | None | bool = True if task.is_default else task.prepare
        return sky_task.launch_task_config(self.task_config(), self.config, gpu_type, workdir, prepare)

    def _yaml_envs(self) -> dict[str, str]:
        return sky_task.yaml_envs(self.task_config())

    def run_command(self, key: str, harness_hash: str, timeout_s: float) -> str:
        return sky_task.run_command(key, harness_hash, timeout_s)

    def job_resources(self, info: ClusterInfo) -> dict[str, Any] | None:
        return sky_task.job_resources(info)

    def _job_envs(self, job: JobSpec) -> dict[str, str]:
        return sky_task.job_envs(self._yaml_envs(), job)

    def _stage_run(self, job: JobSpec, key: str) -> Path:
        return stage_run(self.state_dir, job, key)

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._exec_pool.shutdown(wait=False, cancel_futures=True)
