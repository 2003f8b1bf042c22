"""Starting a job's runner on this machine: its private copy of runner.py, its environment and
flags, and the process itself.

Every runner is one process in its own session and process group, normally forked by the warm launcher
(launcher_client.py, mcp_server/runtime/warm_launcher.py: no interpreter start and no imports
between submit and train.py). If the launcher fails, `python -S runner.py ...` is started
instead, so the launcher only ever makes starts faster.

Rules:
- the runner never shares the server's stdout (the MCP stdio transport): stdin is /dev/null
  and its stdout/stderr go to runner.out (runner.RUNNER_OUT) in the run directory;
- the job's slot lock (runner.LOCK_FILE) is flock()ed exclusively before the runner starts and
  handed to it as an inherited fd, so it is held before submit returns;
- a runner that may have started although the launcher gave no answer is killed before the
  fallback starts another one: a run directory never has two runners;
- every runner started is recorded in processes.CHILDREN (reaping, exit explanations).
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

from mcp_server.backends.base import JobHandle, JobSpec
from mcp_server.backends.local.launcher_client import LauncherBusy, LauncherUnavailable, launcher_for
from mcp_server.backends.local.processes import CHILDREN, kill_processes_in
from mcp_server.domain.errors import Conflict, InvalidInput
from mcp_server.runtime import runner

# (the logger's name from before the local backend was split into modules)
log = logging.getLogger("mcp_server.backends.local.backend")

RUNNER_SOURCE = Path(runner.__file__).resolve()
# runtime file name -> (the last private copy made, the source's (mtime, size) when it was made)
_INSTALLED: dict[str, tuple[Path, tuple[int, int]]] = {}


def install_runner(run_dir: Path) -> None:
    """A private copy of the runner (and what it imports): the run does not depend on the
    package staying put. The copies are read-only, and where the last run directory's copy is
    still there, unchanged, on the same file system, the new one is a hard link to it (one
    system call instead of a copy: a hundred slots fill faster)."""
    for name in runner.RUNTIME_FILES:
        dest = run_dir / name
        tmp = run_dir / f".{name}.tmp"
        src = RUNNER_SOURCE.parent / name
        known = _INSTALLED.get(name)
        try:
            st = src.stat()
            if known is not None and known[1] == (st.st_mtime_ns, st.st_size):
                os.link(known[0], tmp)
                os.replace(tmp, dest)
                continue
        except OSError:
            pass
        tmp.unlink(missing_ok=True)
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o444)
        os.replace(tmp, dest)
        st = src.stat()
        _INSTALLED[name] = (dest, (st.st_mtime_ns, st.st_size))


def runner_env(job: JobSpec, slot_env: dict[str, str], cache_dir: str | None) -> dict[str, str]:
    """The runner's complete environment: this process's, then the job's, the backend's cache
    (unless the job names one), the slot's pins, and the job's profile and seed."""
    env = dict(os.environ)
    env.update(job.env)
    if cache_dir is not None and runner.ENV_CACHE not in job.env:
        env[runner.ENV_CACHE] = cache_dir
    env.update(slot_env)
    env[runner.ENV_PROFILE] = job.profile
    env[runner.ENV_SEED] = str(job.seed)
    return env


def runner_flags(job: JobSpec, python: str, kill_grace_s: float, ahead: list[JobHandle]) -> list[str]:
    """runner.py's flags (without --lock-fd): `ahead` are the jobs live on the slot, whose lock
    files it waits for (--after) before it starts train.py."""
    flags = ["--expected-hash", job.harness_hash, "--timeout", repr(float(job.timeout_s)),
             "--python", python, "--kill-grace", repr(kill_grace_s)]
    for h in ahead:
        flags += ["--after", str(Path(h.run_dir) / runner.LOCK_FILE)]
    return flags


def start_runners(python: str, jobs: list[tuple[Path, list[str], dict[str, str]]],
                  use_launcher: bool) -> list[tuple[int, int | None] | Exception]:
    """Start several runners (run dir, flags, env each), in order: through the warm launcher in
    one exchange when `use_launcher`, each one the launcher failed to start as a new
    interpreter. Returns, per job, its pid and process start time, or the error (Conflict: the
    run directory is in use; InvalidInput: the interpreter cannot start) for that job alone.
    No two jobs of one call may wait for each other (`--after`): a fallback start of one would
    come after the launcher started the other."""
    results: list[tuple[int, int | None] | Exception | None] = [None] * len(jobs)
    if use_launcher:
        replies = launcher_for(python).launch_many([(d, flags, env, d / runner.RUNNER_OUT) for d, flags, env in jobs])
        for i, ((run_dir, _, _), reply) in enumerate(zip(jobs, replies, strict=True)):
            if isinstance(reply, LauncherBusy):
                results[i] = Conflict(f"{reply}; each attempt needs a fresh run directory")
            elif isinstance(reply, LauncherUnavailable):
                log.warning("runner launcher: %s; starting the runner as a new process", reply)
                if reply.uncertain:      # a runner may have started for this run dir: it must not run twice
                    kill_processes_in(run_dir)
            else:
                CHILDREN.add_launched(*reply)
                results[i] = reply
    out: list[tuple[int, int | None] | Exception] = []
    for (run_dir, flags, env), result in zip(jobs, results, strict=True):
        if result is None:
            try:
                result = spawn_interpreter(python, run_dir, flags, env)
            except (Conflict, InvalidInput) as e:
                result = e
        out.append(result)
    return out


def spawn_interpreter(python: str, run_dir: Path, flags: list[str], env: dict[str, str]) -> tuple[int, int | None]:
    """Start the runner as a new interpreter (without the launcher, or when it failed)."""
    # This job's slot lock, taken here so that it is held before submit returns (a job
    # submitted next waits for it even if this runner has not got going yet).
    lock_fd = os.open(run_dir / runner.LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise Conflict(f"run directory {run_dir} is in use by another runner; each attempt needs a "
                           "fresh run directory") from None
        # -S: the runner is standard library only; skipping site (and the site-packages
        # path hooks of editable installs) halves its start-up time
        args = [python, "-S", runner.RUNNER_SCRIPT, *flags, "--lock-fd", str(lock_fd)]
        with open(run_dir / runner.RUNNER_OUT, "wb") as out:
            try:
                proc = subprocess.Popen(
                    args, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True, close_fds=True, pass_fds=(lock_fd,),
                )
            except OSError as e:
                raise InvalidInput(f"cannot start the runner with Python {python!r}: {e}; "
                                   "configure the local backend's python to an existing interpreter") from e
    finally:
        os.close(lock_fd)   # the runner holds the lock now (or nobody, if it did not start)
    # Not reaped yet, so /proc/<pid> still exists even if the runner already exited.
    start = runner.proc_start_time(proc.pid)
    CHILDREN.add_spawned(proc, start)
    return proc.pid, start
