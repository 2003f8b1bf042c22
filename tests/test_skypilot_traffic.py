"""How much the SkyPilot backend asks of SkyPilot's API server: traffic grows with finished
experiments, not with clusters x time (issue 15). Against the FAKE SDK of
test_skypilot_backend_fake.py (no cluster can run 128 GPUs here), counting the calls it gets:

- a cluster's queue is not read while none of its jobs can have ended (the runner's budget is
  known at submit); the job queued behind starts from the head's end;
- a job still running past its expected end is read again after a growing back-off that is never
  shorter than the API server's own recent latency;
- exec requests are asked about only where a cluster waits on them, in one batched call;
- a slow API server (a queue read or `sky status` that does not return) holds neither dispatch
  to other clusters nor the cluster listing, and the reads in flight stay bounded.

Behaviour, not timing: where a test waits, it waits for a condition, and the assertions hold on a
slow machine as well (a read "too early" is one made before the budget has passed, by the clock).
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

from test_skypilot_backend_fake import FakeSkyPilotSDK, _config, _job, _poll_for, _poll_until, _wait_for

from mcp_server.backends.base import JobHandle, JobSpec
from mcp_server.backends.skypilot import SkyPilotBackend
from mcp_server.backends.skypilot.jobs import TrackedJob, budget_of

PLACEHOLDER_SDK = SimpleNamespace(exceptions=SimpleNamespace(ClusterDoesNotExist=LookupError,
                                                              ClusterNotUpError=RuntimeError))


class CountingSDK(FakeSkyPilotSDK):
    """The fake SDK, counting calls by kind; a queue read or a status can be held (a slow server)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.calls: dict[str, list[tuple[float, tuple]]] = {}
        self.hold_queue: dict[str, threading.Event] = {}     # cluster -> released when set
        self.hold_status: threading.Event | None = None
        self.queue_in_flight = 0
        self.peak_queue_in_flight = 0
        self._count_lock = threading.Lock()

    def _note(self, kind: str, *args) -> None:
        with self._count_lock:
            self.calls.setdefault(kind, []).append((time.time(), args))

    def n(self, kind: str) -> int:
        with self._count_lock:
            return len(self.calls.get(kind, []))

    def queue(self, cluster_name: str, skip_finished: bool = False) -> str:
        self._note("queue", cluster_name)
        gate = self.hold_queue.get(cluster_name)
        if gate is not None:
            with self._count_lock:
                self.queue_in_flight += 1
                self.peak_queue_in_flight = max(self.peak_queue_in_flight, self.queue_in_flight)
            try:
                gate.wait(30)
            finally:
                with self._count_lock:
                    self.queue_in_flight -= 1
        return super().queue(cluster_name, skip_finished)

    def status(self, cluster_names=None, refresh=None) -> str:
        self._note("status", cluster_names)
        if self.hold_status is not None:
            self.hold_status.wait(30)
        return super().status(cluster_names, refresh)

    def api_status(self, rids: list[str]) -> list:
        self._note("api_status", tuple(rids))
        return super().api_status(rids)

    def exec(self, task, cluster_name: str) -> str:
        self._note("exec", cluster_name)
        return super().exec(task, cluster_name)

    def tail_logs(self, cluster_name: str, job_id: int, follow: bool = False, output_stream=None) -> int:
        self._note("tail_logs", cluster_name, job_id)
        return super().tail_logs(cluster_name, job_id, follow=follow, output_stream=output_stream)


def _budget_job(tmp_path, eid: str, budget: float, timeout: float = 720.0) -> JobSpec:
    j = _job(tmp_path, eid)
    j.env = {"AUTORESEARCH_TIME_BUDGET": repr(budget)}
    j.timeout_s = timeout
    return j


def _make(tmp_path, sdk, made: list, **kw) -> SkyPilotBackend:
    b = SkyPilotBackend(_config(tmp_path), sdk=sdk, refresh_interval_s=kw.pop("refresh_interval_s", 0.01), **kw)
    made.append(b)
    return b


def test_budget_of_reads_the_runners_budget_and_ignores_nonsense(tmp_path):
    j = _budget_job(tmp_path, "e0001", 300.0, timeout=720.0)
    assert budget_of(j) == 300.0
    j.env = {}
    assert budget_of(j) == 0.0                       # unknown: read at once, then back off
    j.env = {"AUTORESEARCH_TIME_BUDGET": "soon"}
    assert budget_of(j) == 0.0
    j.env = {"AUTORESEARCH_TIME_BUDGET": "900"}      # not below the hard timeout: not a bound
    assert budget_of(j) == 0.0


def test_no_queue_read_before_a_job_can_have_ended_then_one_read_finds_it(tmp_path):
    """One job with a 0.6 s budget: while it cannot have ended its cluster's queue is not read
    (however often the engine polls); once it has ended one read finds it and its log is read
    once: exec + queue + logs, no read per refresh interval."""
    sdk = CountingSDK(pick_gpu="H100")
    made: list = []
    try:
        b = _make(tmp_path, sdk, made)
        [c] = b.provision(1)
        t_submit = time.time()
        h = b.submit(c.name, _budget_job(tmp_path, "e0001", 0.6))
        assert _poll_for(b, [h], 0.3) == []
        reads = sdk.calls.get("queue", [])
        assert all(t >= t_submit + 0.6 for t, _ in reads), [t - t_submit for t, _ in reads]
        sdk.finish(c.name, "arf-e0001-", {"val_bpb": 0.99})
        [o] = _poll_until(b, [h], 1, timeout=10)
        assert o.result["status"] == "done"
        assert sdk.n("exec") == 1 and sdk.n("tail_logs") == 1
        assert 1 <= sdk.n("queue") <= 4, sdk.n("queue")      # not one per refresh interval (~60)
        assert all(t >= t_submit + 0.6 for t, _ in sdk.calls["queue"])
        # the head job's exec request was asked about (the cluster waited on it), in one call
        assert sdk.n("api_status") <= 2
    finally:
        for x in made:
            x.close()


def _tracked(b: SkyPilotBackend, tmp_path, eid: str, cluster: str, *, submitted: float, exec_at: float,
             budget: float, timeout: float = 720.0) -> TrackedJob:
    handle = JobHandle(experiment_id=eid, attempt=1, cluster=cluster, run_dir=str(tmp_path / eid),
                       backend_ref={"job_name": f"arf-{eid}-a1-x", "timeout_s": timeout}, submitted_at=submitted)
    job = TrackedJob(handle=handle, cluster=cluster, name=f"arf-{eid}-a1-x", request_id=f"r-{eid}",
                     submitted_at=submitted, min_run_s=budget, basis_at=exec_at, exec_at=exec_at,
                     check_at=exec_at + budget)
    b._jobs[job.key] = job
    return job


def _rec(job: TrackedJob, status: str, end_at: float | None = None):
    return SimpleNamespace(job_id=1, job_name=job.name, status=SimpleNamespace(value=status), end_at=end_at)


def test_polling_rule_head_then_the_job_queued_behind_it(tmp_path):
    """The rule itself, on the backend's bookkeeping (no thread, no SDK): the head job is due at
    its basis + budget; the job queued behind it is not due on its own; when the head is seen
    ended, the next one's basis is the head's end (from the record) and it is due a budget later;
    a cluster with nothing that can have ended is not due."""
    b = SkyPilotBackend(_config(tmp_path), sdk=PLACEHOLDER_SDK)
    try:
        t0 = time.time()
        a = _tracked(b, tmp_path, "e0001", "cl-01", submitted=t0 - 50, exec_at=t0 - 50, budget=300)
        nxt = _tracked(b, tmp_path, "e0002", "cl-01", submitted=t0 - 40, exec_at=t0 - 40, budget=300)
        jobs = [a, nxt]
        # a read now sees both running: the head is due at its basis + budget, the other never alone
        b._schedule_reads(jobs, {a.name: _rec(a, "RUNNING"), nxt.name: _rec(nxt, "RUNNING")}, t0, [])
        assert a.check_at == t0 - 50 + 300 and a.checks == 0
        assert nxt.check_at == float("inf")
        assert b._cluster_due("cl-01", jobs) == t0 + 250
        # the head ended at t0 + 260 (its record says): the next one started then
        a.outcome = None
        b._schedule_reads(jobs, {a.name: _rec(a, "SUCCEEDED", end_at=t0 - 5), nxt.name: _rec(nxt, "RUNNING")},
                          t0, [(a, _rec(a, "SUCCEEDED", end_at=t0 - 5))])
        assert nxt.basis_at == t0 - 5
        assert nxt.check_at == t0 - 5 + 300
        assert list(b._run_seen) == [45.0]          # the head ran basis .. end = 45 s
    finally:
        b.close()


def test_running_past_its_expected_end_backs_off_and_never_below_the_servers_latency(tmp_path):
    """Still RUNNING when it could have ended: read again after refresh_interval_s x 2^n, capped
    at max_poll_s -- but never sooner than the API server's recent queue latency (a slow server
    is asked less often, not more)."""
    b = SkyPilotBackend(_config(tmp_path), sdk=PLACEHOLDER_SDK, refresh_interval_s=1.0, max_poll_s=30.0)
    try:
        t0 = time.time()
        a = _tracked(b, tmp_path, "e0001", "cl-01", submitted=t0 - 400, exec_at=t0 - 400, budget=300)
        waits = []
        for _ in range(7):
            before = time.time()
            b._schedule_reads([a], {a.name: _rec(a, "RUNNING")}, before, [])
            waits.append(a.check_at - before)
        assert [round(w) for w in waits] == [2, 4, 8, 16, 30, 30, 30]
        assert a.checks == 7
        for _ in range(5):
            b._note_latency("queue_s", 40.0)         # the API server answers queue reads in 40 s now
        before = time.time()
        b._schedule_reads([a], {a.name: _rec(a, "RUNNING")}, before, [])
        assert a.check_at - before >= 39.0
    finally:
        b.close()


def test_failed_reads_back_off_and_the_job_is_kept(tmp_path):
    """A queue read that fails (API server error) is retried after a growing back-off, not every
    refresh interval; the job is kept (not lost before unreachable_lost_s)."""
    sdk = CountingSDK(pick_gpu="H100")
    made: list = []
    try:
        b = _make(tmp_path, sdk, made, refresh_interval_s=0.02, max_poll_s=0.32, unreachable_lost_s=60)
        [c] = b.provision(1)
        h = b.submit(c.name, _job(tmp_path, "e0001"))          # no budget: read at once
        assert _wait_for(lambda: sdk.n("queue") >= 1)
        real_queue = sdk.queue
        sdk.queue = lambda cluster_name, skip_finished=False: (sdk._note("queue", cluster_name), 1 / 0)[1]
        n0 = sdk.n("queue")
        assert _poll_for(b, [h], 1.0) == []
        n_failing = sdk.n("queue") - n0
        # 1 s of failures at refresh 0.02 s would be ~50 reads without a back-off; with it <= ~8
        assert 1 <= n_failing <= 10, n_failing
        times = [t for t, _ in sdk.calls["queue"][n0:]]
        gaps = [b2 - a2 for a2, b2 in zip(times, times[1:], strict=False)]
        assert gaps == sorted(gaps) or max(gaps) >= 0.15, gaps   # growing intervals
        sdk.queue = real_queue
        sdk.finish(c.name, "arf-e0001-", {"val_bpb": 0.9})
        [o] = _poll_until(b, [h], 1, timeout=10)
        assert o.result["status"] == "done" and not o.lost
    finally:
        for x in made:
            x.close()


def test_slow_api_server_stops_neither_dispatch_elsewhere_nor_the_cluster_listing(tmp_path):
    """Cluster 1's queue read hangs (a saturated API server). Meanwhile a submit to cluster 2 is
    exec'd and its job's result comes back; `clusters()` answers from the cached view while a
    `sky status` hangs too; and no more than max_reads_in_flight reads are out at once."""
    sdk = CountingSDK(pick_gpu="H100")
    made: list = []
    try:
        b = _make(tmp_path, sdk, made, max_workers=2, cluster_cache_s=0.05)
        c1, c2, c3 = b.provision(3)
        for c in (c1, c3):
            sdk.hold_queue[c.name] = threading.Event()
        h1 = b.submit(c1.name, _job(tmp_path, "e0001"))
        h3 = b.submit(c3.name, _job(tmp_path, "e0003"))
        assert _wait_for(lambda: sdk.queue_in_flight == 2)      # both reads hang, the pool is full
        sdk.hold_status = threading.Event()
        time.sleep(0.06)                                         # the view is stale now
        listed: list = []
        t = threading.Thread(target=lambda: listed.append([x.name for x in b.clusters()]))
        t.start()
        t.join(5)
        assert listed == [sorted([c1.name, c2.name, c3.name])], "clusters() waited on a hanging sky status"
        h2 = b.submit(c2.name, _job(tmp_path, "e0002"))          # cached view: no status needed
        assert _wait_for(lambda: sdk.n("exec") == 3)
        assert sdk.peak_queue_in_flight == 2                     # bounded: max_workers reads at once
        sdk.hold_status.set()
        sdk.finish(c2.name, "arf-e0002-", {"val_bpb": 0.95})
        # c2's read waits for a free read slot: free one by releasing c3's hanging read
        sdk.hold_queue[c3.name].set()
        done = _poll_until(b, [h1, h2, h3], 1, timeout=10)
        assert [o.handle.experiment_id for o in done] == ["e0002"]
        assert not done[0].lost
    finally:
        for ev in sdk.hold_queue.values():
            ev.set()
        if sdk.hold_status is not None:
            sdk.hold_status.set()
        for x in made:
            x.close()


def test_exec_requests_asked_about_only_where_a_cluster_waits_on_them(tmp_path):
    """Two clusters, each with a head job and one queued behind it. The heads' exec requests are
    asked about in one batched `api_status` (each cluster waits on its head: a deferred job is
    behind it); once everything is in the queues, with each job exec'd behind a running one, no
    further `api_status` is sent while nothing can have ended."""
    sdk = CountingSDK(pick_gpu="H100")
    made: list = []
    try:
        b = _make(tmp_path, sdk, made)
        c1, c2 = b.provision(2)
        with b._lock:      # the refresher waits until all four are submitted (as if at once)
            hs = [b.submit(c1.name, _budget_job(tmp_path, "e0001", 3.0)),
                  b.submit(c2.name, _budget_job(tmp_path, "e0002", 3.0)),
                  b.submit(c1.name, _budget_job(tmp_path, "e0003", 3.0)),
                  b.submit(c2.name, _budget_job(tmp_path, "e0004", 3.0))]
        assert _wait_for(lambda: sdk.n("exec") == 4)
        first = sdk.calls["api_status"][0][1][0]
        assert len(first) == 2                                   # both heads in one call
        n = sdk.n("api_status")
        assert _poll_for(b, hs, 0.5) == []
        assert sdk.n("api_status") == n                          # nothing waits on a request any more
        assert sdk.n("queue") == 0                               # nothing can have ended (3 s budget)
    finally:
        for x in made:
            x.close()


def test_a_cluster_missing_from_the_listing_is_read_at_once(tmp_path):
    """A cluster vanishes while its job has 300 s of budget left: its queue is not due for
    minutes, but the next (background) cluster listing that no longer shows it makes it read at
    once, and the job is lost (the engine requeues it) without waiting for its budget."""
    sdk = CountingSDK(pick_gpu="H100")
    made: list = []
    try:
        b = _make(tmp_path, sdk, made, cluster_cache_s=0.05)
        c1, c2 = b.provision(2)
        h1 = b.submit(c1.name, _budget_job(tmp_path, "e0001", 300.0))
        h2 = b.submit(c2.name, _budget_job(tmp_path, "e0002", 300.0))
        assert _poll_for(b, [h1, h2], 0.2) == []
        assert sdk.n("queue") == 0
        del sdk.clusters[c1.name]                       # preempted
        out: list = []
        deadline = time.time() + 10
        while not out and time.time() < deadline:
            b.clusters()                                # what the scheduler calls every few seconds
            out += b.poll([h1, h2])
            time.sleep(0.02)
        assert [o.handle.experiment_id for o in out] == ["e0001"]
        assert out[0].lost and "vanished" in out[0].reason
        assert [args for _, args in sdk.calls["queue"]] == [(c1.name,)]   # c2 is not read
    finally:
        for x in made:
            x.close()
