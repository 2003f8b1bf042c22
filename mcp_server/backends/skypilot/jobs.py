"""Experiments as SkyPilot jobs: `submit` (staged, then `sky.exec`'d once the job ahead has
started), `poll` hands out what the refresher found, `cancel`; jobs of an earlier process are
picked up again from their handle and spec file."""

from __future__ import annotations

import json
import logging
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mcp_server.backends.base import JobHandle, JobOutcome, JobSpec
from mcp_server.backends.skypilot.joblog import ANSI_RE
from mcp_server.backends.skypilot.records import STARTED, TERMINAL, ClusterInfo, status_value
from mcp_server.backends.skypilot.staging import spec_path, write_spec
from mcp_server.backends.skypilot.task import ID_RE
from mcp_server.domain.errors import Conflict, InvalidInput, NotFound
from mcp_server.domain.tool_names import Tool

log = logging.getLogger("autoresearch.skypilot")


@dataclass
class TrackedJob:
    """A job this process knows about (submitted here or seen again through `poll`)."""

    handle: JobHandle
    cluster: str
    name: str
    request_id: str | None
    submitted_at: float
    job_id: int | None = None
    status: str = ""
    outcome: JobOutcome | None = None
    cancelled: bool = False
    cancel_sent: bool = False
    stage: str | None = None
    spec: dict[str, Any] | None = None   # what to exec (kept on disk too: state_dir/stage/<key>.json)
    deferred: bool = False               # not exec'd yet: waits until the job ahead is RUNNING
    exec_busy: bool = False
    exec_at: float | None = None
    request_done_at: float | None = None   # its exec request finished: the job is in the cluster's queue
    # traffic (refresher.py): when its cluster's queue is worth reading for it, and its exec request
    min_run_s: float = 0.0               # the runner's time budget: it cannot end (normally) sooner
    basis_at: float | None = None        # when it could start running: exec'd, or the job ahead seen ended
    check_at: float = 0.0                # next queue read for it (epoch s); 0 = at once
    checks: int = 0                      # reads that found it unfinished although it could have ended
    req_check_at: float = 0.0            # next `api_status` of its exec request (epoch s)
    req_checks: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.handle.experiment_id, self.handle.attempt)


def budget_of(job: JobSpec) -> float:
    """The runner's training budget (AUTORESEARCH_TIME_BUDGET, seconds): a job that trains cannot
    end sooner, so its cluster's queue is not read for it before. 0 when not given."""
    try:
        b = float((job.env or {}).get("AUTORESEARCH_TIME_BUDGET") or 0.0)
    except (TypeError, ValueError):
        return 0.0
    return b if 0 < b < job.timeout_s else 0.0


class JobsMixin:
    """Submit / poll / cancel and the job table.

    Part of SkyPilotBackend (backend.py), which sets up the state below; the cluster view comes
    from ClustersMixin, the refresher thread from RefresherMixin."""

    sky: Any
    state_dir: Path
    cluster_prefix: str
    request_grace_s: float
    _lock: threading.RLock
    _jobs: dict[tuple[str, int], TrackedJob]
    _gone: dict[str, float]
    _torn_down: dict[str, float]
    _tearing_down: set[str]
    _watch: dict[str, Any]                # cluster -> ClusterWatch (refresher.py)
    _done: deque[tuple[str, int]]         # outcome handed out, or cancelled: poll/cancel are no-ops
    _wake: threading.Event
    exec_log: deque[tuple[str, str, float, float]]
    timings: dict[str, deque[float]]

    if TYPE_CHECKING:   # provided by SkyPilotBackend, ClustersMixin and RefresherMixin
        def run_command(self, key: str, harness_hash: str, timeout_s: float) -> str: ...
        def job_resources(self, info: ClusterInfo) -> dict[str, Any] | None: ...
        def _job_envs(self, job: JobSpec) -> dict[str, str]: ...
        def _stage_run(self, job: JobSpec, key: str) -> Path: ...
        def is_ours(self, name: str) -> bool: ...
        def _refresh_clusters(self, refresh: str = "NONE", max_age_s: float = 0.0) -> dict[str, ClusterInfo]: ...
        def _cluster_view(self) -> dict[str, ClusterInfo]: ...
        def _ensure_thread(self) -> None: ...
        def _exec_expected_s(self) -> float: ...

    def submit(self, cluster: str, job: JobSpec) -> JobHandle:
        if not self.is_ours(cluster):
            raise NotFound(f"{cluster!r} is not a cluster of this workspace (prefix {self.cluster_prefix!r}).")
        if not isinstance(job.experiment_id, str) or not ID_RE.match(job.experiment_id):
            raise InvalidInput(f"experiment_id must match {ID_RE.pattern}, got {job.experiment_id!r}")
        if not isinstance(job.attempt, int) or job.attempt < 0:
            raise InvalidInput(f"attempt must be a non-negative integer, got {job.attempt!r}")
        if not (isinstance(job.timeout_s, (int, float)) and 0 < job.timeout_s < 10 * 86400):
            raise InvalidInput(f"timeout_s must be a positive number of seconds below 10 days, got {job.timeout_s!r}")
        if job.profile not in ("cpu", "gpu"):
            raise InvalidInput(f"profile must be 'cpu' or 'gpu', got {job.profile!r}")
        with self._lock:
            torn_down, tearing_down = cluster in self._torn_down, cluster in self._tearing_down
        if torn_down:
            raise NotFound(f"cluster {cluster} was torn down. Call {Tool.LIST_CLUSTERS} for the clusters there are.")
        if tearing_down:
            raise Conflict(f"cluster {cluster} is being torn down; submit to another cluster ({Tool.LIST_CLUSTERS}).")
        info = self._cluster_view().get(cluster)   # cached: a slow `sky.status` never holds a submit
        if info is None or info.state != "up":
            info = self._refresh_clusters().get(cluster)
        with self._lock:
            gone = cluster in self._gone
        if info is None or gone:
            raise NotFound(f"cluster {cluster} does not exist (any more). Call {Tool.LIST_CLUSTERS}.")
        if info.state != "up":
            raise Conflict(f"cluster {cluster} is {info.state}, not up; experiments run on up clusters only.")
        key = f"{job.experiment_id}-a{job.attempt}-{uuid.uuid4().hex[:6]}"
        spec: dict[str, Any] = {
            "cluster": cluster, "name": f"arf-{key}", "key": key, "run_dir": str(Path(job.run_dir).resolve()),
            "run": self.run_command(key, job.harness_hash, job.timeout_s),
            "envs": self._job_envs(job), "resources": self.job_resources(info), "request_id": None}
        stage = self._stage_run(job, key)
        spec["stage"] = str(stage)
        write_spec(self.state_dir, spec)
        now = time.time()
        handle = JobHandle(experiment_id=job.experiment_id, attempt=job.attempt, cluster=cluster,
                           run_dir=str(Path(job.run_dir).resolve()),
                           backend_ref={"job_name": spec["name"], "key": key, "timeout_s": float(job.timeout_s),
                                        "budget_s": budget_of(job)},
                           submitted_at=now)
        tracked = TrackedJob(handle=handle, cluster=cluster, name=spec["name"], request_id=None, submitted_at=now,
                             stage=str(stage), spec=spec, deferred=True, min_run_s=budget_of(job))
        with self._lock:
            self._jobs[tracked.key] = tracked
        try:
            self._dispatch_deferred(cluster, raise_errors=True)
        except Exception:
            with self._lock:
                self._jobs.pop(tracked.key, None)
            self._drop_stage(tracked)
            raise
        handle.backend_ref["request_id"] = tracked.request_id
        self._ensure_thread()
        self._wake.set()
        return handle

    # A job is exec'd only when every earlier job of ours on the cluster is RUNNING (or over):
    # SkyPilot's per-cluster FIFO scheduler starts a queued job only when it is submitted or when
    # a job ends, so a job submitted while the one ahead is still PENDING would wait for that one
    # to END before it is even started. Exec'd once the one ahead runs, it is started at once
    # (where its resource request fits beside it) and waits on the cluster lock instead.
    def _dispatch_deferred(self, cluster: str, raise_errors: bool = False) -> None:
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if j.cluster == cluster and j.outcome is None
                           and not j.cancelled), key=lambda j: j.submitted_at)
            # "started enough": seen RUNNING (or over), or its exec request is done -- the next
            # exec needs seconds to reach the cluster's queue, by which time the job ahead runs.
            ahead_starting = any(not j.deferred and j.status not in STARTED and j.request_done_at is None
                                 for j in jobs)
            nxt = next((j for j in jobs if j.deferred and not j.exec_busy), None)
            if nxt is None or ahead_starting or any(j.exec_busy for j in jobs):
                return
            nxt.exec_busy = True
        try:
            spec = nxt.spec or {}
            task = self.sky.Task(name=spec["name"], run=spec["run"], workdir=spec["stage"], envs=spec["envs"])
            if spec.get("resources"):
                task.set_resources(self.sky.Resources(**spec["resources"]))
            t0 = time.monotonic()
            request_id = str(self.sky.exec(task, cluster_name=cluster))
            self.timings["exec_submit_s"].append(time.monotonic() - t0)
        except Exception as e:
            with self._lock:
                nxt.exec_busy = False
            if raise_errors:
                raise
            self._finish(nxt, JobOutcome(nxt.handle, lost=True,
                                         reason=f"exec on {cluster} failed: {type(e).__name__}: "
                                                f"{ANSI_RE.sub('', str(e))[:500]}"))
            return
        with self._lock:
            nxt.request_id = request_id
            nxt.deferred = False
            nxt.exec_busy = False
            nxt.exec_at = time.time()
            nxt.basis_at = max(nxt.basis_at or 0.0, nxt.exec_at)
            nxt.check_at = nxt.basis_at + nxt.min_run_s
            nxt.req_check_at = nxt.exec_at + self._exec_expected_s()
            self.exec_log.append((nxt.name, cluster, nxt.submitted_at, nxt.exec_at))
            spec["request_id"] = request_id
        write_spec(self.state_dir, spec)

    def kill_orphans(self, run_dir: Path) -> int:
        """Recovery: an earlier process submitted a job for `run_dir` and stopped before the
        engine saved its handle, so the engine requeues the experiment. Cancel that job on its
        cluster first (found through its spec file, written before the exec), so the experiment
        does not run twice. Returns how many such jobs were found."""
        target = str(Path(run_dir).resolve())
        found = 0
        for path in sorted((self.state_dir / "stage").glob("*.json")):
            try:
                spec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(spec, dict) or spec.get("run_dir") != target or not isinstance(spec.get("key"), str):
                continue
            found += 1
            cluster, name, request_id = spec.get("cluster"), spec.get("name"), spec.get("request_id")
            try:
                job_ids: list[int] = []
                if request_id:      # exec'd: its request's value is the job id (waits for it to finish)
                    job_ids = [int(self.sky.get(request_id)[0])]
                else:               # the exec may have been sent all the same: look for the name
                    records = self.sky.get(self.sky.queue(cluster, skip_finished=True))
                    job_ids = [int(r.job_id) for r in records if str(getattr(r, "job_name", "")) == name]
                if job_ids:
                    self.sky.cancel(cluster, job_ids=job_ids)
                    log.warning("recovery: cancelled job %s (%s) on %s: it was submitted for %s but its handle "
                                "was never saved", name, job_ids, cluster, target)
            except Exception as e:  # noqa: BLE001 - the cluster may be gone: then nothing runs there
                log.warning("recovery: could not cancel job %s on %s: %s: %s", name, cluster, type(e).__name__,
                            ANSI_RE.sub("", str(e))[:300])
            self._remove_stage(spec.get("stage"), spec["key"])
        return found

    def _drop_stage(self, job: TrackedJob) -> None:
        self._remove_stage(job.stage, (job.spec or {}).get("key") or (job.handle.backend_ref or {}).get("key"))

    def _remove_stage(self, stage: str | None, key: Any) -> None:
        if stage:
            shutil.rmtree(stage, ignore_errors=True)
        if isinstance(key, str) and ID_RE.match(key):
            try:
                spec_path(self.state_dir, key).unlink()
            except OSError:
                pass

    def _track(self, handle: JobHandle) -> TrackedJob | None:
        """The job of a handle; one from an earlier process is rebuilt from the handle and its spec file."""
        key = (handle.experiment_id, handle.attempt)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                return job
            ref = handle.backend_ref or {}
            name = ref.get("job_name")
            if not isinstance(name, str) or not name.startswith("arf-"):
                return None
            budget = ref.get("budget_s")
            job = TrackedJob(handle=handle, cluster=handle.cluster, name=name,
                             request_id=ref.get("request_id"), submitted_at=float(handle.submitted_at or time.time()),
                             min_run_s=float(budget) if isinstance(budget, (int, float)) and budget > 0 else 0.0)
            rkey = ref.get("key")
            if isinstance(rkey, str) and ID_RE.match(rkey):
                try:
                    spec = json.loads(spec_path(self.state_dir, rkey).read_text())
                except (OSError, ValueError):
                    spec = None
                if isinstance(spec, dict) and spec.get("name") == name:
                    job.spec = spec
                    job.stage = spec.get("stage")
                    job.request_id = spec.get("request_id") or job.request_id
                    job.deferred = job.request_id is None    # never exec'd: this process does it
            if job.request_id is None and job.spec is None:
                # It waited behind the job ahead when the earlier process stopped (never sent, as
                # far as the handle tells) and what to send is gone: the queue round decides --
                # on the cluster after all, it is followed; not there, it is `lost` after
                # request_grace_s and the engine requeues it.
                log.warning("job %s on %s: no exec request id and no spec file (%s); unless it is in the "
                            "cluster's queue it is reported lost after %.0f s (the engine requeues it)",
                            name, job.cluster, spec_path(self.state_dir, rkey) if isinstance(rkey, str)
                            and ID_RE.match(rkey) else "no key in the handle", self.request_grace_s)
            self._jobs[key] = job
            return job

    def poll(self, handles: list[JobHandle]) -> list[JobOutcome]:
        out: list[JobOutcome] = []
        for h in handles:
            with self._lock:
                if (h.experiment_id, h.attempt) in self._done:
                    continue     # over here: never rebuilt (that would report it a second time)
            job = self._track(h)
            if job is None:
                out.append(JobOutcome(h, lost=True,
                                      reason="the handle carries no SkyPilot job name (not a skypilot job)"))
                continue
            with self._lock:
                if job.outcome is not None:
                    out.append(job.outcome)
                    self._jobs.pop(job.key, None)
                    self._done.append(job.key)
        self._ensure_thread()
        self._wake.set()
        return out

    def cancel(self, handle: JobHandle) -> None:
        with self._lock:
            if (handle.experiment_id, handle.attempt) in self._done:
                return      # its outcome was handed out: nothing runs any more
        job = self._track(handle)
        if job is None:
            return
        with self._lock:
            job.cancelled = True
            job.check_at = 0.0                   # read its cluster soon: the cancel is confirmed there
            if job.outcome is not None or job.status in TERMINAL:
                self._jobs.pop(job.key, None)
                self._done.append(job.key)
                return
            if (handle.cluster in self._gone or handle.cluster in self._torn_down
                    or (job.deferred and not job.exec_busy)):
                self._jobs.pop(job.key, None)    # nothing runs (any more), or it was never exec'd
                self._done.append(job.key)
                drop = True
            else:
                drop = False
        if drop:
            self._drop_stage(job)
            return
        self._send_cancel(job)
        self._ensure_thread()
        self._wake.set()

    def _send_cancel(self, job: TrackedJob) -> None:
        """Fire the cancel request (SkyPilot runs it server-side); the refresher retries until the job is over."""
        with self._lock:
            job_id, request_id = job.job_id, job.request_id
        if job_id is None and request_id:
            try:   # the exec request may be done: its return value is the job id
                st = self.sky.api_status([request_id])
                if st and status_value(st[0].status) == "SUCCEEDED":
                    found = int(self.sky.get(request_id)[0])
                    with self._lock:
                        if job.job_id is None:
                            job.job_id = found
                        job_id = job.job_id
            except Exception:  # noqa: BLE001
                pass
        if job_id is None:
            return   # not on the cluster yet: the refresher cancels it when it appears
        try:
            self.sky.cancel(job.cluster, job_ids=[job_id])
            with self._lock:
                job.cancel_sent = True
        except Exception:  # noqa: BLE001
            log.warning("cancel of %s on %s failed", job.name, job.cluster, exc_info=True)

    def _finish(self, job: TrackedJob, outcome: JobOutcome) -> None:
        with self._lock:
            if job.cancelled:
                self._jobs.pop(job.key, None)
                self._done.append(job.key)
            else:
                job.outcome = outcome
            w = self._watch.get(job.cluster)
            if w is not None:
                w.extra.pop(job.name, None)      # its log-read retries
        self._drop_stage(job)

    def _jobs_on(self, cluster: str) -> list[TrackedJob]:
        with self._lock:
            return [j for j in self._jobs.values() if j.cluster == cluster and j.outcome is None]
