"""REAL SkyPilot clusters on a local single-node Slurm, driven through the engine.

Needs `scripts/local-slurm.sh up` (root, Debian): Slurm + munge + a loopback sshd + SkyPilot's
~/.slurm/config + the SkyPilot API server. Without them every test here is skipped, saying so.
Nothing is faked: `sky.launch` brings up real SkyPilot clusters (Slurm jobs), experiments run
with `sky.exec` on them (cpu profile, the template's train.py), Slurm kills a cluster, and the
teardown is checked with `sky status` and `squeue`.

The clusters use the template's sky_task.yaml with three test settings: resources on the local
Slurm (2 CPUs, 2 GB), ARF_PYTHON = this interpreter (no installs on the "node"), and one
AUTORESEARCH_CACHE for all clusters (prepare.py runs once per cluster in setup, idempotently).
"""

from __future__ import annotations

import io
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from mcp_server.backends.skypilot import SkyPilotBackend, parse_job_log
from mcp_server.domain.config import TEMPLATE_DIR, FleetConfig
from mcp_server.domain.models import Status
from mcp_server.engine.facade import Engine

pytestmark = pytest.mark.slurm

BUDGET_S = 8.0
WAIT_S = 900.0
# a run's timeout = budget + grace. A rerun held behind the hold file below waits until the test has
# seen the orphans cancelled (two `sky.queue` + a `sky.cancel`: 50-100 s each on a loaded 2-core
# machine), and that wait counts against its timeout: 240 s was exceeded at load ~20.
GRACE_S = 600.0


def local_slurm_reason() -> str | None:
    """None when a local Slurm usable by SkyPilot is up; else why not (the skip reason)."""
    how = 'start it with `sudo scripts/local-slurm.sh up` (see README.md, section "Running the SkyPilot tests")'
    if shutil.which("sinfo") is None:
        return f"no local Slurm (sinfo not installed): {how}"
    if not (Path.home() / ".slurm" / "config").is_file():
        return f"no SkyPilot Slurm config ~/.slurm/config: {how}"
    try:
        p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"local Slurm not answering ({e}): {how}"
    if p.returncode != 0 or not re.search(r"idle|mix|alloc", p.stdout):
        return f"local Slurm not up (sinfo: {(p.stdout + p.stderr).strip()[:200]!r}): {how}"
    try:
        import sky  # noqa: F401
    except Exception as e:  # noqa: BLE001
        return f"skypilot not importable: {e}"
    return None


def squeue_names() -> list[str]:
    p = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30)
    return [line.split(None, 1)[1] for line in p.stdout.splitlines() if len(line.split(None, 1)) == 2]


def slurm_job_of(cluster: str) -> str | None:
    p = subprocess.run(["squeue", "-h", "-o", "%i %j"], capture_output=True, text=True, timeout=30)
    for line in p.stdout.splitlines():
        jid, _, name = line.partition(" ")
        if name.startswith(cluster + "-"):
            return jid
    return None


def val_bpb_in(log_text: str) -> float | None:
    m = re.findall(r"^val_bpb:\s+([0-9.]+)\s*$", log_text, re.M)
    return float(m[-1]) if m else None


def sky_job_log(cluster: str, exp_id: str, attempt: int) -> str:
    """The job's log straight from SkyPilot (not the backend's copy)."""
    import sky
    recs = sky.get(sky.queue(cluster, skip_finished=False))
    rec = max((r for r in recs if str(r.job_name).startswith(f"arf-{exp_id}-a{attempt}-")), key=lambda r: r.job_id)
    buf = io.StringIO()
    sky.tail_logs(cluster, rec.job_id, follow=False, output_stream=buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    reason = local_slurm_reason()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("skyfleet")
    task = yaml.safe_load((TEMPLATE_DIR / "sky_task.yaml").read_text())
    task["resources"] = {"infra": "slurm", "cpus": 2, "memory": 2}
    task["envs"].update(ARF_PYTHON=sys.executable, AUTORESEARCH_CACHE=str(root / "cache"),
                        AUTORESEARCH_PROFILE="cpu")
    (root / "task.yaml").write_text(yaml.safe_dump(task))
    config = FleetConfig(workspace=root / "ws", tag=f"it{secrets.token_hex(2)}", backend="skypilot", profile="cpu",
                         time_budget_s=BUDGET_S, timeout_grace_s=GRACE_S, sky_task=root / "task.yaml",
                         sky_autostop_minutes=30, max_attempts=3, max_clusters=4)
    state = {"config": config, "engine": Engine(config)}
    state["engine"].start()
    try:
        t0 = time.monotonic()
        state["clusters"] = state["engine"].provision_clusters(2)
        state["launch_s"] = time.monotonic() - t0
        yield state
    finally:
        try:
            state["engine"].close()
        finally:
            b = SkyPilotBackend(config)          # whatever happened: nothing of ours stays up
            try:
                b.teardown(None)
            finally:
                b.close()


def _wait(eng: Engine, ids: list[str]) -> None:
    res = eng.wait(experiment_ids=ids, timeout_s=WAIT_S)
    assert not res.timed_out, f"still running after {WAIT_S} s: {res.still_running}"


def _assert_ledger_matches_logs(eng: Engine, exp_id: str) -> None:
    e = eng.get_experiment(exp_id)
    assert e.status == Status.done, (e.status, e.error)
    assert e.ran_on_gpu == "CPU" and e.cluster
    run_log = Path(e.log_path).read_text()
    assert val_bpb_in(run_log) == pytest.approx(e.metrics.val_bpb, abs=1e-6)
    _, train_log, result = parse_job_log(sky_job_log(e.cluster, e.id, e.attempts))
    assert val_bpb_in(train_log) == pytest.approx(e.metrics.val_bpb, abs=1e-6)
    assert result["metrics"]["val_bpb"] == pytest.approx(e.metrics.val_bpb, abs=1e-9)


def test_provision_baseline_and_wave(fleet):
    eng: Engine = fleet["engine"]
    clusters = fleet["clusters"]
    assert len(clusters) == 2 and all(c.state == "up" and c.gpu_type == "CPU" for c in clusters)
    prefix = SkyPilotBackend.default_workspace_tag(fleet["config"])
    assert all(c.name.startswith(f"arf-{prefix}-") for c in clusters)
    import sky
    recs = {r.name: r for r in sky.get(sky.status([c.name for c in clusters]))}
    assert set(recs) == {c.name for c in clusters}
    assert all(r.autostop == 30 and r.to_down for r in recs.values())     # money guard on every cluster

    [base] = eng.launch_experiment("baseline")
    _wait(eng, [base.id])
    _assert_ledger_matches_logs(eng, base.id)

    wave = eng.launch_wave("matrix lr", axes={"MATRIX_LR": [0.02, 0.06]}, include_control=True)
    _wait(eng, wave.experiment_ids)
    for eid in wave.experiment_ids:
        _assert_ledger_matches_logs(eng, eid)
        assert len(eng.ledger.attempts(eid)) == 1
    used = {eng.get_experiment(eid).cluster for eid in [base.id, *wave.experiment_ids]}
    assert used == {c.name for c in clusters}          # both clusters did work


def test_engine_restart_mid_wave_is_reconciled(fleet):
    eng: Engine = fleet["engine"]
    wave = eng.launch_wave("weight decay", axes={"WEIGHT_DECAY": [0.1, 0.3]}, include_control=True)
    deadline = time.time() + WAIT_S
    while time.time() < deadline:
        if any(eng.get_experiment(e).status == Status.running for e in wave.experiment_ids):
            break
        time.sleep(0.5)
    eng.close()
    eng2 = Engine(fleet["config"])
    fleet["engine"] = eng2
    eng2.start()
    assert eng2.recovery["adopted"] >= 1
    assert {c.name for c in eng2.list_clusters() if c.state == "up"} == {c.name for c in fleet["clusters"]}
    _wait(eng2, wave.experiment_ids)
    for eid in wave.experiment_ids:
        _assert_ledger_matches_logs(eng2, eid)
        assert [a["outcome"] for a in eng2.ledger.attempts(eid)] == ["done"]   # nothing lost by the restart


def test_jobs_submitted_without_a_saved_handle_are_cancelled_and_run_once(fleet):
    """The engine stops after its jobs were exec'd on the clusters but before it saved their
    handles (for one, even before it saved the exec's request id): the restarted engine cancels
    those jobs on their clusters and runs each experiment once more."""
    import json

    import sky

    from mcp_server.backends.skypilot.records import status_value
    fleet["engine"].close()
    eng = Engine(fleet["config"])                 # not started: we play its scheduler
    fleet["engine"] = eng
    # train.py that waits while a file exists (the local Slurm shares this filesystem): the
    # orphans are still running when the engine restarts; the reruns, after it is gone, are not held
    hold = eng.workspace.path.parent / "hold-orphans"
    hold.touch()
    held = f"import os, time\nwhile os.path.exists({str(hold)!r}):\n    time.sleep(0.5)\n"
    (eng.workspace.path / "held_train.py").write_text(held + (eng.workspace.path / "train.py").read_text())
    exps = [eng.launch_experiment(f"caught mid-submit {i}", source="held_train.py")[0] for i in (1, 2)]
    slots = [s for s in eng.scheduler.slots() if s.state == "up"][:2]
    assert len(slots) == 2
    names = {}
    for e, slot in zip(exps, slots, strict=True):
        run_dir = eng.runs_dir / e.id / "a1"
        assert eng.ledger.begin_attempt(e.id, 1, slot.name, slot.gpu_type, 1, None, str(run_dir))
        handle = eng.backend.submit(slot.name, eng._build_job(e, 1, slot, run_dir))   # handle never saved
        names[handle.backend_ref["job_name"]] = slot.name
    spec_file = eng.backend.state_dir / "stage" / f"{handle.backend_ref['key']}.json"
    spec = json.loads(spec_file.read_text())
    assert spec["request_id"]
    spec_file.write_text(json.dumps(dict(spec, request_id=None)))    # stopped before saving that too

    def states() -> dict[str, str | None]:
        out = {}
        for name, cluster in names.items():
            recs = [r for r in sky.get(sky.queue(cluster, skip_finished=False)) if r.job_name == name]
            out[name] = status_value(recs[0].status) if recs else None
        return out
    deadline = time.time() + WAIT_S
    while set(states().values()) != {"RUNNING"}:
        assert time.time() < deadline, f"the orphan jobs never ran: {states()}"
        time.sleep(1)
    eng.close()

    eng2 = Engine(fleet["config"])
    fleet["engine"] = eng2
    eng2.start()
    assert eng2.recovery["requeued"] == 2
    deadline = time.time() + WAIT_S / 3     # cancels + queue reads: minutes on a loaded API server
    while not set(states().values()) <= {"CANCELLED", "SUCCEEDED", "FAILED"}:
        assert time.time() < deadline, f"orphan jobs still live: {states()}"
        time.sleep(1)
    assert set(states().values()) == {"CANCELLED"}   # stopped, not left to run beside the reruns
    hold.unlink()
    _wait(eng2, [e.id for e in exps])
    for e in exps:
        assert [a["outcome"] for a in eng2.ledger.attempts(e.id)] == ["lost", "done"]
        _assert_ledger_matches_logs(eng2, e.id)


def test_killed_cluster_mid_experiment_is_lost_and_requeued(fleet):
    eng: Engine = fleet["engine"]
    [victim] = eng.launch_experiment("victim of scancel")
    deadline = time.time() + WAIT_S
    run_log = None
    while time.time() < deadline and run_log is None:
        e = eng.get_experiment(victim.id)
        if e.cluster:
            logs = list((Path.home() / ".sky_clusters").glob(
                f"{e.cluster}-*/sky_workdir/arf-runs/{victim.id}-a1-*/run.log"))
            run_log = logs[0] if logs else None
        time.sleep(0.2)
    assert run_log is not None, "the experiment never started on a cluster"
    killed = eng.get_experiment(victim.id).cluster
    slurm_id = slurm_job_of(killed)
    assert slurm_id, f"no Slurm job for {killed}"
    subprocess.run(["scancel", slurm_id], check=True, timeout=30)       # the cluster dies mid-run

    _wait(eng, [victim.id])
    e = eng.get_experiment(victim.id)
    attempts = eng.ledger.attempts(victim.id)
    assert [a["outcome"] for a in attempts] == ["lost", "done"], attempts
    assert attempts[0]["cluster"] == killed and attempts[1]["cluster"] != killed
    kinds = [ev["kind"] for ev in eng.events(victim.id)]
    assert "lost" in kinds and "requeued" in kinds
    _assert_ledger_matches_logs(eng, victim.id)
    assert killed not in {c.name for c in eng.list_clusters() if c.state != "gone"}


def test_teardown_leaves_no_cluster_and_no_slurm_job(fleet):
    eng: Engine = fleet["engine"]
    alive = [c.name for c in eng.list_clusters() if c.state != "gone"]
    removed = eng.teardown_clusters()
    assert sorted(removed) == sorted(alive)
    import sky
    prefix = f"arf-{SkyPilotBackend.default_workspace_tag(fleet['config'])}-"
    assert [r.name for r in sky.get(sky.status()) if r.name.startswith(prefix)] == []
    deadline = time.time() + 60
    while time.time() < deadline and any(n.startswith(prefix) for n in squeue_names()):
        time.sleep(1)
    assert not any(n.startswith(prefix) for n in squeue_names())
    if os.environ.get("ARF_SLURM_EXCLUSIVE") == "1":      # CI: the local Slurm is ours alone
        assert sky.get(sky.status()) == [] and squeue_names() == []
