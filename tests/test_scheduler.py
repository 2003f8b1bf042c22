"""Scheduler policy against a SIMULATED backend (an in-memory stand-in, no processes): placement by
GPU type, priority, queue depth, retries of lost attempts, watchdog, cancellation, recovery.

The real runner + LocalBackend path is covered by tests/test_engine.py and tests/test_recovery.py;
this file checks the scheduling rules quickly and deterministically (tick() is driven by hand)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mcp_server.backends.base import Backend, JobHandle, JobOutcome, JobSpec
from mcp_server.domain.ids import format_exp_id
from mcp_server.domain.models import Cluster, Experiment, Status
from mcp_server.scheduling.scheduler import Scheduler
from mcp_server.store.ledger import Ledger


class SimulatedBackend(Backend):
    """SIMULATION: slots and jobs live in memory; the test decides when and how jobs end."""

    name = "simulated"

    def __init__(self, slots: dict[str, str], depth: int = 1) -> None:
        self.slots = slots                       # name -> gpu type
        self.depth = depth
        self.jobs: dict[str, JobHandle] = {}     # exp id -> handle of live jobs
        self.outcomes: dict[str, JobOutcome] = {}
        self.submitted: list[tuple[str, str, int]] = []   # (exp id, slot, attempt)
        self.cancelled: list[str] = []
        self.fail_submit: set[str] = set()

    def clusters(self):
        return [Cluster(name=n, backend=self.name, gpu_type=g, state="up", simulated=True)
                for n, g in self.slots.items()]

    def queue_depth(self, cluster):
        return self.depth

    def provision(self, count, gpu_type=None):
        raise NotImplementedError

    def teardown(self, names=None):
        return []

    def submit(self, cluster, job: JobSpec):
        if cluster in self.fail_submit:
            raise RuntimeError("simulated submit failure")
        h = JobHandle(job.experiment_id, job.attempt, cluster, str(job.run_dir), {"sim": True}, time.time())
        self.jobs[job.experiment_id] = h
        self.submitted.append((job.experiment_id, cluster, job.attempt))
        return h

    def poll(self, handles):
        out = []
        for h in handles:
            o = self.outcomes.get(h.experiment_id)
            if o is not None and o.handle.attempt == h.attempt:
                out.append(JobOutcome(h, result=o.result, lost=o.lost, reason=o.reason))
                self.jobs.pop(h.experiment_id, None)
                del self.outcomes[h.experiment_id]
        return out

    def cancel(self, handle):
        self.cancelled.append(handle.experiment_id)
        self.jobs.pop(handle.experiment_id, None)

    # test helpers
    def finish(self, exp_id, status="done", val_bpb=1.0):
        h = self.jobs[exp_id]
        self.outcomes[exp_id] = JobOutcome(h, result={"status": status, "metrics": {"val_bpb": val_bpb, "num_steps": 5},
                                                      "error": None if status == "done" else "boom",
                                                      "log_tail": "Traceback...\nValueError: boom",
                                                      "started_at": time.time() - 2, "ended_at": time.time()})

    def lose(self, exp_id):
        h = self.jobs[exp_id]
        self.outcomes[exp_id] = JobOutcome(h, lost=True, reason="simulated slot vanished")

    def running_on(self):
        return {eid: h.cluster for eid, h in self.jobs.items()}


def _build_job(exp: Experiment, attempt: int, slot: Cluster, run_dir: Path, staged: bool = False) -> JobSpec:
    run_dir.mkdir(parents=True, exist_ok=True)
    return JobSpec(exp.id, attempt, run_dir, "cpu", 10.0, "0" * 64, exp.seed)


def _queue(ledger: Ledger, n: int, start: int = 1, **kw) -> list[str]:
    exps = [Experiment(id=format_exp_id(start + i), description=f"x{start + i}", commit="c" * 40, **kw)
            for i in range(n)]
    ledger.insert_launch(exps)
    return [e.id for e in exps]


@pytest.fixture
def ledger(tmp_path):
    lg = Ledger(tmp_path / "ledger.db")
    yield lg
    lg.close()


def _sched(ledger, backend, tmp_path, **kw):
    s = Scheduler(ledger, backend, _build_job, tmp_path / "runs", **kw)
    s.refresh_clusters()
    return s


def test_placement_by_gpu_type(ledger, tmp_path):
    be = SimulatedBackend({"s-h100-0": "H100", "s-h100-1": "H100", "s-h200-0": "H200"})
    s = _sched(ledger, be, tmp_path)
    h200 = _queue(ledger, 2, 1, gpu_type="H200")
    anyg = _queue(ledger, 3, 3)
    s.tick()
    on = be.running_on()
    assert on[h200[0]] == "s-h200-0"                   # only the H200 slot takes H200 work
    assert h200[1] not in on                           # ... and waits for it, never an H100
    assert {on[anyg[0]], on[anyg[1]]} == {"s-h100-0", "s-h100-1"} and anyg[2] not in on
    be.finish(h200[0])
    s.tick()
    assert be.running_on()[h200[1]] == "s-h200-0"      # the freed H200 slot goes to queued H200 work first
    e = ledger.get(h200[0])
    assert e.status == Status.done and e.ran_on_gpu == "H200" and e.cluster == "s-h200-0"


def test_priority_then_launch_order(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path)
    low = _queue(ledger, 2, 1)
    high = _queue(ledger, 1, 3, priority=1000)
    s.tick()
    assert list(be.running_on()) == high
    be.finish(high[0])
    s.tick()
    assert list(be.running_on()) == [low[0]]


def test_queue_depth_two_and_max_concurrent(ledger, tmp_path):
    be = SimulatedBackend({"a": "H100", "b": "H100", "c": "H100"}, depth=2)
    s = _sched(ledger, be, tmp_path, max_concurrent=2)
    ids = _queue(ledger, 8)
    s.tick()
    # max_concurrent caps what RUNS: two slots in use (a slot trains one job at a time), each with
    # a job queued ahead that only starts when the one before it ends; slot c stays idle
    assert sorted(be.running_on().values()) == ["a", "a", "b", "b"]
    assert s.queued_ahead() == {ids[2], ids[3]}
    s.max_concurrent = 64
    s.tick()
    on = list(be.running_on().values())
    assert sorted(on) == ["a", "a", "b", "b", "c", "c"]          # two outstanding per slot
    assert s.queued_ahead() == {ids[2], ids[3], ids[5]}
    # idle slots are filled before any job is queued ahead
    assert [slot for _, slot, _ in be.submitted][:2] == ["a", "b"]


def test_queued_ahead_job_is_tracked_until_it_starts(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"}, depth=2)
    s = _sched(ledger, be, tmp_path, hard_timeout_s=100.0, watchdog_margin_s=5.0)
    first, second, third = _queue(ledger, 3)
    s.tick()
    flights = s.in_flight()
    assert set(flights) == {first, second} and s.queued_ahead() == {second}
    assert flights[first].run_from == flights[first].submitted_at      # alone on its slot: runs now
    assert flights[second].run_from is None                            # waits: no run clock yet
    # the watchdog allows the queued job its wait: it is second in line
    assert flights[second].deadline == pytest.approx(flights[second].submitted_at + 2 * 100.0 + 5.0)
    # the ledger records the attempt as dispatched (status running, like SkyPilot's queued-ahead
    # jobs); the real start is the runner's, recorded with the result
    assert ledger.get(second).status == Status.running
    be.finish(first)
    s.tick()
    flights = s.in_flight()
    assert set(flights) == {second, third} and s.queued_ahead() == {third}
    assert flights[second].run_from is not None and flights[second].started_at is None   # estimated
    assert [ev["kind"] for ev in ledger.events(first)] == ["queued", "submitted", "started", "finished"]


class ReportingBackend(SimulatedBackend):
    """SIMULATION: a backend that can tell when a job really started (as LocalBackend does)."""

    def __init__(self, *a, **kw) -> None:
        super().__init__(*a, **kw)
        self.starts: dict[str, float] = {}

    def started_at(self, handle):
        return self.starts.get(handle.experiment_id)


def test_reported_start_sets_the_run_clock_and_the_watchdog(ledger, tmp_path):
    be = ReportingBackend({"a": "CPU"}, depth=2)
    s = _sched(ledger, be, tmp_path, hard_timeout_s=100.0, watchdog_margin_s=5.0)
    first, second = _queue(ledger, 2)
    s.tick()
    assert s.in_flight()[first].started_at is None     # submitted, not started yet ...
    assert set(s.in_flight()) == {first}               # ... so nothing is queued behind it yet
    s.tick()
    assert set(s.in_flight()) == {first}
    be.starts[first] = t = time.time()
    s.tick()
    f = s.in_flight()[first]
    assert f.started_at == f.run_from == t and f.deadline == pytest.approx(t + 105.0)
    assert set(s.in_flight()) == {first, second} and s.queued_ahead() == {second}   # now it is
    be.finish(first)
    s.tick()
    assert s.in_flight()[second].started_at is None and s.queued_ahead() == set()
    be.starts[second] = t2 = time.time()
    s.tick()
    assert s.in_flight()[second].started_at == t2 and s.in_flight()[second].deadline == pytest.approx(t2 + 105.0)


class LeadBackend(ReportingBackend):
    """SIMULATION: a reporting backend that wants jobs queued ahead only near the running one's end."""

    queue_ahead_lead_s = 3.0


def test_a_job_is_queued_ahead_halfway_through_the_run_ahead_or_one_lead_before_its_end(ledger, tmp_path):
    be = LeadBackend({"a": "CPU", "b": "CPU", "c": "CPU"}, depth=2)
    s = _sched(ledger, be, tmp_path, expected_run_s=100.0, poll_interval_s=5.0)
    ids = _queue(ledger, 5)
    s.tick()
    assert set(s.in_flight()) == set(ids[:3])            # one job on each slot
    on = {f.cluster: eid for eid, f in s.in_flight().items()}
    now = time.time()
    be.starts[on["a"]] = now - 10.0                      # 10 s into an expected 100 s run
    be.starts[on["b"]] = now - 51.0                      # past halfway
    be.starts[on["c"]] = now - 49.7                      # halfway in 0.3 s
    s.tick()
    assert s.queued_ahead() == {ids[3]} and s.in_flight()[ids[3]].cluster == "b"   # only behind b
    assert s._next_delay() == pytest.approx(0.3, abs=0.1)   # the tick that queues behind c comes on time
    time.sleep(0.35)
    s.tick()
    assert s.queued_ahead() == {ids[3], ids[4]} and s.in_flight()[ids[4]].cluster == "c"
    assert s._next_delay() == 5.0     # behind a in ~40 s: a poll interval first, as without a lead


def test_a_short_run_leaves_no_time_to_wait_and_a_backend_without_lead_queues_at_the_start(ledger, tmp_path):
    # with a 4 s run and a 3 s lead the job is queued 1 s in (lead before the end, sooner than halfway)
    lead = LeadBackend({"a": "CPU"}, depth=2)
    s = _sched(ledger, lead, tmp_path, expected_run_s=4.0)
    first, second = _queue(ledger, 2)
    s.tick()
    lead.starts[first] = time.time() - 0.8
    s.tick()
    assert set(s.in_flight()) == {first}
    time.sleep(0.25)
    s.tick()
    assert s.queued_ahead() == {second}
    # the run time learnt from finished runs replaces the expected one
    s._durations.extend([40.0, 40.0])
    assert s.run_s() == 40.0


def test_without_a_lead_a_job_is_queued_ahead_as_soon_as_the_one_ahead_started(ledger, tmp_path):
    be = ReportingBackend({"a": "CPU"}, depth=2)
    assert be.queue_ahead_lead_s is None
    s = _sched(ledger, be, tmp_path, expected_run_s=300.0)
    first, second = _queue(ledger, 2)
    s.tick()
    be.starts[first] = time.time() + 5.0      # a remote clock ahead of ours: not compared with it
    s.tick()
    assert s.queued_ahead() == {second}


def test_cancel_the_queued_ahead_job_and_the_running_one(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"}, depth=2)
    s = _sched(ledger, be, tmp_path)
    first, second, third = _queue(ledger, 3)
    s.tick()
    assert s.cancel([second]) == [second]
    assert be.cancelled == [second] and ledger.get(second).status == Status.cancelled
    assert ledger.attempts(second)[0]["busy_seconds"] == 0.0     # it never had the slot
    assert ledger.get(first).status == Status.running
    s.tick()                                           # its place is taken by the next queued one
    assert set(s.in_flight()) == {first, third} and s.queued_ahead() == {third}
    s.cancel([first])
    s.tick()
    assert set(s.in_flight()) == {third} and s.queued_ahead() == set()


def test_lost_is_retried_then_lost(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path, max_attempts=2)
    (eid,) = _queue(ledger, 1)
    s.tick()
    be.lose(eid)
    s.tick()                                           # lost -> requeued -> dispatched again as attempt 2
    assert be.submitted == [(eid, "a", 1), (eid, "a", 2)]
    assert ledger.get(eid).status == Status.running and ledger.get(eid).attempts == 2
    be.lose(eid)
    s.tick()
    e = ledger.get(eid)
    assert e.status == Status.lost and e.attempts == 2 and "vanished" in e.error
    assert [a["run_dir"].endswith(f"a{i}") for i, a in enumerate(ledger.attempts(eid), 1)] == [True, True]


def test_code_failures_are_not_retried(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path)
    (eid,) = _queue(ledger, 1)
    s.tick()
    be.finish(eid, status="crash")
    s.tick()
    e = ledger.get(eid)
    assert e.status == Status.crash and e.attempts == 1 and "ValueError: boom" in e.error
    assert len(be.submitted) == 1


def test_unknown_runner_status_and_missing_bpb_are_crashes(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU", "b": "CPU"})
    s = _sched(ledger, be, tmp_path)
    e1, e2 = _queue(ledger, 2)
    s.tick()
    be.finish(e1, status="weird")
    be.finish(e2, status="done", val_bpb=None)
    s.tick()
    assert ledger.get(e1).status == Status.crash and "unknown status" in ledger.get(e1).error
    assert ledger.get(e2).status == Status.crash and "no val_bpb" in ledger.get(e2).error


def test_watchdog_cancels_unresponsive_job(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path, hard_timeout_s=0.2, watchdog_margin_s=0.1)
    (eid,) = _queue(ledger, 1)
    s.tick()
    time.sleep(0.4)
    s.tick()
    e = ledger.get(eid)
    assert e.status == Status.timeout and "watchdog" in e.error and be.cancelled == [eid]


def test_cancel_queued_and_running(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path)
    run, queued = _queue(ledger, 2)
    s.tick()
    changed = s.cancel([run, queued])
    assert set(changed) == {run, queued}
    assert ledger.get(run).status == Status.cancelled and ledger.get(queued).status == Status.cancelled
    assert be.cancelled == [run]
    be.outcomes[run] = JobOutcome(JobHandle(run, 1, "a", ""), result={"status": "done", "metrics": {"val_bpb": 1.0}})
    s.tick()                                           # a late result of a cancelled attempt is ignored
    assert ledger.get(run).status == Status.cancelled


def test_cancel_of_a_run_that_has_just_ended_keeps_its_result(ledger, tmp_path):
    """The cancel reaches a job that has ended but whose outcome the loop has not polled yet: its
    result is recorded as it ended (a finished experiment is not touched), not thrown away as a
    cancel; the job is not cancelled at the backend, and the id is not reported as cancelled."""
    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path)
    [run] = _queue(ledger, 1)
    s.tick()
    be.finish(run, val_bpb=0.97)
    assert s.cancel([run]) == []
    e = ledger.get(run)
    assert e.status == Status.done and e.metrics.val_bpb == 0.97
    assert be.cancelled == [] and s.in_flight() == {}


def test_cancel_of_a_run_requeued_while_the_cancel_runs_still_cancels_it(ledger, tmp_path, monkeypatch):
    """cancel() first cancels what is queued, then the running ones. If a running one is lost and
    requeued in between (the loop retries a lost attempt), it has no flight any more: it must be
    cancelled as queued, not left to run again. The loss is made to land in that gap on purpose."""
    from mcp_server.scheduling import tracking

    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path, max_attempts=3)
    [run] = _queue(ledger, 1)
    s.tick()
    real_cancel_queued = ledger.cancel_queued
    gap: list[Status] = []

    def cancel_queued_then_lose(ids, reason):
        out = real_cancel_queued(ids, reason)
        if not gap:                                  # the loop's poll, between the two steps of cancel()
            be.lose(run)
            tracking.poll(s)
            gap.append(ledger.get(run).status)
        return out
    monkeypatch.setattr(ledger, "cancel_queued", cancel_queued_then_lose)
    assert s.cancel([run]) == [run]
    assert gap == [Status.queued]                    # it was requeued in the gap
    assert ledger.get(run).status == Status.cancelled
    s.tick()
    assert [x for x in be.submitted if x[0] == run] == [(run, "a", 1)]     # never dispatched again


def test_a_cancel_never_lands_between_the_poll_that_took_an_outcome_and_its_record(ledger, tmp_path):
    """A backend may hand an outcome out once (SkyPilot's does). A cancel of that experiment must
    not run between the loop's poll and the record: it would find the job still in flight, record
    it cancelled, and the result would be dropped. The cancel is started from inside the poll, on
    purpose; it must wait, and the result stands."""
    import threading

    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path)
    [run] = _queue(ledger, 1)
    s.tick()
    be.finish(run, val_bpb=0.95)
    real_poll, cancels = be.poll, []

    def poll_then_cancel(handles):
        out = real_poll(handles)                     # the outcome is handed out here, once
        if out and not cancels:
            t = threading.Thread(target=lambda: cancels.append(s.cancel([run])))
            t.start()
            t.join(0.5)                              # (the old code cancelled here)
        return out
    be.poll = poll_then_cancel
    s.tick()
    deadline = time.monotonic() + 30
    while not cancels:
        assert time.monotonic() < deadline, "the cancel never returned"
        time.sleep(0.01)
    e = ledger.get(run)
    assert e.status == Status.done and e.metrics.val_bpb == 0.95
    assert cancels == [[]] and be.cancelled == []


def test_submit_failure_requeues_and_backs_off(ledger, tmp_path):
    be = SimulatedBackend({"bad": "CPU", "good": "CPU"})
    be.fail_submit = {"bad"}
    s = _sched(ledger, be, tmp_path)
    eid, other, third = _queue(ledger, 3)
    s.tick()      # e1 tries 'bad' (alphabetical tie-break) -> fails -> requeued; 'bad' rests
    assert be.running_on() == {other: "good"}          # the failing slot did not burn e2 and e3 too
    assert ledger.get(third).attempts == 0
    be.finish(other)
    s.tick()
    assert be.running_on() == {eid: "good"}
    kinds = [ev["kind"] for ev in ledger.events(eid)]
    assert "submit_failed" in kinds and "requeued" in kinds


def test_lost_job_is_not_sent_back_to_its_vanished_slot(ledger, tmp_path):
    """A slot dies with its job (a preempted cluster, a scancel'd allocation): the lost experiment is
    requeued and goes to a slot that still exists, even though the slot list was read moments ago
    (cluster_refresh_s is long) -- a second submit to the dead slot would burn another attempt."""
    be = SimulatedBackend({"a": "CPU", "b": "CPU"})
    s = _sched(ledger, be, tmp_path, cluster_refresh_s=3600)
    e1, e2 = _queue(ledger, 2)
    s.tick()
    assert be.running_on() == {e1: "a", e2: "b"}
    be.finish(e2)
    s.tick()                                  # b is free again
    del be.slots["a"]                         # 'a' vanishes, taking e1 with it
    be.lose(e1)
    s.tick()
    assert be.running_on() == {e1: "b"}
    assert [(eid, slot) for eid, slot, _ in be.submitted] == [(e1, "a"), (e2, "b"), (e1, "b")]
    assert [a["outcome"] for a in ledger.attempts(e1)] == ["lost", None]


def test_recover_adopts_open_attempts_once(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU", "b": "CPU"})
    s1 = _sched(ledger, be, tmp_path)
    e1, e2 = _queue(ledger, 2)
    s1.tick()
    # "engine dies": s1 is dropped. e1 finished meanwhile, e2 still runs.
    be.finish(e1)
    s2 = _sched(ledger, be, tmp_path)
    summary = s2.recover()
    assert summary["adopted"] == 2
    assert ledger.get(e1).status == Status.done and ledger.get(e2).status == Status.running
    # s1 coming back to life and seeing the same result records nothing twice
    be.outcomes[e1] = JobOutcome(JobHandle(e1, 1, "a", ""), result={"status": "done", "metrics": {"val_bpb": 9.0}})
    s1.tick()
    assert ledger.get(e1).metrics.val_bpb == 1.0
    assert [ev["kind"] for ev in ledger.events(e1)] == ["queued", "submitted", "started", "finished"]
    be.finish(e2)
    s2.tick()
    assert ledger.get(e2).status == Status.done


def test_recover_attempt_without_handle(ledger, tmp_path):
    """The process died between marking the attempt and submitting: requeued (no result file)."""
    be = SimulatedBackend({"a": "CPU"})
    (eid,) = _queue(ledger, 1)
    ledger.begin_attempt(eid, 1, "a", "CPU", 1, None, str(tmp_path / "runs" / eid / "a1"))
    s = _sched(ledger, be, tmp_path)
    assert s.recover()["requeued"] == 1
    s.tick()
    assert be.submitted == [(eid, "a", 2)]


def test_background_thread_dispatches_on_wake(ledger, tmp_path):
    be = SimulatedBackend({"a": "CPU"})
    s = _sched(ledger, be, tmp_path, poll_interval_s=5.0)
    s.start()
    try:
        time.sleep(0.1)
        (eid,) = _queue(ledger, 1)
        t0 = time.monotonic()
        s.wake()
        while eid not in be.jobs and time.monotonic() - t0 < 2:
            time.sleep(0.005)
        assert eid in be.jobs and time.monotonic() - t0 < 1.0   # not after the 5 s poll interval
    finally:
        s.stop()


class BatchRecordingBackend(SimulatedBackend):
    """SIMULATION: records each submit_many batch as the (exp id, slot) pairs it held."""

    def __init__(self, slots: dict[str, str], depth: int = 1) -> None:
        super().__init__(slots, depth)
        self.batches: list[list[tuple[str, str]]] = []

    def submit_many(self, jobs):
        self.batches.append([(job.experiment_id, cluster) for cluster, job in jobs])
        return super().submit_many(jobs)


def test_dispatch_submits_in_batches_with_one_job_per_slot(ledger, tmp_path, monkeypatch):
    from mcp_server.scheduling import dispatch
    monkeypatch.setattr(dispatch, "DISPATCH_SLICE_S", 60.0)   # one dispatch places them all, however slow the host
    SUBMIT_BATCH = BatchRecordingBackend.max_batch   # the backend's batch size (the default: 16)
    assert SUBMIT_BATCH == 16
    be = BatchRecordingBackend({f"s{i:02d}": "CPU" for i in range(2 * SUBMIT_BATCH + 3)})
    s = _sched(ledger, be, tmp_path)
    ids = _queue(ledger, len(be.slots) + 2)
    s.tick()
    placed = [eid for batch in be.batches for eid, _ in batch]
    assert placed == ids[:len(be.slots)]                       # queue order, every slot filled at once
    assert [len(b) for b in be.batches] == [SUBMIT_BATCH, SUBMIT_BATCH, 3]
    assert all(len({slot for _, slot in b}) == len(b) for b in be.batches)
    assert set(be.running_on().values()) == set(be.slots)
    # a backend that starts a batch in one exchange (the local one) gets every idle slot at once
    wide = BatchRecordingBackend({f"s{i:02d}": "CPU" for i in range(2 * SUBMIT_BATCH + 3)})
    wide.max_batch = 256
    sw = _sched(Ledger(tmp_path / "wide.db"), wide, tmp_path / "wide")
    wide_ids = _queue(sw.ledger, len(wide.slots))
    sw.tick()
    assert [[eid for eid, _ in b] for b in wide.batches] == [wide_ids]
    # ... while jobs queued ahead (behind a running one) still go 16 at a time, between polls
    deep = BatchRecordingBackend({f"s{i:02d}": "CPU" for i in range(2 * SUBMIT_BATCH + 3)}, depth=2)
    deep.max_batch = 256
    sd = _sched(Ledger(tmp_path / "deep.db"), deep, tmp_path / "deep")
    _queue(sd.ledger, 2 * len(deep.slots))
    sd.tick()
    assert [len(b) for b in deep.batches] == [len(deep.slots), SUBMIT_BATCH, SUBMIT_BATCH, 3]
    # a second job for a slot (queued ahead, depth 2) goes in a later batch than the one ahead of it
    be2 = BatchRecordingBackend({"a": "CPU", "b": "CPU"}, depth=2)
    s2 = _sched(Ledger(tmp_path / "two.db"), be2, tmp_path / "two")
    e1, e2, e3, e4 = _queue(s2.ledger, 4)
    s2.tick()
    assert be2.batches == [[(e1, "a"), (e2, "b")], [(e3, "a"), (e4, "b")]]


def test_a_failed_submit_in_a_batch_loses_only_its_own_attempt(ledger, tmp_path):
    be = BatchRecordingBackend({"a": "CPU", "bad": "CPU", "c": "CPU"})
    be.fail_submit = {"bad"}
    s = _sched(ledger, be, tmp_path)
    e1, e2, e3, e4 = _queue(ledger, 4)
    s.tick()
    assert be.batches[0] == [(e1, "a"), (e2, "bad"), (e3, "c")]
    assert be.running_on() == {e1: "a", e3: "c"}
    assert ledger.get(e2).status == Status.queued and ledger.get(e2).attempts == 1   # requeued
    assert "submit_failed" in [ev["kind"] for ev in ledger.events(e2)]
    assert ledger.get(e4).attempts == 0                          # 'bad' rests; nothing else was burnt on it
    assert s.outstanding() == {"a": 1, "c": 1}
