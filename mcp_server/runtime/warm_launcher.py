"""The runner launcher: a warm process that starts runners by fork, for the local backend.

    python -S launcher.py          (started by LocalBackend; requests on stdin, replies on stdout)

Starting a runner as a new interpreter costs ~35 ms of CPU (interpreter + imports) before
train.py can start, and a fleet's first round starts every slot at once: on a small host those
starts queue for the CPU and the last slot starts hundreds of ms late. This process has the
runner already imported; for each request it takes the job's slot lock, forks, and the child
runs `runner.main` in the run directory in its own session (and group): a runner is training within
a millisecond or two of the request. The requests that arrive together are a batch: its
runners wait at a gate (a pipe) until the last of them is forked, so that a hundred slots'
runners do not slow the forking of their own batch.

Protocol, one JSON object per line. Request: {"run_dir", "argv" (runner flags, without
--lock-fd), "env" (the complete environment), "out" (file for the runner's stdout/stderr)}.
Reply: {"pid", "start_time"} or {"error", "busy": bool} (busy: the run directory's lock is
held by another runner). Exited runners are reaped at once (SIGCHLD) and each one's exit
status is written to `runner.exit` in its run directory, so that a runner that died without a
result can be explained ("killed by SIGKILL").

The launcher holds no job state the runners need: it exits at EOF on stdin (its engine went
away) and the runners it started live on; a restarted engine adopts them from their handles.

STANDARD LIBRARY ONLY, like runner.py (it runs with -S, without the package's dependencies).
"""

from __future__ import annotations

import fcntl
import json
import os
import select
import signal
import sys
import traceback

if __package__:
    from mcp_server.runtime import runner
else:                       # run as a script: runner.py is beside this file
    import runner  # type: ignore[no-redef]

EXIT_FILE = "runner.exit"    # in the run directory: {"pid", "exit_code"} (negative = killed by that signal)


def _write_exit(run_dir: str, pid: int, code: int) -> None:
    path = os.path.join(run_dir, EXIT_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"pid": pid, "exit_code": code}, f)
        os.replace(tmp, path)
    except OSError:
        pass   # the run directory is gone: nobody will ask


def _reap(children: dict[int, str]) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        run_dir = children.pop(pid, None)
        if run_dir is not None:
            _write_exit(run_dir, pid, os.waitstatus_to_exitcode(status))


def _child(run_dir: str, argv: list[str], env: dict[str, str], lock_fd: int, out_fd: int,
           close: list[int], gate: int, ready: tuple[int, int]) -> None:
    """In the forked child: become the runner, once the launcher has started the whole batch
    (`gate` reads EOF then). Never returns."""
    code = 70
    try:
        # Its own session, as a runner started as a new process gets (spawn.py): its process
        # group (what a cancel signals) and, where the kernel groups CPU time by session
        # (autogroup), its own share -- not one share for all the launcher's runners, which made
        # a hundred runners handed their slots at once wait for each other. The launcher
        # replies only once this is done (`ready` closes), so a cancel finds the group.
        os.setsid()
        os.close(ready[0])
        os.close(ready[1])
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)              # as in a fresh interpreter
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in close:
            os.close(fd)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)            # never the launcher's request pipe ...
        os.dup2(out_fd, 1)          # ... nor its reply pipe: stdout/stderr -> runner.out
        os.dup2(out_fd, 2)
        os.close(null)
        os.close(out_fd)
        os.chdir(run_dir)
        os.environ.clear()
        os.environ.update(env)
        os.read(gate, 1)            # EOF once every runner of the batch is forked (see serve)
        os.close(gate)
        code = runner.main(argv + ["--lock-fd", str(lock_fd)])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - reported in runner.out; the exit status says it failed
        traceback.print_exc()
        code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _launch(line: bytes, children: dict[int, str], close: list[int], gate: int) -> dict[str, object]:
    try:
        req = json.loads(line)
        run_dir, argv, env, out = req["run_dir"], req["argv"], req["env"], req["out"]
        if not (isinstance(run_dir, str) and isinstance(out, str) and isinstance(argv, list)
                and all(isinstance(a, str) for a in argv) and isinstance(env, dict)
                and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
            raise TypeError("run_dir/out must be strings, argv a list of strings, env a str -> str dict")
    except (ValueError, KeyError, TypeError) as e:
        return {"error": f"bad launch request: {e}", "busy": False}
    try:
        lock_fd = os.open(os.path.join(run_dir, runner.LOCK_FILE), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        return {"error": f"cannot create the slot lock in {run_dir}: {e}", "busy": False}
    try:
        try:
            # taken before the reply: a job submitted next waits for it even if this runner has
            # not got going yet (the child inherits the lock; ours is closed below)
            fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return {"error": f"run directory {run_dir} is in use by another runner", "busy": True}
        try:
            out_fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        except OSError as e:
            return {"error": f"cannot open {out}: {e}", "busy": False}
        try:
            ready = os.pipe()
        except OSError as e:
            os.close(out_fd)
            return {"error": f"cannot start a runner: {e}", "busy": False}
        try:
            pid = os.fork()
            if pid == 0:
                _child(run_dir, argv, env, lock_fd, out_fd, close, gate, ready)
            children[pid] = run_dir
            # The child is in its own session (and group) before we reply: a cancel right after
            # the submit signals the group and must find it. EOF when it has closed its end.
            os.close(ready[1])
            ready = (ready[0], -1)
            os.read(ready[0], 1)
        except OSError as e:
            return {"error": f"fork failed: {e}", "busy": False}
        finally:
            os.close(out_fd)
            for fd in ready:
                if fd >= 0:
                    os.close(fd)
        return {"pid": pid, "start_time": runner.proc_start_time(pid)}
    finally:
        os.close(lock_fd)


def serve() -> int:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # a Ctrl-C is for the engine, which closes our stdin
    wake_r, wake_w = os.pipe()
    for fd in (wake_r, wake_w):
        os.set_blocking(fd, False)
        os.set_inheritable(fd, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler (not SIG_IGN): select wakes, we reap
    children: dict[int, str] = {}
    close = [wake_r, wake_w]
    buf = b""
    while True:
        ready, _, _ = select.select([0, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        _reap(children)
        if 0 not in ready:
            continue
        chunk = os.read(0, 1 << 16)
        if not chunk:
            return 0            # the engine closed the pipe: it went away; the runners live on
        buf += chunk
        if b"\n" not in buf:
            continue
        # A batch (every request that has arrived, and what arrives while we fork) is started
        # behind a gate: each runner waits on it until the last one is forked, then all go at
        # once. Otherwise the runners (and the train.py each starts) compete with this process
        # for the CPU while it is still forking the rest: on a small host the hundredth fork of
        # a first round came seconds after the first.
        gate_r, gate_w = os.pipe()
        try:
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                reply = json.dumps(_launch(line, children, [*close, gate_w], gate_r)).encode() + b"\n"
                try:
                    os.write(1, reply)
                except BrokenPipeError:
                    return 0
                if b"\n" not in buf and select.select([0], [], [], 0)[0]:
                    chunk = os.read(0, 1 << 16)    # more of the batch has come: same gate
                    if not chunk:
                        return 0
                    buf += chunk
        finally:
            os.close(gate_w)       # the batch goes
            os.close(gate_r)


if __name__ == "__main__":
    sys.exit(serve())
