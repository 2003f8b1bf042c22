"""backends/local/processes.py: which process a handle names and whether it still runs, with
real processes: the pidfd watch (ExitWatch) against runner_alive's /proc reading."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcp_server.backends.base import JobHandle
from mcp_server.backends.local.processes import WATCH, ExitWatch, boot_id, runner_alive
from mcp_server.runtime import runner

pytestmark = pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="no pidfds on this OS")


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def sleeper() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(60)"])


def handle_of(pid: int, start: int | None, boot: str | None = None, eid: str = "e0001") -> JobHandle:
    return JobHandle(eid, 1, "local-cpu0", "/nonexistent",
                     {"pid": pid, "start_time": start, "boot_id": boot_id() if boot is None else boot}, time.time())


def test_a_watched_process_is_seen_to_exit_even_before_it_is_reaped() -> None:
    watch = ExitWatch()
    procs = [sleeper() for _ in range(3)]
    try:
        handles = [handle_of(p.pid, runner.proc_start_time(p.pid), eid=f"e{i:04d}") for i, p in enumerate(procs)]
        assert all(watch.watch(h) for h in handles) and all(watch.watched(h) for h in handles)
        assert watch.watch(handles[0])                    # watching twice is harmless
        assert watch.exited(handles) == set()
        procs[1].kill()
        deadline = time.monotonic() + 10
        while watch.exited(handles) != {1}:
            assert time.monotonic() < deadline, "the exit was never seen"
            time.sleep(0.01)
        assert runner.proc_state(procs[1].pid) == "Z"     # not reaped yet: a zombie counts as exited
        assert watch.exited([handles[2], handles[1]]) == {1}   # indexes into the list given
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for h in handles:
            watch.unwatch(h)


def test_only_the_very_process_the_handle_names_is_watched() -> None:
    watch = ExitWatch()
    proc = sleeper()
    try:
        start = runner.proc_start_time(proc.pid)
        assert start is not None
        # a live pid with another start time is another process (the pid was reused)
        assert not watch.watch(handle_of(proc.pid, start + 1))
        # a handle from another boot, or one without a start time, is never watched
        assert not watch.watch(handle_of(proc.pid, start, boot="another-boot"))
        assert not watch.watch(handle_of(proc.pid, None))
        assert not watch.watch(JobHandle("e0001", 1, "local-cpu0", "/x", {}, 0.0))
        assert watch.exited([handle_of(proc.pid, start + 1)]) == set()   # unwatched: never "exited"
    finally:
        proc.kill()
        proc.wait()
    # a process that is gone cannot be watched: runner_alive answers for it
    assert not watch.watch(handle_of(proc.pid, start))


def test_unwatch_closes_the_pidfd() -> None:
    watch = ExitWatch()
    procs = [sleeper() for _ in range(5)]
    try:
        before = open_fds()
        handles = [handle_of(p.pid, runner.proc_start_time(p.pid), eid=f"e{i:04d}") for i, p in enumerate(procs)]
        for h in handles:
            watch.watch(h)
        assert open_fds() == before + 5
        for h in handles:
            watch.unwatch(h)
            watch.unwatch(h)     # twice: nothing left to close
        assert open_fds() == before
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_runner_alive_follows_the_watch_for_a_process_that_is_not_our_child(tmp_path: Path) -> None:
    # a grandchild (like a runner the launcher forked): not ours to reap, so only /proc or a pidfd
    # can tell; it is left a zombie of its parent until the parent reaps it
    script = tmp_path / "parent.py"
    script.write_text("import subprocess, sys, time\n"
                      "p = subprocess.Popen([sys.executable, '-S', '-c', 'import sys; sys.stdin.read()'],"
                      " stdin=subprocess.PIPE)\n"
                      "print(p.pid, flush=True)\n"
                      "sys.stdin.readline(); p.stdin.close(); time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-S", str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert parent.stdout is not None and parent.stdin is not None
        pid = int(parent.stdout.readline())
        h = handle_of(pid, runner.proc_start_time(pid))
        assert runner_alive(h) and WATCH.watch(h) and runner_alive(h)
        parent.stdin.write(b"go\n")
        parent.stdin.flush()                 # the grandchild's stdin closes: it exits, unreaped
        deadline = time.monotonic() + 10
        while runner_alive(h):
            assert time.monotonic() < deadline, "its exit was never seen"
            time.sleep(0.01)
        assert runner.proc_state(pid) == "Z"
    finally:
        WATCH.unwatch(h)
        parent.kill()
        parent.wait()
