"""The engine end to end with REAL parts: git workspace, SQLite ledger, LocalBackend, the runner
and train.py on the cpu profile (2 s budget) on 2 CPU slots.

* a 2x2 factorial wave + control completes; ledger, results.tsv and git refs agree; keep/discard;
* promotion to another tier (SIMULATION: local CPU slots labelled H100/H200) with a control;
* >= 30 hostile inputs: each a FleetError with useful text; ledger and git unchanged.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import pytest
from engine_helpers import (
    assert_no_strays,
    assert_one_terminal_each,
    blocked_on_a_lock,
    git,
    git_state,
    ledger_state,
    make_config,
    progress_log,
)

from mcp_server.domain import variants
from mcp_server.domain.errors import Conflict, FleetError, InvalidInput, LimitExceeded, NotFound
from mcp_server.domain.models import Decision, Status
from mcp_server.store.ledger import TSV_COLUMNS

AXES = {"MATRIX_LR": [0.02, 0.06], "WARMDOWN_RATIO": [0.3, 0.7]}


def test_factorial_wave_ledger_tsv_and_git_agree(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache))
    head_before = git(ws, "rev-parse", "HEAD").strip()
    seen, on_progress = progress_log()
    wave = eng.launch_wave("lr x warmdown", AXES, include_control=True)
    assert wave.kind == "factorial" and len(wave.experiment_ids) == 5
    # launching moved nothing: branch and working tree as they were
    assert git(ws, "rev-parse", "HEAD").strip() == head_before
    assert git(ws, "status", "--porcelain") == ""

    res = eng.wait(wave_id=wave.id, timeout_s=400, on_progress=on_progress)
    assert not res.timed_out and res.still_running == []
    assert [d for d, _, _ in seen] == [1, 2, 3, 4, 5] and all(t == 5 for _, t, _ in seen)
    assert all(" done val_bpb=" in m and "(CPU)" in m for _, _, m in seen), seen
    exps = {e.id: e for e in res.finished}
    assert set(exps) == set(wave.experiment_ids)
    assert all(e.status == Status.done and e.metrics.val_bpb and e.metrics.num_steps for e in exps.values())
    assert {e.cluster for e in exps.values()} == {"local-cpu0", "local-cpu1"}   # both slots used
    assert all(e.ran_on_gpu == "CPU" for e in exps.values())
    assert_one_terminal_each(eng, wave.experiment_ids)

    control = exps[wave.experiment_ids[0]]
    assert control.overrides == {} and control.code_hash == control.parent_code_hash
    refs = {line.split()[1].rsplit("/", 1)[1]: line.split()[0]
            for line in git(ws, "for-each-ref", "--format=%(objectname) %(refname)",
                            "refs/autoresearch/experiments/").splitlines()}
    assert set(refs) == set(exps)
    cells = []
    for e in exps.values():
        # ledger <-> git: the ref is the recorded commit, its train.py is the recorded code
        assert refs[e.id] == e.commit
        assert git(ws, "rev-parse", f"{e.commit}:train.py").strip() == e.code_hash
        assert git(ws, "rev-parse", f"{e.commit}^").strip() == head_before == e.parent_commit
        consts = variants.list_constants(git(ws, "show", f"{e.commit}:train.py"))
        for name, value in e.overrides.items():
            assert consts[name] == value
        if e.overrides:
            cells.append(tuple(sorted(e.overrides.items())))
            assert e.parent_code_hash == control.code_hash != e.code_hash
        assert e.wave_id == wave.id and e.seed == 42
    assert sorted(cells) == sorted(tuple(sorted(c.items())) for c in variants.factorial(AXES))

    # ledger <-> results.tsv
    eng.export_results()
    rows = list(csv.reader((ws / ".autoresearch" / "results.tsv").open(), delimiter="\t"))
    assert rows[0] == TSV_COLUMNS and len(rows) == 6
    for row in rows[1:]:
        r = dict(zip(TSV_COLUMNS, row, strict=False))
        e = exps[r["id"]]
        assert r["commit"] == e.commit[:7] and r["status"] == "done" and r["wave"] == wave.id
        assert r["val_bpb"] == f"{e.metrics.val_bpb:.6f}" and r["gpu"] == "CPU" and r["cluster"] == e.cluster
        assert r["steps"] == str(e.metrics.num_steps) and r["seed"] == "42"

    # verdicts vs the control, on the same GPU type
    vs = {v.experiment_id: v for v in res.verdicts}
    for eid in exps:
        if eid != control.id:
            assert vs[eid].reference_id == control.id and vs[eid].gpu_type == "CPU"
            assert vs[eid].verdict in ("improvement", "worse", "within_noise")
    board = eng.leaderboard()
    assert len(board.by_gpu_type["CPU"]) == 5

    # keep the best: the branch moves to its snapshot, the working tree follows; discard another
    best = min((e for e in exps.values() if e.overrides), key=lambda e: e.metrics.val_bpb)
    kept = eng.keep(best.id, reason="best of the screen")   # a reason: it may be within the noise
    assert kept.experiment.decision == Decision.keep
    assert git(ws, "rev-parse", "HEAD").strip() == best.commit
    assert (ws / "train.py").read_text() == git(ws, "show", f"{best.commit}:train.py")
    other = next(e for e in exps.values() if e.id not in (best.id, control.id))
    assert eng.discard(other.id).experiment.decision == Decision.discard
    eng.export_results()
    rows = {r[5]: dict(zip(TSV_COLUMNS, r, strict=False)) for r in
            csv.reader((ws / ".autoresearch" / "results.tsv").open(), delimiter="\t")}
    assert rows[best.id]["status"] == "keep" and rows[other.id]["status"] == "discard"

    # logs, GPU info with measured throughput, budget
    text, nxt = eng.read_log(best.id, offset=0, limit=100_000)
    assert "val_bpb:" in text and nxt is None
    tail, _ = eng.read_log(best.id, offset=-200, limit=200)
    assert text.endswith(tail)
    info = eng.gpu_info()
    cpu = next(t for t in info.gpu_types if t.gpu_type == "CPU")
    assert cpu.clusters == 2 and cpu.measured.runs == 5 and cpu.measured.mean_steps > 0
    budget = eng.budget_status()
    assert budget.gpu_hours_spent > 0 and budget.experiments_live == 0 and budget.clusters_alive == 2
    events = eng.events(best.id)
    assert [ev["kind"] for ev in events] == ["queued", "submitted", "started", "finished", "kept"]
    assert_no_strays(eng)


def test_promotion_to_another_tier_with_control(tmp_path, cache, engines):
    """SIMULATION: two local CPU slots labelled H100 and H200 (config slot_labels)."""
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, slot_labels=["H100", "H200"]))
    base = eng.launch_experiment("baseline", gpu_type="H100")[0]
    variant = eng.launch_experiment("lower lr", overrides={"MATRIX_LR": 0.02}, gpu_type="h100")[0]
    assert variant.gpu_type == "H100" and variant.parent_code_hash == base.code_hash
    res = eng.wait([base.id, variant.id], timeout_s=300)
    assert all(e.status == Status.done and e.ran_on_gpu == "H100" for e in res.finished)

    wave = eng.promote([variant.id], "H200", replicates=1)
    assert wave.kind == "promotion" and len(wave.experiment_ids) == 2     # the variant + a control set
    promoted, ctrl = eng.ledger.get_many(wave.experiment_ids)
    assert promoted.code_hash == variant.code_hash and promoted.parent_code_hash == variant.parent_code_hash
    assert ctrl.code_hash == base.code_hash and promoted.priority > 0 and ctrl.priority > 0
    assert promoted.gpu_type == ctrl.gpu_type == "H200"
    res = eng.wait(wave_id=wave.id, timeout_s=300)
    assert all(e.status == Status.done and e.ran_on_gpu == "H200" and e.cluster == "local-sim1-h200"
               for e in res.finished)
    v = next(v for v in res.verdicts if v.experiment_id == promoted.id)
    assert v.gpu_type == "H200" and v.reference_id == ctrl.id                # compared on H200 only
    board = eng.leaderboard()
    assert set(board.by_gpu_type) == {"H100", "H200"}
    assert any("not comparable" in n for n in board.notes)
    info = eng.gpu_info()
    assert any("SIMULATION" in n for n in info.notes)
    assert_one_terminal_each(eng, [base.id, variant.id, *wave.experiment_ids])
    assert_no_strays(eng)


def test_hostile_inputs_change_nothing(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache))
    (ws / "crash.py").write_text("raise RuntimeError('deliberate crash')\n")
    crashed = eng.launch_experiment("crashes", source="crash.py")[0]
    done_wave = eng.wait([crashed.id], timeout_s=120)
    assert done_wave.finished[0].status == Status.crash
    (ws / "notes.txt").write_text("not python\n")
    (ws / "link.py").symlink_to("/etc/hostname")

    before_ledger, before_git = ledger_state(eng), git_state(ws)
    huge = "x" * 1_000_000
    calls = [
        # overrides: code, unknown names, bad types and sizes
        ("code in a value",
         lambda: eng.launch_experiment("x", overrides={"DEPTH": "__import__('os').system('touch /tmp/pwn')"})),
        ("expression value", lambda: eng.launch_experiment("x", overrides={"MATRIX_LR": "0.1 if True else exec('1')"})),
        ("object value", lambda: eng.launch_experiment("x", overrides={"DEPTH": object()})),
        ("unknown constant", lambda: eng.launch_experiment("x", overrides={"NOT_A_CONSTANT": 1})),
        ("lowercase name", lambda: eng.launch_experiment("x", overrides={"model": 1})),
        ("name with code", lambda: eng.launch_experiment("x", overrides={"DEPTH = 1; import os; X": 1})),
        ("overrides not a dict", lambda: eng.launch_experiment("x", overrides=[("DEPTH", 4)])),
        ("huge value", lambda: eng.launch_experiment("x", overrides={"WINDOW_PATTERN": huge})),
        ("nested value", lambda: eng.launch_experiment("x", overrides={"ADAM_BETAS": [[[[[[0.9]]]]]]})),
        ("nan value", lambda: eng.launch_experiment("x", overrides={"MATRIX_LR": float("nan")})),
        ("too many overrides", lambda: eng.launch_experiment("x", overrides={f"C{i}": 1 for i in range(100)})),
        # sources and commits
        ("source traversal", lambda: eng.launch_experiment("x", source="../../etc/passwd")),
        ("source absolute", lambda: eng.launch_experiment("x", source="/etc/passwd")),
        ("source in .git", lambda: eng.launch_experiment("x", source=".git/config")),
        ("source symlink out", lambda: eng.launch_experiment("x", source="link.py")),
        ("source not python", lambda: eng.launch_experiment("x", source="notes.txt")),
        ("source missing", lambda: eng.launch_experiment("x", source="nope.py")),
        ("source and commit", lambda: eng.launch_experiment("x", source="train.py", commit="HEAD")),
        ("unknown experiment as commit", lambda: eng.launch_experiment("x", commit="e9999")),
        ("option injection", lambda: eng.launch_experiment("x", commit="--upload-pack=touch /tmp/pwn")),
        ("reflog syntax", lambda: eng.launch_experiment("x", commit="HEAD@{1}")),
        ("range", lambda: eng.launch_experiment("x", commit="HEAD..main")),
        # counts, seeds, priorities, descriptions
        ("zero replicates", lambda: eng.launch_experiment("x", replicates=0)),
        ("absurd replicates", lambda: eng.launch_experiment("x", replicates=10**6)),
        ("string replicates", lambda: eng.launch_experiment("x", replicates="3")),
        ("bool replicates", lambda: eng.launch_experiment("x", replicates=True)),
        ("negative seed", lambda: eng.launch_experiment("x", seed=-1)),
        ("absurd priority", lambda: eng.launch_experiment("x", priority=10**9)),
        ("empty description", lambda: eng.launch_experiment("  ")),
        ("huge description", lambda: eng.launch_experiment(huge)),
        ("control chars", lambda: eng.launch_experiment("a\x00b")),
        ("description not text", lambda: eng.launch_experiment(["x"])),
        # GPU types
        ("unknown gpu_type", lambda: eng.launch_experiment("x", gpu_type="H100")),
        ("junk gpu_type", lambda: eng.launch_experiment("x", gpu_type="../../x" * 20)),
        # waves
        ("no axes", lambda: eng.launch_wave("w", {})),
        ("five axes", lambda: eng.launch_wave("w", {n: [1, 2] for n in ("DEPTH", "HEAD_DIM", "MLP_RATIO",
                                                                         "ASPECT_RATIO", "VE_GATE_CHANNELS")})),
        ("too many levels", lambda: eng.launch_wave("w", {"DEPTH": list(range(1, 30))})),
        ("absurd wave size",
         lambda: eng.launch_wave("w", {"DEPTH": list(range(1, 9)), "HEAD_DIM": list(range(8, 16))}, replicates=16)),
        ("unknown axis", lambda: eng.launch_wave("w", {"NOPE": [1, 2]})),
        ("axis levels not a list", lambda: eng.launch_wave("w", {"DEPTH": 4})),
        ("duplicate levels", lambda: eng.launch_wave("w", {"DEPTH": [4, 4]})),
        ("code in a level", lambda: eng.launch_wave("w", {"DEPTH": [4, "__import__('os')"]})),
        ("control not bool", lambda: eng.launch_wave("w", {"DEPTH": [4]}, include_control="yes")),
        ("unknown base", lambda: eng.launch_wave("w", {"DEPTH": [4]}, base="e0999")),
        ("bad base", lambda: eng.launch_wave("w", {"DEPTH": [4]}, base="$(reboot)")),
        # promote / keep / discard / cancel on unknown ids and wrong states
        ("promote unknown", lambda: eng.promote(["e9999"], "CPU")),
        ("promote crashed", lambda: eng.promote([crashed.id], "CPU")),
        ("promote unknown gpu", lambda: eng.promote([crashed.id], "B200")),
        ("promote no ids", lambda: eng.promote([], "CPU")),
        ("keep crashed", lambda: eng.keep(crashed.id)),
        ("keep unknown", lambda: eng.keep("e4242")),
        ("keep injection", lambda: eng.keep("e0001; rm -rf /")),
        ("keep not a string", lambda: eng.keep(12)),
        ("discard crashed", lambda: eng.discard(crashed.id)),
        ("cancel empty", lambda: eng.cancel([])),
        ("cancel partly unknown", lambda: eng.cancel([crashed.id, "e7777"])),
        ("cancel too many", lambda: eng.cancel([f"e{i:04d}" for i in range(1, 2000)])),
        # reads with bad arguments
        ("wait bad until", lambda: eng.wait([crashed.id], until="some")),
        ("wait negative timeout", lambda: eng.wait([crashed.id], timeout_s=-1)),
        ("wait unknown wave", lambda: eng.wait(wave_id="w9999")),
        ("log limit zero", lambda: eng.read_log(crashed.id, limit=0)),
        ("list bad status", lambda: eng.experiments(status="winning")),
        ("list unknown wave", lambda: eng.experiments(wave_id="w0042")),
        ("verdicts unknown", lambda: eng.verdicts(["e0404"])),
        # clusters
        ("provision on local", lambda: eng.provision_clusters(1, "H100")),
        ("provision zero", lambda: eng.provision_clusters(0)),
        ("teardown unknown", lambda: eng.teardown_clusters(["no-such-cluster"])),
    ]
    assert len(calls) >= 30
    for name, call in calls:
        with pytest.raises(FleetError) as info:
            call()
        text = str(info.value)
        assert len(text) > 25, (name, text)
        assert isinstance(info.value, (InvalidInput, NotFound, Conflict, LimitExceeded)), name
    assert ledger_state(eng) == before_ledger
    assert git_state(ws) == before_git
    assert not Path("/tmp/pwn").exists()

    # the texts say what to do
    with pytest.raises(InvalidInput, match=r"Available: CPU \(2 slots\)"):
        eng.launch_experiment("x", gpu_type="H100")
    with pytest.raises(Conflict, match="crash.*only done experiments can be kept"):
        eng.keep(crashed.id)
    with pytest.raises(NotFound, match="fetch_results"):
        eng.get_experiment("e0404")


def test_live_limit_and_gpu_hour_budget(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, gpu_hour_budget=1e-9), start=False)
    # nothing spent yet: a launch is accepted; once GPU time is spent, launches are refused
    (ws / "crash.py").write_text("raise SystemExit(3)\n")
    eng.start()
    e = eng.launch_experiment("spend a little", source="crash.py")[0]
    eng.wait([e.id], timeout_s=120)
    before = ledger_state(eng)
    with pytest.raises(LimitExceeded, match=r"GPU-hour budget spent: .* of 0\.000 GPU-hours"):
        eng.launch_experiment("one more")
    assert ledger_state(eng) == before
    assert eng.budget_status().gpu_hours_left == 0.0


def test_failed_data_preparation_is_reported_and_nothing_runs(tmp_path, cache, engines):
    template = tmp_path / "template"
    template.mkdir()
    (template / "train.py").write_text(
        (Path(__file__).resolve().parent.parent / "train_template" / "train.py").read_text())
    (template / "prepare.py").write_text("import sys\nprint('downloading...')\nsys.exit('no network here')\n")
    eng = engines.make(make_config(tmp_path / "research", cache, template_dir=template))
    e = eng.launch_experiment("waits for data")[0]
    res = eng.wait([e.id], timeout_s=3)
    # it times out while prepare.py still runs, or returns at once, blocked, once it has failed
    assert res.still_running == [e.id] and (res.timed_out or [b.experiment_ids for b in res.blocked] == [[e.id]])
    assert any("data preparation" in n and "prepare.log" in n for n in res.notes), res.notes
    assert eng.get_experiment(e.id).status == Status.queued and eng.get_experiment(e.id).attempts == 0
    assert "no network here" in eng.prepare_log.read_text()
    assert any("data preparation" in n for n in eng.budget_status().notes)
    assert eng.cancel([e.id])[0].status == Status.cancelled


def test_cached_answers_follow_every_ledger_change(tmp_path, cache, engines):
    """leaderboard, verdicts and gpu_info's measured throughput are served from the engine's
    analysis index and caches. After each change, recorded the way the scheduler records it (ledger
    write, then on_change) or through keep/discard, they equal answers computed afresh from the
    ledger, and differ from the answers before it. Fails if a cache goes stale. (No runs: results
    are written straight into the ledger.)"""
    from mcp_server.domain import analysis
    from mcp_server.domain.models import Metrics

    eng = engines.make(make_config(tmp_path / "research", cache), start=False)
    base = eng.launch_experiment("baseline", replicates=3)
    ids = [e.id for e in base]
    launched = {}

    def launch() -> None:
        launched["lr"] = eng.launch_experiment("higher lr", overrides={"MATRIX_LR": 0.06})[0].id
        launched["wd"] = eng.launch_experiment("longer warmdown", overrides={"WARMDOWN_RATIO": 0.7})[0].id
        ids.extend(launched.values())

    def record(eid: str, status: Status, val: float | None = None) -> None:
        eng.ledger.begin_attempt(eid, 1, "cpu-0", "CPU", 1, None, str(tmp_path / "runs" / eid))
        eng._on_change([eid])
        metrics = Metrics(val_bpb=val, num_steps=100, training_seconds=2.0, total_tokens_M=0.5) if val else None
        eng.ledger.finish_attempt(eid, 1, status, metrics=metrics, error=None if val else "boom")
        eng._on_change([eid])

    def answers():
        measured = {t.gpu_type: t.measured for t in eng.gpu_info().gpu_types if t.measured}
        return (eng.leaderboard().model_dump(), [v.model_dump() for v in eng.verdicts(ids)],
                {k: (m.runs, m.best_val_bpb, m.mean_steps) for k, m in measured.items()})

    def fresh():
        everything = eng.ledger.all_experiments()
        measured = eng.ledger.throughput_by_gpu()
        return (analysis.leaderboard(everything).model_dump(),
                [v.model_dump() for v in analysis.verdicts(everything, eng.ledger.get_many(ids))],
                {k: (m["runs"], m["best_val_bpb"], m["mean_num_steps"]) for k, m in measured.items()})

    steps = [
        ("first baseline result", lambda: record(base[0].id, Status.done, 1.000)),
        ("two more launched (queued)", launch),
        ("a variant's result", lambda: record(launched["lr"], Status.done, 0.970)),
        ("second baseline seed: a noise floor", lambda: record(base[1].id, Status.done, 1.002)),
        ("keep", lambda: eng.keep(launched["lr"])),
        ("a crash", lambda: record(launched["wd"], Status.crash)),
        ("discard", lambda: eng.discard(base[0].id)),
        ("third baseline seed: the noise floor moves", lambda: record(base[2].id, Status.done, 1.030)),
    ]
    before = answers()
    assert before == fresh()
    for what, change in steps:
        change()
        now = answers()
        assert now == fresh(), what
        assert now != before, f"{what}: nothing changed?"
        assert answers() == now      # served from the caches now: the same
        before = now
    board = eng.leaderboard()
    assert board.reference["CPU"] == launched["lr"] and board.noise_floor["CPU"] is not None
    assert any("Not ranked (no val_bpb): 1 crash" in n for n in board.notes)


# Stand-in train.py for a slot's queue (SIMULATION: no model, it only records what happened):
# notes its start and end in a trace shared by all the runs of the test, records an overlap if
# another run of the slot is training at the same moment, waits for a GO file named after its
# seed, then prints a result in the contract's format.
TRACING_TRAIN = '''\
import os, time
trace = {trace!r}
seed = os.environ["AUTORESEARCH_SEED"]
busy = trace + ".busy"
def note(what):
    with open(trace, "a") as f:
        f.write(f"{{what}} {{seed}}\\n")
try:
    os.close(os.open(busy, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
except FileExistsError:
    note("OVERLAP")
note("start")
while not os.path.exists(trace + ".go" + seed):
    time.sleep(0.05)
note("end")
os.unlink(busy)
print("---")
print("val_bpb:          1.100000")
print('RESULT_JSON: {{"val_bpb": 1.1, "num_steps": 1}}', flush=True)
'''


def test_one_slot_queues_one_job_ahead_in_order_without_overlap(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache, cpu_slots=1))
    trace = tmp_path / "trace"
    (ws / "tracing.py").write_text(TRACING_TRAIN.format(trace=str(trace)))
    first, second, third = (eng.launch_experiment(f"queued {i}", source="tracing.py", seed=i)[0] for i in (1, 2, 3))

    def wait(cond, what, seconds=120.0):
        deadline = time.monotonic() + seconds
        while not cond():
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(0.05)
    wait(lambda: trace.exists() and "start 1" in trace.read_text(), "the first run to start")
    wait(lambda: set(eng.scheduler.in_flight()) == {first.id, second.id}, "the second to be queued ahead")
    assert eng.scheduler.queued_ahead() == {second.id}
    assert eng.get_experiment(third.id).status == Status.queued          # depth 2: the third waits here
    run2 = Path(eng.scheduler.in_flight()[second.id].run_dir)
    pid2 = eng.scheduler.in_flight()[second.id].handle.backend_ref["pid"]
    wait(lambda: blocked_on_a_lock(pid2), "the second runner to wait for the slot")
    assert not (run2 / "train.pid").exists()                             # its runner waits, untrained
    # cancelling the job queued ahead: only its waiting runner goes; the third takes its place
    assert eng.cancel([second.id])[0].status == Status.cancelled
    wait(lambda: eng.scheduler.queued_ahead() == {third.id}, "the third to be queued ahead")
    assert trace.read_text().splitlines() == ["start 1"]                 # the first still runs, alone
    (tmp_path / "trace.go1").touch()
    (tmp_path / "trace.go3").touch()
    res = eng.wait([first.id, third.id], timeout_s=300)
    assert {e.id: e.status for e in res.finished} == {first.id: Status.done, third.id: Status.done}
    assert trace.read_text().splitlines() == ["start 1", "end 1", "start 3", "end 3"]
    assert not (run2 / "train.pid").exists()                             # it never trained
    assert json.loads((run2 / "result.json").read_text())["error"] == "cancelled before train.py started"
    # the third's run clock starts when the slot was handed to it, after the first ended
    r1 = json.loads((Path(eng.get_experiment(first.id).log_path).parent / "result.json").read_text())
    r3 = json.loads((Path(eng.get_experiment(third.id).log_path).parent / "result.json").read_text())
    assert r3["started_at"] >= r1["ended_at"] and r3["waited_s"] > 0
    started = [ev for ev in eng.events(third.id) if ev["kind"] == "started"]
    assert len(started) == 1 and started[0]["t"] == r3["started_at"]
    assert_one_terminal_each(eng, [first.id, second.id, third.id])
    assert_no_strays(eng)


def test_results_tsv_holds_the_newest_snapshot_when_two_exports_overlap(tmp_path, cache, engines, monkeypatch):
    """results.tsv is written by the export thread and by every returning wait(). When an export
    that read its rows before a change overlaps one that read them after it, the file must end with
    the newer rows (once the older one could replace the file last, and nothing re-marked it).
    The first export is held, on purpose, between reading its rows and writing the file."""
    import threading

    from mcp_server.store.ledger import Ledger

    eng = engines.make(make_config(tmp_path / "research", cache), start=False)
    first, second = (e.id for e in eng.launch_experiment("baseline", replicates=2))
    for eid in (first, second):
        eng.ledger.begin_attempt(eid, 1, "cpu-0", "CPU", 1, None, str(tmp_path / "runs" / eid))
    eng.ledger.finish_attempt(first, 1, Status.crash, error="boom")

    rows_read, go_on = threading.Event(), threading.Event()
    real_rows = Ledger.tsv_rows

    def held_rows(self, metric="val_bpb"):
        rows = real_rows(self, metric)
        if threading.current_thread().name == "older-export":
            rows_read.set()
            go_on.wait(30)
        return rows
    monkeypatch.setattr(Ledger, "tsv_rows", held_rows)

    older = threading.Thread(target=eng.export_results, name="older-export")
    older.start()
    assert rows_read.wait(30)
    eng.ledger.finish_attempt(second, 1, Status.crash, error="boom")      # the change the older rows lack
    newer = threading.Thread(target=eng.export_results, name="newer-export")
    newer.start()
    newer.join(0.5)                 # with the old code it finishes here; serialised, it waits for the older one
    go_on.set()
    older.join(30)
    newer.join(30)
    rows = list(csv.reader(eng.results_tsv.open(), delimiter="\t"))
    assert sorted(r[5] for r in rows[1:]) == sorted([first, second])
