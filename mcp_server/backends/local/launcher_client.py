"""The local backend's side of the runner launcher (see mcp_server/runtime/warm_launcher.py).

One launcher process per interpreter and engine process, started on first use and kept warm:
`launch` asks it to fork a runner and returns the runner's pid and start time. Any trouble
with the launcher (it died, it does not answer) raises `LauncherUnavailable`; the backend then
starts the runner as a new interpreter instead, so the launcher only ever makes starts faster.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
import time
from pathlib import Path

from mcp_server.runtime import warm_launcher as launcher

LAUNCHER_SOURCE = Path(launcher.__file__).resolve()
REPLY_TIMEOUT_S = 30.0


class LauncherUnavailable(Exception):
    """The launcher could not start the runner; start it another way. `uncertain`: the request
    may have reached the launcher (no reply came), so a runner may have started."""

    def __init__(self, message: str, uncertain: bool = False) -> None:
        super().__init__(message)
        self.uncertain = uncertain


class LauncherBusy(Exception):
    """The run directory's slot lock is held by another runner."""


class RunnerLauncher:
    def __init__(self, python: str) -> None:
        self.python = python
        self._lock = threading.Lock()
        self._proc: subprocess.Popen[bytes] | None = None
        self._buf = b""

    def start(self) -> None:
        """Start the launcher process now (its interpreter start is then off the first job's path)."""
        with self._lock:
            try:
                self._ensure()
            except OSError:
                pass   # no such interpreter: launch() says so, and the backend reports it

    def _ensure(self) -> subprocess.Popen[bytes]:
        if self._proc is None or self._proc.poll() is not None:
            self._buf = b""
            # stdout is a pipe of ours, never the server's stdout (the MCP stdio transport);
            # its own session: a Ctrl-C in the terminal reaches the engine, which closes our end
            self._proc = subprocess.Popen(
                [self.python, "-S", str(LAUNCHER_SOURCE)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True)
        return self._proc

    def launch_many(self, requests: list[tuple[Path, list[str], dict[str, str], Path]]
                    ) -> list[tuple[int, int | None] | LauncherUnavailable | LauncherBusy]:
        """Start several runners in one exchange: every request is written at once, then the
        replies are read (the launcher answers them in order). One round trip for a batch, not
        one per runner: on a loaded host each wait for the launcher's reply costs a scheduling
        delay. Returns, per request in order, (pid, start time) or the exception for that one;
        requests after a lost answer are `LauncherUnavailable(uncertain=True)`."""
        if not requests:
            return []
        payload = b"".join(json.dumps({"run_dir": str(run_dir), "argv": argv, "env": env, "out": str(out)}).encode()
                           + b"\n" for run_dir, argv, env, out in requests)
        results: list[tuple[int, int | None] | LauncherUnavailable | LauncherBusy] = []
        with self._lock:
            try:
                proc = self._ensure()
            except OSError as e:
                failed = LauncherUnavailable(f"cannot start the launcher with {self.python!r}: {e}")
                return [failed for _ in requests]
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(payload)
                proc.stdin.flush()
            except OSError as e:   # it died: some requests may have reached it
                self._discard()
                return [LauncherUnavailable(f"the launcher is gone ({e})", uncertain=True) for _ in requests]
            for _ in requests:
                line = self._read_line(proc)
                if line is None:
                    self._discard()
                    break
                results.append(self._parse(line))
        while len(results) < len(requests):
            results.append(LauncherUnavailable("the launcher did not answer", uncertain=True))
        return results

    @staticmethod
    def _parse(line: bytes) -> tuple[int, int | None] | LauncherUnavailable | LauncherBusy:
        try:
            reply = json.loads(line)
            if "error" in reply:
                if reply.get("busy"):
                    return LauncherBusy(str(reply["error"]))
                return LauncherUnavailable(f"the launcher could not start the runner: {reply['error']}")
            return int(reply["pid"]), reply.get("start_time")
        except (ValueError, KeyError, TypeError) as e:
            return LauncherUnavailable(f"unreadable launcher reply {line[:200]!r}: {e}", uncertain=True)

    def _read_line(self, proc: subprocess.Popen[bytes]) -> bytes | None:
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        deadline = time.monotonic() + REPLY_TIMEOUT_S
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def _discard(self) -> None:
        """Stop a launcher that failed (the runners it started are in their own sessions)."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        for f in (proc.stdin, proc.stdout):
            try:
                if f is not None:
                    f.close()
            except OSError:
                pass


_LAUNCHERS: dict[tuple[str, int], RunnerLauncher] = {}
_LAUNCHERS_LOCK = threading.Lock()


def launcher_for(python: str) -> RunnerLauncher:
    """This process's launcher for `python` (a forked copy of an engine gets its own)."""
    key = (python, os.getpid())
    with _LAUNCHERS_LOCK:
        found = _LAUNCHERS.get(key)
        if found is None:
            found = _LAUNCHERS[key] = RunnerLauncher(python)
        return found
