"""The runner (mcp_server/runtime/runner.py) run for real: a subprocess in a run directory with small
stand-in train.py scripts written here, checked through result.json, its stdout and /proc."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from engine_helpers import blocked_on_a_lock

from mcp_server.backends.base import JobSpec
from mcp_server.backends.local.backend import LocalBackend
from mcp_server.runtime import run_log, runner

ROOT = Path(__file__).resolve().parent.parent
RUNNER = ROOT / "mcp_server" / "runtime" / "runner.py"
PREPARE = "# stand-in harness\nHARNESS = 1\n"

SUCCESS = textwrap.dedent("""\
    import json
    print("step 00001 | loss 3.2100", flush=True)
    print("step 00002 | loss 2.9800", flush=True)
    print("---")
    print("val_bpb:          0.997900")
    print("training_seconds: 1.5")
    print("peak_vram_mb:     0.0")
    print("mfu_percent:      None")
    print("num_steps:        953")
    print("depth:            8")
    print("device:           cpu")
    print("RESULT_JSON: " + json.dumps({"val_bpb": 0.9979, "training_seconds": 1.5, "mfu_percent": None,
                                       "num_steps": 953, "depth": 8, "device": "cpu"}))
""")

# Writes its own pid and a grandchild's pid, then hangs; both ignore SIGTERM so only the
# runner's SIGKILL of the whole group can end them.
HANG = textwrap.dedent("""\
    import os, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    open("grandchild.pid.tmp", "w").write(str(child.pid)); os.replace("grandchild.pid.tmp", "grandchild.pid")
    open("train_pid.tmp", "w").write(str(os.getpid())); os.replace("train_pid.tmp", "train_pid")
    print("training forever", flush=True)
    while True:
        time.sleep(1)
""")


def make_run_dir(tmp_path: Path, train: str, prepare: str = PREPARE, name: str = "run") -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "prepare.py").write_text(prepare)
    (d / "train.py").write_text(train)
    for name in runner.RUNTIME_FILES:      # runner.py and what it imports, as a backend ships them
        shutil.copyfile(RUNNER.parent / name, d / name)
    return d


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def run_runner(d: Path, timeout: float = 30, expected: str | None = None, grace: float = 0.5,
               wall: float = 60) -> tuple[subprocess.CompletedProcess[str], dict]:
    proc = subprocess.run(
        [sys.executable, "runner.py", "--expected-hash", expected or sha(PREPARE), "--timeout", str(timeout),
         "--kill-grace", str(grace)],
        cwd=d, capture_output=True, text=True, timeout=wall, stdin=subprocess.DEVNULL,
    )
    result = json.loads((d / "result.json").read_text())
    return proc, result


def gone(pid: int) -> bool:
    """True when pid no longer runs (absent, or a zombie waiting for init to reap it)."""
    return runner.proc_state(pid) in (None, "Z", "X")


def wait_for(path: Path, seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        time.sleep(0.05)


def spec(d: Path, eid: str = "e0001", timeout: float = 60, seed: int = 7) -> JobSpec:
    return JobSpec(experiment_id=eid, attempt=1, run_dir=d, profile="cpu", timeout_s=timeout,
                   harness_hash=sha(PREPARE), seed=seed)


# -- results ----------------------------------------------------------------------------------

def test_success_parses_summary_and_result_json(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, SUCCESS)
    proc, result = run_runner(d)
    assert proc.returncode == 0
    assert result["status"] == "done" and result["exit_code"] == 0 and result["error"] is None
    m = result["metrics"]
    assert m["val_bpb"] == pytest.approx(0.9979)
    assert m["num_steps"] == 953 and m["depth"] == 8 and m["device"] == "cpu"
    assert m["peak_vram_mb"] == 0.0          # only in the summary block: filled in from there
    assert m["mfu_percent"] is None
    assert result["harness_hash"] == sha(PREPARE)
    assert result["runner_pid"] > 0 and result["ended_at"] >= result["started_at"]
    assert "step 00002" in result["log_tail"]
    assert "loss 2.9800" in (d / "run.log").read_text()
    # the last stdout line carries the same object as result.json
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("AUTORESEARCH_RESULT: ")
    assert json.loads(last[len("AUTORESEARCH_RESULT: "):]) == result
    assert run_log.parse_runner_output(proc.stdout) == result
    assert not list(d.glob("*.tmp"))


def test_train_runs_at_the_runners_priority_and_only_the_bookkeeping_yields(tmp_path: Path) -> None:
    # the runner lowers its own priority once the slot is handed on (runner.BOOKKEEPING_NICE),
    # never before: train.py (and what it starts) runs at the priority the runner was given
    d = make_run_dir(tmp_path, "import os\nopen('nice', 'w').write(str(os.nice(0)))\n" + SUCCESS)
    proc, result = run_runner(d)
    assert result["status"] == "done", result["error"]
    assert int((d / "nice").read_text()) == os.nice(0)
    assert runner.BOOKKEEPING_NICE > 0


def test_exception_is_a_crash_with_the_exception_in_error(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, 'print("starting")\n'
                               'def f():\n    raise ValueError("learning rate must be positive")\nf()\n')
    proc, result = run_runner(d)
    assert proc.returncode == 0
    assert result["status"] == "crash" and result["exit_code"] == 1
    assert "ValueError: learning rate must be positive" in result["error"]
    assert "line 3" in result["error"]  # where it was raised
    assert result["metrics"] == {}
    assert "Traceback" in result["log_tail"]


def test_fail_nan_is_nan(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, 'import sys\nprint("step 1 | loss 3.1")\n'
                               'print("FAIL: loss is nan at step 12")\nsys.exit(1)\n')
    _, result = run_runner(d)
    assert result["status"] == "nan"
    assert result["error"] == "FAIL: loss is nan at step 12"


def test_out_of_memory_is_oom(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, 'raise MemoryError("cannot allocate 80 GiB")\n')
    _, result = run_runner(d)
    assert result["status"] == "oom"
    assert "MemoryError" in result["error"]


def test_summary_block_without_result_json_is_done(tmp_path: Path) -> None:
    """karpathy's format: only the `key: value` block after `---`; every key is kept."""
    d = make_run_dir(tmp_path, 'print("step 1 loss 3.2")\nprint("---")\nprint("val_bpb:          1.000000")\n'
                               'print("training_seconds: 2.5")\nprint("peak_vram_mb:     12.0")\n'
                               'print("num_steps:        7")\nprint("my_extra:         0.25")\n')
    _, result = run_runner(d)
    assert result["status"] == "done", result
    assert result["metrics"] == {"val_bpb": 1.0, "training_seconds": 2.5, "peak_vram_mb": 12.0, "num_steps": 7,
                                 "my_extra": 0.25}


def test_exit_zero_without_the_metric_is_a_crash_naming_it(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, 'print("---")\nprint("val_loss: 1.0")\n')
    _, result = run_runner(d)
    assert result["status"] == "crash" and result["exit_code"] == 0
    assert "reported no val_bpb" in result["error"] and "RESULT_JSON" in result["error"]


def test_timeout_kills_the_whole_group(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, HANG)
    t0 = time.monotonic()
    proc, result = run_runner(d, timeout=1.5, grace=0.5)
    assert time.monotonic() - t0 < 20
    assert proc.returncode == 0
    assert result["status"] == "timeout"
    assert "hard timeout of 1.5 s" in result["error"]
    train_pid = int((d / "train_pid").read_text())
    grandchild = int((d / "grandchild.pid").read_text())
    assert gone(train_pid), "train.py survived the timeout"
    assert gone(grandchild), "train.py's child survived the timeout"
    assert "[runner] timeout" in (d / "run.log").read_text()


def test_tampered_harness_is_rejected_and_train_never_starts(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, 'open("STARTED", "w").write("yes")\n', prepare=PREPARE + "# edited by the agent\n")
    proc, result = run_runner(d, expected=sha(PREPARE))
    assert proc.returncode == 0
    assert result["status"] == "rejected"
    assert "prepare.py was modified" in result["error"]
    assert result["harness_hash"] == sha(PREPARE + "# edited by the agent\n")
    assert not (d / "STARTED").exists()
    assert not (d / "train.pid").exists()
    assert "rejected" in (d / "run.log").read_text()


def test_missing_train_py_is_a_crash_not_a_hang(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, "")
    (d / "train.py").unlink()
    _, result = run_runner(d)
    assert result["status"] == "crash" and "train.py is missing" in result["error"]


def test_runner_sigterm_is_forwarded_and_recorded_as_cancelled(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, HANG)
    p = subprocess.Popen([sys.executable, "runner.py", "--expected-hash", sha(PREPARE), "--timeout", "60",
                          "--kill-grace", "0.5"], cwd=d, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    try:
        wait_for(d / "train_pid")
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "cancelled"
    assert run_log.parse_runner_output(out.decode()) == result
    assert gone(int((d / "train_pid").read_text()))
    assert gone(int((d / "grandchild.pid").read_text()))


# -- queued ahead: waiting for the slot lock --------------------------------------------------

def held_lock(path: Path) -> int:
    """An fd holding an exclusive flock on `path` (a job ahead on the slot, played by the test)."""
    import fcntl
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def start_queued_runner(d: Path, ahead: Path, timeout: float = 30) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "runner.py", "--expected-hash", sha(PREPARE), "--timeout", str(timeout),
                             "--kill-grace", "0.5", "--after", str(ahead), "--after", str(d / "no-such.lock")],
                            cwd=d, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, start_new_session=True)


def wait_blocked(p: subprocess.Popen[bytes], seconds: float = 20) -> None:
    deadline = time.monotonic() + seconds
    while not blocked_on_a_lock(p.pid):
        assert p.poll() is None, "the runner exited instead of waiting for the slot"
        assert time.monotonic() < deadline, "the runner never blocked on the slot lock"
        time.sleep(0.02)


def test_queued_runner_waits_for_the_slot_and_its_clock_starts_then(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, 'open("STARTED", "w").close()\n' + SUCCESS)
    ahead = tmp_path / "ahead.lock"
    fd = held_lock(ahead)
    p = start_queued_runner(d, ahead, timeout=30)
    try:
        wait_blocked(p)
        assert not (d / "STARTED").exists() and not (d / runner.TRAIN_PID_FILE).exists()
        released = time.time()
        os.close(fd)
        out, _ = p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "done" and run_log.parse_runner_output(out.decode()) == result
    assert result["started_at"] >= released and result["waited_s"] > 0
    assert json.loads((d / runner.TRAIN_PID_FILE).read_text())["started_at"] == result["started_at"]


def sched_slice(pid: int | str = "self") -> int | None:
    """The process's scheduler slice in ns (/proc/<pid>/sched, EEVDF kernels), None where not shown."""
    try:
        text = Path(f"/proc/{pid}/sched").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


def test_a_waiting_runner_asks_for_a_short_slice_and_train_py_runs_with_the_default(tmp_path: Path) -> None:
    default = sched_slice()
    if default is None or not runner.request_slice(0):
        pytest.skip("this kernel shows no scheduler slice (EEVDF, Linux 6.12+) or refuses sched_setattr")
    d = make_run_dir(tmp_path, textwrap.dedent("""\
        for line in open("/proc/self/sched"):
            if line.startswith("se.slice"):
                open("slice", "w").write(line.split(":")[1].strip())
    """) + SUCCESS)
    ahead = tmp_path / "ahead.lock"
    fd = held_lock(ahead)
    p = start_queued_runner(d, ahead, timeout=30)
    try:
        wait_blocked(p)
        assert sched_slice(p.pid) == runner.RUNNER_SLICE_NS     # woken by the hand-off: runs first
        os.close(fd)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert json.loads((d / "result.json").read_text())["status"] == "done"
    assert int((d / "slice").read_text()) == default              # train.py did not inherit it
    assert default > runner.RUNNER_SLICE_NS


def test_a_runner_leading_its_session_lowers_the_session_share_once_the_slot_is_handed_on(tmp_path: Path) -> None:
    if not Path("/proc/self/autogroup").exists():
        pytest.skip("this kernel does not group CPU time by session (no /proc/self/autogroup)")
    # in its own session (as the local backend starts runners): the session's nice rises
    # the file reads "/autogroup-<id> nice <n>", or nothing for a task in the root group (a session
    # that never called setsid since boot, as a container's init may run the tests in)
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import runner; runner._yield_session_share(); "
             "print(open('/proc/self/autogroup').read(), end='')")
    own = subprocess.run([sys.executable, "-c", probe, str(RUNNER.parent)], capture_output=True,
                         text=True, start_new_session=True, check=True)
    assert own.stdout.split()[-1] == str(runner.BOOKKEEPING_NICE)
    # in a session it shares (here the test's): left alone, whichever group that is
    shared = subprocess.run([sys.executable, "-c", probe, str(RUNNER.parent)], capture_output=True,
                            text=True, check=True)
    assert shared.stdout == Path("/proc/self/autogroup").read_text()


def test_queued_runner_stopped_while_waiting_is_cancelled_and_never_trains(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, 'open("STARTED", "w").close()\n' + SUCCESS)
    ahead = tmp_path / "ahead.lock"
    fd = held_lock(ahead)
    p = start_queued_runner(d, ahead)
    try:
        wait_blocked(p)
        stopped = time.time()
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=20)     # it does not wait for the lock any longer
    finally:
        os.close(fd)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0
    result = json.loads((d / "result.json").read_text())
    assert result["status"] == "cancelled" and "before train.py started" in result["error"]
    assert run_log.parse_runner_output(out.decode()) == result
    assert not (d / "STARTED").exists() and not (d / runner.TRAIN_PID_FILE).exists()
    # it never had the slot: its busy interval starts when it stopped waiting
    assert stopped <= result["started_at"] <= result["ended_at"] and result["waited_s"] > 0


def test_runner_and_train_hold_the_slot_lock_while_training(tmp_path: Path) -> None:
    import fcntl
    probe = textwrap.dedent("""\
        import fcntl, os
        fd = os.open("runner.lock", os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            print("LOCK FREE")
        except BlockingIOError:
            print("LOCK HELD")
    """)
    d = make_run_dir(tmp_path, probe + SUCCESS)
    fd = held_lock(d / runner.LOCK_FILE)
    p = subprocess.Popen([sys.executable, "runner.py", "--expected-hash", sha(PREPARE), "--timeout", "30",
                          "--lock-fd", str(fd)], cwd=d, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         pass_fds=(fd,))
    os.close(fd)                                   # only the runner (and train.py) hold it now
    p.communicate(timeout=30)
    assert json.loads((d / "result.json").read_text())["status"] == "done"
    assert "LOCK HELD" in (d / "run.log").read_text()
    check = os.open(d / runner.LOCK_FILE, os.O_RDONLY)
    try:
        fcntl.flock(check, fcntl.LOCK_EX | fcntl.LOCK_NB)   # released: the next job may start
    finally:
        os.close(check)


# -- with the local backend -------------------------------------------------------------------

def test_runner_killed_mid_run_is_reported_lost_and_training_is_cleaned_up(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, HANG)
    backend = LocalBackend(cpu_slots=1, kill_grace_s=0.5)
    handle = backend.submit("local-cpu0", spec(d))
    try:
        wait_for(d / "train_pid")
        wait_for(d / "train.pid")
        assert backend.poll([handle]) == []        # alive: no outcome yet
        os.kill(handle.backend_ref["pid"], signal.SIGKILL)
        deadline = time.monotonic() + 10
        outcomes = backend.poll([handle])
        while not outcomes and time.monotonic() < deadline:
            time.sleep(0.05)
            outcomes = backend.poll([handle])
        assert len(outcomes) == 1
        out = outcomes[0]
        assert out.lost and out.result is None
        assert "SIGKILL" in out.reason and "without writing result.json" in out.reason
        assert not (d / "result.json").exists()
        # the orphaned training group was killed by the backend
        deadline = time.monotonic() + 5
        train_pid, grandchild = int((d / "train_pid").read_text()), int((d / "grandchild.pid").read_text())
        while not (gone(train_pid) and gone(grandchild)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gone(train_pid) and gone(grandchild)
    finally:
        backend.cancel(handle)


def test_cancel_kills_the_group_and_records_cancelled(tmp_path: Path) -> None:
    d = make_run_dir(tmp_path, HANG)
    backend = LocalBackend(cpu_slots=1, kill_grace_s=0.5)
    handle = backend.submit("local-cpu0", spec(d))
    wait_for(d / "grandchild.pid")
    wait_for(d / "train_pid")
    t0 = time.monotonic()
    backend.cancel(handle)
    assert time.monotonic() - t0 < 10
    train_pid, grandchild = int((d / "train_pid").read_text()), int((d / "grandchild.pid").read_text())
    assert gone(train_pid) and gone(grandchild)
    assert gone(handle.backend_ref["pid"])
    outcomes = backend.poll([handle])
    assert len(outcomes) == 1 and outcomes[0].result["status"] == "cancelled"
    backend.cancel(handle)  # idempotent: nothing left, no error
    assert json.loads((d / "result.json").read_text())["status"] == "cancelled"


# -- pure functions ---------------------------------------------------------------------------

def test_harness_hash_is_sha256_of_the_bytes(tmp_path: Path) -> None:
    p = tmp_path / "prepare.py"
    p.write_bytes(b"\x00\xffprint('x')\r\n")
    assert runner.harness_hash(p) == hashlib.sha256(b"\x00\xffprint('x')\r\n").hexdigest()


def test_harness_hash_agrees_with_the_template_prepare_py() -> None:
    template = ROOT / "train_template"
    if not (template / "prepare.py").is_file():
        pytest.skip("train_template/prepare.py is not there yet")
    # prepare.harness_hash() imported in a child (-B: no __pycache__ left in the template)
    out = subprocess.run([sys.executable, "-B", "-c", "import prepare; print(prepare.harness_hash())"],
                         cwd=template, env=dict(os.environ, AUTORESEARCH_PROFILE="cpu"), capture_output=True,
                         text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == runner.harness_hash(template / "prepare.py")


def test_parse_result_merges_summary_and_result_json() -> None:
    log = "noise: 1\n---\nval_bpb:          1.250000\nnum_steps:        10\n" \
          "device:           cuda:NVIDIA H100 80GB HBM3\n" \
          'RESULT_JSON: {"val_bpb": 1.2, "total_tokens_M": 0.5}\n'
    m = run_log.parse_result(log)
    assert m == {"val_bpb": 1.2, "num_steps": 10, "device": "cuda:NVIDIA H100 80GB HBM3", "total_tokens_M": 0.5}
    assert run_log.parse_result("just progress\n") == {}
    assert run_log.parse_result("---\nval_bpb: 0.9\n") == {"val_bpb": 0.9}
    assert run_log.parse_result('RESULT_JSON: not json\n') == {}


def test_real_template_train_py_under_cpu_profile(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    template = ROOT / "train_template"
    if not (template / "train.py").is_file() or not (template / "prepare.py").is_file():
        pytest.skip("train_template/train.py is not there yet")
    try:
        cache = request.getfixturevalue("prepared_cache")
    except pytest.FixtureLookupError:
        pytest.skip("no prepared_cache fixture in tests/conftest.py yet")
    d = tmp_path / "run"
    d.mkdir()
    for name in ("train.py", "prepare.py"):
        shutil.copyfile(template / name, d / name)
    for name in runner.RUNTIME_FILES:      # runner.py and what it imports, as a backend ships them
        shutil.copyfile(RUNNER.parent / name, d / name)
    env = dict(os.environ, AUTORESEARCH_PROFILE="cpu", AUTORESEARCH_CACHE=str(cache),
               AUTORESEARCH_TIME_BUDGET="5", AUTORESEARCH_THREADS="1")
    proc = subprocess.run([sys.executable, "runner.py", "--expected-hash", runner.harness_hash(d / "prepare.py"),
                           "--timeout", "300"], cwd=d, env=env, capture_output=True, text=True, timeout=400,
                          stdin=subprocess.DEVNULL)
    result = json.loads((d / "result.json").read_text())
    assert proc.returncode == 0
    assert result["status"] == "done", result["error"]
    assert result["metrics"]["val_bpb"] > 0 and result["metrics"]["num_steps"] >= 1
