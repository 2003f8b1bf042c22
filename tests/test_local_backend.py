"""LocalBackend with real runner processes: slots, submit/poll/cancel, handles that outlive the
engine process, and children that never hold the server's stdout."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from engine_helpers import blocked_on_a_lock

from mcp_server.backends.base import JobHandle, JobSpec
from mcp_server.backends.local.backend import LocalBackend, parse_nvidia_smi
from mcp_server.domain.errors import Conflict, InvalidInput, NotFound
from mcp_server.runtime import runner

PREPARE = "# stand-in harness\nHARNESS = 1\n"
HASH = hashlib.sha256(PREPARE.encode()).hexdigest()

# Records what it was given (env, stdin), optionally waits for a GO file, then reports a result.
REPORTING_TRAIN = textwrap.dedent("""\
    import json, os, time
    keys = ["AUTORESEARCH_PROFILE", "AUTORESEARCH_SEED", "AUTORESEARCH_THREADS", "AUTORESEARCH_GPU_LABEL",
            "AUTORESEARCH_CACHE", "CUDA_VISIBLE_DEVICES", "PYTHONUNBUFFERED", "EXTRA_KNOB"]
    seen = {k: os.environ.get(k) for k in keys}
    seen["stdin"] = os.readlink("/proc/self/fd/0")
    seen["pgid_is_own"] = os.getpgid(0) == os.getpid()
    with open("env.json.tmp", "w") as f:
        json.dump(seen, f)
    os.replace("env.json.tmp", "env.json")
    print("TRAIN OUTPUT that must stay in run.log", flush=True)
    while os.environ.get("WAIT_FOR_GO") and not os.path.exists("GO"):
        time.sleep(0.05)
    print("---")
    print("val_bpb:          1.234000")
    print('RESULT_JSON: {"val_bpb": 1.234, "num_steps": 5}')
""")

HANG = "import time\nopen('started', 'w').close()\nwhile True:\n    time.sleep(1)\n"


def make_run_dir(tmp_path: Path, train: str = REPORTING_TRAIN, name: str = "run") -> Path:
    d = tmp_path / name
    d.mkdir(parents=True)
    (d / "prepare.py").write_text(PREPARE)
    (d / "train.py").write_text(train)
    return d


def spec(d: Path, eid: str = "e0001", env: dict[str, str] | None = None, **kw: object) -> JobSpec:
    fields: dict = dict(experiment_id=eid, attempt=1, run_dir=d, profile="cpu", timeout_s=60.0,
                        harness_hash=HASH, seed=7, env=env or {})
    fields.update(kw)
    return JobSpec(**fields)


def wait_outcome(backend: LocalBackend, handle: JobHandle, seconds: float = 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        outcomes = backend.poll([handle])
        if outcomes:
            assert len(outcomes) == 1 and outcomes[0].handle == handle
            return outcomes[0]
        time.sleep(0.05)
    raise AssertionError("no outcome in time")


def wait_for(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def gone(pid: int) -> bool:
    return runner.proc_state(pid) in (None, "Z", "X")


def fake_nvidia_smi(tmp_path: Path, body: str) -> str:
    """A stand-in nvidia-smi executable (this machine has no GPU)."""
    exe = tmp_path / "bin" / "nvidia-smi"
    exe.parent.mkdir(exist_ok=True)
    exe.write_text("#!/bin/sh\n" + body)
    exe.chmod(0o755)
    return str(exe)


@pytest.fixture(autouse=True)
def _no_inherited_gpu_mask(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


# -- slots ------------------------------------------------------------------------------------

def test_cpu_slots_without_gpus(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=3, nvidia_smi=str(tmp_path / "no-such-nvidia-smi"))
    clusters = backend.clusters()
    assert [c.name for c in clusters] == ["local-cpu0", "local-cpu1", "local-cpu2"]
    assert all(c.gpu_type == "CPU" and c.state == "up" and c.backend == "local" and not c.simulated
               for c in clusters)
    assert backend.reconcile() == clusters
    assert backend.queue_depth("local-cpu0") == 2          # one running + one queued ahead
    assert LocalBackend(cpu_slots=1, queue_depth=1, nvidia_smi=str(tmp_path / "none")).queue_depth("local-cpu0") == 1
    with pytest.raises(InvalidInput, match="queue_depth"):
        LocalBackend(cpu_slots=1, queue_depth=0)


def test_slot_labels_are_a_named_simulation(tmp_path: Path) -> None:
    backend = LocalBackend(slot_labels=["h100", "H100", "nvidia h200"], nvidia_smi=str(tmp_path / "none"))
    clusters = backend.clusters()
    assert [c.gpu_type for c in clusters] == ["H100", "H100", "H200"]
    assert all(c.simulated for c in clusters)
    assert [c.name for c in clusters] == ["local-sim0-h100", "local-sim1-h100", "local-sim2-h200"]
    with pytest.raises(InvalidInput, match="not a known GPU type"):
        LocalBackend(slot_labels=["H100", "TPUv9"], nvidia_smi=str(tmp_path / "none"))
    with pytest.raises(InvalidInput, match="non-empty list"):
        LocalBackend(slot_labels=[], nvidia_smi=str(tmp_path / "none"))
    with pytest.raises(InvalidInput, match="cpu_slots"):
        LocalBackend(cpu_slots=0)


def test_gpu_slots_from_nvidia_smi(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    smi = fake_nvidia_smi(tmp_path, 'echo "NVIDIA H100 80GB HBM3, 81559 MiB"\n'
                                    'echo "NVIDIA A100-SXM4-80GB, 81920 MiB"\n')
    backend = LocalBackend(cpu_slots=5, nvidia_smi=smi)
    assert [(c.name, c.gpu_type, c.simulated) for c in backend.clusters()] == [
        ("local-gpu0", "H100", False), ("local-gpu1", "A100-80GB", False)]
    # each slot pins its own device for the run
    d = make_run_dir(tmp_path)
    out = wait_outcome(backend, backend.submit("local-gpu1", spec(d)))
    assert out.result["status"] == "done"
    assert json.loads((d / "env.json").read_text())["CUDA_VISIBLE_DEVICES"] == "1"
    # a server started with CUDA_VISIBLE_DEVICES=1 only uses that GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [(c.name, c.gpu_type) for c in LocalBackend(nvidia_smi=smi).clusters()] == [("local-gpu1", "A100-80GB")]
    # more simulation labels than GPUs is refused
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with pytest.raises(InvalidInput, match="only 2 local GPUs"):
        LocalBackend(slot_labels=["H100", "H100", "H200"], nvidia_smi=smi)


def test_broken_nvidia_smi_means_cpu_slots(tmp_path: Path) -> None:
    smi = fake_nvidia_smi(tmp_path, 'echo "NVIDIA-SMI has failed because it could not communicate with the driver"\n'
                                    'exit 9\n')
    assert [c.gpu_type for c in LocalBackend(cpu_slots=2, nvidia_smi=smi).clusters()] == ["CPU", "CPU"]


def test_parse_nvidia_smi() -> None:
    assert parse_nvidia_smi("NVIDIA L4, 23034 MiB\n\nNVIDIA GeForce RTX 4090, 24564 MiB\n") == [
        ("NVIDIA L4", 23034.0), ("NVIDIA GeForce RTX 4090", 24564.0)]


def test_provision_refuses_and_teardown_is_a_no_op(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=2, nvidia_smi=str(tmp_path / "none"))
    with pytest.raises(InvalidInput, match="fixed set of slots: 2 CPU slots.*use backend skypilot"):
        backend.provision(1, "H100")
    assert backend.teardown() == []
    assert backend.teardown(["local-cpu1"]) == []
    assert len(backend.clusters()) == 2
    with pytest.raises(NotFound, match="local-cpu0, local-cpu1"):
        backend.teardown(["local-cpu9"])


# -- jobs -------------------------------------------------------------------------------------

def test_submit_poll_passes_the_slot_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cores = len(os.sched_getaffinity(0))
    backend = LocalBackend(slot_labels=["H100", "H200"], cache_dir=tmp_path / "cache",
                           nvidia_smi=str(tmp_path / "none"))
    d = make_run_dir(tmp_path)
    handle = backend.submit("local-sim1-h200", spec(d, env={"EXTRA_KNOB": "3", "WAIT_FOR_GO": "1"}))
    assert handle.cluster == "local-sim1-h200" and handle.experiment_id == "e0001"
    assert isinstance(handle.backend_ref["pid"], int) and handle.backend_ref["start_time"]
    wait_for(d / "env.json")
    assert backend.poll([handle]) == []                       # still running
    assert backend.clusters()[1].running == ["e0001"]
    # a second job is queued ahead; a third is refused: the slot is full
    d2 = make_run_dir(tmp_path, name="second")
    h2 = backend.submit("local-sim1-h200", spec(d2, eid="e0002"))
    assert backend.clusters()[1].running == ["e0001", "e0002"]
    with pytest.raises(Conflict, match="one job at a time"):
        backend.submit("local-sim1-h200", spec(make_run_dir(tmp_path, name="other"), eid="e0003"))
    (d / "GO").touch()
    out = wait_outcome(backend, handle)
    assert not out.lost and out.result["status"] == "done"
    assert out.result["metrics"] == {"val_bpb": 1.234, "num_steps": 5}
    assert out.log_path == str(d / "run.log")
    assert wait_outcome(backend, h2).result["status"] == "done"
    assert backend.clusters()[1].running == []
    seen = json.loads((d / "env.json").read_text())
    assert seen == {
        "AUTORESEARCH_PROFILE": "cpu", "AUTORESEARCH_SEED": "7", "AUTORESEARCH_THREADS": str(max(1, cores // 2)),
        "AUTORESEARCH_GPU_LABEL": "H200", "AUTORESEARCH_CACHE": str(tmp_path / "cache"),
        "CUDA_VISIBLE_DEVICES": "", "PYTHONUNBUFFERED": "1", "EXTRA_KNOB": "3",
        "stdin": "/dev/null", "pgid_is_own": True,
    }
    assert (d / "runner.py").read_bytes() == Path(runner.__file__).read_bytes()
    assert "TRAIN OUTPUT" in (d / "run.log").read_text()
    assert (d / "runner.out").read_text().strip().splitlines()[-1].startswith("AUTORESEARCH_RESULT: ")


def test_submit_rejects_bad_jobs(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    d = make_run_dir(tmp_path)
    with pytest.raises(NotFound, match="local-cpu0"):
        backend.submit("local-gpu7", spec(d))
    with pytest.raises(InvalidInput, match="harness_hash"):
        backend.submit("local-cpu0", spec(d, harness_hash="abc; rm -rf /"))
    with pytest.raises(InvalidInput, match="timeout_s"):
        backend.submit("local-cpu0", spec(d, timeout_s=-1))
    with pytest.raises(InvalidInput, match="does not exist"):
        backend.submit("local-cpu0", spec(tmp_path / "missing"))
    (d / "prepare.py").unlink()
    with pytest.raises(InvalidInput, match="lacks prepare.py"):
        backend.submit("local-cpu0", spec(d))
    d2 = make_run_dir(tmp_path, name="used")
    (d2 / "result.json").write_text("{}")
    with pytest.raises(Conflict, match="fresh run directory"):
        backend.submit("local-cpu0", spec(d2))
    assert backend.clusters()[0].running == []
    assert not (d / "runner.py").exists()
    broken = LocalBackend(cpu_slots=1, python=str(tmp_path / "no-python"), nvidia_smi=str(tmp_path / "none"))
    with pytest.raises(InvalidInput, match="cannot start the runner"):
        broken.submit("local-cpu0", spec(make_run_dir(tmp_path, name="fresh")))
    assert broken.clusters()[0].running == []


def test_cancel_is_idempotent_and_keeps_a_finished_result(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=2, nvidia_smi=str(tmp_path / "none"), kill_grace_s=0.5)
    d = make_run_dir(tmp_path, HANG)
    handle = backend.submit("local-cpu0", spec(d))
    wait_for(d / "started")
    backend.cancel(handle)
    backend.cancel(handle)
    assert gone(handle.backend_ref["pid"])
    assert wait_outcome(backend, handle).result["status"] == "cancelled"
    # cancelling a job that already finished changes nothing
    d2 = make_run_dir(tmp_path, name="finished")
    h2 = backend.submit("local-cpu1", spec(d2, eid="e0002"))
    assert wait_outcome(backend, h2).result["status"] == "done"
    before = (d2 / "result.json").read_bytes()
    backend.cancel(h2)
    assert (d2 / "result.json").read_bytes() == before


def test_a_reused_pid_is_not_mistaken_for_the_runner(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    d = make_run_dir(tmp_path)
    # a live process (this one) with the wrong start time: the runner it names is gone
    handle = JobHandle("e0001", 1, "local-cpu0", str(d),
                       {"pid": os.getpid(), "start_time": 1, "boot_id": ""}, time.time())
    out = backend.poll([handle])
    assert len(out) == 1 and out[0].lost and "no longer running" in out[0].reason
    # an empty backend_ref (never submitted) with a result on disk still yields the result
    (d / "result.json").write_text(json.dumps({"status": "done", "metrics": {"val_bpb": 1.0}}))
    bare = JobHandle("e0001", 1, "local-cpu0", str(d), {}, 0.0)
    assert backend.poll([bare])[0].result["status"] == "done"
    backend.cancel(bare)  # nothing to do, no error


# -- engine restarts and stdout ---------------------------------------------------------------

SUBMIT_SCRIPT = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from mcp_server.backends.base import JobSpec
    from mcp_server.backends.local.backend import LocalBackend
    run_dir, handle_file, hash_ = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    backend = LocalBackend(cpu_slots=1, nvidia_smi="/nonexistent/nvidia-smi", kill_grace_s=0.5)
    handle = backend.submit("local-cpu0", JobSpec("e0001", 1, run_dir, "cpu", 60.0, hash_, 7,
                                                   {"WAIT_FOR_GO": "1"}))
    handle_file.write_text(handle.to_json())
    if len(sys.argv) > 4:   # a second job, queued ahead: its runner waits for the first
        second = backend.submit("local-cpu0", JobSpec("e0002", 1, Path(sys.argv[4]), "cpu", 60.0, hash_, 8, {}))
        Path(str(handle_file) + ".2").write_text(second.to_json())
    print("submitted", flush=True)
""")


def submit_from_another_process(tmp_path: Path, d: Path, queued: Path | None = None) -> tuple[JobHandle, str]:
    """Submit from a short-lived 'engine' process whose stdout is a pipe; return the handle and
    everything that ever reached that pipe (read to EOF: no runner may still hold it). With
    `queued`, a second job is queued ahead behind the first (its handle in handle.json.2)."""
    script = tmp_path / "engine.py"
    script.write_text(SUBMIT_SCRIPT)
    handle_file = tmp_path / "handle.json"
    engine = subprocess.Popen([sys.executable, str(script), str(d), str(handle_file), HASH]
                              + ([str(queued)] if queued else []),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    # communicate() reads to EOF: it would block until the run ends if a child kept the pipe.
    stdout, stderr = engine.communicate(timeout=30)
    assert engine.returncode == 0, stderr.decode()
    return JobHandle.from_json(handle_file.read_text()), stdout.decode()


def test_handle_survives_an_engine_restart_and_children_do_not_inherit_stdout(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path)
    d2 = make_run_dir(tmp_path, name="queued")
    handle, stdout = submit_from_another_process(tmp_path, d, queued=d2)
    assert stdout == "submitted\n"                 # nothing from the runners (the waiting one too) or train.py
    second = JobHandle.from_json((tmp_path / "handle.json.2").read_text())
    wait_for(d / "env.json")
    assert not gone(handle.backend_ref["pid"])     # the run outlived its engine
    assert not gone(second.backend_ref["pid"]) and not (d2 / "env.json").exists()   # waits, untrained
    fresh = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    assert fresh.poll([handle, second]) == []      # recognised as alive by pid + start time
    assert fresh.clusters()[0].running == ["e0001", "e0002"]
    (d / "GO").touch()
    out = wait_outcome(fresh, handle)
    assert out.result["status"] == "done" and out.result["metrics"]["val_bpb"] == 1.234
    assert wait_outcome(fresh, second).result["status"] == "done"
    assert fresh.clusters()[0].running == []


def test_runner_killed_while_the_engine_was_down_is_lost_after_restart(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path)
    handle, _ = submit_from_another_process(tmp_path, d)
    wait_for(d / "env.json")
    wait_for(d / "train.pid")
    train_pid = json.loads((d / "train.pid").read_text())["pid"]
    os.kill(handle.backend_ref["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(handle.backend_ref["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    out = wait_outcome(fresh, handle)
    assert out.lost and out.result is None
    assert "no longer running" in out.reason and "without writing result.json" in out.reason
    deadline = time.monotonic() + 5
    while not gone(train_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(train_pid), "the orphaned train.py was not killed"


# -- a job queued ahead on a busy slot --------------------------------------------------------

# Records its start and end in a trace shared by every job of the test, and whether another job
# was training at the same moment (a marker holding the pid of the job training now: if that
# process is still alive when the next one starts, they overlap).
TRACING_TRAIN = textwrap.dedent("""\
    import json, os, time
    trace, busy = os.environ["TRACE"], os.environ["TRACE"] + ".busy"
    me = os.path.basename(os.getcwd())
    def note(what):
        with open(trace, "a") as f:
            f.write(f"{what} {me} {os.environ.get('CUDA_VISIBLE_DEVICES')}\\n")
    def alive(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
        except (OSError, IndexError):
            return False
    try:
        other = int(open(busy).read())
    except (OSError, ValueError):
        other = None
    if other is not None and alive(other):
        note("OVERLAP")
    with open(busy + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.replace(busy + ".tmp", busy)
    note("start")
    open("started", "w").close()
    while os.environ.get("WAIT_FOR_GO") and not os.path.exists("GO"):
        time.sleep(0.05)
    if os.environ.get("HANG"):
        while True:
            time.sleep(1)
    note("end")
    os.unlink(busy)
    print("---")
    print('RESULT_JSON: {"val_bpb": 1.5, "num_steps": 3}')
""")


def wait_blocked(pid: int, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not blocked_on_a_lock(pid):
        assert time.monotonic() < deadline, f"runner {pid} never blocked on the slot lock"
        assert not gone(pid), f"runner {pid} exited instead of waiting"
        time.sleep(0.02)


def trace_lines(tmp_path: Path) -> list[str]:
    t = tmp_path / "trace"
    return t.read_text().splitlines() if t.exists() else []


def test_queued_ahead_job_waits_then_starts_on_the_same_gpu_without_overlap(tmp_path: Path) -> None:
    smi = fake_nvidia_smi(tmp_path, 'echo "NVIDIA H100 80GB HBM3, 81559 MiB"\n'
                                    'echo "NVIDIA H100 80GB HBM3, 81559 MiB"\n')
    backend = LocalBackend(nvidia_smi=smi)
    assert backend.queue_depth("local-gpu1") == 2
    trace = {"TRACE": str(tmp_path / "trace")}
    first = make_run_dir(tmp_path, TRACING_TRAIN, name="first")
    second = make_run_dir(tmp_path, TRACING_TRAIN, name="second")
    h1 = backend.submit("local-gpu1", spec(first, "e0001", env=dict(trace, WAIT_FOR_GO="1")))
    h2 = backend.submit("local-gpu1", spec(second, "e0002", env=trace))
    assert h2.backend_ref["after"] == ["e0001"] and h1.backend_ref["after"] == []
    wait_for(first / "started")
    # the second runner is up (it did its startup work) and waits: it does not train meanwhile
    wait_blocked(h2.backend_ref["pid"])
    assert not (second / "started").exists() and not (second / runner.TRAIN_PID_FILE).exists()
    assert backend.poll([h1, h2]) == []
    assert backend.started_at(h1) is not None and backend.started_at(h2) is None
    (first / "GO").touch()
    r1 = wait_outcome(backend, h1).result
    r2 = wait_outcome(backend, h2).result
    assert r1["status"] == r2["status"] == "done"
    assert trace_lines(tmp_path) == ["start first 1", "end first 1", "start second 1", "end second 1"]
    # the second run's clock starts when it was handed the slot, not when its runner started
    assert r2["started_at"] >= r1["ended_at"]
    assert r2["waited_s"] > 0 and r1["waited_s"] < r2["waited_s"]
    assert backend.started_at(h2) == r2["started_at"]
    assert backend.clusters()[1].running == []


def test_polls_see_every_exit_through_the_watch_and_close_its_pidfd(tmp_path: Path) -> None:
    """Live runners are watched (a pidfd each), not read from /proc every poll: six jobs on three
    slots (one queued ahead on each) all end with their results, and no pidfd outlives its job."""
    from mcp_server.backends.local.processes import WATCH
    backend = LocalBackend(cpu_slots=3, nvidia_smi=str(tmp_path / "none"))
    fds_before = len(os.listdir("/proc/self/fd"))
    gate = {"WAIT_FOR_GO": "1"}
    handles = []
    for i in range(6):
        d = make_run_dir(tmp_path, name=f"r{i}")
        handles.append(backend.submit(f"local-cpu{i % 3}", spec(d, f"e{i:04d}", env=gate)))
    assert all(WATCH.watched(h) for h in handles)
    assert backend.poll(handles) == []          # all alive: running (3) or waiting queued ahead (3)
    for h in handles:
        (Path(h.run_dir) / "GO").touch()
    done: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    while len(done) < 6:
        assert time.monotonic() < deadline, f"only {sorted(done)} ended"
        for out in backend.poll([h for h in handles if h.experiment_id not in done]):
            assert not out.lost, out.reason
            done[out.handle.experiment_id] = out.result
        time.sleep(0.05)
    assert all(r["status"] == "done" and r["metrics"]["val_bpb"] == 1.234 for r in done.values())
    assert not any(WATCH.watched(h) for h in handles)
    assert backend.clusters()[0].running == []
    deadline = time.monotonic() + 10
    while len(os.listdir("/proc/self/fd")) > fds_before:   # (a launcher pipe may settle late)
        assert time.monotonic() < deadline, "pidfds were left open"
        time.sleep(0.05)


def test_cancelling_the_queued_ahead_job_kills_only_its_waiting_runner(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"), kill_grace_s=0.5)
    trace = {"TRACE": str(tmp_path / "trace")}
    first = make_run_dir(tmp_path, TRACING_TRAIN, name="first")
    second = make_run_dir(tmp_path, TRACING_TRAIN, name="second")
    h1 = backend.submit("local-cpu0", spec(first, "e0001", env=dict(trace, WAIT_FOR_GO="1")))
    h2 = backend.submit("local-cpu0", spec(second, "e0002", env=trace))
    wait_for(first / "started")
    wait_blocked(h2.backend_ref["pid"])
    backend.cancel(h2)
    assert gone(h2.backend_ref["pid"])
    out2 = wait_outcome(backend, h2)
    assert out2.result["status"] == "cancelled" and "before train.py started" in out2.result["error"]
    assert not (second / "started").exists() and not (second / runner.TRAIN_PID_FILE).exists()
    assert backend.poll([h1]) == [] and not gone(h1.backend_ref["pid"])   # the running one goes on
    assert backend.clusters()[0].running == ["e0001"]
    # the freed place can be taken by another job, which then runs after the first
    third = make_run_dir(tmp_path, TRACING_TRAIN, name="third")
    h3 = backend.submit("local-cpu0", spec(third, "e0003", env=trace))
    assert h3.backend_ref["after"] == ["e0001"]
    (first / "GO").touch()
    assert wait_outcome(backend, h1).result["status"] == "done"
    assert wait_outcome(backend, h3).result["status"] == "done"
    assert trace_lines(tmp_path) == ["start first ", "end first ", "start third ", "end third "]
    # cancelled the moment it was submitted (its runner may not even have installed its signal
    # handlers): nothing runs, and its run.log says so
    fourth = make_run_dir(tmp_path, TRACING_TRAIN, name="fourth")
    h4 = backend.submit("local-cpu0", spec(fourth, "e0004", env=trace))
    backend.cancel(h4)
    assert gone(h4.backend_ref["pid"]) and not (fourth / "started").exists()
    assert "cancelled" in (fourth / runner.LOG_FILE).read_text()
    assert backend.clusters()[0].running == []


def test_cancelling_the_running_job_lets_the_queued_one_start(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"), kill_grace_s=0.5)
    trace = {"TRACE": str(tmp_path / "trace")}
    first = make_run_dir(tmp_path, TRACING_TRAIN, name="first")
    second = make_run_dir(tmp_path, TRACING_TRAIN, name="second")
    h1 = backend.submit("local-cpu0", spec(first, "e0001", env=dict(trace, HANG="1")))
    h2 = backend.submit("local-cpu0", spec(second, "e0002", env=trace))
    wait_for(first / "started")
    backend.cancel(h1)
    assert wait_outcome(backend, h1).result["status"] == "cancelled"
    r2 = wait_outcome(backend, h2).result
    assert r2["status"] == "done"
    assert trace_lines(tmp_path) == ["start first ", "start second ", "end second "]


def test_queued_ahead_hard_timeout_counts_from_its_start(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"), kill_grace_s=0.5)
    trace = {"TRACE": str(tmp_path / "trace")}
    first = make_run_dir(tmp_path, TRACING_TRAIN, name="first")
    second = make_run_dir(tmp_path, TRACING_TRAIN, name="second")
    h1 = backend.submit("local-cpu0", spec(first, "e0001", env=dict(trace, WAIT_FOR_GO="1")))
    h2 = backend.submit("local-cpu0", spec(second, "e0002", env=dict(trace, HANG="1"), timeout_s=1.0))
    wait_for(first / "started")
    wait_blocked(h2.backend_ref["pid"])
    time.sleep(2.0)                              # longer than the second job's hard timeout
    assert backend.poll([h2]) == []              # ... which has not started counting
    (first / "GO").touch()
    r1 = wait_outcome(backend, h1).result
    r2 = wait_outcome(backend, h2).result
    assert r1["status"] == "done" and r2["status"] == "timeout"
    assert r2["started_at"] >= r1["ended_at"]
    assert r2["ended_at"] - r2["started_at"] >= 1.0
    assert "start second " in trace_lines(tmp_path)


def test_killed_running_runner_releases_the_slot_only_once_its_training_is_gone(tmp_path: Path) -> None:
    """SIGKILL cannot be forwarded: train.py, orphaned, still holds the slot lock (inherited), so
    the queued job does not start beside it; once poll reports the runner lost and kills the
    orphan's group, the queued job starts."""
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"), kill_grace_s=0.5)
    trace = {"TRACE": str(tmp_path / "trace")}
    first = make_run_dir(tmp_path, TRACING_TRAIN, name="first")
    second = make_run_dir(tmp_path, TRACING_TRAIN, name="second")
    h1 = backend.submit("local-cpu0", spec(first, "e0001", env=dict(trace, HANG="1")))
    h2 = backend.submit("local-cpu0", spec(second, "e0002", env=trace))
    wait_for(first / "started")          # train.py itself is up (its pid file comes earlier, at spawn)
    train_pid = json.loads((first / runner.TRAIN_PID_FILE).read_text())["pid"]
    os.kill(h1.backend_ref["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(h1.backend_ref["pid"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    wait_blocked(h2.backend_ref["pid"])                                 # still waiting: the orphan
    assert not gone(train_pid) and not (second / "started").exists()   # holds the slot
    out1 = wait_outcome(backend, h1)
    assert out1.lost and "SIGKILL" in out1.reason
    assert wait_outcome(backend, h2).result["status"] == "done"
    assert gone(train_pid)
    assert trace_lines(tmp_path) == ["start first ", "start second ", "end second "]


def test_a_restarted_backend_queues_behind_the_jobs_it_adopts(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    trace = {"TRACE": str(tmp_path / "trace")}
    dirs = [make_run_dir(tmp_path, TRACING_TRAIN, name=n) for n in ("first", "second", "third")]
    h1 = backend.submit("local-cpu0", spec(dirs[0], "e0001", env=dict(trace, WAIT_FOR_GO="1")))
    h2 = backend.submit("local-cpu0", spec(dirs[1], "e0002", env=trace))
    handles = [JobHandle.from_json(h.to_json()) for h in (h2, h1)]    # as persisted; any order
    fresh = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    assert fresh.poll(handles) == []                                   # both adopted, alive
    assert fresh.clusters()[0].running == ["e0001", "e0002"]
    with pytest.raises(Conflict, match="one job at a time"):
        fresh.submit("local-cpu0", spec(dirs[2], "e0003", env=trace))
    wait_for(dirs[0] / "started")
    (dirs[0] / "GO").touch()
    assert wait_outcome(fresh, handles[1]).result["status"] == "done"
    h3 = fresh.submit("local-cpu0", spec(dirs[2], "e0003", env=trace))
    assert h3.backend_ref["after"] == ["e0002"]
    assert wait_outcome(fresh, handles[0]).result["status"] == "done"
    assert wait_outcome(fresh, h3).result["status"] == "done"
    assert trace_lines(tmp_path) == ["start first ", "end first ", "start second ", "end second ",
                                     "start third ", "end third "]
    deadline = time.monotonic() + 10         # (a runner exits just after writing its result)
    while not all(gone(h.backend_ref["pid"]) for h in (h1, h2, h3)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(gone(h.backend_ref["pid"]) for h in (h1, h2, h3))
