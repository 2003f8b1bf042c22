"""SkyPilot backend against a FAKE of the SkyPilot SDK, only for what cannot run here:

- a cluster that reports an H200 (no GPU on this machine, and the local Slurm has none);
- a cloud cluster preempted / vanished, or stopped under us, mid-experiment -> `lost`;
- cloud states the local Slurm never shows on demand: a cluster in INIT for a while (SkyPilot's
  re-check of an abnormal cluster, a restart), one re-created outside the fleet;
- injected SDK failures: a `sky.down` that fails (the cluster survives), `sky.tail_logs` errors.

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
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from sky_sdk_shapes import SdkRefresh as FakeRefresh
from sky_sdk_shapes import SdkResources as FakeResources
from sky_sdk_shapes import SdkTask as FakeTask

from mcp_server.backends.base import JobHandle, JobSpec
from mcp_server.backends.skypilot import TRAIN_LOG_BEGIN, TRAIN_LOG_END, SkyPilotBackend
from mcp_server.backends.skypilot.jobs import TrackedJob
from mcp_server.backends.skypilot.staging import spec_path
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import Conflict, NotFound, TeardownIncomplete

HASH = "ab" * 32


class FakeClusterDoesNotExist(Exception):
    pass


class FakeClusterNotUpError(Exception):
    pass


class FakeSkyError(Exception):
    """An injected server-side failure (cloud API error, quota, ...)."""


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
        self.fail_down: dict[str, str] = {}       # injected: `sky.down(name)` fails with this message
        self.down_gate: threading.Event | None = None   # injected: `sky.down` waits for it (a slow down)
        self.fail_tail_logs = 0                   # injected: the next N `tail_logs` calls fail
        self.downs: list[str] = []
        self.status_refreshes = 0                 # `status` calls with refresh=AUTO/FORCE
        self.status_gate: threading.Event | None = None   # injected: the next `status` answer waits for it
        self._held: dict[str, threading.Event] = {}

    # request pattern
    def _req(self, fn) -> str:
        rid = f"req-{next(self._ids)}"
        try:
            self._results[rid] = (True, fn())
        except Exception as e:  # noqa: BLE001
            self._results[rid] = (False, e)
        return rid

    def get(self, rid: str) -> Any:
        gate = self._held.pop(rid, None)
        if gate is not None:                      # a slow answer: read when asked, handed over later
            gate.wait(30)
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
        if refresh not in (None, FakeRefresh.NONE):
            self.status_refreshes += 1

        def fn():
            return [self._record(c) for n, c in sorted(self.clusters.items())
                    if cluster_names is None or n in cluster_names]
        rid = self._req(fn)
        if self.status_gate is not None:
            self._held[rid], self.status_gate = self.status_gate, None
        return rid

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
        self.downs.append(name)

        def fn():
            if self.down_gate is not None:
                assert self.down_gate.wait(10)
            if name in self.fail_down:
                raise FakeSkyError(self.fail_down[name])
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
        if c.status not in ("UP", "AUTOSTOPPING"):     # as SkyPilot 0.14's check_cluster_available
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
        if self.fail_tail_logs > 0:
            self.fail_tail_logs -= 1
            raise FakeSkyError("ssh: connection reset")
        c = self._cluster(cluster_name)
        output_stream.write(c.jobs[job_id - 1].log)
        return 0

    def cancel(self, cluster_name: str, job_ids: list[int]) -> str:
        self.cancels.append((cluster_name, list(job_ids)))

        def fn():
            for j in self._cluster(cluster_name).jobs:
                if j.job_id in job_ids and j.status in ("PENDING", "RUNNING"):
                    j.status = "CANCELLED"
        return self._req(fn)

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

    def make(sdk: FakeSkyPilotSDK, **kw) -> SkyPilotBackend:
        b = SkyPilotBackend(_config(tmp_path), sdk=sdk, refresh_interval_s=0.01, **kw)
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


def _poll_for(backend: SkyPilotBackend, handles: list[JobHandle], seconds: float):
    """Poll for `seconds` (refresh rounds run meanwhile); what came back."""
    out = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        out += backend.poll(handles)
        time.sleep(0.02)
    return out


def _wait_for(cond, timeout: float = 10.0) -> bool:
    deadline = time.time() + timeout
    while not cond() and time.time() < deadline:
        time.sleep(0.01)
    return cond()


def test_fake_sdk_failed_down_keeps_the_cluster_listed_and_its_jobs_running(tmp_path, backend_factory):
    """Injected: `sky.down` of one cluster fails (a cloud API error). That cluster is still there
    and may cost money: it stays listed as up, its job runs on to its result and it takes new
    jobs; the caller gets TeardownIncomplete naming it, SkyPilot's message and what to do. In a
    batch the clusters that did go are reported (`removed`), their jobs end cancelled, and a
    submit to one of them is refused."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    c1, c2 = b.provision(2)
    h1 = b.submit(c1.name, _job(tmp_path, "e0001"))
    h2 = b.submit(c2.name, _job(tmp_path, "e0002"))
    assert _poll_for(b, [h1, h2], 0.3) == []
    sdk.fail_down[c1.name] = "HttpError 403: quota exceeded for project p"

    with pytest.raises(TeardownIncomplete) as only:
        b.teardown([c1.name])
    msg = str(only.value)
    assert only.value.removed == []
    assert c1.name in msg and "quota exceeded" in msg and "lists it as up" in msg
    assert f"teardown_clusters(names=['{c1.name}'])" in msg and f"`sky down {c1.name}`" in msg
    assert "Nothing was taken down" in msg

    with pytest.raises(TeardownIncomplete) as batch:
        b.teardown([c1.name, c2.name])
    assert batch.value.removed == [c2.name]
    assert c1.name in str(batch.value) and f"Taken down: {c2.name}" in str(batch.value)
    assert {c.name: c.state for c in b.clusters()} == {c1.name: "up"}

    [cancelled] = _poll_until(b, [h1, h2], 1)                    # the job of the cluster that went
    assert cancelled.handle.experiment_id == "e0002" and cancelled.result["status"] == "cancelled"
    assert _poll_for(b, [h1], 0.3) == []            # the survivor's job is untouched
    with pytest.raises(NotFound, match="torn down"):
        b.submit(c2.name, _job(tmp_path, "e0003"))
    h4 = b.submit(c1.name, _job(tmp_path, "e0004"))              # the survivor still takes jobs
    sdk.finish(c1.name, "arf-e0001-", {"val_bpb": 0.98})
    sdk.finish(c1.name, "arf-e0004-", {"val_bpb": 0.97})
    done = {o.handle.experiment_id: o for o in _poll_until(b, [h1, h4], 2)}
    assert {e: o.result["status"] for e, o in done.items()} == {"e0001": "done", "e0004": "done"}

    del sdk.fail_down[c1.name]                                    # the retry the error asks for
    assert b.teardown([c1.name]) == [c1.name] and b.clusters() == []


def test_fake_sdk_cluster_being_torn_down_takes_no_job(tmp_path, backend_factory):
    """A slow `sky.down` (held by the fake): meanwhile a submit to that cluster is refused and
    its running job is neither lost nor reported; once the down is done the job ends cancelled."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    [c] = b.provision(1)
    h = b.submit(c.name, _job(tmp_path, "e0001"))
    assert _poll_for(b, [h], 0.2) == []
    sdk.down_gate = threading.Event()
    removed: list[list[str]] = []
    t = threading.Thread(target=lambda: removed.append(b.teardown([c.name])))
    t.start()
    try:
        assert _wait_for(lambda: sdk.downs == [c.name])
        with pytest.raises(Conflict, match="being torn down"):
            b.submit(c.name, _job(tmp_path, "e0002"))
        assert _poll_for(b, [h], 0.3) == []
    finally:
        sdk.down_gate.set()
        t.join(10)
    assert removed == [[c.name]]
    [o] = _poll_until(b, [h], 1)
    assert o.result["status"] == "cancelled" and "torn down" in o.result["error"]
    assert len(sdk.execs) == 1


def test_fake_sdk_cluster_seen_again_after_it_vanished_is_listed(tmp_path, backend_factory):
    """A cluster vanishes (its job is lost); later a cluster of the same name exists again
    (re-created by hand with `sky launch -c`): reconcile and clusters() list it, it takes jobs."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    [c] = b.provision(1)
    h = b.submit(c.name, _job(tmp_path, "e0001"))
    _poll_for(b, [h], 0.2)
    del sdk.clusters[c.name]
    [o] = _poll_until(b, [h], 1)
    assert o.lost and "vanished" in o.reason
    assert b.clusters() == []

    sdk.clusters[c.name] = FakeCluster(c.name, {"H100": 1})     # re-created outside the fleet
    assert [x.name for x in b.reconcile()] == [c.name]
    assert [(x.name, x.state) for x in b.clusters()] == [(c.name, "up")]
    h2 = b.submit(c.name, _job(tmp_path, "e0002"))
    sdk.finish(c.name, "arf-e0002-", {"val_bpb": 0.99})
    [o2] = _poll_until(b, [h2], 1)
    assert o2.result["status"] == "done" and not o2.lost


def test_fake_sdk_a_slow_listing_never_replaces_a_newer_one(tmp_path, backend_factory):
    """The background renew of the cluster view can be slow (`sky status` ~40 s under load). When a
    listing asked later is installed first (provision's own, after the cluster came UP), the slow
    one must not replace it when it returns: its cluster would read as provisioning again and take
    no job until the next renew (30 s). The fake holds one `status` answer (cannot be timed with
    real SkyPilot)."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    [c] = b.provision(1)
    up = b._refresh_clusters()[c.name].state
    sdk.clusters[c.name].status = "INIT"
    gate = sdk.status_gate = threading.Event()
    slow = threading.Thread(target=b._refresh_clusters)       # asks now (INIT), answer held
    slow.start()
    deadline = time.monotonic() + 30
    while sdk.status_gate is not None:
        assert time.monotonic() < deadline, "the slow listing never asked"
        time.sleep(0.01)
    sdk.clusters[c.name].status = "UP"
    assert b._refresh_clusters()[c.name].state == up           # asked later, installed first
    gate.set()
    slow.join(30)
    assert b._refresh_clusters(max_age_s=3600)[c.name].state == up
    assert [(x.name, x.state) for x in b._cluster_view().values()] == [(c.name, up)]

    # a refreshing listing (reconcile's AUTO) is installed even when a records-only one asked after it
    sdk.clusters[c.name].status = "INIT"
    gate = sdk.status_gate = threading.Event()
    auto = threading.Thread(target=b._refresh_clusters, args=("AUTO",))
    auto.start()
    while sdk.status_gate is not None:
        assert time.monotonic() < deadline, "the refreshing listing never asked"
        time.sleep(0.01)
    sdk.clusters[c.name].status = "UP"
    b._refresh_clusters()
    gate.set()
    auto.join(30)
    assert b._refresh_clusters(max_age_s=3600)[c.name].state == "provisioning"   # what the AUTO listing saw


def test_fake_sdk_cluster_in_init_for_a_moment_keeps_its_jobs(tmp_path, backend_factory):
    """SkyPilot shows INIT while it re-checks an abnormal cluster (or during a restart): the queue
    call says "not up". One such reading (here: many rounds of it) must not lose the job; when the
    cluster is UP again the job's result comes back."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    [c] = b.provision(1)
    h = b.submit(c.name, _job(tmp_path, "e0001"))
    _poll_for(b, [h], 0.2)
    sdk.clusters[c.name].status = "INIT"
    refreshes = sdk.status_refreshes
    assert _poll_for(b, [h], 0.5) == []
    assert sdk.status_refreshes > refreshes                     # the backend did look at it
    sdk.clusters[c.name].status = "UP"
    sdk.finish(c.name, "arf-e0001-", {"val_bpb": 0.95})
    [o] = _poll_until(b, [h], 1)
    assert not o.lost and o.result["status"] == "done"


def test_fake_sdk_cluster_stuck_in_init_loses_its_jobs_after_the_grace(tmp_path, backend_factory):
    """A cluster that stays INIT (not up) past unreachable_lost_s: its job is lost (the engine
    requeues it) and cancelled there in case it still runs; the reason says so."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk, unreachable_lost_s=0.3)
    [c] = b.provision(1)
    h = b.submit(c.name, _job(tmp_path, "e0001"))
    _poll_for(b, [h], 0.2)
    sdk.clusters[c.name].status = "INIT"
    t0 = time.time()
    [o] = _poll_until(b, [h], 1)
    assert time.time() - t0 >= 0.3
    assert o.lost and "unreachable for" in o.reason and "INIT" in o.reason
    assert (c.name, [1]) in sdk.cancels


def test_fake_sdk_refresh_bookkeeping_is_dropped_when_jobs_finish(tmp_path, backend_factory):
    """Injected: `tail_logs` fails twice before it works. The per-job retry count is dropped when
    the job finishes, and a cluster's refresh entry when it has no job in flight any more; a
    handle polled again after its outcome was handed out is not taken up (and reported) again."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    [c] = b.provision(1)
    h1 = b.submit(c.name, _job(tmp_path, "e0001"))
    h2 = b.submit(c.name, _job(tmp_path, "e0002"))
    assert _wait_for(lambda: len(sdk.execs) == 2)
    sdk.fail_tail_logs = 2
    sdk.finish(c.name, "arf-e0001-", {"val_bpb": 0.9})
    [o1] = _poll_until(b, [h1, h2], 1)
    assert o1.handle.experiment_id == "e0001" and o1.result["status"] == "done"
    assert sdk.fail_tail_logs == 0
    with b._lock:
        assert [w.extra for w in b._watch.values()] == [{}]
    assert _poll_for(b, [h1], 0.2) == []             # polled again: not rebuilt, not reported twice
    assert [j.handle.experiment_id for j in list(b._jobs.values())] == ["e0002"]
    sdk.finish(c.name, "arf-e0002-", {"val_bpb": 0.9})
    assert len(_poll_until(b, [h2], 1)) == 1
    assert _wait_for(lambda: not b._watch, timeout=2), b._watch


def test_fake_sdk_job_fields_change_under_the_backend_lock(tmp_path, backend_factory, monkeypatch):
    """Every change of a tracked job's fields (by submit, the refresher, the deferred exec, cancel)
    happens with the backend's lock held: the threads never see a half-updated job."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    unlocked: list[str] = []

    def checked_setattr(self, name, value):
        if name in self.__dict__ and not b._lock._is_owned():     # construction aside
            unlocked.append(name)
        object.__setattr__(self, name, value)

    monkeypatch.setattr(TrackedJob, "__setattr__", checked_setattr)
    [c] = b.provision(1)
    h1 = b.submit(c.name, _job(tmp_path, "e0001"))
    b.cancel(h1)                                   # right away: its job id comes from the exec request
    h2 = b.submit(c.name, _job(tmp_path, "e0002"))
    h3 = b.submit(c.name, _job(tmp_path, "e0003"))
    assert _wait_for(lambda: len(sdk.execs) == 3)
    sdk.finish(c.name, "arf-e0002-", {"val_bpb": 0.9})
    sdk.finish(c.name, "arf-e0003-", {"val_bpb": 0.8})
    outcomes = _poll_until(b, [h2, h3], 2)      # (the scheduler polls no handle it cancelled)
    assert sorted(o.handle.experiment_id for o in outcomes) == ["e0002", "e0003"]
    assert sdk.clusters[c.name].jobs[0].status == "CANCELLED"
    assert _wait_for(lambda: not b._jobs, timeout=2)
    assert unlocked == []


def test_fake_sdk_restart_with_a_waiting_job_whose_spec_is_gone(tmp_path, backend_factory):
    """The process stops while e0002 waits behind e0001 (never exec'd: its handle has no request
    id) and e0002's spec file is lost. The next process cannot send it: after request_grace_s it is
    `lost` with a reason that says why (the engine requeues it). e0003, waiting too but with its
    spec, is exec'd by the new process; e0001 finishes normally."""
    sdk = FakeSkyPilotSDK(pick_gpu="H100")
    b = backend_factory(sdk)
    b._ensure_thread = lambda: None          # the first process stops before its refresher runs
    [c] = b.provision(1)
    handles = [b.submit(c.name, _job(tmp_path, e)) for e in ("e0001", "e0002", "e0003")]
    assert len(sdk.execs) == 1
    assert [h.backend_ref["request_id"] is None for h in handles] == [False, True, True]
    b.close()
    spec_path(b.state_dir, handles[1].backend_ref["key"]).unlink()

    b2 = backend_factory(sdk, request_grace_s=0.2)
    again = [JobHandle.from_json(h.to_json()) for h in handles]
    [o] = _poll_until(b2, again, 1)
    assert o.handle.experiment_id == "e0002" and o.lost
    assert "waiting behind the job ahead" in o.reason and "spec file is gone" in o.reason
    assert "requeues" in o.reason
    assert _wait_for(lambda: len(sdk.execs) == 2)
    assert [t.name.split("-")[1] for _, t in sdk.execs] == ["e0001", "e0003"]
    sdk.finish(c.name, "arf-e0001-", {"val_bpb": 0.9})
    sdk.finish(c.name, "arf-e0003-", {"val_bpb": 0.8})
    done = _poll_until(b2, [again[0], again[2]], 2)
    assert sorted((d.handle.experiment_id, d.result["status"]) for d in done) == [("e0001", "done"), ("e0003", "done")]
