"""The runner launcher (mcp_server/runtime/warm_launcher.py) and the local backend's use of it
(backends/local_launcher.py): real launcher processes, real runners, real train.py."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_local_backend import HANG, HASH, REPORTING_TRAIN, gone, make_run_dir, spec, wait_for, wait_outcome

from mcp_server.backends.base import JobHandle
from mcp_server.backends.local import launcher_client as local_launcher
from mcp_server.backends.local.backend import LocalBackend
from mcp_server.backends.local.launcher_client import LAUNCHER_SOURCE, launcher_for
from mcp_server.domain.errors import InvalidInput, NotFound
from mcp_server.runtime import run_log, runner
from mcp_server.runtime import warm_launcher as launcher

TRACE_START = "import os\nwith open(os.environ['TRACE'], 'a') as f:\n    f.write(os.getcwd() + '\\n')\n"


def ppid(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat[stat.rfind(")") + 2:].split()[1])


def launcher_pid() -> int:
    proc = launcher_for(sys.executable)._proc
    assert proc is not None and proc.poll() is None
    return proc.pid


def test_the_runner_is_forked_by_the_warm_launcher(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    d = make_run_dir(tmp_path)
    h = backend.submit("local-cpu0", spec(d, env={"EXTRA_KNOB": "7"}))
    pid = h.backend_ref["pid"]
    assert ppid(pid) == launcher_pid()                   # forked there: no interpreter start
    assert os.getpgid(pid) == pid                        # its own group: a cancel reaches it all
    assert os.getsid(pid) == pid                         # and session: its own CPU share (autogroup)
    out = wait_outcome(backend, h)
    assert out.result["status"] == "done" and out.result["runner_pid"] == pid
    seen = json.loads((d / "env.json").read_text())
    assert seen["AUTORESEARCH_PROFILE"] == "cpu" and seen["EXTRA_KNOB"] == "7" and seen["CUDA_VISIBLE_DEVICES"] == ""
    assert seen["stdin"] == "/dev/null" and seen["pgid_is_own"]
    assert "TRAIN OUTPUT" in (d / runner.LOG_FILE).read_text()    # train.py's output: run.log; the
    [line] = (d / "runner.out").read_text().splitlines()            # runner's: its result line only
    assert line.startswith(run_log.RESULT_PREFIX)
    wait_for(d / launcher.EXIT_FILE)
    assert json.loads((d / launcher.EXIT_FILE).read_text()) == {"pid": pid, "exit_code": 0}


def test_a_runner_killed_under_the_launcher_is_explained(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"), kill_grace_s=0.5)
    d = make_run_dir(tmp_path, HANG)
    h = backend.submit("local-cpu0", spec(d))
    wait_for(d / "started")
    train_pid = json.loads((d / runner.TRAIN_PID_FILE).read_text())["pid"]
    os.kill(h.backend_ref["pid"], signal.SIGKILL)
    out = wait_outcome(backend, h)
    assert out.lost and "was killed by SIGKILL" in out.reason and "without writing result.json" in out.reason
    deadline = time.monotonic() + 10
    while not gone(train_pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert gone(train_pid), "the orphaned train.py was not killed"


def test_runs_outlive_a_launcher_that_dies_and_the_next_submit_gets_a_new_one(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=2, nvidia_smi=str(tmp_path / "none"))
    first = make_run_dir(tmp_path, name="first")
    h1 = backend.submit("local-cpu0", spec(first, "e0001", env={"WAIT_FOR_GO": "1"}))
    wait_for(first / "env.json")
    old = launcher_pid()
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while not gone(old) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not gone(h1.backend_ref["pid"])               # the run goes on without its launcher
    second = make_run_dir(tmp_path, name="second")
    h2 = backend.submit("local-cpu1", spec(second, "e0002"))
    assert launcher_pid() != old and ppid(h2.backend_ref["pid"]) == launcher_pid()
    (first / "GO").touch()
    assert wait_outcome(backend, h1).result["status"] == "done"
    assert wait_outcome(backend, h2).result["status"] == "done"


def test_a_launcher_that_does_not_answer_is_replaced_and_the_job_runs_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    normal_timeout = local_launcher.REPLY_TIMEOUT_S
    monkeypatch.setattr(local_launcher, "REPLY_TIMEOUT_S", 0.5)     # the stopped launcher is found out fast
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"))
    stuck = launcher_pid()
    os.kill(stuck, signal.SIGSTOP)
    try:
        d = make_run_dir(tmp_path, TRACE_START + REPORTING_TRAIN)
        h = backend.submit("local-cpu0", spec(d, env={"TRACE": str(tmp_path / "trace")}))
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stuck, signal.SIGCONT)
    assert ppid(h.backend_ref["pid"]) == os.getpid()     # started as a new interpreter instead
    assert wait_outcome(backend, h).result["status"] == "done"
    deadline = time.monotonic() + 10
    while not gone(stuck) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert gone(stuck)                                   # the silent launcher was stopped
    assert (tmp_path / "trace").read_text().splitlines() == [str(d.resolve())]   # ran once
    # the replacement launcher gets the normal reply timeout (a fresh one on a loaded host can
    # take longer than 0.5 s to answer, and the job would then rightly start without it)
    monkeypatch.setattr(local_launcher, "REPLY_TIMEOUT_S", normal_timeout)
    d2 = make_run_dir(tmp_path, name="next")
    h2 = backend.submit("local-cpu0", spec(d2, "e0002"))
    assert ppid(h2.backend_ref["pid"]) == launcher_pid() != stuck
    assert wait_outcome(backend, h2).result["status"] == "done"


def test_without_the_launcher_the_runner_is_a_new_interpreter(tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=1, nvidia_smi=str(tmp_path / "none"), use_launcher=False, kill_grace_s=0.5)
    d = make_run_dir(tmp_path, HANG)
    h = backend.submit("local-cpu0", spec(d))
    pid = h.backend_ref["pid"]
    assert ppid(pid) == os.getpid() and "runner.py" in Path(f"/proc/{pid}/cmdline").read_text()
    wait_for(d / "started")
    backend.cancel(h)
    assert wait_outcome(backend, h).result["status"] == "cancelled"


class Launcher:
    """The launcher process driven by hand over its pipes."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-S", str(LAUNCHER_SOURCE)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)

    def ask(self, line: bytes) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + b"\n")
        self.proc.stdin.flush()
        assert select.select([self.proc.stdout], [], [], 20)[0], "no reply"
        return json.loads(self.proc.stdout.readline())


def request(d: Path, **over: object) -> bytes:
    env = dict(os.environ, AUTORESEARCH_PROFILE="cpu", WAIT_FOR_GO="1")
    req = {"run_dir": str(d), "argv": ["--expected-hash", HASH, "--timeout", "60", "--python", sys.executable],
           "env": env, "out": str(d / "runner.out")}
    req.update(over)
    return json.dumps(req).encode()


def test_the_launcher_answers_bad_requests_and_leaves_its_runners_at_eof(tmp_path: Path) -> None:
    la = Launcher()
    try:
        d = make_run_dir(tmp_path)
        for bad in (b"not json", b"[]", json.dumps({"run_dir": str(d)}).encode(),
                    request(d, argv="--timeout 60"), request(d, env={"A": 1}),
                    request(tmp_path / "missing")):
            reply = la.ask(bad)
            assert "error" in reply and reply["busy"] is False, (bad, reply)
        assert list(d.iterdir()) != [] and not (d / "runner.out").exists()   # nothing was started
        ok = la.ask(request(d))
        pid = ok["pid"]
        assert ok["start_time"] == runner.proc_start_time(pid) and ppid(pid) == la.proc.pid
        busy = la.ask(request(d))                          # its slot lock is held by that runner
        assert busy["busy"] is True and "in use" in busy["error"]
        wait_for(d / "env.json")
        assert la.proc.stdin is not None
        la.proc.stdin.close()                              # the engine went away
        assert la.proc.wait(timeout=10) == 0
        assert not gone(pid)                               # its runner did not
        (d / "GO").touch()
        wait_for(d / runner.RESULT_FILE)
        assert json.loads((d / runner.RESULT_FILE).read_text())["status"] == "done"
    finally:
        if la.proc.poll() is None:
            la.proc.kill()


def test_the_runners_of_a_batch_start_only_once_the_whole_batch_is_forked(tmp_path: Path) -> None:
    """The launcher holds a batch's runners at a gate until it has forked the last one: they do
    not compete with it for the CPU meanwhile. The second request's output file is a FIFO, so
    the launcher blocks opening it (mid-batch) until this test opens the other end."""
    la = Launcher()
    try:
        first, second = make_run_dir(tmp_path, name="first"), make_run_dir(tmp_path, name="second")
        fifo = tmp_path / "second.out"
        os.mkfifo(fifo)
        assert la.proc.stdin is not None and la.proc.stdout is not None
        la.proc.stdin.write(request(first, env=dict(os.environ, AUTORESEARCH_PROFILE="cpu")) + b"\n"
                            + request(second, out=str(fifo), env=dict(os.environ, AUTORESEARCH_PROFILE="cpu"))
                            + b"\n")
        la.proc.stdin.flush()
        assert select.select([la.proc.stdout], [], [], 20)[0], "no reply"
        pid = json.loads(la.proc.stdout.readline())["pid"]     # forked; the launcher is now stuck on
        time.sleep(0.5)                                         # the FIFO with the batch unfinished
        assert not gone(pid) and not (first / runner.LOG_FILE).exists()   # held: not even started
        with open(fifo, "rb") as reader:                        # the launcher goes on: the batch is
            assert select.select([la.proc.stdout], [], [], 20)[0], "no second reply"   # complete
            pid2 = json.loads(la.proc.stdout.readline())["pid"]
            for d in (first, second):
                wait_for(d / runner.RESULT_FILE)
                assert json.loads((d / runner.RESULT_FILE).read_text())["status"] == "done"
            assert {pid, pid2} == {json.loads((d / runner.RESULT_FILE).read_text())["runner_pid"]
                                   for d in (first, second)}
            reader.read()
    finally:
        if la.proc.poll() is None:
            la.proc.kill()


def test_one_exchange_starts_several_runners_and_a_busy_one_fails_alone(tmp_path: Path) -> None:
    la = launcher_for(sys.executable)
    dirs = [make_run_dir(tmp_path, name=f"run{i}") for i in range(3)]
    env = dict(os.environ, AUTORESEARCH_PROFILE="cpu")
    argv = ["--expected-hash", HASH, "--timeout", "60", "--python", sys.executable]
    # the second request names the first one's run directory again: its lock is taken by then
    requests = [(dirs[0], argv, env, dirs[0] / "runner.out"), (dirs[0], argv, env, dirs[0] / "runner.out"),
                (dirs[1], argv, env, dirs[1] / "runner.out"), (dirs[2], argv, env, dirs[2] / "runner.out")]
    replies = la.launch_many(requests)
    assert isinstance(replies[1], local_launcher.LauncherBusy)
    started = [replies[0], replies[2], replies[3]]
    assert all(isinstance(r, tuple) for r in started)
    pids = [r[0] for r in started if isinstance(r, tuple)]
    assert len(set(pids)) == 3 and all(ppid(pid) == launcher_pid() for pid in pids)
    for d, r in zip(dirs, started, strict=True):
        assert isinstance(r, tuple) and isinstance(r[1], int)   # (its start time; it may be gone by now)
        wait_for(d / runner.RESULT_FILE)
        result = json.loads((d / runner.RESULT_FILE).read_text())
        assert result["status"] == "done" and result["runner_pid"] == r[0]
    assert la.launch_many([]) == []


def test_submit_many_queues_a_second_job_of_a_slot_behind_the_first_and_reports_bad_jobs_alone(
        tmp_path: Path) -> None:
    backend = LocalBackend(cpu_slots=2, nvidia_smi=str(tmp_path / "none"))
    first = make_run_dir(tmp_path, name="first")
    second = make_run_dir(tmp_path, name="second")
    other = make_run_dir(tmp_path, name="other")
    got = backend.submit_many([
        ("local-cpu0", spec(first, "e0001", env={"WAIT_FOR_GO": "1"})),
        ("local-cpu0", spec(second, "e0002")),
        ("local-cpu9", spec(make_run_dir(tmp_path, name="nowhere"), "e0003")),   # no such slot
        ("local-cpu1", spec(other, "e0004", harness_hash="abc; rm -rf /")),      # refused as submit refuses it
        ("local-cpu1", spec(make_run_dir(tmp_path, name="fine"), "e0005")),
    ])
    h1, h2, no_slot, bad_hash, h5 = got
    assert isinstance(no_slot, NotFound) and isinstance(bad_hash, InvalidInput)
    assert not (other / "runner.py").exists()
    assert isinstance(h1, JobHandle) and isinstance(h2, JobHandle) and isinstance(h5, JobHandle)
    assert h1.backend_ref["after"] == [] and h2.backend_ref["after"] == ["e0001"] and h5.backend_ref["after"] == []
    assert all(ppid(h.backend_ref["pid"]) == launcher_pid() for h in (h1, h2, h5))
    assert wait_outcome(backend, h5).result["status"] == "done"
    wait_for(first / "env.json")
    assert backend.started_at(h2) is None                  # it waits for the first one's lock
    (first / "GO").touch()
    r1, r2 = wait_outcome(backend, h1).result, wait_outcome(backend, h2).result
    assert r1["status"] == r2["status"] == "done" and r2["started_at"] >= r1["ended_at"]
    # every run directory's runner is the package's runner, read-only (the copies share one file)
    for d in (first, second):
        assert (d / "runner.py").read_bytes() == Path(runner.__file__).read_bytes()
        assert not os.access(d / "runner.py", os.W_OK) or os.geteuid() == 0
        assert (d / "runner.py").stat().st_mode & 0o222 == 0
