"""Process forensics of the local backend: which process a handle's runner is, whether it still
runs, why it is gone, and killing what a dead runner left behind.

Rules:
- everything works from the handle alone (backend_ref: pid + process start time + boot id) and
  its run directory, so that a restarted engine judges the runners an earlier engine process
  started just like its own (it adopts them);
- a pid is only ever trusted together with its start time (a reused pid is another process) and
  this boot's id (a pid from before a reboot is never alive); a zombie counts as exited;
- the only state is CHILDREN, the runners this Python process started: process-wide on purpose
  (see ChildRegistry).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from mcp_server.backends.base import JobHandle
from mcp_server.runtime import runner
from mcp_server.runtime.warm_launcher import EXIT_FILE


class ChildRegistry:
    """The runner processes started by this Python process, by any LocalBackend instance.

    Process-wide, not owned by a backend: a child belongs to the process that started it, and
    another LocalBackend in the same process (an engine rebuilt in-process, which adopts the
    handles) must still reap it (no zombies), read its exit status to explain a `lost`, and know
    it was launched here (the warm launcher is one per interpreter and process too, see
    launcher_client.launcher_for). So there is one instance, CHILDREN, and one lock for all of it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Runners started as a new interpreter: pid -> (Popen, start time). Kept so they are
        # reaped and their exit status can explain a `lost`; the start time tells our child
        # apart from a later process that reused its pid.
        self._children: dict[int, tuple[subprocess.Popen[bytes], int | None]] = {}
        self._delivered: set[int] = set()   # pids whose outcome was handed out but that had not exited yet
        # Runners the launcher started for this process: (pid, start time). The launcher reaps
        # them and writes each one's exit status to runner.exit in its run directory.
        self._launched: set[tuple[int, int | None]] = set()

    def add_spawned(self, proc: subprocess.Popen[bytes], start: int | None) -> None:
        with self._lock:
            self._children[proc.pid] = (proc, start)
            self._delivered.discard(proc.pid)

    def add_launched(self, pid: int, start: int | None) -> None:
        with self._lock:
            self._launched.add((pid, start))

    def our_child(self, handle: JobHandle) -> subprocess.Popen[bytes] | None:
        """The Popen of the handle's runner if this process started it (same pid AND start time)."""
        ref = handle.backend_ref or {}
        with self._lock:
            entry = self._children.get(ref.get("pid"))  # type: ignore[arg-type]
        if entry is None or entry[1] != ref.get("start_time"):
            return None
        return entry[0]

    def launched_here(self, handle: JobHandle) -> bool:
        ref = handle.backend_ref or {}
        with self._lock:
            return (ref.get("pid"), ref.get("start_time")) in self._launched

    def forget(self, handle: JobHandle) -> None:
        """Drop our Popen for a finished job once it has exited (a runner that wrote result.json
        but is still exiting is kept, and reaped on a later call)."""
        proc = self.our_child(handle)
        if proc is None:
            ref = handle.backend_ref or {}
            with self._lock:
                self._launched.discard((ref.get("pid"), ref.get("start_time")))
            return
        with self._lock:
            if proc.poll() is not None:
                self._children.pop(proc.pid, None)
            else:
                self._delivered.add(proc.pid)

    def sweep(self) -> None:
        """Reap and drop delivered runners that have exited since."""
        with self._lock:
            for pid in list(self._delivered):
                entry = self._children.get(pid)
                if entry is None or entry[0].poll() is not None:
                    self._children.pop(pid, None)
                    self._delivered.discard(pid)


CHILDREN = ChildRegistry()


class ExitWatch:
    """Which of many runners have exited, in one system call: a pidfd per runner (Linux 5.3+),
    readable once that process has exited (a zombie counts as exited).

    A poll of a slot's jobs used to read /proc twice per live runner (its start time, its
    state) on every tick: at a hundred slots with a job queued ahead on each, that was the
    engine's largest cost, and it grew with slots x time. Now a live runner costs nothing per
    tick; only one that has exited is looked at (its result.json). A pidfd names one process
    for good, so it is opened only after the pid's start time matches the handle's (a reused
    pid is never watched). Where there is no pidfd (an old kernel, no fds left, a runner that
    had already gone) `runner_alive` answers as before: watching only makes polls cheaper.
    Process-wide like CHILDREN; its own lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fds: dict[tuple[int, int], int] = {}

    @staticmethod
    def _key(handle: JobHandle) -> tuple[int, int] | None:
        ref = handle.backend_ref or {}
        pid, start = ref.get("pid"), ref.get("start_time")
        if isinstance(pid, int) and pid > 0 and isinstance(start, int) and not isinstance(start, bool):
            return pid, start
        return None

    def watch(self, handle: JobHandle) -> bool:
        """Watch the handle's runner if it is alive and the very process the handle names.
        True if it is watched (now or already)."""
        key = self._key(handle)
        if key is None or (handle.backend_ref.get("boot_id") or boot_id()) != boot_id():
            return False
        with self._lock:
            if key in self._fds:
                return True
        try:
            fd = os.pidfd_open(key[0])
        except (AttributeError, OSError):
            return False        # gone already, no pidfds here, or no fds left: runner_alive answers
        # the fd pins the process it was opened on: if that one has the handle's start time, it
        # is the runner (checked after opening, so a pid reused in between is caught)
        if runner.proc_start_time(key[0]) != key[1]:
            os.close(fd)
            return False
        with self._lock:
            if key in self._fds:       # watched meanwhile by another thread
                os.close(fd)
            else:
                self._fds[key] = fd
        return True

    def exited(self, handles: list[JobHandle]) -> set[int]:
        """Indexes (into `handles`) of the watched runners that have exited. An unwatched handle
        is never in it: ask `runner_alive`."""
        with self._lock:
            fds = {i: self._fds[k] for i, h in enumerate(handles) if (k := self._key(h)) in self._fds}
        if not fds:
            return set()
        poller = select.poll()
        index = {}
        for i, fd in fds.items():
            poller.register(fd, select.POLLIN)
            index[fd] = i
        return {index[fd] for fd, _events in poller.poll(0)}

    def watched(self, handle: JobHandle) -> bool:
        with self._lock:
            return self._key(handle) in self._fds

    def unwatch(self, handle: JobHandle) -> None:
        key = self._key(handle)
        with self._lock:
            fd = self._fds.pop(key, None) if key is not None else None
        if fd is not None:
            os.close(fd)


WATCH = ExitWatch()


@functools.cache
def boot_id() -> str:
    """This boot's id: a pid + start time from before a reboot must not match a new process.
    Read once: it cannot change while this process runs."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def runner_alive(handle: JobHandle) -> bool:
    """Is the handle's runner process still running? Recognised by pid + start time + boot id,
    so a reused pid or a reboot never counts as alive; a zombie counts as exited."""
    ref = handle.backend_ref or {}
    pid, start = ref.get("pid"), ref.get("start_time")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if ref.get("boot_id") and ref.get("boot_id") != boot_id():
        return False
    proc = CHILDREN.our_child(handle)
    if proc is not None:
        return proc.poll() is None  # also reaps it once it has exited
    if WATCH.watched(handle):
        return not WATCH.exited([handle])
    if start is None or runner.proc_start_time(pid) != start:
        return False
    return runner.proc_state(pid) not in (None, "Z", "X")


def lost_reason(handle: JobHandle) -> str:
    """Why the handle's runner is gone without a result.json: its exit status (ours, or the one
    the launcher recorded), whether an earlier engine started it, and its last output."""
    pid = handle.backend_ref.get("pid")
    if not isinstance(pid, int):
        return "the job has no runner process on record (it was never started) and no result.json"
    proc = CHILDREN.our_child(handle)
    code = proc.poll() if proc is not None else _launched_exit_code(handle)
    if code is None:
        how = "is no longer running"
        if proc is None and not CHILDREN.launched_here(handle):
            how += " (it was started by an earlier engine process)"
    elif code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    reason = f"runner process {pid} on {handle.cluster} {how} without writing result.json"
    last = _last_line(Path(handle.run_dir) / runner.RUNNER_OUT)
    return f"{reason}; its last output: {last}" if last else reason


def _launched_exit_code(handle: JobHandle) -> int | None:
    """The exit status the launcher recorded for the handle's runner (runner.exit), waiting a
    moment for it when this process's launcher started the runner (it writes it on SIGCHLD)."""
    path = Path(handle.run_dir) / EXIT_FILE
    deadline = time.monotonic() + (1.0 if CHILDREN.launched_here(handle) else 0.0)
    while True:
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
            if info.get("pid") == handle.backend_ref.get("pid") and isinstance(info.get("exit_code"), int):
                return int(info["exit_code"])
            return None
        except (OSError, ValueError, AttributeError):
            if time.monotonic() >= deadline:
                return None
            time.sleep(0.02)


def _last_line(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = [line for line in f.read().decode("utf-8", "replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:500] if lines else ""


def signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def kill_training(run_dir: Path) -> None:
    """SIGKILL train.py's process group if its leader (from train.pid) is still that process.

    Needed when the runner died without cleaning up (it was SIGKILLed): train.py lives in its own
    session and would otherwise keep a GPU busy. The leader's start time guards against a reused
    pid; if the leader already exited, its group is not touched (it cannot be told apart from a
    new group that reused the number).
    """
    try:
        info = json.loads((run_dir / runner.TRAIN_PID_FILE).read_text(encoding="utf-8"))
        pid, pgid, start = int(info["pid"]), int(info["pgid"]), info.get("start_time")
    except (OSError, ValueError, KeyError, TypeError):
        return
    if start is not None and runner.proc_start_time(pid) == start and runner.proc_state(pid) not in (None, "Z", "X"):
        signal_group(pgid, signal.SIGKILL)


def kill_processes_in(run_dir: Path) -> int:
    """Kill the process groups of every process whose working directory is `run_dir` (a runner
    started without a saved handle: by an engine that died right after, or by a launcher that
    stopped answering). Returns how many processes were found."""
    target = os.path.realpath(run_dir)
    own = os.getpgid(0)
    found = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cwd = os.readlink(f"/proc/{entry}/cwd")
            if cwd != target and not cwd.startswith(target + os.sep):
                continue
            pgid = os.getpgid(int(entry))
            found += 1
            if pgid != own:
                os.killpg(pgid, signal.SIGKILL)
            else:
                os.kill(int(entry), signal.SIGKILL)
        except (OSError, ValueError):
            continue
    if found:
        time.sleep(0.2)   # let the kernel finish tearing them down before the run dir is reused
    return found
