"""The local backend: this machine's GPUs (one slot each) or, without GPUs, a few CPU slots.

Every job is one runner process in its own process group, forked by a warm launcher process
(mcp_server/launcher.py: no interpreter start and no imports between submit and train.py; if the
launcher fails, `python -S runner.py ...` is started instead), so that
- it survives the engine: an engine restart finds it again from the persisted handle
  (pid + process start time + boot id) and its result.json;
- it never shares the server's stdout (the MCP stdio transport): stdin is /dev/null and its
  stdout/stderr go to `runner.out` in the run directory;
- cancel can signal it as a group. The runner itself starts train.py in a second session and
  forwards SIGTERM to it (see runner.py); when the runner is gone without a result (SIGKILL,
  OOM killer) train.py's group is found through `train.pid` and killed here.

Queued ahead. A slot takes `queue_depth` jobs (default 2): one running and one queued ahead, so
that a slot whose run ends is refilled at once instead of after result detection + submit +
interpreter start. Every job gets its own lock file (`runner.lock` in its run directory), which
`submit` creates and flock()s exclusively BEFORE the runner starts and hands to it as an inherited
fd; the runner passes it on to train.py and releases it once train.py's process group is gone,
just before it writes result.json (the kernel releases it when the runner and train.py are dead).
A job submitted to a slot with live jobs gets their lock files as `--after`: its runner starts
now, does its startup work (interpreter, imports, harness check) and then blocks until those
locks are free, and only then starts train.py -- its `started_at` and hard timeout count from
there. So two jobs of one slot never train at the same time, they start in submission order,
cancelling the waiting job kills only its waiting runner, and cancelling (or losing) the running
one lets the waiting one start. The order and the lock files are known from the handles alone,
so a restarted engine (which polls the handles it adopts before dispatching) queues behind runs
an earlier process started. `started_at(handle)` tells when a job really started (train.pid).

Slots are static: `provision` refuses (use the skypilot backend for clusters) and `teardown`
is a no-op that returns [] (nothing is billed, nothing to delete; cancelling the experiments on
a slot is the engine's job).

SIMULATION: `slot_labels=["H100", "H100", "H200"]` labels local slots as GPU types so that GPU
tiering, promotion and per-type analysis can be exercised on a CPU-only machine. Such clusters
report `simulated=True` and runs get `AUTORESEARCH_GPU_LABEL=<label>` (informational only: the
run still happens on this machine's CPU or GPU i).
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mcp_server.backends.base import Backend, JobHandle, JobOutcome, JobSpec
from mcp_server.backends.local.launcher_client import LauncherBusy, LauncherUnavailable, launcher_for
from mcp_server.domain import gpus
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import Conflict, InvalidInput, NotFound
from mcp_server.domain.models import Cluster
from mcp_server.runtime import runner
from mcp_server.runtime.warm_launcher import EXIT_FILE

log = logging.getLogger(__name__)

RUNNER_SOURCE = Path(runner.__file__).resolve()
RUNNER_OUT = "runner.out"          # the runner's own stdout/stderr (its last line is the result)
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_MAX_SLOTS = 256

# Runner processes started by this Python process (any LocalBackend instance): pid -> (Popen,
# start time). Kept so they are reaped (no zombies) and their exit status can explain a `lost`;
# the start time tells our child apart from a later process that reused its pid.
_CHILDREN: dict[int, tuple[subprocess.Popen[bytes], int | None]] = {}
_CHILDREN_LOCK = threading.Lock()
_DELIVERED: set[int] = set()   # pids whose outcome was handed out but that had not exited yet
# Runners the launcher started for this process: (pid, start time). The launcher reaps them and
# writes each one's exit status to runner.exit in its run directory.
_LAUNCHED: set[tuple[int, int | None]] = set()


@dataclass
class _Slot:
    name: str
    gpu_type: str
    simulated: bool
    env: dict[str, str] = field(default_factory=dict)   # pinned per slot: CUDA_VISIBLE_DEVICES, threads, label


def boot_id() -> str:
    """This boot's id: a pid + start time from before a reboot must not match a new process."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def detect_gpus(nvidia_smi: str = "nvidia-smi") -> list[tuple[str, float | None]]:
    """(device name, memory MiB) per local NVIDIA GPU, in nvidia-smi order; [] when there is none.

    Uses nvidia-smi (argument list, no shell) rather than torch: the engine must not need a CUDA
    torch to count its GPUs, and importing torch costs seconds.
    """
    exe = shutil.which(nvidia_smi)
    if exe is None:
        return []
    try:
        proc = subprocess.run(
            [exe, "--query-gpu=name,memory.total", "--format=csv,noheader"],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=20, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if proc.returncode != 0:
        return []  # e.g. driver not loaded: treat as a CPU machine
    return parse_nvidia_smi(proc.stdout)


def parse_nvidia_smi(text: str) -> list[tuple[str, float | None]]:
    """Parse `name, memory.total` CSV lines such as 'NVIDIA H100 80GB HBM3, 81559 MiB'."""
    found: list[tuple[str, float | None]] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, _, mem = line.rpartition(",")
        if not name:  # no comma: the whole line is a name
            name, mem = mem, ""
        m = re.search(r"[\d.]+", mem)
        found.append((name.strip(), float(m.group()) if m else None))
    return found


def _visible_indices(count: int) -> list[int]:
    """GPU indices this server may use: all, or those listed in CUDA_VISIBLE_DEVICES.

    Only integer lists are honoured (UUID / MIG forms fall back to all GPUs), and
    CUDA_DEVICE_ORDER=PCI_BUS_ID is set per slot so an index means nvidia-smi's index.
    """
    raw = os.environ.get("CUDA_VISIBLE_DEVICES")
    if raw is None:
        return list(range(count))
    tokens = [t.strip() for t in raw.split(",") if t.strip()]
    if not tokens:
        return []  # explicitly hidden: run on CPU
    if all(t.isdigit() for t in tokens):
        return [int(t) for t in tokens if int(t) < count]
    return list(range(count))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class LocalBackend(Backend):
    """One slot per local GPU, else `cpu_slots` CPU slots; optional simulated GPU labels."""

    name = "local"

    def __init__(
        self,
        *,
        cpu_slots: int = 2,
        slot_labels: list[str] | None = None,
        python: str | None = None,
        cache_dir: Path | str | None = None,
        nvidia_smi: str = "nvidia-smi",
        kill_grace_s: float = runner.DEFAULT_KILL_GRACE_S,
        queue_depth: int = 2,
        use_launcher: bool = True,
    ) -> None:
        if not isinstance(cpu_slots, int) or not 1 <= cpu_slots <= _MAX_SLOTS:
            raise InvalidInput(f"cpu_slots must be an integer from 1 to {_MAX_SLOTS}, got {cpu_slots!r}")
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or not 1 <= queue_depth <= 8:
            raise InvalidInput(f"queue_depth must be an integer from 1 (no job queued ahead) to 8, got {queue_depth!r}")
        self._depth = queue_depth
        self.python = python or sys.executable
        # runners are forked by a warm launcher process (mcp_server/launcher.py): no interpreter
        # start on a job's way to train.py; started now, so the first job does not wait for it
        self.use_launcher = bool(use_launcher)
        if self.use_launcher:
            launcher_for(self.python).start()
        self.cache_dir = str(cache_dir) if cache_dir is not None else None
        self.kill_grace_s = float(kill_grace_s)
        self._created_at = time.time()
        self._lock = threading.Lock()
        # slot name -> {experiment id: handle} of the jobs live on it, in submission order (the
        # first runs, the others are queued ahead and wait for the lock files of those before them)
        self._running: dict[str, dict[str, JobHandle]] = {}
        self._slots = self._build_slots(cpu_slots, slot_labels, detect_gpus(nvidia_smi))
        self._by_name = {s.name: s for s in self._slots}

    @classmethod
    def from_config(cls, config: FleetConfig, *, python: str | None = None) -> "LocalBackend":
        """From a FleetConfig (cpu_slots, slot_labels, cache_dir)."""
        return cls(cpu_slots=config.cpu_slots, slot_labels=config.slot_labels, python=python,
                   cache_dir=config.cache_dir)

    # -- slots ---------------------------------------------------------------------------------
    @staticmethod
    def _build_slots(cpu_slots: int, labels: list[str] | None, gpu_list: list[tuple[str, float | None]]) -> list[_Slot]:
        indices = _visible_indices(len(gpu_list))
        if labels is not None:
            if not isinstance(labels, list) or not labels or len(labels) > _MAX_SLOTS:
                raise InvalidInput(f"slot_labels must be a non-empty list of at most {_MAX_SLOTS} GPU type names, "
                                   f"e.g. ['H100', 'H100', 'H200']; got {labels!r}")
            canon = []
            for label in labels:
                gpu = gpus.find(label) if isinstance(label, str) else None
                if gpu is None:
                    raise InvalidInput(f"slot label {label!r} is not a known GPU type; use one of "
                                       f"{', '.join(gpus.known_names())}")
                canon.append(gpu.name)
            if indices and len(canon) > len(indices):
                raise InvalidInput(f"{len(canon)} slot labels but only {len(indices)} local GPUs; give at most "
                                   f"{len(indices)} labels (one per GPU) or run without GPUs")
            threads = max(1, _cores() // len(canon))
            slots = []
            for i, label in enumerate(canon):
                env = {"AUTORESEARCH_THREADS": str(threads), "AUTORESEARCH_GPU_LABEL": label}
                if indices:
                    env.update(CUDA_VISIBLE_DEVICES=str(indices[i]), CUDA_DEVICE_ORDER="PCI_BUS_ID")
                else:
                    env["CUDA_VISIBLE_DEVICES"] = ""
                slots.append(_Slot(f"local-sim{i}-{label.lower()}", label, True, env))
            return slots
        if indices:
            threads = max(1, _cores() // len(indices))
            return [
                _Slot(f"local-gpu{i}", gpus.normalize_device_name(*gpu_list[i]), False,
                      {"CUDA_VISIBLE_DEVICES": str(i), "CUDA_DEVICE_ORDER": "PCI_BUS_ID",
                       "AUTORESEARCH_THREADS": str(threads)})
                for i in indices
            ]
        threads = max(1, _cores() // cpu_slots)
        return [
            _Slot(f"local-cpu{i}", "CPU", False, {"CUDA_VISIBLE_DEVICES": "", "AUTORESEARCH_THREADS": str(threads)})
            for i in range(cpu_slots)
        ]

    def _slot(self, name: str) -> _Slot:
        slot = self._by_name.get(name)
        if slot is None:
            raise NotFound(f"no local slot named {name!r}; the slots are {', '.join(self._by_name)} "
                           "(call list_clusters to see them)")
        return slot

    def _describe(self) -> str:
        kinds = sorted({s.gpu_type for s in self._slots})
        what = "simulated " if any(s.simulated for s in self._slots) else ""
        return f"{len(self._slots)} {what}{'/'.join(kinds)} slots ({', '.join(self._by_name)})"

    def clusters(self) -> list[Cluster]:
        with self._lock:
            running = {name: sorted(ids) for name, ids in self._running.items()}
        return [
            Cluster(name=s.name, backend=self.name, gpu_type=s.gpu_type, gpu_count=1, state="up",
                    cost_per_hour=None, simulated=s.simulated, running=running.get(s.name, []),
                    created_at=self._created_at)
            for s in self._slots
        ]

    def provision(self, count: int, gpu_type: str | None = None) -> list[Cluster]:
        raise InvalidInput(f"the local backend has a fixed set of slots: {self._describe()}; "
                           "use backend skypilot to provision clusters")

    def teardown(self, names: list[str] | None = None) -> list[str]:
        # Local slots are this machine: there is nothing to stop or stop paying for. Unknown
        # names are still an error, so a typo is not silently accepted.
        for name in names or []:
            self._slot(name)
        return []

    # -- jobs ----------------------------------------------------------------------------------
    def submit(self, cluster: str, job: JobSpec) -> JobHandle:
        slot = self._slot(cluster)
        run_dir = Path(job.run_dir).resolve()
        if not run_dir.is_dir():
            raise InvalidInput(f"run directory {run_dir} does not exist; the scheduler must create it "
                               "(train.py + prepare.py) before submit")
        missing = [n for n in ("train.py", "prepare.py") if not (run_dir / n).is_file()]
        if missing:
            raise InvalidInput(f"run directory {run_dir} lacks {', '.join(missing)}; export the snapshot first")
        if (run_dir / runner.RESULT_FILE).exists():
            raise Conflict(f"run directory {run_dir} already holds a result.json from an earlier run; "
                           "each attempt needs a fresh run directory")
        if not isinstance(job.harness_hash, str) or not _HASH_RE.match(job.harness_hash):
            raise InvalidInput(f"harness_hash must be 64 lowercase hex characters (sha256 of prepare.py), "
                               f"got {job.harness_hash!r}")
        if not (isinstance(job.timeout_s, (int, float)) and 0 < job.timeout_s < 10 * 86400):
            raise InvalidInput(f"timeout_s must be a positive number of seconds below 10 days, got {job.timeout_s!r}")
        bad_env = [k for k, v in job.env.items() if not isinstance(k, str) or not isinstance(v, str) or "\0" in k + v or "=" in k]
        if bad_env:
            raise InvalidInput(f"job env entries must be str -> str without '=' in names or NUL bytes; bad: {bad_env!r}")
        with self._lock:
            ahead = list(self._running.get(cluster, {}).values())
        if len(ahead) >= self._depth:
            raise Conflict(f"slot {cluster} already has {', '.join(h.experiment_id for h in ahead)} (one running, "
                           f"{self._depth - 1} queued ahead at most); a local slot runs one job at a time: wait for "
                           "one to finish or cancel it")

        # A private copy of the runner: the run does not depend on the package staying put.
        tmp = run_dir / ".runner.py.tmp"
        shutil.copyfile(RUNNER_SOURCE, tmp)
        os.replace(tmp, run_dir / "runner.py")

        env = dict(os.environ)
        env.update(job.env)
        if self.cache_dir is not None and "AUTORESEARCH_CACHE" not in job.env:
            env["AUTORESEARCH_CACHE"] = self.cache_dir
        env.update(slot.env)
        env["AUTORESEARCH_PROFILE"] = job.profile
        env["AUTORESEARCH_SEED"] = str(job.seed)

        flags = ["--expected-hash", job.harness_hash, "--timeout", repr(float(job.timeout_s)),
                 "--python", self.python, "--kill-grace", repr(self.kill_grace_s)]
        for h in ahead:
            flags += ["--after", str(Path(h.run_dir) / runner.LOCK_FILE)]
        pid, start = None, None
        if self.use_launcher:
            try:
                pid, start = launcher_for(self.python).launch(run_dir, flags, env, run_dir / RUNNER_OUT)
                with _CHILDREN_LOCK:
                    _LAUNCHED.add((pid, start))
            except LauncherBusy as e:
                raise Conflict(f"{e}; each attempt needs a fresh run directory") from None
            except LauncherUnavailable as e:
                log.warning("runner launcher: %s; starting the runner as a new process", e)
                if e.uncertain:      # a runner may have started for this run dir: it must not run twice
                    kill_processes_in(run_dir)
        if pid is None:
            pid, start = self._spawn(run_dir, flags, env)
        handle = JobHandle(
            experiment_id=job.experiment_id, attempt=job.attempt, cluster=cluster, run_dir=str(run_dir),
            backend_ref={"pid": pid, "start_time": start, "boot_id": boot_id(), "python": self.python,
                         "after": [h.experiment_id for h in ahead]},
            submitted_at=time.time(),
        )
        with self._lock:
            self._running.setdefault(cluster, {})[job.experiment_id] = handle
        return handle

    def _spawn(self, run_dir: Path, flags: list[str], env: dict[str, str]) -> tuple[int, int | None]:
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
            args = [self.python, "-S", "runner.py", *flags, "--lock-fd", str(lock_fd)]
            with open(run_dir / RUNNER_OUT, "wb") as out:
                try:
                    proc = subprocess.Popen(
                        args, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                        start_new_session=True, close_fds=True, pass_fds=(lock_fd,),
                    )
                except OSError as e:
                    raise InvalidInput(f"cannot start the runner with Python {self.python!r}: {e}; "
                                       "configure the local backend's python to an existing interpreter") from e
        finally:
            os.close(lock_fd)   # the runner holds the lock now (or nobody, if it did not start)
        # Not reaped yet, so /proc/<pid> still exists even if the runner already exited.
        start = runner.proc_start_time(proc.pid)
        with _CHILDREN_LOCK:
            _CHILDREN[proc.pid] = (proc, start)
            _DELIVERED.discard(proc.pid)
        return proc.pid, start

    def poll(self, handles: list[JobHandle]) -> list[JobOutcome]:
        _sweep()
        outcomes = []
        for handle in handles:
            # Alive is checked BEFORE looking for result.json: the runner writes the file and
            # then exits, so "not alive and still no file" can only mean it never wrote one.
            alive = _runner_alive(handle)
            run_dir = Path(handle.run_dir)
            log = run_dir / runner.LOG_FILE
            log_path = str(log) if log.exists() else None
            result = _read_result(run_dir)
            if result is not None:
                _forget_child(handle)
                self._finished(handle)
                outcomes.append(JobOutcome(handle, result=result, log_path=log_path))
            elif not alive:
                reason = _lost_reason(handle)
                _kill_training(run_dir)
                _forget_child(handle)
                self._finished(handle)
                outcomes.append(JobOutcome(handle, lost=True, log_path=log_path, reason=reason))
            else:  # still running or waiting; after a restart this adopts it into the slot's list
                self._adopt(handle)
        return outcomes

    def _adopt(self, handle: JobHandle) -> None:
        with self._lock:
            live = self._running.setdefault(handle.cluster, {})
            known = live.get(handle.experiment_id)
            if known is not None and known.attempt == handle.attempt:
                return
            live[handle.experiment_id] = handle
            if len(live) > 1:   # keep submission order: it is the order the runners start in
                ordered = sorted(live.values(), key=lambda h: h.submitted_at)
                live.clear()
                live.update((h.experiment_id, h) for h in ordered)

    def started_at(self, handle: JobHandle) -> float | None:
        """When the runner was handed the slot and started train.py (from train.pid); None while
        it waits queued ahead, or before train.py starts."""
        try:
            info = json.loads((Path(handle.run_dir) / runner.TRAIN_PID_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        value = info.get("started_at") if isinstance(info, dict) else None
        return float(value) if isinstance(value, (int, float)) else None

    def cancel(self, handle: JobHandle) -> None:
        """SIGTERM the runner (it forwards to train.py's group, records `cancelled` and exits);
        SIGKILL it if it has not exited after its kill grace + 2 s; then make sure train.py's
        group is gone too. Idempotent: a finished or vanished job is left as it is."""
        pid = handle.backend_ref.get("pid")
        if isinstance(pid, int) and _runner_alive(handle):
            _signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.kill_grace_s + 2.0
            while _runner_alive(handle) and time.monotonic() < deadline:
                time.sleep(0.05)
            if _runner_alive(handle):
                _signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + 2.0
                while _runner_alive(handle) and time.monotonic() < deadline:
                    time.sleep(0.02)
        run_dir = Path(handle.run_dir)
        _kill_training(run_dir)
        if isinstance(pid, int) and not _runner_alive(handle) and not (run_dir / runner.RESULT_FILE).exists() \
                and not (run_dir / runner.LOG_FILE).exists():
            # stopped before its signal handlers were even installed (cancelled right after
            # submit, e.g. a job just queued ahead): it recorded nothing, so say what happened
            try:
                with open(run_dir / runner.LOG_FILE, "a", encoding="utf-8") as f:
                    f.write("[local backend] cancelled before the runner had started: train.py never ran\n")
            except OSError:
                pass
        _forget_child(handle)
        self._finished(handle)

    def queue_depth(self, cluster: str) -> int:
        return self._depth

    def kill_orphans(self, run_dir: Path) -> int:
        """Recovery: stop the runner an earlier engine started in `run_dir` without saving its handle."""
        return kill_processes_in(run_dir)

    def close(self) -> None:
        # The runners are deliberately left running: they belong to the experiments, not to this
        # process, and a restarted engine adopts them. Exited children are reaped.
        _sweep()

    def _finished(self, handle: JobHandle) -> None:
        with self._lock:
            live = self._running.get(handle.cluster)
            if live is not None:
                mine = live.get(handle.experiment_id)
                if mine is not None and mine.attempt == handle.attempt:
                    del live[handle.experiment_id]
                if not live:
                    del self._running[handle.cluster]


# -- process helpers (module level: they work from the handle alone) ----------------------------

def _our_child(handle: JobHandle) -> subprocess.Popen[bytes] | None:
    """The Popen of the handle's runner if this process started it (same pid AND start time)."""
    ref = handle.backend_ref or {}
    with _CHILDREN_LOCK:
        entry = _CHILDREN.get(ref.get("pid"))  # type: ignore[arg-type]
    if entry is None or entry[1] != ref.get("start_time"):
        return None
    return entry[0]


def _runner_alive(handle: JobHandle) -> bool:
    """Is the handle's runner process still running? Recognised by pid + start time + boot id,
    so a reused pid or a reboot never counts as alive; a zombie counts as exited."""
    ref = handle.backend_ref or {}
    pid, start = ref.get("pid"), ref.get("start_time")
    if not isinstance(pid, int) or pid <= 0:
        return False
    if ref.get("boot_id") and ref.get("boot_id") != boot_id():
        return False
    proc = _our_child(handle)
    if proc is not None:
        return proc.poll() is None  # also reaps it once it has exited
    if start is None or runner.proc_start_time(pid) != start:
        return False
    return runner.proc_state(pid) not in (None, "Z", "X")


def _forget_child(handle: JobHandle) -> None:
    """Drop our Popen for a finished job once it has exited (a runner that wrote result.json but
    is still exiting is kept, and reaped on a later call)."""
    proc = _our_child(handle)
    if proc is None:
        ref = handle.backend_ref or {}
        with _CHILDREN_LOCK:
            _LAUNCHED.discard((ref.get("pid"), ref.get("start_time")))  # type: ignore[arg-type]
        return
    with _CHILDREN_LOCK:
        if proc.poll() is not None:
            _CHILDREN.pop(proc.pid, None)
        else:
            _DELIVERED.add(proc.pid)


def _sweep() -> None:
    """Reap and drop delivered runners that have exited since."""
    with _CHILDREN_LOCK:
        for pid in list(_DELIVERED):
            entry = _CHILDREN.get(pid)
            if entry is None or entry[0].poll() is not None:
                _CHILDREN.pop(pid, None)
                _DELIVERED.discard(pid)


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    """result.json as a dict, or None when absent. It is written by rename, so never partial."""
    try:
        obj = json.loads((run_dir / runner.RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def _lost_reason(handle: JobHandle) -> str:
    pid = handle.backend_ref.get("pid")
    if not isinstance(pid, int):
        return "the job has no runner process on record (it was never started) and no result.json"
    proc = _our_child(handle)
    code = proc.poll() if proc is not None else _launched_exit_code(handle)
    if code is None:
        how = "is no longer running"
        if proc is None and not _launched_here(handle):
            how += " (it was started by an earlier engine process)"
    elif code < 0:
        try:
            how = f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            how = f"was killed by signal {-code}"
    else:
        how = f"exited with code {code}"
    reason = f"runner process {pid} on {handle.cluster} {how} without writing result.json"
    last = _last_line(Path(handle.run_dir) / RUNNER_OUT)
    return f"{reason}; its last output: {last}" if last else reason


def _launched_here(handle: JobHandle) -> bool:
    ref = handle.backend_ref or {}
    with _CHILDREN_LOCK:
        return (ref.get("pid"), ref.get("start_time")) in _LAUNCHED


def _launched_exit_code(handle: JobHandle) -> int | None:
    """The exit status the launcher recorded for the handle's runner (runner.exit), waiting a
    moment for it when this process's launcher started the runner (it writes it on SIGCHLD)."""
    path = Path(handle.run_dir) / EXIT_FILE
    deadline = time.monotonic() + (1.0 if _launched_here(handle) else 0.0)
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
            lines = [l for l in f.read().decode("utf-8", "replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:500] if lines else ""


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_training(run_dir: Path) -> None:
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
        _signal_group(pgid, signal.SIGKILL)


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
