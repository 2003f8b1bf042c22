"""STAND-IN for the SkyPilot SDK (the `sky` module) and its API server, for the scale simulation
(benchmarks/skypilot_scale.py). It is not SkyPilot: no cluster, no job runs anywhere. It holds
N simulated clusters in memory and answers the calls the SkyPilot backend makes, with

- per-request service times drawn from the figures in docs/skypilot-scale.md (measured on the
  local Slurm of this repo, or stated there as an assumption);
- an API server that queues requests the way SkyPilot's does (sky/server/requests/executor.py,
  sky/server/server.py): two FIFO queues, a "long" one (launch, exec, status with a refresh) and
  a "short" one (status without refresh, queue, job_status, cancel, down, autostop), each served
  by a fixed number of workers; `logs` (tail_logs) runs as a coroutine in the server process
  (not on a worker) and `api_status` reads the request table directly (not queued);
- a clock scaled by `scale`: every latency and run time is divided by it, so 300 simulated
  seconds take 300/scale seconds of wall time. The backend under test gets its own intervals
  divided by the same factor (see skypilot_scale.py). Only the CPU the backend and engine spend
  is not scaled (it counts `scale` times too much): the figures are pessimistic.

A job on a simulated cluster is started by SkyPilot when its exec request completes (the backend
asks for a fraction of the cluster's GPU, so the queued-ahead job starts at once); it then waits
on the cluster lock like the real run command, trains for the budget plus a start-up/eval
overhead, and ends SUCCEEDED with a log in the real run command's format.
"""

from __future__ import annotations

import itertools
import json
import random
import sys
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from sky_sdk_shapes import SdkRefresh as StandinRefresh  # noqa: E402
from sky_sdk_shapes import SdkResources as StandinResources  # noqa: E402
from sky_sdk_shapes import SdkTask as StandinTask  # noqa: E402

TRAIN_LOG_BEGIN = "ARF_TRAIN_LOG_BEGIN"
TRAIN_LOG_END = "ARF_TRAIN_LOG_END"

# Service time (simulated seconds, uniform lo..hi) of each request kind on the API server, and
# the queue it is served from. Where each figure comes from: docs/skypilot-scale.md.
LATENCY_S: dict[str, tuple[float, float]] = {
    "exec": (14.0, 19.0),          # request -> job in the cluster's queue and started
    "queue": (12.0, 35.0),
    "status": (0.1, 1.4),          # measured: SDK on the real local API server (not the CLI's ~40 s)
    "status_refresh": (3.8, 34.0),  # measured: SDK on the real local API server, under load
    "logs": (3.0, 8.0),
    "cancel": (5.0, 7.0),
    "launch": (43.0, 50.0),
    "down": (6.0, 8.0),
    "autostop": (5.0, 7.0),
    "job_status": (12.0, 35.0),
    "api_status": (0.02, 0.05),
    "get": (0.0, 0.0),
}
QUEUE_OF = {"exec": "long", "launch": "long", "status_refresh": "long",
            "status": "short", "queue": "short", "job_status": "short", "cancel": "short", "down": "short",
            "autostop": "short", "logs": None, "api_status": None, "get": None}


class StandinClusterDoesNotExist(Exception):
    pass


class StandinClusterNotUpError(Exception):
    pass


@dataclass
class SimJob:
    job_id: int
    name: str
    budget_s: float            # simulated
    seed: int
    submitted_at: float        # wall (epoch) when SkyPilot put it in the cluster's queue
    start_at: float = 0.0      # wall: SkyPilot started it (it waits on the lock from here)
    train_start: float = 0.0   # wall: it holds the cluster lock and trains
    end_at: float = 0.0        # wall
    cancelled_at: float | None = None

    def status(self, now: float) -> str:
        if self.cancelled_at is not None and self.cancelled_at < self.end_at:
            return "CANCELLED"
        if now >= self.end_at:
            return "SUCCEEDED"
        return "RUNNING" if now >= self.start_at else "PENDING"


@dataclass
class SimCluster:
    name: str
    accelerators: dict[str, float] | None
    status: str = "UP"
    autostop: int = -1
    jobs: list[SimJob] = field(default_factory=list)
    lock_free_at: float = 0.0   # wall: when the job holding the cluster lock ends


class _Pool:
    """One of the API server's FIFO request queues and its workers."""

    def __init__(self, name: str, workers: int, server: StandinSkyPilot) -> None:
        self.name = name
        self.q: deque[tuple[str, float, Any]] = deque()
        self.cv = threading.Condition()
        self.server = server
        self.threads = [threading.Thread(target=self._work, daemon=True, name=f"standin-{name}-{i}")
                        for i in range(workers)]
        for t in self.threads:
            t.start()

    def put(self, rid: str, service_wall_s: float, fn: Any) -> None:
        with self.cv:
            self.q.append((rid, service_wall_s, fn))
            self.cv.notify()

    def _work(self) -> None:
        while True:
            with self.cv:
                while not self.q:
                    if self.server.closed:
                        return
                    self.cv.wait(0.5)
                rid, service, fn = self.q.popleft()
            self.server._run(rid, service, fn)


class StandinSkyPilot:
    """STAND-IN for the `sky` module + its API server (see the module docstring)."""

    def __init__(self, scale: float = 20.0, long_workers: int = 8, short_workers: int = 9,
                 run_overhead_s: tuple[float, float] = (10.0, 30.0),
                 latency_s: dict[str, tuple[float, float]] | None = None,
                 seed: int = 0, latency_samples_s: dict[str, list[float]] | None = None,
                 run_overhead_samples_s: list[float] | None = None) -> None:
        self.scale = float(scale)
        self.exceptions = SimpleNamespace(ClusterDoesNotExist=StandinClusterDoesNotExist,
                                          ClusterNotUpError=StandinClusterNotUpError)
        self.StatusRefreshMode = StandinRefresh
        self.Task = StandinTask
        self.Resources = StandinResources
        self.latency_s = dict(LATENCY_S, **(latency_s or {}))
        self.run_overhead_s = run_overhead_s
        # measured figures to draw from as they are (a real run's latencies, heavy-tailed under
        # load), instead of uniform between their min and max; "exec_start" (exec request
        # created -> job started) where it differs from the exec request's own latency
        self.latency_samples_s = {k: list(v) for k, v in (latency_samples_s or {}).items() if v}
        self.run_overhead_samples_s = list(run_overhead_samples_s or [])
        self.rng = random.Random(seed)
        self.clusters: dict[str, SimCluster] = {}
        self.closed = False
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._results: dict[str, tuple[str, Any]] = {}       # rid -> (PENDING|RUNNING|SUCCEEDED|FAILED, value)
        self._done: dict[str, threading.Event] = {}
        self.pools = {"long": _Pool("long", long_workers, self), "short": _Pool("short", short_workers, self)}
        #: every request: kind, queue, sent, started, finished (wall, epoch s)
        self.log: list[dict[str, Any]] = []
        self._entries: dict[str, dict[str, Any]] = {}
        self.in_flight = 0
        self.peak_in_flight = 0
        self.peak_by_queue: Counter[str] = Counter()
        self._by_queue: Counter[str] = Counter()

    def close(self) -> None:
        self.closed = True

    # -- the API server ---------------------------------------------------------------------
    def _draw(self, kind: str) -> float:
        """One simulated-seconds figure for `kind`: a measured sample when given, else uniform."""
        with self._lock:
            if kind in self.latency_samples_s:
                return self.rng.choice(self.latency_samples_s[kind])
            lo, hi = self.latency_s[kind]
            return self.rng.uniform(lo, hi)

    def _service(self, kind: str) -> float:
        return self._draw(kind) / self.scale

    def _request(self, kind: str, fn: Any, cluster: str | None = None) -> str:
        """Queue a request as the API server does; its id at once (the SDK's pattern)."""
        rid = f"standin-{kind}-{next(self._ids)}"
        queue = QUEUE_OF[kind]
        with self._lock:
            self._results[rid] = ("PENDING", None)
            self._done[rid] = threading.Event()
            entry = {"id": rid, "kind": kind, "cluster": cluster, "queue": queue or "direct", "sent": time.time(),
                     "started": None, "finished": None}
            self.log.append(entry)
            self._entries[rid] = entry
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            q = queue or "direct"
            self._by_queue[q] += 1
            self.peak_by_queue[q] = max(self.peak_by_queue[q], self._by_queue[q])
        if queue is None:
            self._run(rid, self._service(kind), fn)
        else:
            self.pools[queue].put(rid, self._service(kind), fn)
        return rid

    def _run(self, rid: str, service: float, fn: Any) -> None:
        with self._lock:
            self._results[rid] = ("RUNNING", None)
            entry = self._entries[rid]
            entry["started"] = time.time()
        time.sleep(service)
        try:
            value: tuple[str, Any] = ("SUCCEEDED", fn())
        except Exception as e:  # noqa: BLE001 - re-raised by get(), as SkyPilot does
            value = ("FAILED", e)
        with self._lock:
            self._results[rid] = value
            entry["finished"] = time.time()
            self.in_flight -= 1
            self._by_queue[entry["queue"]] -= 1
        self._done[rid].set()

    def _sync(self, kind: str, fn: Any, cluster: str | None = None) -> Any:
        """A call the SDK makes synchronously (tail_logs): sent, waited for, its value returned."""
        rid = self._request(kind, fn, cluster)
        return self.get(rid)

    # -- the SDK ---------------------------------------------------------------------------
    def get(self, rid: str) -> Any:
        self._done[rid].wait()
        status, value = self._results[rid]
        if status == "FAILED":
            raise value
        return value

    def api_status(self, rids: list[str]) -> list[Any]:
        def fn() -> list[Any]:
            with self._lock:
                return [SimpleNamespace(request_id=r, status=self._results[r][0], finished_at=None)
                        for r in rids if r in self._results]
        return self._sync("api_status", fn)

    def _record(self, c: SimCluster) -> Any:
        res = SimpleNamespace(accelerators=c.accelerators, get_cost=lambda s: 0.0, cloud="Kubernetes", cpus="8")
        return SimpleNamespace(name=c.name, status=SimpleNamespace(value=c.status), autostop=c.autostop,
                               launched_at=1.0, handle=SimpleNamespace(launched_resources=res))

    def status(self, cluster_names: list[str] | None = None, refresh: Any = None) -> str:
        def fn() -> list[Any]:
            with self._lock:
                return [self._record(c) for n, c in sorted(self.clusters.items())
                        if cluster_names is None or n in cluster_names]
        kind = "status" if refresh in (None, StandinRefresh.NONE) else "status_refresh"
        return self._request(kind, fn)

    def launch(self, task: StandinTask, cluster_name: str, idle_minutes_to_autostop: Any = None, down: bool = False,
               **kw: Any) -> str:
        def fn() -> tuple[int, None]:
            with self._lock:
                self.clusters[cluster_name] = SimCluster(cluster_name, {"H100": 1},
                                                         autostop=idle_minutes_to_autostop or -1)
            return (1, None)
        return self._request("launch", fn)

    def down(self, name: str) -> str:
        def fn() -> None:
            with self._lock:
                if self.clusters.pop(name, None) is None:
                    raise StandinClusterDoesNotExist(name)
        return self._request("down", fn)

    def autostop(self, name: str, idle_minutes: int, down: bool = False) -> str:
        def fn() -> None:
            with self._lock:
                self._cluster(name).autostop = idle_minutes
        return self._request("autostop", fn)

    def _cluster(self, name: str) -> SimCluster:
        c = self.clusters.get(name)
        if c is None:
            raise StandinClusterDoesNotExist(f"Cluster {name!r} does not exist.")
        if c.status != "UP":
            raise StandinClusterNotUpError(f"Cluster {name!r} is {c.status}.")
        return c

    def exec(self, task: StandinTask, cluster_name: str) -> str:
        budget = float(task.envs.get("AUTORESEARCH_TIME_BUDGET") or 0.0) * self.scale
        seed = int(task.envs.get("AUTORESEARCH_SEED") or 0)
        sent = time.time()
        to_start = (self._draw("exec_start") / self.scale
                    if "exec_start" in self.latency_samples_s or "exec_start" in self.latency_s else None)

        def fn() -> tuple[int, None]:
            now = time.time()
            # when SkyPilot starts the job, if measured (exec_start): on the real local Slurm it
            # is well after the exec request is done (the cluster's own job scheduler and the
            # job's start-up); PENDING until then
            start = now if to_start is None else max(sent + to_start, sent)
            with self._lock:
                c = self._cluster(cluster_name)
                job = SimJob(len(c.jobs) + 1, task.name or "", budget, seed, submitted_at=start, start_at=start)
                if self.run_overhead_samples_s:
                    overhead = self.rng.choice(self.run_overhead_samples_s)
                else:
                    overhead = self.rng.uniform(*self.run_overhead_s)
                run = (budget + overhead) / self.scale
                job.train_start = max(start, c.lock_free_at)
                job.end_at = job.train_start + run
                c.lock_free_at = job.end_at
                c.jobs.append(job)
            return (job.job_id, None)
        return self._request("exec", fn, cluster_name)

    def queue(self, cluster_name: str, skip_finished: bool = False) -> str:
        def fn() -> list[Any]:
            now = time.time()
            with self._lock:
                c = self._cluster(cluster_name)
                out = []
                for j in c.jobs:
                    st = j.status(now)
                    if skip_finished and st not in ("RUNNING", "PENDING"):
                        continue
                    out.append(SimpleNamespace(job_id=j.job_id, job_name=j.name, status=SimpleNamespace(value=st),
                                               submitted_at=j.submitted_at,
                                               start_at=j.start_at if st != "PENDING" else None,
                                               end_at=j.end_at if st not in ("RUNNING", "PENDING") else None))
                return out
        return self._request("queue", fn, cluster_name)

    def tail_logs(self, cluster_name: str, job_id: int, follow: bool = False, output_stream: Any = None,
                  **kw: Any) -> int:
        def fn() -> str:
            with self._lock:
                c = self._cluster(cluster_name)
                j = c.jobs[job_id - 1]
            return self._job_log(j)
        text = self._sync("logs", fn, cluster_name)
        if output_stream is not None:
            output_stream.write(text)
        return 0

    def cancel(self, cluster_name: str, job_ids: list[int]) -> str:
        def fn() -> None:
            now = time.time()
            with self._lock:
                for j in self._cluster(cluster_name).jobs:
                    if j.job_id in job_ids and j.status(now) in ("RUNNING", "PENDING"):
                        j.cancelled_at = now
        return self._request("cancel", fn)

    # -- what a job prints -------------------------------------------------------------------
    def _job_log(self, j: SimJob) -> str:
        val = round(1.0 + random.Random(j.seed).gauss(0, 0.002), 6)
        result = {"status": "done", "exit_code": 0, "metrics": {"val_bpb": val, "training_seconds": j.budget_s},
                  "error": None, "log_tail": "", "started_at": j.train_start, "ended_at": j.end_at}
        p = f"({j.name}, pid=42) "
        lines = [f"ARF_WAITING_FOR_SLOT {j.start_at}", TRAIN_LOG_BEGIN, "step 1 | loss 3.0", "---",
                 f"val_bpb:          {val}", TRAIN_LOG_END, "AUTORESEARCH_RESULT: " + json.dumps(result)]
        return "".join(p + line + "\n" for line in lines)

    # -- what the simulation reports -----------------------------------------------------------
    def runs(self) -> list[dict[str, Any]]:
        """Every job that trained: cluster, name, train start/end (wall)."""
        with self._lock:
            return [{"cluster": c.name, "name": j.name, "start": j.train_start, "end": j.end_at,
                     "submitted": j.submitted_at, "cancelled": j.cancelled_at is not None}
                    for c in self.clusters.values() for j in c.jobs]

    def requests_by_kind(self, since: float = 0.0) -> Counter[str]:
        with self._lock:
            return Counter(e["kind"] for e in self.log if e["sent"] >= since)
