"""Data preparation before the first run on this machine (local backend): the template's
`python prepare.py`, once per engine process, in its own thread, its output in prepare.log.

Dispatch waits until it has succeeded (`ensure()` is the scheduler's `before_dispatch`); a
failure is recorded in the ledger and retried every minute, and `error` says what happened."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from mcp_server.runtime.runner import ENV_CACHE
from mcp_server.store.ledger import Ledger

RETRY_AFTER_S = 60.0


class DataPreparation:
    def __init__(self, *, prepare_py: Path, cwd: Path, log_path: Path, profile: str, cache_dir: Path | None,
                 ledger: Ledger, needed: bool, on_finished: Callable[[], None],
                 command: list[str] | None = None) -> None:
        """`needed` False (a remote backend prepares data on its clusters): ready at once.
        `on_finished()` is called after each run of prepare.py, success or not. `command`: a task's
        own preparation command (an argument list; "python" is this interpreter), run in `cwd`."""
        self.prepare_py = prepare_py
        self.argv = ([sys.executable, *command[1:]] if command and command[0] == "python"
                     else list(command) if command else [sys.executable, str(prepare_py)])
        self.shown = " ".join(command) if command else "python prepare.py"
        self.cwd = cwd
        self.log_path = log_path
        self.profile = profile
        self.cache_dir = cache_dir
        self.ledger = ledger
        self.on_finished = on_finished
        self.state = "idle" if needed else "ready"    # idle | running | ready | failed
        self.error: str | None = None
        self._failed_at = 0.0
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()

    def ensure(self) -> bool:
        """True once the data is prepared; else start preparing it (unless running, or failed
        less than a minute ago) and return False."""
        with self._lock:
            if self.state == "ready":
                return True
            if self.state == "running":
                return False
            if self.state == "failed" and time.time() - self._failed_at < RETRY_AFTER_S:
                return False
            self.state = "running"
        threading.Thread(target=self._run, name="autoresearch-prepare", daemon=True).start()
        return False

    def _run(self) -> None:
        env = dict(os.environ)
        env["AUTORESEARCH_PROFILE"] = self.profile
        if self.cache_dir is not None:
            env[ENV_CACHE] = str(self.cache_dir)
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.time()
        try:
            with open(self.log_path, "ab") as out:
                out.write(f"== {time.ctime()} {self.shown} (profile {self.profile})\n".encode())
                out.flush()
                proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        close_fds=True)
                with self._lock:
                    self._proc = proc
                code = proc.wait()
        except OSError as exc:
            code, err = -1, str(exc)
        else:
            err = f"exit code {code}"
        with self._lock:
            self._proc = None
            if code == 0:
                self.state, self.error = "ready", None
                self.ledger.add_event(None, "note", f"data prepared in {time.time() - t0:.1f} s")
            else:
                self.state, self._failed_at = "failed", time.time()
                last = self._last_log_line()
                self.error = (f"data preparation ({self.shown}, profile {self.profile}) failed ({err})"
                              + (f": {last}" if last else "")
                              + f"; see {self.log_path}. Queued experiments wait; it is retried every minute.")
                self.ledger.add_event(None, "note", self.error)
        self.on_finished()

    def _last_log_line(self) -> str:
        """The last non-empty line prepare.py wrote (its error, as a rule), cut to 300 characters."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - 8192))
                tail = f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in tail.splitlines() if line.strip() and not line.startswith("== ")]
        return lines[-1][:300] if lines else ""

    def stop(self) -> None:
        """Stop a prepare.py in progress (terminate, then kill after 10 s)."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
