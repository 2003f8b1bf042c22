"""The ledger on a real SQLite file: schema/migrations, the life of an attempt, idempotent
recording, threads, results.tsv, and query speed at 10,000 experiments."""

from __future__ import annotations

import csv
import sqlite3
import threading
import time

import pytest

from mcp_server.domain.ids import format_exp_id
from mcp_server.domain.models import Cluster, Decision, Experiment, Metrics, Status, Wave
from mcp_server.domain.results_import import parse_results_tsv
from mcp_server.store.ledger import MIGRATIONS, SCHEMA_VERSION, TSV_COLUMNS, Ledger, LedgerError


def _exp(n: int, **kw) -> Experiment:
    base = dict(id=format_exp_id(n), description=f"exp {n}", commit=f"{n:040x}", code_hash=f"{n % 7:040x}",
                parent_code_hash=f"{0:040x}", harness_hash="h" * 64, overrides={"DEPTH": n % 3}, seed=42,
                created_at=1000.0 + n)
    base.update(kw)
    return Experiment(**base)


@pytest.fixture
def ledger(tmp_path):
    lg = Ledger(tmp_path / "ledger.db")
    yield lg
    lg.close()


def test_schema_versioned_and_wal(ledger, tmp_path):
    assert ledger.schema_version == SCHEMA_VERSION == len(MIGRATIONS)
    mode = sqlite3.connect(tmp_path / "ledger.db").execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    # reopening does not re-run migrations
    again = Ledger(tmp_path / "ledger.db")
    assert again.schema_version == SCHEMA_VERSION
    again.close()


def test_newer_schema_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "ledger.db")
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 5}")
    conn.close()
    with pytest.raises(LedgerError, match="newer"):
        Ledger(tmp_path / "ledger.db")


def test_session_meta_pinned_once(ledger):
    ledger.init_session(harness_hash="a" * 64, profile="cpu", tag="t1")
    meta = ledger.init_session(harness_hash="b" * 64, profile="gpu", tag="t2")
    assert meta["harness_hash"] == "a" * 64 and meta["profile"] == "cpu" and meta["tag"] == "t1"


def test_insert_launch_with_wave_and_events(ledger):
    wave = Wave(id="w0001", description="grid", kind="factorial", design={"axes": {"DEPTH": [1, 2]}})
    exps = [_exp(i, wave_id="w0001") for i in (1, 2, 3)]
    ledger.insert_launch(exps, {"e0001": "control"}, wave)
    got = ledger.get_wave("w0001")
    assert got.experiment_ids == ["e0001", "e0002", "e0003"] and got.design == {"axes": {"DEPTH": [1, 2]}}
    assert ledger.kind_of("e0001") == "control" and ledger.kind_of("e0002") == "single"
    e = ledger.get("e0002")
    assert e.status == Status.queued and e.overrides == {"DEPTH": 2} and e.commit == f"{2:040x}"
    assert [ev["kind"] for ev in ledger.events("e0002")] == ["queued"]


def test_insert_is_atomic(ledger):
    ledger.insert_launch([_exp(1)])
    with pytest.raises(sqlite3.IntegrityError):
        ledger.insert_launch([_exp(2), _exp(1)])   # e0001 clashes: e0002 must not be written either
    assert ledger.row_counts()["experiments"] == 1


def test_queue_order_priority_then_launch_order(ledger):
    ledger.insert_launch([_exp(1), _exp(2, priority=5), _exp(3), _exp(4, priority=5, gpu_type="H100")])
    assert [r[0] for r in ledger.queued()] == ["e0002", "e0004", "e0001", "e0003"]
    assert ledger.queued()[1][1] == "H100"


def test_attempt_lifecycle_and_idempotent_result(ledger, tmp_path):
    ledger.insert_launch([_exp(1)])
    assert ledger.begin_attempt("e0001", 1, "local-cpu0", "CPU", 1, None, str(tmp_path / "a1"))
    assert not ledger.begin_attempt("e0001", 1, "local-cpu0", "CPU", 1, None, str(tmp_path / "a1"))  # not queued
    ledger.set_handle("e0001", 1, '{"x": 1}', time.time())
    assert ledger.open_attempts()[0]["handle"] == '{"x": 1}'
    m = Metrics(val_bpb=1.25, num_steps=10, peak_vram_mb=2048.0)
    assert ledger.finish_attempt("e0001", 1, Status.done, metrics=m, busy_seconds=3.0)
    # the same result seen again (after a restart, or a cancel racing the finish): nothing recorded twice
    assert not ledger.finish_attempt("e0001", 1, Status.done, metrics=m)
    assert not ledger.finish_attempt("e0001", 1, Status.cancelled)
    assert ledger.lose_attempt("e0001", 1, 3) is None
    e = ledger.get("e0001")
    assert e.status == Status.done and e.metrics.val_bpb == 1.25 and e.ran_on_gpu == "CPU" and e.attempts == 1
    kinds = [ev["kind"] for ev in ledger.events("e0001")]
    assert kinds == ["queued", "submitted", "finished"]
    assert ledger.usage()["gpu_hours"] == pytest.approx(3.0 / 3600)
    assert ledger.open_attempts() == []


def test_lost_requeues_until_max_attempts(ledger, tmp_path):
    ledger.insert_launch([_exp(1)])
    for attempt in (1, 2):
        assert ledger.begin_attempt("e0001", attempt, "c", "CPU", 1, None, str(tmp_path / f"a{attempt}"))
        assert ledger.lose_attempt("e0001", attempt, 3, "vanished") == Status.queued
        assert ledger.get("e0001").status == Status.queued
    assert ledger.begin_attempt("e0001", 3, "c", "CPU", 1, None, str(tmp_path / "a3"))
    assert ledger.lose_attempt("e0001", 3, 3, "vanished") == Status.lost
    e = ledger.get("e0001")
    assert e.status == Status.lost and e.attempts == 3
    kinds = [ev["kind"] for ev in ledger.events("e0001")]
    assert kinds.count("lost") == 3 and kinds.count("requeued") == 2
    assert [a["outcome"] for a in ledger.attempts("e0001")] == ["lost", "lost", "lost"]


def test_cancel_and_decisions(ledger, tmp_path):
    ledger.insert_launch([_exp(1), _exp(2)])
    assert ledger.cancel_queued(["e0001", "e0002"]) == ["e0001", "e0002"]
    assert ledger.cancel_queued(["e0001"]) == []
    assert not ledger.set_decision("e0001", Decision.keep)   # only done experiments
    ledger.insert_launch([_exp(3)])
    ledger.begin_attempt("e0003", 1, "c", "CPU", 1, None, str(tmp_path))
    ledger.finish_attempt("e0003", 1, Status.done, metrics=Metrics(val_bpb=1.0))
    assert ledger.set_decision("e0003", Decision.keep)
    assert ledger.get("e0003").decision == Decision.keep


def test_results_tsv(ledger, tmp_path):
    ledger.insert_launch([_exp(1, description="tab\there\nnewline", wave_id=None),
                          _exp(2, hypothesis="deeper\nhelps"), _exp(3)])
    for n, status in ((1, Status.done), (2, Status.crash)):
        ledger.begin_attempt(format_exp_id(n), 1, f"local-cpu{n}", "CPU", 1, None, str(tmp_path))
        ledger.finish_attempt(format_exp_id(n), 1, status,
                              metrics=Metrics(val_bpb=1.2345678, peak_vram_mb=3072, num_steps=77)
                              if status == Status.done else None)
    ledger.set_decision("e0001", Decision.keep, reason="simpler\tcode,\nsame loss")
    path = ledger.export_tsv(tmp_path / "out" / "results.tsv")
    rows = list(csv.reader(path.open(), delimiter="\t"))
    assert rows[0] == TSV_COLUMNS
    assert rows[0][:5] == ["commit", "val_bpb", "memory_gb", "status", "description"]
    assert len(rows) == 3  # the queued e0003 is not a result yet
    r1 = dict(zip(TSV_COLUMNS, rows[1], strict=False))
    assert r1 == {"commit": f"{1:040x}"[:7], "val_bpb": "1.234568", "memory_gb": "3.0", "status": "keep",
                  "description": "tab here newline", "id": "e0001", "wave": "", "gpu": "CPU",
                  "cluster": "local-cpu1", "seed": "42", "steps": "77", "decision": "keep",
                  "hypothesis": "", "reason": "simpler code, same loss"}
    r2 = dict(zip(TSV_COLUMNS, rows[2], strict=False))
    assert r2["hypothesis"] == "deeper helps" and r2["reason"] == ""
    assert (r2["val_bpb"], r2["memory_gb"], r2["status"], r2["decision"]) == ("0.000000", "0.0", "crash", "")


def test_clusters_upsert_and_gone(ledger):
    ledger.upsert_clusters([Cluster(name="a", backend="local", gpu_type="CPU", state="up"),
                            Cluster(name="b", backend="local", gpu_type="CPU", state="up")])
    ledger.upsert_clusters([Cluster(name="a", backend="local", gpu_type="CPU", state="up")], mark_missing_gone=True)
    assert [c.name for c in ledger.clusters()] == ["a"]
    assert {c.name: c.state for c in ledger.clusters(include_gone=True)} == {"a": "up", "b": "gone"}


def test_threads_record_each_result_once(ledger, tmp_path):
    """8 threads race to record the same 50 results: each is recorded exactly once."""
    ledger.insert_launch([_exp(i) for i in range(1, 51)])
    for i in range(1, 51):
        ledger.begin_attempt(format_exp_id(i), 1, "c", "CPU", 1, None, str(tmp_path))
    wins: list[str] = []
    lock = threading.Lock()

    def worker():
        for i in range(1, 51):
            if ledger.finish_attempt(format_exp_id(i), 1, Status.done, metrics=Metrics(val_bpb=1.0)):
                with lock:
                    wins.append(format_exp_id(i))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(wins) == [format_exp_id(i) for i in range(1, 51)]
    finished = [ev for ev in ledger.events(limit=10_000) if ev["kind"] == "finished"]
    assert len(finished) == 50


def test_queue_and_list_queries_use_their_indexes_at_10k(ledger, tmp_path):
    """The queue read and a filtered list page are answered from an index, not by scanning and
    sorting 10,000 rows (their times are measured by benchmarks/scheduler_utilization.py)."""
    exps = [_exp(i, status=Status.queued) for i in range(1, 10_001)]
    ledger.insert_launch(exps)
    with ledger.tx() as c:
        c.execute("UPDATE experiments SET status='done', val_bpb=1.0 + (seq % 97) / 1000.0, ran_on_gpu='CPU' "
                  "WHERE seq % 10 != 0")
    page, total = ledger.list_experiments(status="done", offset=5000, limit=50)
    done_seqs = [s for s in range(1, 10_001) if s % 10]
    assert total == 9000 and len(page) == 50 and page[0].id == format_exp_id(done_seqs[5000])
    q = ledger.queued()
    assert len(q) == 1000 and [r[0] for r in q[:2]] == ["e0010", "e0020"]

    def plan(sql: str) -> str:
        with ledger.tx() as c:
            return " | ".join(str(r[-1]) for r in c.execute("EXPLAIN QUERY PLAN " + sql).fetchall())

    queue_plan = plan("SELECT id, gpu_type, priority FROM experiments WHERE status='queued' "
                      "ORDER BY priority DESC, seq")
    assert "experiments_queue" in queue_plan and "TEMP B-TREE" not in queue_plan, queue_plan
    count_plan = plan("SELECT COUNT(*) FROM experiments WHERE status='done'")
    assert count_plan.startswith("SEARCH experiments USING COVERING INDEX"), count_plan
    assert format_exp_id(10_000) == "e10000" and ledger.max_experiment_seq() == 10_000


def test_rows_load_as_valid_models(ledger, tmp_path):
    """The fast row -> model path builds exactly what pydantic validation would."""
    ledger.insert_launch([_exp(1, wave_id=None, overrides={"A": [1, 2.5, "x"], "B": None})])
    ledger.begin_attempt("e0001", 1, "c", "H100", 1, 2.5, str(tmp_path))
    ledger.finish_attempt("e0001", 1, Status.done, metrics=Metrics(val_bpb=0.99, num_steps=953, device="cuda"))
    ledger.set_decision("e0001", Decision.keep)
    e = ledger.get("e0001")
    again = Experiment.model_validate(e.model_dump())
    assert again == e and again.model_dump() == e.model_dump()
    assert e.model_dump(mode="json")["status"] == "done" and e.model_fields_set == set(Experiment.model_fields)


def test_connections_of_ended_threads_are_closed(ledger):
    """Worker threads come and go (the MCP layer's pool): their connections do not pile up."""
    for _ in range(30):
        t = threading.Thread(target=lambda: ledger.row_counts())
        t.start()
        t.join()
    ledger.row_counts()
    assert len(ledger._all_conns) <= 2


def test_usage_splits_closed_and_open_attempts_per_gpu_type_with_cost(ledger, tmp_path):
    ledger.insert_launch([_exp(1), _exp(2), _exp(3), _exp(4)])
    ledger.begin_attempt("e0001", 1, "c1", "H100", 2, 3.0, str(tmp_path / "1"))       # 2 GPUs at $3/GPU-h
    ledger.begin_attempt("e0002", 1, "c2", "H200", 1, 5.0, str(tmp_path / "2"))
    ledger.begin_attempt("e0003", 1, "c3", "H200", 1, None, str(tmp_path / "3"))      # own hardware: no price
    ledger.begin_attempt("e0004", 1, "c4", "H100", 1, 2.0, str(tmp_path / "4"))       # stays open
    ledger.finish_attempt("e0001", 1, Status.done, metrics=Metrics(val_bpb=1.0), busy_seconds=1800.0)
    ledger.finish_attempt("e0002", 1, Status.crash, error="boom", busy_seconds=3600.0)
    ledger.finish_attempt("e0003", 1, Status.done, metrics=Metrics(val_bpb=1.1), busy_seconds=360.0)
    u = ledger.usage()
    assert (u["attempts_closed"], u["attempts_open"]) == (3, 1)
    assert u["gpu_hours"] == pytest.approx(2 * 0.5 + 1.0 + 0.1)
    assert u["cost_usd"] == pytest.approx(2 * 0.5 * 3.0 + 1.0 * 5.0)
    assert u["gpu_hours_by_type"] == pytest.approx({"H100": 1.0, "H200": 1.1})
    assert u["gpu_hours_in_flight"] >= 0 and u["cost_usd_in_flight"] == pytest.approx(u["gpu_hours_in_flight"] * 2.0)


# -- the change hook: whoever writes, the engine's experiment cache follows ----------------------

#: every write method of the Ledger, called directly (no engine), each changing something
def _every_write(ledger: Ledger, tmp_path) -> list[tuple[str, object]]:
    run = str(tmp_path / "runs")
    wave = Wave(id="w0001", description="grid", kind="factorial", design={"axes": {"DEPTH": [1, 2]}})
    return [
        ("set_meta", lambda: ledger.set_meta("note", "x")),
        ("init_session", lambda: ledger.init_session(harness_hash="h" * 64, profile="cpu", tag="t")),
        ("upsert_clusters", lambda: ledger.upsert_clusters([Cluster(name="c", backend="local", gpu_type="CPU",
                                                                    state="up")])),
        ("set_cluster_state", lambda: ledger.set_cluster_state(["c"], "gone")),
        ("insert_launch", lambda: ledger.insert_launch([_exp(i, wave_id="w0001") for i in (1, 2, 3, 4, 5)],
                                                       {"e0001": "control"}, wave)),
        ("begin_attempt", lambda: ledger.begin_attempt("e0001", 1, "c", "CPU", 1, None, run)),
        ("set_handle", lambda: ledger.set_handle("e0001", 1, '{"x": 1}', time.time())),
        ("finish_attempt", lambda: ledger.finish_attempt("e0001", 1, Status.done, started_at=time.time() - 2,
                                                         metrics=Metrics(val_bpb=1.0, num_steps=10))),
        ("set_decision", lambda: ledger.set_decision("e0001", Decision.keep)),
        ("begin_attempt (queued ahead)", lambda: ledger.begin_attempt("e0002", 1, "c", "CPU", 1, None, run,
                                                                      waiting=True)),
        ("mark_started", lambda: ledger.mark_started("e0002", 1, time.time())),
        ("lose_attempt (requeued)", lambda: ledger.lose_attempt("e0002", 1, 2, "vanished")),
        ("begin_attempt (again)", lambda: ledger.begin_attempt("e0002", 2, "c", "CPU", 1, None, run)),
        ("lose_attempt (lost)", lambda: ledger.lose_attempt("e0002", 2, 2, "vanished")),
        ("cancel_queued", lambda: ledger.cancel_queued(["e0003"], "no longer wanted")),
        ("add_event", lambda: ledger.add_event("e0004", "note", "hello")),
        ("begin_attempt (crash)", lambda: ledger.begin_attempt("e0005", 1, "c", "H100", 1, 2.0, run)),
        ("finish_attempt (crash)", lambda: ledger.finish_attempt("e0005", 1, Status.crash, error="boom")),
        ("import_history", lambda: ledger.import_history(
            parse_results_tsv("commit\tval_bpb\tmemory_gb\tstatus\tdescription\nabc1234\t0.99\t1.0\tkeep\told\n")[1],
            "val_bpb", "H100", lambda _c: None)),
    ]


def test_every_ledger_write_updates_the_experiment_cache(ledger, tmp_path):
    """Each write method of the ledger, called directly (not through the engine): afterwards the
    experiment cache (loaded before) and its analysis index equal a fresh load from the ledger.
    Fails if a write path does not reach the change hook. Also fails when a new write method is
    added to the Ledger without being exercised here."""
    import inspect

    from mcp_server.domain import analysis
    from mcp_server.engine.experiment_cache import ExperimentCache

    cache = ExperimentCache(ledger)
    assert cache.all() == []                               # loaded (empty): from now on it only follows
    heard: list[list[str]] = []
    ledger.subscribe(heard.append)
    writes = _every_write(ledger, tmp_path)
    writers = {name for name, fn in inspect.getmembers(Ledger, inspect.isfunction)
               if not name.startswith("_") and "self.tx()" in inspect.getsource(fn)}
    assert writers <= {what.split(" (")[0] for what, _ in writes}, "a write method is not exercised here"
    for what, write in writes:
        before = len(heard)
        write()
        fresh = ledger.all_experiments()
        assert [e.model_dump() for e in cache.all()] == [e.model_dump() for e in fresh], what
        with cache.indexed() as idx:
            assert idx.leaderboard().model_dump() == analysis.leaderboard(fresh).model_dump(), what
            assert ([v.model_dump() for v in idx.verdicts(fresh)]
                    == [v.model_dump() for v in analysis.verdicts(fresh, fresh)]), what
        touches_experiments = what.split(" (")[0] not in {"set_meta", "init_session", "upsert_clusters",
                                                          "set_cluster_state", "add_event"}
        assert (len(heard) > before) == touches_experiments, what
    assert {e.status for e in cache.all()} == {Status.done, Status.lost, Status.cancelled, Status.queued,
                                                Status.crash}


def test_change_hook_announces_committed_writes_only(ledger, tmp_path):
    heard: list[list[str]] = []
    unsubscribe = ledger.subscribe(heard.append)
    ledger.insert_launch([_exp(1), _exp(2)])
    assert heard == [["e0001", "e0002"]]
    with pytest.raises(sqlite3.IntegrityError):
        ledger.insert_launch([_exp(3), _exp(1)])           # rolled back: nothing to announce
    assert not ledger.begin_attempt("e0001", 2, "c", "CPU", 1, None, str(tmp_path))   # changed nothing
    with ledger.tx() as c:                                 # any write in a transaction, not only the methods
        c.execute("UPDATE experiments SET priority=3 WHERE id='e0002'")
    assert heard == [["e0001", "e0002"], ["e0002"]]

    def broken(ids: list[str]) -> None:
        raise RuntimeError("listener bug")
    ledger.subscribe(broken)                               # a failing listener does not fail the write
    assert ledger.cancel_queued(["e0001"]) == ["e0001"]
    assert heard[-1] == ["e0001"]
    unsubscribe()
    ledger.cancel_queued(["e0002"])
    assert heard[-1] == ["e0001"]
    # a connection opened later (another thread) announces its writes too
    t = threading.Thread(target=lambda: ledger.insert_launch([_exp(4)]))
    ledger.subscribe(heard.append)
    t.start()
    t.join()
    assert heard[-1] == ["e0004"]


def test_a_version_2_ledger_gains_the_reason_columns(tmp_path):
    """Migration 3 on a ledger written before it: its experiments read with no hypothesis/reason."""
    import sqlite3
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    conn.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
    conn.execute("INSERT INTO experiments(seq, id, description, status, created_at) VALUES(1, 'e0001', 'old', "
                 "'done', 1.0)")
    conn.commit()
    conn.close()
    led = Ledger(path)
    try:
        e = led.get("e0001")
        assert e is not None and e.hypothesis is None and e.reason is None and e.time_budget_s is None
        assert led.set_decision("e0001", Decision.keep, reason="on record")
        assert led.get("e0001").reason == "on record"
        assert led._conn().execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        led.close()


def test_a_reader_refuses_an_older_ledger_and_changes_nothing(tmp_path):
    """`migrate=False` (the CLI's status/report/dashboard, beside a server that may be running an
    older version) refuses an older schema with what to do, and leaves the file as it was; the
    server's own open then upgrades it. The CLI says the same and exits 1."""
    import sqlite3
    import subprocess
    import sys

    from mcp_server.domain import paths
    ws = tmp_path / "ws"
    path = paths.ledger_path(ws)
    path.parent.mkdir(parents=True)
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")              # as every version of the server writes it
    conn.executescript(MIGRATIONS[0] + MIGRATIONS[1] + "PRAGMA user_version = 2;")
    conn.execute("INSERT INTO experiments(seq, id, description, status, created_at) VALUES(1, 'e0001', 'old', "
                 "'done', 1.0)")
    conn.commit()
    conn.close()
    before = path.read_bytes()
    with pytest.raises(LedgerError, match=r"schema version 2, older than .*serve"):
        Ledger(path, migrate=False)
    for cmd in ("status", "report"):
        out = subprocess.run([sys.executable, "-m", "mcp_server.cli", cmd, "--workspace", str(ws)],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 1 and "schema version 2" in out.stderr and "serve" in out.stderr, out.stderr
    assert path.read_bytes() == before
    led = Ledger(path)
    try:
        assert led.schema_version == SCHEMA_VERSION and led.get("e0001").description == "old"
    finally:
        led.close()
    reader = Ledger(path, migrate=False)            # an up-to-date ledger opens for reading
    try:
        assert reader.get("e0001") is not None
    finally:
        reader.close()
