"""The local backend: this machine's GPUs (one slot each) or, without GPUs, a few CPU slots.

This module is the Backend interface (submit, poll, cancel, ...) and the slots' live jobs; the
rest of the package does the parts: detect.py (GPUs, cores), slots.py (the slots, simulated GPU
labels), spawn.py (starting a runner, through the warm launcher in launcher_client.py, else as a
new interpreter) and processes.py (pids, start times, orphans, why a runner is gone).

Every job is one runner process in its own process group (see spawn.py), so that
- it survives the engine: an engine restart finds it again from the persisted handle
  (pid + process start time + boot id) and its result.json;
- it never shares the server's stdout (the MCP stdio transport): stdin is /dev/null and its
  stdout/stderr go to `runner.out` in the run directory;
- cancel can signal it as a group. The runner itself starts train.py in a second session and
  forwards SIGTERM to it (see runtime/runner.py); when the runner is gone without a result
  (SIGKILL, OOM killer) train.py's group is found through `train.pid` and killed here.

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
a slot is the engine's job). Simulated GPU slots (`slot_labels`): see slots.py.
"""

from __future__ import annotations

import json
import re
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from mcp_server.backends.base import Backend, JobHandle, JobOutcome, JobSpec
from mcp_server.backends.local import processes, spawn
from mcp_server.backends.local.detect import cores, detect_gpus, parse_nvidia_smi
from mcp_server.backends.local.launcher_client import launcher_for
from mcp_server.backends.local.processes import CHILDREN, WATCH, boot_id, kill_processes_in, runner_alive
from mcp_server.backends.local.slots import MAX_SLOTS, Slot, build_slots
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import Conflict, InvalidInput, NotFound
from mcp_server.domain.models import Cluster
from mcp_server.domain.tool_names import Tool
from mcp_server.runtime import runner

__all__ = ["LocalBackend", "parse_nvidia_smi"]   # parse_nvidia_smi: imported from here by the tests

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


class LocalBackend(Backend):
    """One slot per local GPU, else `cpu_slots` CPU slots; optional simulated GPU labels."""

    name = "local"
    fixed_slots = True
    # a first round fills every slot in one launcher exchange: with smaller batches, each
    # batch's train.py starts took the CPU from the engine preparing the next (a 2-core host's
    # 128th slot started seconds after the first)
    max_batch = MAX_SLOTS
    # a runner queued ahead needs well under a second to be up and blocked on the slot's lock
    # (seconds on a loaded host): queued a few seconds before the running job's expected end, its
    # start-up work (run directory, fork, harness check) happens mid-run, not while a hundred
    # slots that ended together hand over and their train.py interpreters start
    queue_ahead_lead_s = 3.0

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
        if not isinstance(cpu_slots, int) or not 1 <= cpu_slots <= MAX_SLOTS:
            raise InvalidInput(f"cpu_slots must be an integer from 1 to {MAX_SLOTS}, got {cpu_slots!r}")
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or not 1 <= queue_depth <= 8:
            raise InvalidInput(f"queue_depth must be an integer from 1 (no job queued ahead) to 8, got {queue_depth!r}")
        self._depth = queue_depth
        self.python = python or sys.executable
        # runners are forked by a warm launcher process (runtime/warm_launcher.py): no interpreter
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
        self._slots = build_slots(cpu_slots, slot_labels, detect_gpus(nvidia_smi))
        self._by_name = {s.name: s for s in self._slots}

    @classmethod
    def from_config(cls, config: FleetConfig, *, python: str | None = None) -> LocalBackend:
        """From a FleetConfig (cpu_slots, slot_labels, cache_dir)."""
        return cls(cpu_slots=config.cpu_slots, slot_labels=config.slot_labels, python=python,
                   cache_dir=config.cache_dir)

    # -- slots ---------------------------------------------------------------------------------
    def _slot(self, name: str) -> Slot:
        slot = self._by_name.get(name)
        if slot is None:
            raise NotFound(f"no local slot named {name!r}; the slots are {', '.join(self._by_name)} "
                           f"(call {Tool.LIST_CLUSTERS} to see them)")
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
        raise InvalidInput(
            f"The local backend has a fixed set of slots: {self._describe()}, set when the server starts; to change "
            f"them restart it with --cpu-slots N (this machine has {cores()} cores) or --simulate-tiers H100,H200 "
            "(local slots labelled as GPU types), and to provision clusters use backend skypilot "
            "(serve --backend skypilot).")

    def teardown(self, names: list[str] | None = None) -> list[str]:
        # Local slots are this machine: there is nothing to stop or stop paying for. Unknown
        # names are still an error, so a typo is not silently accepted.
        for name in names or []:
            self._slot(name)
        return []

    # -- jobs ----------------------------------------------------------------------------------
    def submit(self, cluster: str, job: JobSpec) -> JobHandle:
        result = self.submit_many([(cluster, job)])[0]
        if isinstance(result, Exception):
            raise result
        return result

    def submit_many(self, jobs: list[tuple[str, JobSpec]]) -> list[JobHandle | Exception]:
        """Submit several jobs at once: each is checked as `submit` checks it, then their
        runners are started through the launcher in one exchange (`spawn.start_runners`). A
        job after another on the same slot in this call is submitted in a later exchange, once
        the one ahead of it has its runner (and so holds its lock): the order on a slot is the
        order of the call."""
        results: list[JobHandle | Exception | None] = [None] * len(jobs)
        pending = list(range(len(jobs)))
        while pending:
            batch: list[int] = []
            later: list[int] = []
            slots_now: set[str] = set()
            for i in pending:
                (later if jobs[i][0] in slots_now else batch).append(i)
                slots_now.add(jobs[i][0])
            prepared = []
            for i in batch:
                cluster, job = jobs[i]
                try:
                    prepared.append((i, *self._prepare(cluster, job)))
                except Exception as e:  # noqa: BLE001 - this job's error, for the caller
                    results[i] = e
            sent = time.time()   # submitted when the launch was asked for (the replies come after)
            started = spawn.start_runners(self.python, [(d, flags, env) for _, d, flags, env, _ in prepared],
                                          self.use_launcher)
            for (i, run_dir, _flags, _env, ahead), got in zip(prepared, started, strict=True):
                if isinstance(got, Exception):
                    results[i] = got
                    continue
                cluster, job = jobs[i]
                pid, start = got
                handle = JobHandle(
                    experiment_id=job.experiment_id, attempt=job.attempt, cluster=cluster, run_dir=str(run_dir),
                    backend_ref={"pid": pid, "start_time": start, "boot_id": boot_id(), "python": self.python,
                                 "after": [h.experiment_id for h in ahead]},
                    submitted_at=sent,
                )
                WATCH.watch(handle)   # from now on a poll sees its exit without reading /proc
                with self._lock:
                    self._running.setdefault(cluster, {})[job.experiment_id] = handle
                results[i] = handle
            pending = later
        return [r if r is not None else RuntimeError("not submitted") for r in results]

    def _prepare(self, cluster: str, job: JobSpec) -> tuple[Path, list[str], dict[str, str], list[JobHandle]]:
        """Check one job and install its runner: (run dir, runner flags, env, the jobs ahead of it)."""
        slot = self._slot(cluster)
        run_dir = Path(job.run_dir).resolve()
        if not run_dir.is_dir():
            raise InvalidInput(f"run directory {run_dir} does not exist; the scheduler must create it "
                               "(train.py + prepare.py) before submit")
        missing = [n for n in (runner.TRAIN_SCRIPT, *runner.harness_files(run_dir)) if not (run_dir / n).is_file()]
        if missing:
            raise InvalidInput(f"run directory {run_dir} lacks {', '.join(missing)}; export the snapshot first")
        if (run_dir / runner.RESULT_FILE).exists():
            raise Conflict(f"run directory {run_dir} already holds a result.json from an earlier run; "
                           "each attempt needs a fresh run directory")
        if not isinstance(job.harness_hash, str) or not _HASH_RE.match(job.harness_hash):
            raise InvalidInput(f"harness_hash must be 64 lowercase hex characters (the harness pin: sha256 of "
                               f"prepare.py), "
                               f"got {job.harness_hash!r}")
        if not (isinstance(job.timeout_s, (int, float)) and 0 < job.timeout_s < 10 * 86400):
            raise InvalidInput(f"timeout_s must be a positive number of seconds below 10 days, got {job.timeout_s!r}")
        bad_env = [k for k, v in job.env.items()
                   if not isinstance(k, str) or not isinstance(v, str) or "\0" in k + v or "=" in k]
        if bad_env:
            raise InvalidInput(f"job env entries must be str -> str without '=' in names or NUL bytes; "
                               f"bad: {bad_env!r}")
        with self._lock:
            ahead = list(self._running.get(cluster, {}).values())
        if len(ahead) >= self._depth:
            raise Conflict(f"slot {cluster} already has {', '.join(h.experiment_id for h in ahead)} (one running, "
                           f"{self._depth - 1} queued ahead at most); a local slot runs one job at a time: wait for "
                           "one to finish or cancel it")
        spawn.install_runner(run_dir)
        env = spawn.runner_env(job, slot.env, self.cache_dir)
        flags = spawn.runner_flags(job, self.python, self.kill_grace_s, ahead)
        return run_dir, flags, env, ahead

    def poll(self, handles: list[JobHandle]) -> list[JobOutcome]:
        """Outcomes of the handles whose runner has exited (result.json, else `lost`). A runner
        writes result.json as its last act, so a watched runner that has not exited is still
        running or waiting: it costs no file access (processes.ExitWatch); only the exited ones,
        and those not watched, are looked at."""
        CHILDREN.sweep()
        exited = WATCH.exited(handles)
        outcomes = []
        for i, handle in enumerate(handles):
            if i not in exited and WATCH.watched(handle):
                self._adopt(handle)
                continue
            # Alive is checked BEFORE looking for result.json: the runner writes the file and
            # then exits, so "not alive and still no file" can only mean it never wrote one.
            # (A watched runner seen to exit is not asked again.)
            alive = i not in exited and runner_alive(handle)
            run_dir = Path(handle.run_dir)
            log = run_dir / runner.LOG_FILE
            log_path = str(log) if log.exists() else None
            result = _read_result(run_dir)
            if result is not None:
                CHILDREN.forget(handle)
                self._finished(handle)
                outcomes.append(JobOutcome(handle, result=result, log_path=log_path))
            elif not alive:
                reason = processes.lost_reason(handle)
                processes.kill_training(run_dir)
                CHILDREN.forget(handle)
                self._finished(handle)
                outcomes.append(JobOutcome(handle, lost=True, log_path=log_path, reason=reason))
            else:  # still running or waiting; after a restart this adopts it into the slot's list
                WATCH.watch(handle)
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
        if isinstance(pid, int) and runner_alive(handle):
            processes.signal_group(pid, signal.SIGTERM)
            deadline = time.monotonic() + self.kill_grace_s + 2.0
            while runner_alive(handle) and time.monotonic() < deadline:
                time.sleep(0.05)
            if runner_alive(handle):
                processes.signal_group(pid, signal.SIGKILL)
                deadline = time.monotonic() + 2.0
                while runner_alive(handle) and time.monotonic() < deadline:
                    time.sleep(0.02)
        run_dir = Path(handle.run_dir)
        processes.kill_training(run_dir)
        if isinstance(pid, int) and not runner_alive(handle) and not (run_dir / runner.RESULT_FILE).exists() \
                and not (run_dir / runner.LOG_FILE).exists():
            # stopped before its signal handlers were even installed (cancelled right after
            # submit, e.g. a job just queued ahead): it recorded nothing, so say what happened
            try:
                with open(run_dir / runner.LOG_FILE, "a", encoding="utf-8") as f:
                    f.write("[local backend] cancelled before the runner had started: train.py never ran\n")
            except OSError:
                pass
        CHILDREN.forget(handle)
        self._finished(handle)

    def queue_depth(self, cluster: str) -> int:
        return self._depth

    def kill_orphans(self, run_dir: Path) -> int:
        """Recovery: stop the runner an earlier engine started in `run_dir` without saving its handle."""
        return kill_processes_in(run_dir)

    def close(self) -> None:
        # The runners are deliberately left running: they belong to the experiments, not to this
        # process, and a restarted engine adopts them. Exited children are reaped.
        CHILDREN.sweep()

    def _finished(self, handle: JobHandle) -> None:
        WATCH.unwatch(handle)
        with self._lock:
            live = self._running.get(handle.cluster)
            if live is not None:
                mine = live.get(handle.experiment_id)
                if mine is not None and mine.attempt == handle.attempt:
                    del live[handle.experiment_id]
                if not live:
                    del self._running[handle.cluster]


def _read_result(run_dir: Path) -> dict[str, Any] | None:
    """result.json as a dict, or None when absent. It is written by rename, so never partial."""
    try:
        obj = json.loads((run_dir / runner.RESULT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None
