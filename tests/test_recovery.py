"""Fault handling with the REAL runner, LocalBackend and train.py (cpu profile, 2 s budget):
a train.py that raises, one that produces NaN, one that hangs past the hard timeout, a tampered
prepare.py, a SIGKILLed runner, and the engine itself SIGKILLed mid-wave and restarted.

Every experiment must end in exactly one terminal status with its log; nothing lost, nothing
recorded twice; no runner or train.py process left alive (checked by PID in /proc)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from engine_helpers import assert_no_strays, assert_one_terminal_each, blocked_on_a_lock, git, job_pids, make_config

from mcp_server.domain.models import Status
from mcp_server.runtime import runner

REPO = Path(__file__).resolve().parent.parent


def test_crash_nan_and_tampered_harness(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache))
    (ws / "crash.py").write_text("import sys\nprint('about to fail', flush=True)\n"
                                 "raise ValueError('deliberate bug in train.py')\n")
    crash = eng.launch_experiment("raises", source="crash.py")[0]
    nan = eng.launch_experiment("absurd learning rates", overrides={
        "EMBEDDING_LR": 1e6, "UNEMBEDDING_LR": 1e6, "MATRIX_LR": 1e6, "SCALAR_LR": 1e6})[0]
    # tamper with the harness, launch, restore: that snapshot ships the tampered prepare.py
    original = (ws / "prepare.py").read_text()
    (ws / "prepare.py").write_text(original + "\nEVAL_TOKENS = 1  # a 'better' metric\n")
    tampered = eng.launch_experiment("with a tampered harness")[0]
    (ws / "prepare.py").write_text(original)
    assert git(ws, "status", "--porcelain", "--untracked-files=no") == ""

    res = eng.wait([crash.id, nan.id, tampered.id], timeout_s=300)
    got = {e.id: e for e in res.finished}
    assert got[crash.id].status == Status.crash
    assert "ValueError: deliberate bug in train.py" in got[crash.id].error   # the log tail comes with it
    assert got[nan.id].status == Status.nan and "nan" in got[nan.id].error.lower()
    assert got[tampered.id].status == Status.rejected and "prepare.py was modified" in got[tampered.id].error
    assert got[tampered.id].metrics.val_bpb is None                           # nothing recorded as a result
    for e in got.values():
        assert e.attempts == 1                                                 # code failures are not retried
        assert e.metrics.val_bpb is None
    verdicts = {v.experiment_id: v.verdict for v in res.verdicts}
    assert set(verdicts.values()) == {"failed"}
    assert "about to fail" in Path(got[crash.id].log_path).read_text()
    assert_one_terminal_each(eng, list(got))
    assert_no_strays(eng)


def test_hang_past_hard_timeout(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, time_budget_s=1.0, timeout_grace_s=3.0))   # hard timeout 5 s
    assert eng.hard_timeout_s == 5.0
    (ws / "hang.py").write_text("import time\nprint('hanging', flush=True)\ntime.sleep(3600)\n")
    hang = eng.launch_experiment("hangs forever", source="hang.py")[0]
    t0 = time.monotonic()
    res = eng.wait([hang.id], timeout_s=120)
    e = res.finished[0]
    assert e.status == Status.timeout and "timeout" in e.error.lower()
    assert time.monotonic() - t0 < 60
    assert "hanging" in Path(e.log_path).read_text()
    assert_one_terminal_each(eng, [hang.id])
    assert_no_strays(eng, timeout=2.0)     # the runner killed train.py's whole group


def _wait_for(cond, timeout=120.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_runner_is_lost_requeued_then_done(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, time_budget_s=3.0))
    e = eng.launch_experiment("its runner gets SIGKILLed")[0]
    run_dir = ws / ".autoresearch" / "runs" / e.id / "a1"

    def training():
        rows = eng.ledger.open_attempts()
        return rows and rows[0]["handle"] and (run_dir / runner.TRAIN_PID_FILE).is_file() and rows[0]
    row = _wait_for(training, what="train.py to start")
    runner_pid = json.loads(row["handle"])["backend_ref"]["pid"]
    train_pid = json.loads((run_dir / runner.TRAIN_PID_FILE).read_text())["pid"]
    os.kill(runner_pid, signal.SIGKILL)

    res = eng.wait([e.id], timeout_s=300)
    done = res.finished[0]
    assert done.status == Status.done and done.attempts == 2 and done.metrics.val_bpb
    kinds = [ev["kind"] for ev in eng.events(e.id)]
    assert kinds == ["queued", "submitted", "lost", "requeued", "submitted", "started", "finished"], kinds
    attempts = eng.ledger.attempts(e.id)
    assert [a["outcome"] for a in attempts] == ["lost", "done"]
    assert not (run_dir / runner.RESULT_FILE).exists()
    assert done.log_path.endswith("/a2/run.log") and Path(done.log_path).is_file()
    assert runner.proc_state(train_pid) in (None, "Z")          # the orphaned train.py was killed
    assert_one_terminal_each(eng, [e.id])
    assert_no_strays(eng)


ENGINE_SCRIPT = textwrap.dedent("""
    import json, sys, time
    from mcp_server.domain.config import FleetConfig
    from mcp_server.engine import Engine
    cfg = FleetConfig(**json.loads(sys.argv[1]))
    eng = Engine(cfg)
    eng.start()
    wave = eng.launch_wave("killed mid-wave", {"MATRIX_LR": [0.02, 0.06], "WARMDOWN_RATIO": [0.3, 0.7]})
    print("WAVE", json.dumps(wave.experiment_ids), flush=True)
    while True:
        counts = eng.ledger.count_by_status()
        if counts.get("done", 0) >= 1 and counts.get("running", 0) >= 1:
            print("KILLME", json.dumps(counts), flush=True)
            break
        time.sleep(0.05)
    time.sleep(3600)
""")


def test_engine_killed_mid_wave_and_restarted(tmp_path, cache, engines):
    ws = tmp_path / "research"
    cfg = make_config(ws, cache, time_budget_s=3.0)
    script = tmp_path / "engine_proc.py"
    script.write_text(ENGINE_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), cfg.model_dump_json()], cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ids = json.loads(proc.stdout.readline().split(" ", 1)[1])
        line = proc.stdout.readline()
        assert line.startswith("KILLME"), line + proc.stderr.read()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()

    eng = engines.make(cfg, start=False)
    before = {e.id: e.status for e in eng.ledger.get_many(ids)}
    assert Status.running in before.values() and Status.done in before.values()
    running_before = [i for i, s in before.items() if s == Status.running]
    eng.start()
    # running with a saved handle -> adopted; killed between marking and submitting -> requeued
    assert eng.recovery["adopted"] + eng.recovery["requeued"] + eng.recovery["recorded"] == len(running_before)
    res = eng.wait(ids, timeout_s=400)
    assert not res.timed_out
    exps = {e.id: e for e in res.finished}
    assert all(e.status == Status.done and e.metrics.val_bpb for e in exps.values()), \
        {i: (e.status, e.error) for i, e in exps.items()}
    # the runs the dead engine had started were adopted, not rerun; only a job caught between
    # being marked running and being submitted is run again (its attempt stopped and lost)
    once = [i for i in running_before if exps[i].attempts == 1]
    assert len(once) == eng.recovery["adopted"] + eng.recovery["recorded"]
    for eid in set(running_before) - set(once):
        assert exps[eid].attempts == 2
        assert any(ev["kind"] == "lost" and "the engine stopped before" in ev["detail"] for ev in eng.events(eid))
    assert_one_terminal_each(eng, ids)
    assert_no_strays(eng)

    # a third engine finds nothing to do and records nothing twice
    dump = eng.ledger.dump()
    eng.close()
    eng3 = engines.make(cfg)
    assert eng3.recovery == {"adopted": 0, "recorded": 0, "requeued": 0}
    after = eng3.ledger.dump()
    assert after["experiments"] == dump["experiments"] and after["attempts"] == dump["attempts"]
    assert len(job_pids(eng3)) >= 2 * len(ids)


def test_job_started_without_saved_handle_is_stopped_and_requeued(tmp_path, cache, engines):
    """The engine died after starting a runner but before saving its handle: on restart the
    process in that run directory is killed and the experiment runs again (once)."""
    ws = tmp_path / "research"
    cfg = make_config(ws, cache, time_budget_s=3.0)
    eng = engines.make(cfg, start=False)
    e = eng.launch_experiment("caught mid-submit")[0]
    run_dir = ws / ".autoresearch" / "runs" / e.id / "a1"
    slot = eng.scheduler.slots()[0]
    assert eng.ledger.begin_attempt(e.id, 1, slot.name, slot.gpu_type, 1, None, str(run_dir))
    handle = eng.backend.submit(slot.name, eng._build_job(e, 1, slot, run_dir))   # handle never saved
    orphan = handle.backend_ref["pid"]
    _wait_for(lambda: (run_dir / runner.TRAIN_PID_FILE).is_file(), what="the orphan's train.py")
    eng.workspace.close()

    eng2 = engines.make(cfg)
    assert eng2.recovery == {"adopted": 0, "recorded": 0, "requeued": 1}
    assert runner.proc_state(orphan) in (None, "Z")
    res = eng2.wait([e.id], timeout_s=300)
    done = res.finished[0]
    assert done.status == Status.done and done.attempts == 2
    assert not (run_dir / runner.RESULT_FILE).exists()
    assert any(ev["kind"] == "lost" and "that job was stopped" in ev["detail"] for ev in eng2.events(e.id))
    assert_one_terminal_each(eng2, [e.id])
    assert_no_strays(eng2)


def test_restart_adopts_the_runner_waiting_queued_ahead(tmp_path, cache, engines):
    """One slot, two experiments: the second's runner waits behind the first's (queued ahead).
    The engine goes away and a new one starts: both runners are adopted, not rerun; the second
    trains after the first, and nothing is left running."""
    ws = tmp_path / "research"
    cfg = make_config(ws, cache, cpu_slots=1, time_budget_s=3.0)
    eng = engines.make(cfg)
    first, second = (eng.launch_experiment(f"in line {i}")[0] for i in (1, 2))

    def both_submitted():
        rows = {r["experiment_id"]: r for r in eng.ledger.open_attempts()}
        return len(rows) == 2 and all(r["handle"] for r in rows.values()) and rows
    rows = _wait_for(both_submitted, what="both to be submitted")
    pids = {eid: json.loads(r["handle"])["backend_ref"]["pid"] for eid, r in rows.items()}
    run1, run2 = (Path(rows[e.id]["run_dir"]) for e in (first, second))
    _wait_for(lambda: (run1 / runner.TRAIN_PID_FILE).is_file(), what="the first to train")
    _wait_for(lambda: blocked_on_a_lock(pids[second.id]), what="the second runner to wait for the slot")
    assert eng.scheduler.queued_ahead() == {second.id}
    assert not (run2 / runner.TRAIN_PID_FILE).exists()
    eng.close()                      # the engine goes; its runners stay
    eng.workspace.close()

    eng2 = engines.make(cfg)
    assert eng2.recovery == {"adopted": 2, "recorded": 0, "requeued": 0}
    res = eng2.wait([first.id, second.id], timeout_s=300)
    got = {e.id: e for e in res.finished}
    assert all(e.status == Status.done and e.attempts == 1 for e in got.values()), got
    r1, r2 = (json.loads((d / runner.RESULT_FILE).read_text()) for d in (run1, run2))
    assert r1["runner_pid"] == pids[first.id] and r2["runner_pid"] == pids[second.id]   # adopted, not rerun
    assert r2["started_at"] >= r1["ended_at"] and r2["waited_s"] > 0
    assert_one_terminal_each(eng2, [first.id, second.id])
    assert_no_strays(eng2)
