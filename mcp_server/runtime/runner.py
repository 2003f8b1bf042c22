"""The runner: the one command a backend executes for an experiment attempt.

    python runner.py --expected-hash HEX --timeout SECONDS [--python PYTHON] [--kill-grace S]
                     [--lock-fd FD] [--after LOCKFILE ...]

Run from inside the run directory (train.py, prepare.py, runner.py). See docs/contracts.md,
section 2. It:

1. refuses to start train.py when a harness file differs: sha256(prepare.py), or the pin of the
   task's harness files (runner_task.json), differs from --expected-hash (`rejected`);
2. queued ahead (--after): having done all its startup work, waits until every job ahead of it
   on the slot has released its lock file, then starts at once; its `started_at` and the hard
   timeout count from that moment, not from the process start;
3. runs `python train.py` (or the task's run command) in its own session / process group, stdout+stderr -> run.log;
4. kills that whole group (SIGTERM, then SIGKILL after --kill-grace) at --timeout (`timeout`),
   or when the runner itself receives SIGTERM/SIGINT (`cancelled`, also while it waits);
5. classifies the run (done / nan / oom / crash) from the exit code and the log;
6. releases its own slot lock (--lock-fd) once train.py's group is gone (that moment is
   `ended_at`), then writes result.json atomically and prints `AUTORESEARCH_RESULT: {json}` as
   its last line.

STANDARD LIBRARY ONLY: this file is copied into every run directory and runs on remote nodes
where the mcp_server package is not installed. Do not import from the package here.

(Over 400 lines on purpose: every file here is shipped to each run directory, so the process
life cycle stays in one file; reading a run's output is in run_log.py, shipped beside it.)
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

TYPE_CHECKING = False
if TYPE_CHECKING:   # (annotations only: importing typing costs every runner start ~3 ms)
    from typing import Any

if __package__:
    from .run_log import RESULT_PREFIX, classify, parse_result
else:                       # run as a script (a run directory, a slot): run_log.py is beside this file
    from run_log import RESULT_PREFIX, classify, parse_result  # type: ignore[no-redef]

# The run directory's scripts: the experiment's train.py, the harness prepare.py, and the
# backend's private copy of this file.
TRAIN_SCRIPT = "train.py"
HARNESS_SCRIPT = "prepare.py"
RUNNER_SCRIPT = "runner.py"
RUN_LOG_SCRIPT = "run_log.py"        # what runner.py imports: shipped beside it
RUNTIME_FILES = (RUNNER_SCRIPT, RUN_LOG_SCRIPT)
# Written by the engine into a run directory of a task with its own description
# (domain/task.py): {"harness": {file: sha256}, "run": [argv], "metric": name}. Absent = the
# built-in task: harness prepare.py, `python train.py`, metric val_bpb.
TASK_JSON = "runner_task.json"
DEFAULT_RUN = ("python", TRAIN_SCRIPT)
DEFAULT_METRIC_KEY = "val_bpb"
RESULT_FILE = "result.json"
LOG_FILE = "run.log"
# Written by the runner right after train.py starts: lets a backend kill train.py's group
# itself when the runner was killed (SIGKILL cannot be forwarded) and train.py was orphaned.
TRAIN_PID_FILE = "train.pid"
# The job's slot lock: created and flock()ed (exclusive) by the backend before the runner starts,
# held by the runner and train.py (inherited fd) until train.py's process group is gone. A job queued ahead
# on the same slot is given the lock files of the jobs ahead of it (--after) and starts only once
# they are all released: by the runner when it is done, or by the kernel when it and its
# train.py are dead.
LOCK_FILE = "runner.lock"
# The runner's own stdout/stderr, opened by whoever starts it (the local backend, the warm
# launcher); its last line is the result line (RESULT_PREFIX).
RUNNER_OUT = "runner.out"
LOG_TAIL_LINES = 40
# How much of the end of run.log is read to classify and parse: the summary block and the
# error are at the end, and a chatty run can write hundreds of MB.
LOG_READ_BYTES = 1 << 20
DEFAULT_KILL_GRACE_S = 5.0
POLL_INTERVAL_S = 0.1
# the runner's nice increment once its run is over and the slot handed on (see run.release_slot)
BOOKKEEPING_NICE = 10
# The runner is latency-bound, not CPU-bound: it sleeps while train.py trains, and what it does
# when it wakes (start train.py on a slot just handed to it, see train.py exit, hand the slot
# on) is a millisecond of CPU that the slot waits for. When a hundred slots end together on a
# small host, a hundred train.py interpreters start at that moment too; a runner that asks for
# a short scheduler slice (EEVDF, Linux 6.12+: sched_attr.sched_runtime, 0.1 ms is the
# kernel's minimum) runs first when it wakes instead of queueing behind them. train.py runs
# with the default slice (0), and so does the runner's bookkeeping after the hand-off. Older
# kernels accept the request and ignore it; other systems do not get it.
RUNNER_SLICE_NS = 100_000

# Environment variables the engine and the backends set for a run: the contract between them and
# the run (train.py, prepare.py). The runner passes its environment on to train.py unchanged.
ENV_CACHE = "AUTORESEARCH_CACHE"            # where data, tokenizer and token shards live
ENV_PROFILE = "AUTORESEARCH_PROFILE"        # the harness profile (prepare.py's PROFILES)
ENV_SEED = "AUTORESEARCH_SEED"              # the experiment's seed
ENV_THREADS = "AUTORESEARCH_THREADS"        # CPU threads of the run's slot
ENV_GPU_LABEL = "AUTORESEARCH_GPU_LABEL"    # a simulated slot's GPU type (informational only)



# ---------------------------------------------------------------------------------------------
# helpers shared with the backends (they import this module from the package)
# ---------------------------------------------------------------------------------------------

def harness_hash(path: str | os.PathLike[str]) -> str:
    """sha256 hex of the bytes of the file at `path` (prepare.py); must equal prepare.harness_hash()."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def harness_pin(hashes: dict[str, str]) -> str:
    """The one hash a run is checked against: of a single harness file, its sha256 (the built-in
    task's pin is sha256(prepare.py)); of several, the sha256 of their `<sha256>  <name>` lines in
    name order (a change to any of them changes the pin)."""
    if len(hashes) == 1:
        return next(iter(hashes.values()))
    manifest = "".join(f"{hashes[name]}  {name}\n" for name in sorted(hashes))
    return hashlib.sha256(manifest.encode("utf-8")).hexdigest()


def _read_task(run_dir: Path) -> dict[str, Any]:
    """The run directory's task (TASK_JSON), or the built-in one."""
    task: dict[str, Any] = {"harness": {HARNESS_SCRIPT: None}, "run": list(DEFAULT_RUN), "metric": DEFAULT_METRIC_KEY}
    try:
        with open(run_dir / TASK_JSON, encoding="utf-8") as f:
            given = json.load(f)
    except FileNotFoundError:
        return task
    if isinstance(given, dict):
        if isinstance(given.get("harness"), dict) and given["harness"]:
            task["harness"] = {str(k): v for k, v in given["harness"].items()}
        if isinstance(given.get("run"), list) and given["run"] and all(isinstance(a, str) for a in given["run"]):
            task["run"] = list(given["run"])
        if isinstance(given.get("metric"), str) and given["metric"]:
            task["metric"] = given["metric"]
    return task


def harness_files(run_dir: Path) -> list[str]:
    """The harness files a run directory must hold (its task's, else prepare.py)."""
    try:
        return list(_read_task(Path(run_dir))["harness"])
    except (OSError, ValueError):
        return [HARNESS_SCRIPT]


def proc_start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), None if gone.

    A pid plus its start time names one process for good: pids are reused, start times with them
    are not. Linux only, which is where runs happen.
    """
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    # comm (field 2) is in parentheses and may itself contain spaces or ')': split after the last.
    fields = stat[stat.rfind(")") + 2:].split()
    try:
        return int(fields[19])  # fields[0] is field 3 (state), so field 22 is index 19
    except (IndexError, ValueError):
        return None


def proc_state(pid: int) -> str | None:
    """Single-letter state of `pid` (R, S, Z, ...), None if it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read().decode("ascii", "replace")
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:]
    return rest[:1] or None


# ---------------------------------------------------------------------------------------------
# classification
# ---------------------------------------------------------------------------------------------

# ---------------------------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------------------------

# sched_setattr(2) has no wrapper in libc or in os: its system call number per architecture
_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274, "arm64": 274, "riscv64": 274, "loongarch64": 274,
                  "ppc64le": 355, "ppc64": 355, "s390x": 345}
_SCHED_ATTR = "IIQiIQQQ"   # struct sched_attr, version 0 (48 bytes): size, policy, flags, nice,
#                            priority, runtime, deadline, period


def _syscall() -> Any:
    try:
        number = _SCHED_SETATTR.get(os.uname().machine)
        return None if number is None or not sys.platform.startswith("linux") else (
            ctypes.CDLL(None, use_errno=True).syscall, number)
    except (OSError, AttributeError):
        return None


_SETATTR = _syscall()


def request_slice(ns: int) -> bool:
    """Ask the kernel for a scheduler slice of `ns` nanoseconds for this process (0 = the
    default), keeping its policy and nice value; inherited by processes it starts. False where
    it could not be asked (not Linux, another architecture, a policy other than the normal ones,
    a refusal): nothing changed then."""
    if _SETATTR is None:
        return False
    try:
        policy = os.sched_getscheduler(0)
        if policy not in (os.SCHED_OTHER, os.SCHED_BATCH, os.SCHED_IDLE):
            return False   # a real-time policy the user chose: not ours to change
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        raw = struct.pack(_SCHED_ATTR, 48, policy, 0, nice, 0, ns, 0, 0)
        call, number = _SETATTR
        return call(number, 0, ctypes.create_string_buffer(raw, len(raw)), 0) == 0
    except (OSError, AttributeError, ValueError, ctypes.ArgumentError):
        return False


def _yield_session_share() -> None:
    """Where the kernel shares CPU time between sessions (autogroup), a nice value counts only
    inside the session: a runner that leads its own session (the local backend starts each in
    one) lowers its session's share instead. Anything else is left alone (on a remote node the
    session may be the job system's)."""
    try:
        if os.getsid(0) != os.getpid():
            return
        with open("/proc/self/autogroup", "w", encoding="ascii") as f:
            f.write(str(BOOKKEEPING_NICE))
    except OSError:
        pass   # no autogroup here, or refused: the nice value above is what there is


class _StopWaiting(Exception):
    """Raised by the signal handler to break a blocking wait for the slot lock."""


class _Stop:
    """Signals the runner got (SIGTERM/SIGINT): forwarded to train.py's group, remembered.
    While the runner blocks on the slot lock (`waiting`), the handler raises _StopWaiting once:
    a flock() interrupted by a handler that raises is not retried (PEP 475)."""

    def __init__(self) -> None:
        self.requested = False
        self.pgid: int | None = None
        self.waiting = False

    def handler(self, signum: int, _frame: Any) -> None:
        self.requested = True
        if self.pgid is not None:
            _signal_group(self.pgid, signal.SIGTERM)
        if self.waiting:
            self.waiting = False
            raise _StopWaiting()


def _wait_for_slot(lock_paths: list[str], stop: _Stop) -> None:
    """Block until every lock file in `lock_paths` is free (a shared flock on each, released at
    once). A missing file means that job is gone: nothing to wait for. Raises _StopWaiting when
    a stop signal arrives meanwhile."""
    for path in lock_paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        finally:
            os.close(fd)


def _pidfd(pid: int) -> int | None:
    """A pidfd for `pid` (readable once it exits), or None where the OS has none."""
    try:
        return os.pidfd_open(pid)
    except (AttributeError, OSError):
        return None


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass  # the group is already empty


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """SIGTERM train.py's whole group, give it `grace_s` to exit, then SIGKILL whatever is left."""
    pgid = proc.pid  # start_new_session: train.py leads its own group
    _signal_group(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        pass
    # SIGKILL the group even when the leader exited: grandchildren (dataloader workers, a stray
    # subprocess) may still be in it. The pgid cannot have been reused while members remain.
    _signal_group(pgid, signal.SIGKILL)
    proc.wait()


def _read_log_tail(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - LOG_READ_BYTES))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", "replace")
    if size > LOG_READ_BYTES:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return text


def _append_log(path: Path, message: str) -> None:
    """A runner note at the end of run.log, so a human reading the log sees what happened."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(f"[runner] {message}\n")
    except OSError:
        pass


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run(expected_hash: str, timeout_s: float, python: str, kill_grace_s: float = DEFAULT_KILL_GRACE_S,
        run_dir: Path | None = None, lock_fd: int | None = None, after: list[str] | None = None) -> dict[str, Any]:
    """Run train.py in `run_dir` (default: cwd) under the contract; returns the result object
    after writing it to result.json.

    `lock_fd`: this job's slot lock, already held; inherited by train.py and released once
    train.py's group is gone, just before the result is written. `after`: lock files of the jobs
    ahead on the slot, waited for (after the harness check) before train.py starts."""
    run_dir = Path(run_dir or os.getcwd())
    log_path = run_dir / LOG_FILE
    launched_at = time.time()
    result: dict[str, Any] = {
        "status": "crash", "exit_code": None, "metrics": {}, "error": None, "log_tail": "",
        "harness_hash": None, "started_at": launched_at, "ended_at": None, "runner_pid": os.getpid(),
        "hostname": os.uname().nodename, "waited_s": 0.0,
    }

    request_slice(RUNNER_SLICE_NS)   # (see RUNNER_SLICE_NS: through the start-up and the wait for the slot)
    stop = _Stop()
    # Installed before anything starts, so a cancel that arrives early is never lost.
    signal.signal(signal.SIGTERM, stop.handler)
    signal.signal(signal.SIGINT, stop.handler)

    released: list[float] = []

    def release_slot() -> float:
        """The run is over: train.py's group is gone (or never started). Hand the slot to the
        next job now; the result is classified and written after. Returns the time: ended_at."""
        if not released:
            released.append(time.time())
            if lock_fd is not None:
                try:
                    os.close(lock_fd)
                except OSError:
                    pass
            # What is left is bookkeeping (read the log, classify, write result.json), and nobody
            # waits for it to the millisecond; the job the slot was just handed to, and every
            # other run starting now, do wait for the CPU: when a hundred slots end together on a
            # small host, ours yields to them. (Raising one's own nice value needs no privilege.)
            try:
                os.nice(BOOKKEEPING_NICE)
            except OSError:
                pass
            request_slice(0)
            _yield_session_share()
        return released[0]

    def finish(status: str, error: str | None, exit_code: int | None = None,
               metrics: dict[str, Any] | None = None) -> dict[str, Any]:
        ended_at = release_slot()
        tail_text = _read_log_tail(log_path)
        result.update(status=status, error=error, exit_code=exit_code, metrics=metrics or {},
                      log_tail="\n".join(tail_text.splitlines()[-LOG_TAIL_LINES:]), ended_at=ended_at)
        _write_json_atomic(run_dir / RESULT_FILE, result)
        return result

    train = run_dir / TRAIN_SCRIPT
    try:
        task = _read_task(run_dir)
    except (OSError, ValueError) as e:
        msg = f"crash: cannot read the run's task description {TASK_JSON} ({e}); the backend must export it intact"
        log_path.write_text(f"[runner] {msg}\n", encoding="utf-8")
        return finish("crash", msg)
    actual_by_file: dict[str, str] = {}
    for name in task["harness"]:
        try:
            actual_by_file[name] = harness_hash(run_dir / name)
        except OSError as e:
            msg = (f"rejected: cannot read the harness file {name} ({e.strerror}); "
                   f"the run directory must hold every harness file ({', '.join(task['harness'])})")
            log_path.write_text(f"[runner] {msg}\n", encoding="utf-8")
            return finish("rejected", msg)
    actual = harness_pin(actual_by_file)
    result["harness_hash"] = actual
    if actual != expected_hash.strip().lower():
        changed = [n for n, want in task["harness"].items() if want is not None and actual_by_file[n] != want]
        names = changed or list(task["harness"])
        shown = ", ".join(names)
        one = len(names) == 1
        msg = (f"rejected: {shown} {'was' if one else 'were'} modified (the harness pin: sha256 {actual[:12]}..., "
               f"expected {expected_hash[:12]}...). {shown} {'is' if one else 'are'} the fixed harness: restore "
               f"{'it' if one else 'them'}; edit only {TRAIN_SCRIPT}")
        log_path.write_text(f"[runner] {msg}\n", encoding="utf-8")
        return finish("rejected", msg)
    if not train.is_file():
        msg = ("train.py is missing from the run directory; "
               "the backend must export the snapshot before starting the runner")
        log_path.write_text(f"[runner] {msg}\n", encoding="utf-8")
        return finish("crash", msg)
    if after:
        try:
            try:
                stop.waiting = True
                if not stop.requested:
                    _wait_for_slot(after, stop)
            finally:
                stop.waiting = False
        except _StopWaiting:   # (also when the signal lands in the inner finally)
            pass
    if stop.requested:
        log_path.write_text("[runner] cancelled before train.py started\n", encoding="utf-8")
        now = time.time()   # it never had the slot: no busy time (the wait is in waited_s)
        result.update(started_at=now, waited_s=round(now - launched_at, 6))
        return finish("cancelled", "cancelled before train.py started")

    # The run starts now: a queued-ahead runner has just been handed the slot.
    started_at = time.time()
    deadline = time.monotonic() + timeout_s
    result.update(started_at=started_at, waited_s=round(started_at - launched_at, 6))
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"  # progress lines reach run.log as they are printed
    # buffering=1 is line buffering for our own notes; train.py writes straight to the fd.
    with open(log_path, "w", buffering=1, encoding="utf-8") as log:
        try:
            argv = list(task["run"])
            if argv[0] == "python":         # the slot's interpreter
                argv[0] = python
            short = request_slice(0)         # train.py gets the default slice (it inherits ours)
            proc = subprocess.Popen(
                argv, cwd=run_dir, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                # train.py holds the slot lock too: if this runner is SIGKILLed, the next job
                # still waits until train.py's group is gone (the backend kills it)
                pass_fds=(lock_fd,) if lock_fd is not None else (),
            )
        except OSError as e:
            msg = f"could not start the run command {argv!r}: {e}; check the --python path and the task's run command"
            log.write(f"[runner] {msg}\n")
            return finish("crash", msg)
    if short:
        request_slice(RUNNER_SLICE_NS)   # back to the runner's own, to see train.py end at once
    stop.pgid = proc.pid
    try:
        _write_json_atomic(run_dir / TRAIN_PID_FILE,
                           {"pid": proc.pid, "pgid": proc.pid, "start_time": proc_start_time(proc.pid),
                            "started_at": started_at})
    except OSError:
        pass  # only a cleanup aid for the backend; the run itself is unaffected
    if stop.requested:  # a signal raced with the start: the handler had no group to forward to
        _signal_group(proc.pid, signal.SIGTERM)

    timed_out = False
    # Wait for train.py's exit: on a pidfd (woken the moment it exits, and by our own signals
    # through the wakeup pipe), else by polling.
    pidfd = _pidfd(proc.pid)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    old_wakeup = signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    try:
        while True:
            if proc.poll() is not None:
                break
            if stop.requested:
                _kill_group(proc, kill_grace_s)
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                _kill_group(proc, kill_grace_s)
                break
            if pidfd is None:
                try:
                    proc.wait(timeout=min(POLL_INTERVAL_S, remaining))
                except subprocess.TimeoutExpired:
                    pass
                continue
            select.select([pidfd, wake_r], [], [], min(remaining, 5.0))
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for fd in (wake_r, wake_w) + ((pidfd,) if pidfd is not None else ()):
            os.close(fd)
    exit_code = proc.returncode
    # Leftover members of the group (a grandchild that outlived train.py) die with the run.
    _signal_group(proc.pid, signal.SIGKILL)
    release_slot()   # (any of them still dying keeps the lock until it is dead: the fd is shared)

    log_text = _read_log_tail(log_path)
    status, error = classify(exit_code, log_text, timed_out=timed_out, cancelled=stop.requested,
                             timeout_s=timeout_s, metric=task["metric"])
    metrics = parse_result(log_text) if status == "done" else {}
    if status in ("timeout", "cancelled"):
        _append_log(log_path, error or status)
    return finish(status, error, exit_code, metrics)


_VALUE_FLAGS = {"--expected-hash": str, "--timeout": float, "--python": str, "--kill-grace": float,
                "--lock-fd": int, "--after": str}


def _parse_fast(argv: list[str]) -> dict[str, Any] | None:
    """The flags as backends pass them (`--flag value`), parsed without argparse, whose import
    costs ~10 ms of every runner start (and a queued-ahead runner's start is on no critical
    path, but a cold one is). None for anything else: main() then lets argparse parse (--help,
    errors with usage)."""
    out: dict[str, Any] = {"python": sys.executable, "kill_grace": DEFAULT_KILL_GRACE_S, "lock_fd": None, "after": []}
    if len(argv) % 2:
        return None
    for flag, raw in zip(argv[::2], argv[1::2]):  # noqa: B905 - even length checked; no strict= for slot Pythons < 3.10
        kind = _VALUE_FLAGS.get(flag)
        if kind is None or raw.startswith("--"):
            return None
        try:
            value = kind(raw)
        except ValueError:
            return None
        key = flag[2:].replace("-", "_")
        if key == "after":
            out["after"].append(value)
        else:
            out[key] = value
    if "expected_hash" not in out or "timeout" not in out or out["timeout"] <= 0:
        return None
    return out


def main(argv: list[str] | None = None) -> int:
    fast = _parse_fast(sys.argv[1:] if argv is None else list(argv))
    if fast is not None:
        return _main(**fast)
    import argparse
    parser = argparse.ArgumentParser(description="Run train.py in this run directory under the harness contract.")
    parser.add_argument("--expected-hash", required=True, help="sha256 hex of prepare.py")
    parser.add_argument("--timeout", required=True, type=float, help="hard timeout for train.py, seconds")
    parser.add_argument("--python", default=sys.executable, help="interpreter for train.py")
    parser.add_argument("--kill-grace", type=float, default=DEFAULT_KILL_GRACE_S,
                        help="seconds between SIGTERM and SIGKILL when stopping train.py")
    parser.add_argument("--lock-fd", type=int, default=None,
                        help="inherited fd of this job's slot lock (held; released once train.py's group is gone)")
    parser.add_argument("--after", action="append", default=[], metavar="LOCKFILE",
                        help="lock file of a job ahead on the same slot: train.py starts once all are free")
    args = parser.parse_args(argv)
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    return _main(args.expected_hash, args.timeout, args.python, args.kill_grace, args.lock_fd, args.after)


def _main(expected_hash: str, timeout: float, python: str, kill_grace: float, lock_fd: int | None,
          after: list[str]) -> int:
    try:
        result = run(expected_hash, timeout, python, kill_grace, lock_fd=lock_fd, after=after)
    except OSError as e:
        print(f"runner: could not run or record the experiment: {e}", file=sys.stderr, flush=True)
        return 2
    sys.stdout.write(RESULT_PREFIX + json.dumps(result, sort_keys=True) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
