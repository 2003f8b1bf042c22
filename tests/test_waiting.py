"""Waits that survive client timeouts and never wait for the impossible (engine level).

Real engine, git, SQLite, runner and local slots; train.py is a stand-in (SIMULATION: no model)
that waits for a GO file, so a run lasts exactly as long as the test wants."""

from __future__ import annotations

import time

from engine_helpers import WAITING_TRAIN, make_config, until

from mcp_server.domain.models import Status


def test_a_blocking_wait_reports_progress_while_nothing_finishes(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, cpu_slots=1))
    go = tmp_path / "go"
    (ws / "wait.py").write_text(WAITING_TRAIN.format(go=str(go)))
    first = eng.launch_experiment("waits for go", source="wait.py")[0]
    second = eng.launch_experiment("queued behind it", source="wait.py")[0]
    until(lambda: eng.get_experiment(first.id).started_at is not None, "the first run to start")

    seen: list[tuple[float, int, str]] = []
    t0 = time.monotonic()
    res = eng.wait([first.id, second.id], timeout_s=3.2, heartbeat_s=0.5,
                   on_progress=lambda p: seen.append((time.monotonic() - t0, p.done, p.message)))
    assert res.timed_out and set(res.still_running) == {first.id, second.id} and res.blocked == []
    # a heartbeat about every 0.5 s although nothing finished, each saying what is going on
    assert len(seen) >= 4, seen
    gaps = [b[0] - a[0] for a, b in zip([(0.0, 0, "")] + seen, seen, strict=False)]
    assert max(gaps) < 1.5, gaps
    assert all(done == 0 for _, done, _ in seen)
    assert all("0/2 finished" in m and "training" in m for _, _, m in seen), seen
    assert any("next expected to finish" in m and first.id in m for _, _, m in seen), seen

    go.touch()
    res = eng.wait([first.id, second.id], timeout_s=120, heartbeat_s=0.5)
    assert not res.timed_out and {e.status for e in res.finished} == {Status.done}


def test_failed_data_preparation_returns_the_wait_at_once_with_the_fix(tmp_path, engines, monkeypatch):
    monkeypatch.setenv("AUTORESEARCH_DATA", str(tmp_path / "no-such-corpus"))
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, tmp_path / "empty-cache"))
    base = eng.launch_experiment("baseline", replicates=2)
    until(lambda: eng.data.state == "failed", "data preparation to fail")

    t0 = time.monotonic()
    res = eng.wait([e.id for e in base], timeout_s=600)
    assert time.monotonic() - t0 < 5.0
    assert not res.timed_out and res.finished == [] and set(res.still_running) == {e.id for e in base}
    [blocker] = res.blocked
    assert set(blocker.experiment_ids) == {e.id for e in base}
    assert "Data preparation failed" in blocker.reason and "no-such-corpus" in blocker.reason
    assert "prepare.log" in blocker.fix and "restart the server" in blocker.fix
    # nothing is lost: they stay queued, and budget_status says why too
    assert {eng.get_experiment(e.id).status for e in base} == {Status.queued}
    budget = eng.budget_status()
    assert any("no-such-corpus" in n for n in budget.notes)
    assert [set(b.experiment_ids) for b in budget.blocked] == [{e.id for e in base}]


def test_a_wait_reads_only_the_targets_that_have_not_ended(tmp_path, cache, engines, monkeypatch):
    """A wait over many targets looks at them on every change; one that has ended is not read
    again (its status is final), so the cost of a look falls as the targets end."""
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, cpu_slots=1))
    go = tmp_path / "go"
    (ws / "quick.py").write_text(WAITING_TRAIN.format(go=str(tmp_path)))  # (the directory exists)
    (ws / "wait.py").write_text(WAITING_TRAIN.format(go=str(go)))
    quick = eng.launch_experiment("ends at once", source="quick.py")[0]
    slow = eng.launch_experiment("waits for go", source="wait.py")[0]
    until(lambda: eng.get_experiment(quick.id).status == Status.done, "the first run to end")
    until(lambda: eng.get_experiment(slow.id).started_at is not None, "the second run to start")

    looks: list[list[str]] = []
    statuses = eng.ledger.statuses
    monkeypatch.setattr(eng.ledger, "statuses", lambda ids: looks.append(list(ids)) or statuses(ids))
    res = eng.wait([quick.id, slow.id], timeout_s=1.0, heartbeat_s=0.2)
    assert res.timed_out and [e.id for e in res.finished] == [quick.id] and res.still_running == [slow.id]
    # the check before the wait and its first look read every target; every later look, the live one
    full = [ids for ids in looks if quick.id in ids]
    assert full == [[quick.id, slow.id]] * len(full) and len(full) <= 2, looks
    assert len(looks) > len(full) and looks[len(full):] == [[slow.id]] * (len(looks) - len(full)), looks
    go.touch()
    res = eng.wait([quick.id, slow.id], timeout_s=120)
    assert not res.timed_out and [e.status for e in res.finished] == [Status.done, Status.done]


def test_a_wait_that_ends_between_a_commit_and_the_cache_refresh_judges_with_that_result(tmp_path, cache, engines):
    """A wait reads statuses from the ledger, the verdicts from the experiment cache, which the
    writer refreshes just after its COMMIT. When the wait ends on a result in that window (the
    control finished last), the verdicts must still count it (once the candidate came back with
    no reference). The wait is made inside that window on purpose: from the cache refresh itself."""
    from mcp_server.domain.models import Metrics

    eng = engines.make(make_config(tmp_path / "research", cache), start=False)
    control = eng.launch_experiment("baseline")[0].id
    candidate = eng.launch_experiment("higher lr", overrides={"MATRIX_LR": 0.06})[0].id
    eng.leaderboard()                                        # the cache is loaded and followed

    def finish(eid: str, val: float) -> None:
        eng.ledger.begin_attempt(eid, 1, "cpu-0", "CPU", 1, None, str(tmp_path / "runs" / eid))
        eng.ledger.finish_attempt(eid, 1, Status.done,
                                  metrics=Metrics(val_bpb=val, num_steps=100, training_seconds=2.0))

    finish(candidate, 1.10)
    seen = {}

    def wait_in_the_window(ids):
        if control in ids and eng.ledger.get(control).status == Status.done:     # its COMMIT, before its refresh
            seen["verdicts"] = {v.experiment_id: v for v in eng.wait([control, candidate], timeout_s=0).verdicts}
    eng.cache.unsubscribe()                                  # the cache hears of changes after this listener
    eng.ledger.subscribe(wait_in_the_window)
    eng.cache.unsubscribe = eng.ledger.subscribe(eng.cache.refresh)
    finish(control, 1.20)
    v = seen["verdicts"][candidate]
    assert v.reference_id == control and v.verdict != "no_reference", v
