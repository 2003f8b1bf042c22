"""A job queued ahead on its slot (submitted while the job in front of it still runs) is not
reported as training: `waiting_for_slot`, no start time, no in-flight GPU-hours, counted apart in
budget_status and list_clusters -- until it really starts.

The engine test is real: git, SQLite, the runner and one LocalBackend cpu slot; train.py is a
stand-in (SIMULATION: no model) that waits for a GO file, then prints a result in the contract's
format. No timed assertions: everything is polled with generous deadlines."""

from __future__ import annotations

import sqlite3
import time

import pytest
from engine_helpers import WAITING_TRAIN, make_config, until

from mcp_server.domain.ids import format_exp_id
from mcp_server.domain.models import Experiment, Metrics, Status
from mcp_server.store.ledger import MIGRATIONS, SCHEMA_VERSION, Ledger
from mcp_server.surface.tools.common import ExperimentBrief


def _exp(n: int) -> Experiment:
    return Experiment(id=format_exp_id(n), description=f"exp {n}", commit=f"{n:040x}", code_hash=f"{n:040x}",
                      harness_hash="h" * 64, created_at=1000.0 + n)


def test_queued_ahead_job_waits_then_starts_on_one_cpu_slot(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, cpu_slots=1))
    go_a, go_b = tmp_path / "go_a", tmp_path / "go_b"
    (ws / "wait_a.py").write_text(WAITING_TRAIN.format(go=str(go_a)))
    (ws / "wait_b.py").write_text(WAITING_TRAIN.format(go=str(go_b)))
    a = eng.launch_experiment("waits for go_a", source="wait_a.py")[0]
    b = eng.launch_experiment("waits for go_b", source="wait_b.py")[0]

    # a trains; b is submitted behind it on the one slot
    until(lambda: set(eng.scheduler.in_flight()) == {a.id, b.id}, "b to be queued ahead behind a")
    sub_b = eng.ledger.attempts(b.id)[0]["submitted_at"]
    until(lambda: time.time() - sub_b > 0.5, "some time to pass since b's submission")
    ea, eb = eng.get_experiment(a.id), eng.get_experiment(b.id)
    assert ea.status == eb.status == Status.running
    assert not ea.waiting_for_slot and ea.started_at is not None
    assert eb.waiting_for_slot and eb.started_at is None
    # the tools' one-line form (fetch_results, wait_for_experiments) says so too
    assert [ExperimentBrief.of(e).waiting_for_slot for e in (ea, eb)] == [False, True]
    assert eng.ledger.attempts(b.id)[0]["started_at"] is None
    # in-flight GPU-hours: a's alone (b counts nothing while it waits)
    start_a = eng.ledger.attempts(a.id)[0]["started_at"]
    u = eng.ledger.usage()
    assert u["attempts_open"] == 2
    assert u["gpu_hours_in_flight"] * 3600.0 <= time.time() - start_a + 1e-3
    budget = eng.budget_status()
    assert (budget.experiments_running, budget.experiments_waiting_for_slot) == (1, 1)
    assert budget.experiments_live == 2
    [slot] = eng.list_clusters()
    assert slot.running == [a.id] and slot.queued_ahead == [b.id]

    # a ends: b really starts
    go_a.touch()
    until(lambda: eng.get_experiment(a.id).status == Status.done, "a to finish")
    until(lambda: not eng.get_experiment(b.id).waiting_for_slot, "b to start")
    eb = eng.get_experiment(b.id)
    assert eb.status == Status.running and eb.started_at is not None and eb.started_at >= sub_b
    assert eng.ledger.attempts(b.id)[0]["started_at"] == eb.started_at
    budget = eng.budget_status()
    assert (budget.experiments_running, budget.experiments_waiting_for_slot) == (1, 0)
    until(lambda: eng.list_clusters()[0].running == [b.id], "the slot to list b as running")
    assert eng.list_clusters()[0].queued_ahead == []

    go_b.touch()
    res = eng.wait([b.id], timeout_s=180)
    assert [e.status for e in res.finished] == [Status.done]
    assert not res.finished[0].waiting_for_slot
    assert [ev["kind"] for ev in eng.ledger.events(b.id)].count("started") == 1


def test_ledger_waiting_attempt_costs_nothing_until_marked_started(tmp_path):
    lg = Ledger(tmp_path / "ledger.db")
    try:
        lg.insert_launch([_exp(1), _exp(2), _exp(3)])
        assert lg.begin_attempt("e0001", 1, "c1", "H100", 1, 2.0, str(tmp_path / "1"))
        assert lg.begin_attempt("e0002", 1, "c1", "H100", 1, 2.0, str(tmp_path / "2"), waiting=True)
        e2 = lg.get("e0002")
        assert e2.status == Status.running and e2.waiting_for_slot and e2.started_at is None
        assert lg.count_waiting_for_slot() == 1
        u = lg.usage()
        assert u["attempts_open"] == 2
        first = lg.attempts("e0001")[0]["started_at"]
        assert u["gpu_hours_in_flight"] * 3600.0 <= time.time() - first + 1e-3
        # the job in front ends; the waiting one starts (once: a second report changes nothing)
        t = time.time()
        assert lg.finish_attempt("e0001", 1, Status.done, metrics=Metrics(val_bpb=1.0), busy_seconds=10.0)
        assert lg.mark_started("e0002", 1, t)
        assert not lg.mark_started("e0002", 1, t + 5)
        e2 = lg.get("e0002")
        assert not e2.waiting_for_slot and e2.started_at == t and lg.count_waiting_for_slot() == 0
        assert lg.usage()["gpu_hours_in_flight"] > 0
        # the runner's own start, reported with the result, adds no second 'started' event
        assert lg.finish_attempt("e0002", 1, Status.done, metrics=Metrics(val_bpb=1.0), started_at=t + 0.5,
                                 ended_at=t + 20, busy_seconds=19.5)
        assert [ev["kind"] for ev in lg.events("e0002")].count("started") == 1
        # lost while still waiting: no GPU time
        assert lg.begin_attempt("e0003", 1, "c1", "H100", 1, 2.0, str(tmp_path / "3"), waiting=True)
        assert lg.lose_attempt("e0003", 1, 3, "slot vanished") == Status.queued
        assert lg.attempts("e0003")[0]["busy_seconds"] == 0.0 and not lg.get("e0003").waiting_for_slot
    finally:
        lg.close()


def test_ledger_at_previous_version_opens_and_upgrades(tmp_path):
    path = tmp_path / "ledger.db"
    conn = sqlite3.connect(path)
    conn.executescript(f"BEGIN;\n{MIGRATIONS[0]}\nPRAGMA user_version = 1;\nCOMMIT;")
    now = time.time()
    conn.execute("INSERT INTO experiments(seq, id, description, status, attempts, created_at, started_at) "
                 "VALUES(1, 'e0001', 'old run', 'running', 1, ?, ?)", (now - 3600, now - 3600))
    conn.execute("INSERT INTO attempts(experiment_id, attempt, cluster, gpu_type, cost_per_hour, run_dir, "
                 "submitted_at) VALUES('e0001', 1, 'c1', 'H100', 2.0, '/tmp/x', ?)", (now - 3600,))
    conn.commit()
    conn.close()

    lg = Ledger(path)
    try:
        assert lg.schema_version == SCHEMA_VERSION == 4     # 3: metrics_extra, imported (own task); 4: reasons
        e = lg.get("e0001")
        assert e.status == Status.running and not e.waiting_for_slot and e.started_at == pytest.approx(now - 3600)
        assert not e.imported and e.metrics.model_extra == {}
        # an attempt opened before the upgrade counts from its submission, as it did
        assert lg.attempts("e0001")[0]["started_at"] == pytest.approx(now - 3600)
        assert lg.usage()["gpu_hours_in_flight"] == pytest.approx(1.0, abs=0.01)
    finally:
        lg.close()
