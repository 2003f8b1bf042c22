"""SkyPilot backend against a FAKE of the SkyPilot SDK, only for what cannot run here:

- a cluster that reports an H200 (no GPU on this machine, and the local Slurm has none);
- a cloud cluster preempted / vanished, or stopped under us, mid-experiment -> `lost`.

Everything else about the backend is tested for real in test_skypilot_integration.py (real
SkyPilot clusters on a local Slurm). `FakeSkyPilotSDK` stands in for the `sky` module: the
request/`get` pattern, `status`, `launch`, `exec`, `queue`, `tail_logs`, `cancel`, `down`,
`api_status` and the two exceptions the backend tells apart.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from mcp_server.backends.base import JobHandle, JobSpec
from mcp_server.backends.skypilot import SkyPilotBackend, TRAIN_LOG_BEGIN, TRAIN_LOG_END
from mcp_server.config import FleetConfig

HASH = "ab" * 32


class FakeClusterDoesNotExist(Exception):
    pass


class FakeClusterNotUpError(Exception):
    pass


class FakeRefresh(Enum):
    NONE = "NONE"
    AUTO = "AUTO"
    FORCE = "FORCE"


@dataclass
class FakeTask:
    name: str | None = None
    run: str | None = None
    workdir: str | None = None
    envs: dict[str, str] = field(default_factory=dict)
    resources: Any = None
    config: dict[str, Any] | None = None

    @classmethod
    def from_yaml_config(cls, cfg: dict[str, Any]) -> "FakeTask":
        return cls(name=cfg.get("name"), run=cfg.get("run"), workdir=cfg.get("workdir"),
                   envs=dict(cfg.get("envs") or {}), config=cfg)

    def set_resources(self, r: Any) -> None:
        self.resources = r


@dataclass
class FakeResources:
    accelerators: dict[str, float] | None = None
    cpus: str | None = None


@dataclass
class FakeJob:
    job_id: int
    job_name: str
    status: str = "RUNNING"
    log: str = ""


@dataclass
class FakeCluster:
    name: str
    accelerators: dict[str, float] | None
    status: str = "UP"
    jobs: list[FakeJob] = field(default_factory=list)
    autostop: int = -1
    to_down: bool = False


class FakeSkyPilotSDK:
    """A FAKE of the SkyPilot SDK (`sky` module) holding clusters in memory."""

    def __init__(self, pick_gpu: str | None = None) -> None:
        self.exceptions = SimpleNamespace(ClusterDoesNotExist=FakeClusterDoesNotExist,
                                          ClusterNotUpError=FakeClusterNotUpError)
        self.StatusRefreshMode = FakeRefresh
        self.Task = FakeTask
        self.Resources = FakeResources
        self.pick_gpu = pick_gpu                  # what the "optimizer" picks for {H100:1, H200:1}
        self.clusters: dict[str, FakeCluster] = {}
        self.launched: list[tuple[str, FakeTask, dict[str, Any]]] = []
        self.execs: list[tuple[str, FakeTask]] = []
        self.cancels: list[tuple[str, list[int]]] = []
        self._results: dict[str, tuple[bool, Any]] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # request pattern
    def _req(self, fn) -> str:
        rid = f"req-{next(self._ids)}"
        try:
            self._results[rid] = (True, fn())
        except Exception as e:  # noqa: BLE001
            self._results[rid] = (False, e)
        return rid

    def get(self, rid: str) -> Any:
        ok, value = self._results[rid]
        if not ok:
            raise value
        return value

    def api_status(self, rids: list[str]) -> list[Any]:
        return [SimpleNamespace(request_id=r, status="SUCCEEDED" if self._results[r][0] else "FAILED",
                                finished_at=0.0) for r in rids if r in self._results]

    def _record(self, c: FakeCluster) -> Any:
        res = SimpleNamespace(accelerators=c.accelerators, get_cost=lambda s: 0.0, cloud="Kubernetes", cpus="8")
        return SimpleNamespace(name=c.name, status=SimpleNamespace(value=c.status), autostop=c.autostop,
                               launched_at=1.0, handle=SimpleNamespace(launched_resources=res))

    # clusters
    def status(self, cluster_names=None, refresh=None) -> str:
        def fn():
            return [self._record(c) for n, c in sorted(self.clusters.items())
                    if cluster_names is None or n in cluster_names]
        return self._req(fn)

    def launch(self, task: FakeTask, cluster_name: str, idle_minutes_to_autostop=None, down=False, **kw) -> str:
        def fn():
            acc = (task.config or {}).get("resources", {}).get("accelerators")
            if isinstance(acc, dict) and len(acc) > 1:     # "either": the optimizer picks one
                name = self.pick_gpu or next(iter(acc))
                acc = {name: acc[name]}
            self.clusters[cluster_name] = FakeCluster(cluster_name, acc, autostop=idle_minutes_to_autostop,
                                                      to_down=down)
            self.launched.append((cluster_name, task, {"autostop": idle_minutes_to_autostop, "down": down}))
            return (1, None)
        return self._req(fn)

    def down(self, name: str) -> str:
        def fn():
            if self.clusters.pop(name, None) is None:
                raise FakeClusterDoesNotExist(name)
        return self._req(fn)

    def autostop(self, name: str, idle_minutes: int, down: bool = False) -> str:
        def fn():
            self.clusters[name].autostop = idle_minutes
            self.clusters[name].to_down = down
        return self._req(fn)

    def _cluster(self, name: str) -> FakeCluster:
        c = self.clusters.get(name)
        if c is None:
            raise FakeClusterDoesNotExist(f"Cluster {name!r} does not exist.")
        if c.status != "UP":
            raise FakeClusterNotUpError(f"Cluster {name!r} is {c.status}.")
        return c

    # jobs
    def exec(self, task: FakeTask, cluster_name: str) -> str:
        def fn():
            c = self._cluster(cluster_name)
            job = FakeJob(len(c.jobs) + 1, task.name or "")
            c.jobs.append(job)
            self.execs.append((cluster_name, task))
            return (job.job_id, None)
        return self._req(fn)

    def queue(self, cluster_name: str, skip_finished: bool = False) -> str:
        def fn():
            c = self._cluster(cluster_name)
            return [SimpleNamespace(job_id=j.job_id, job_name=j.job_name, status=SimpleNamespace(value=j.status))
                    for j in c.jobs]
        return self._req(fn)

    def tail_logs(self, cluster_name: str, job_id: int, follow: bool = False, output_stream=None) -> int:
        c = self._cluster(cluster_name)
        output_stream.write(c.jobs[job_id - 1].log)
        return 0

    def cancel(self, cluster_name: str, job_ids: list[int]) -> str:
        self.cancels.append((cluster_name, list(job_ids)))
        return self._req(lambda: None)

    # test controls
    def finish(self, cluster: str, job_name_prefix: str, metrics: dict[str, Any]) -> None:
        """The job ends as the real run command would print it (SkyPilot line prefixes included)."""
        c = self.clusters[cluster]
        job = next(j for j in c.jobs if j.job_name.startswith(job_name_prefix))
        result = {"status": "done", "metrics": metrics, "error": None, "started_at": 1.0, "ended_at": 2.0}
        p = f"\x1b[36m({job.job_name}, pid=42)\x1b[0m "
        job.log = "".join(p + line + "\n" for line in [
            "ARF_WAITING_FOR_SLOT 1.0", "AUTORESEARCH_RESULT: " + json.dumps(result), TRAIN_LOG_BEGIN,
            "step 1 | loss 3.0", "---", f"val_bpb: {metrics['val_bpb']}", "", TRAIN_LOG_END,
            "AUTORESEARCH_RESULT: " + json.dumps(result)])
        job.status = "SUCCEEDED"


def _config(tmp_path: Path) -> FleetConfig:
    return FleetConfig(workspace=tmp_path / "ws", tag="fake", backend="skypilot", profile="gpu")


def _job(tmp_path: Path, eid: str) -> JobSpec:
    run_dir = tmp_path / "runs" / eid / "a1"
    run_dir.mkdir(parents=True)
    (run_dir / "train.py").write_text("print('train')\n")
    (run_dir / "prepare.py").write_text("print('prepare')\n")
    return JobSpec(experiment_id=eid, attempt=1, run_dir=run_dir, profile="gpu", timeout_s=720.0,
                   harness_hash=HASH, seed=42)


def _poll_until(backend: SkyPilotBackend, handles: list[JobHandle], n: int, timeout: float = 10.0):
    out = []
    deadline = time.time() + timeout
    while len(out) < n and time.time() < deadline:
        out += backend.poll(handles)
        time.sleep(0.02)
    return out


@pytest.fixture
def backend_factory(tmp_path):
    made = []

    def make(sdk: FakeSkyPilotSDK) -> SkyPilotBackend:
        b = SkyPilotBackend(_config(tmp_path), sdk=sdk, refresh_interval_s=0.01)
        made.append(b)
        return b
    yield make
    for b in made:
        b.close()


def test_fake_sdk_cluster_reporting_h200_is_an_h200_slot(tmp_path, backend_factory):
    """The template asks for {H100:1, H200:1}; the (fake) optimizer picks H200: the slot is an H200,
    its jobs ask for half the GPU (so the queued-ahead job starts at once), results come back."""
    sdk = FakeSkyPilotSDK(pick_gpu="H200")
    b = backend_factory(sdk)
    [cluster] = b.provision(1)
    assert cluster.gpu_type == "H200" and cluster.gpu_count == 1 and cluster.state == "up"
    assert cluster.name.startswith(b.cluster_prefix) and cluster.name.endswith("-01")
    name, task, opts = sdk.launched[0]
    assert opts == {"autostop": 30, "down": True}                       # money guard, always
    assert task.config["resources"]["accelerators"] == {"H100": 1, "H200": 1}
    assert task.config["run"] is None and task.config["envs"]["AUTORESEARCH_PROFILE"] == "gpu"
    assert Path(task.config["workdir"]).name.startswith("launch-")      # a clean dir with prepare.py only

    # pinning a type restricts the YAML's accelerators to it
    [pinned] = b.provision(1, gpu_type="H100")
    assert sdk.launched[1][1].config["resources"]["accelerators"] == {"H100": 1}
    assert pinned.gpu_type == "H100" and pinned.name.endswith("-02")
    assert {c.name: c.gpu_type for c in b.clusters()} == {cluster.name: "H200", pinned.name: "H100"}

    h1 = b.submit(cluster.name, _job(tmp_path, "e0001"))
    h2 = b.submit(cluster.name, _job(tmp_path, "e0002"))
    assert b.queue_depth(cluster.name) == 2
    # the second is exec'd only once the first runs (SkyPilot's FIFO would hold it otherwise)
    deadline = time.time() + 10
    while len(sdk.execs) < 2 and time.time() < deadline:
        assert b.poll([h1, h2]) == []                                   # nothing finished yet
        time.sleep(0.02)
    assert [t.resources.accelerators for _, t in sdk.execs] == [{"H200": 0.5}, {"H200": 0.5}]
    first = sdk.execs[0][1]
    assert first.workdir and (Path(first.workdir) / "arf-runs").is_dir()
    assert "--expected-hash " + HASH in first.run and first.envs["AUTORESEARCH_SEED"] == "42"

    sdk.finish(cluster.name, "arf-e0001-", {"val_bpb": 0.9871})
    sdk.finish(cluster.name, "arf-e0002-", {"val_bpb": 0.9912})
    outcomes = {o.handle.experiment_id: o for o in _poll_until(b, [h1, h2], 2)}
    assert set(outcomes) == {"e0001", "e0002"}
    assert outcomes["e0001"].result["metrics"]["val_bpb"] == 0.9871
    assert not outcomes["e0001"].lost
    log = Path(outcomes["e0001"].log_path).read_text()
    assert "val_bpb: 0.9871" in log and "pid=42" not in log and "AUTORESEARCH_RESULT" not in log
    assert json.loads((Path(h1.run_dir) / "result.json").read_text())["metrics"]["val_bpb"] == 0.9871


def test_fake_sdk_preempted_cluster_makes_its_jobs_lost(tmp_path, backend_factory):
    """A cloud cluster vanishes mid-experiment (preempted / deleted in the console): both the
    running and the queued-ahead job are `lost` (the engine requeues them), cancel is a no-op,
    and the cluster is no longer listed. A new process with the persisted handles sees the same."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    c1, c2 = b.provision(2)
    h1 = b.submit(c1.name, _job(tmp_path, "e0001"))
    h2 = b.submit(c1.name, _job(tmp_path, "e0002"))
    h3 = b.submit(c2.name, _job(tmp_path, "e0003"))
    _poll_until(b, [h1, h2, h3], 0, timeout=0.5)
    assert len(sdk.clusters[c1.name].jobs) == 2

    handles_json = [h.to_json() for h in (h1, h2, h3)]
    del sdk.clusters[c1.name]                                   # preempted
    outcomes = _poll_until(b, [h1, h2, h3], 2)
    assert sorted(o.handle.experiment_id for o in outcomes) == ["e0001", "e0002"]
    assert all(o.lost and c1.name in o.reason and "vanished" in o.reason for o in outcomes)
    n_cancels = len(sdk.cancels)
    b.cancel(h1)                                                # what the scheduler does: a no-op here
    assert len(sdk.cancels) == n_cancels
    assert [c.name for c in b.clusters()] == [c2.name]

    # another process (engine restart) with the persisted handles
    b2 = backend_factory(sdk)
    again = [JobHandle.from_json(t) for t in handles_json]
    outcomes2 = _poll_until(b2, again, 2)
    assert sorted(o.handle.experiment_id for o in outcomes2) == ["e0001", "e0002"]
    assert all(o.lost for o in outcomes2)
    sdk.finish(c2.name, "arf-e0003-", {"val_bpb": 1.01})
    [done] = _poll_until(b2, again[2:], 1)
    assert done.result["status"] == "done" and not done.lost


def test_fake_sdk_stopped_spot_cluster_makes_its_jobs_lost(tmp_path, backend_factory):
    """A spot cluster stopped by the cloud (SkyPilot: not UP) -> its job is lost, not left hanging."""
    sdk = FakeSkyPilotSDK(pick_gpu="H200")
    b = backend_factory(sdk)
    [c] = b.provision(1)
    h = b.submit(c.name, _job(tmp_path, "e0001"))
    _poll_until(b, [h], 0, timeout=0.3)
    sdk.clusters[c.name].status = "STOPPED"
    [o] = _poll_until(b, [h], 1)
    assert o.lost and "not up" in o.reason
