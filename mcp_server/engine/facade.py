"""The experiment engine: the one object the MCP tools call. Knows nothing about MCP.

It composes the layers below it:

* `Workspace` (git): every experiment's code is a snapshot commit on a hidden ref;
* `variants`: constant overrides and factorial designs, rewritten through the AST;
* `Ledger` (SQLite, WAL): experiments, attempts, waves, slots, events; `results.tsv` export;
* `Scheduler`: a background thread that dispatches queued experiments to free slots of the
  right GPU type, polls the backend, enforces the watchdog, retries lost attempts;
* a `Backend` (local slots by default, SkyPilot clusters);
* `analysis`: noise floors, verdicts and leaderboards per GPU type.

The engine itself is the facade: life cycle, clusters, waiting, decisions and queries. Its parts,
one concern each: `checks` (limits and argument validation), `launches` (planning and writing
launches), `data_prep` (prepare.py before the first local run), `rundirs` (run directories and
jobs), `experiment_cache` (every experiment and the analysis index, in memory), `reports` (GPU
and budget reports).

Rules every public method follows:

* Every argument is validated BEFORE anything is written. A bad call raises a `FleetError`
  subclass (InvalidInput, NotFound, LimitExceeded, Conflict) whose text names the problem, the
  valid values and the next call to make, and leaves the ledger and the git refs untouched.
* Every launched experiment reaches exactly one terminal status, with its log. Infrastructure
  failures (`lost`) are retried up to `max_attempts`; code failures are not.
* Results are compared only within one GPU type (`ran_on_gpu`).

Life cycle: `Engine(config)` opens (or creates) the workspace and the ledger; `start()` adopts
what an earlier process left running and starts the scheduler thread; `close()` stops the thread
(runs in progress keep running and are picked up by the next `start()`).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import math
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Literal

from pydantic import BaseModel, Field

from mcp_server.backends.base import Backend
from mcp_server.domain import analysis, gpus, paths
from mcp_server.domain.analysis import Leaderboard, LeaderboardRow, Verdict
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import Conflict, FleetError, InvalidInput, LimitExceeded, NotFound, TeardownIncomplete
from mcp_server.domain.limits import (
    MAX_LIST_LIMIT,
    MAX_LOG_LIMIT,
    MAX_QUEUED,
    MAX_WAIT_S,
)
from mcp_server.domain.models import LIVE, TERMINAL, Cluster, Decision, Experiment, Status, Wave
from mcp_server.domain.profiles import budgets_from_harness
from mcp_server.domain.tool_names import Tool
from mcp_server.engine import reports
from mcp_server.engine.checks import Checks, check_bool, check_int, short
from mcp_server.engine.data_prep import DataPreparation
from mcp_server.engine.experiment_cache import ExperimentCache
from mcp_server.engine.launch_planning import Launcher
from mcp_server.engine.rundirs import RunDirs
from mcp_server.scheduling.scheduler import Scheduler
from mcp_server.store.ledger import Ledger
from mcp_server.store.workspace import Workspace

log = logging.getLogger("autoresearch.engine")



class WaitResult(BaseModel):
    finished: list[Experiment]
    verdicts: list[Verdict]
    still_running: list[str]
    timed_out: bool
    # additions beyond the first stub
    interrupted: bool = Field(False, description="True when the engine was closed while waiting.")
    notes: list[str] = Field(default_factory=list, description="Why live experiments may not progress (data preparation failed, no slot of their GPU type, ...).")


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Engine:
    """The research engine of one workspace. Thread-safe: the MCP layer may call it from worker
    threads while the scheduler thread runs."""

    def __init__(self, config: FleetConfig, backend: Backend | None = None, *,
                 poll_interval_s: float = 0.5, watchdog_margin_s: float | None = None) -> None:
        """Open (or create from the template) the workspace and its ledger, and the backend
        (`config.backend`: local by default). Nothing runs until `start()`."""
        self.config = config
        self.workspace = Workspace(Path(config.workspace), config.tag, Path(config.template_dir))
        self.state_dir = paths.state_dir(self.workspace.path)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir = paths.runs_dir(self.workspace.path)
        self.results_tsv = paths.results_tsv(self.workspace.path)
        self.ledger = Ledger(paths.ledger_path(self.workspace.path))
        self.backend = backend if backend is not None else self._make_backend(config)

        self.template_prepare = Path(config.template_dir) / "prepare.py"
        template_hash = _sha256_file(self.template_prepare)
        profile = config.profile or self._detect_profile()
        budgets = budgets_from_harness(self.template_prepare)
        if profile not in budgets:
            raise InvalidInput(f"profile must be one of {sorted(budgets)} (or omitted), got {profile!r}.")
        meta = self.ledger.init_session(harness_hash=template_hash, profile=profile, tag=config.tag,
                                        backend=self.backend.name)
        self.notes: list[str] = []
        self.harness_hash = meta["harness_hash"]
        if self.harness_hash != template_hash:
            self.notes.append(
                f"The template's prepare.py (sha256 {template_hash[:12]}) differs from the harness pinned when this "
                f"session was created ({self.harness_hash[:12]}); runs are checked against the pinned one.")
        self.profile = config.profile or meta["profile"]
        self.time_budget_s = float(config.time_budget_s or budgets[self.profile])
        self.hard_timeout_s = self.time_budget_s * 2 + float(config.timeout_grace_s)
        margin = watchdog_margin_s if watchdog_margin_s is not None else max(30.0, 0.1 * self.hard_timeout_s)

        self._cond = threading.Condition()
        self._generation = 0
        self._closed = threading.Event()
        self._launch_lock = threading.RLock()
        self._lock_file: Any = None
        self._started = False
        # Every experiment and the analysis index over them: loaded once, then kept current by the
        # ledger's change hook (every committed write that changes experiments, whoever writes)
        self.cache = ExperimentCache(self.ledger)
        self._tsv_pending = True
        self._tsv_at = 0.0
        self._export_wake = threading.Event()
        self._exporter: threading.Thread | None = None
        # data preparation (local backend): once per engine process, in its own thread
        self.prepare_log = paths.prepare_log(self.workspace.path)
        self.data = DataPreparation(prepare_py=self.template_prepare, cwd=self.state_dir, log_path=self.prepare_log,
                                    profile=self.profile, cache_dir=config.cache_dir, ledger=self.ledger,
                                    needed=self.backend.name == "local", on_finished=self._data_finished)
        self.run_dirs = RunDirs(self.workspace, config, profile=self.profile, hard_timeout_s=self.hard_timeout_s,
                                harness_hash=self.harness_hash)
        self._build_job = self.run_dirs.build_job

        self.scheduler = Scheduler(
            self.ledger, self.backend, self.run_dirs.build_job, self.runs_dir,
            max_attempts=config.max_attempts, max_concurrent=config.max_concurrent,
            hard_timeout_s=self.hard_timeout_s, watchdog_margin_s=margin, poll_interval_s=poll_interval_s,
            # local polls are cheap (a stat per job): poll jobs that are about to end every 20 ms
            fast_poll_s=0.02 if self.backend.name == "local" else poll_interval_s,
            before_dispatch=self.data.ensure, on_change=self._on_change, stage=self.run_dirs.stage,
            orphan_cleanup=getattr(self.backend, "kill_orphans", None),   # local: runners without a saved handle
            on_started=self._started_on_slot,
        )
        self.checks = Checks(self.ledger, self.scheduler, config, self.backend.name)
        self.launcher = Launcher(self.workspace, self.ledger, self.checks, harness_hash=self.harness_hash,
                                 lock=self._launch_lock, all_experiments=self.cache.all,
                                 written=self._launched)

    @staticmethod
    def _make_backend(config: FleetConfig) -> Backend:
        if config.backend == "local":
            from mcp_server.backends.local.backend import LocalBackend
            return LocalBackend.from_config(config)
        if config.backend == "skypilot":
            from mcp_server.backends import skypilot
            cls = getattr(skypilot, "SkyPilotBackend", None) or getattr(skypilot, "SkypilotBackend")
            return cls.from_config(config) if hasattr(cls, "from_config") else cls(config)
        raise InvalidInput(f"backend must be 'local' or 'skypilot', got {config.backend!r}.")

    def _detect_profile(self) -> str:
        if self.backend.name != "local":
            return "gpu"
        try:
            real_gpu = any(c.gpu_type != "CPU" and not c.simulated for c in self.backend.clusters())
        except Exception:  # noqa: BLE001
            real_gpu = False
        return "gpu" if real_gpu else "cpu"

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Reconcile running experiments with the backend, then start the scheduler thread.

        Takes an exclusive lock on the workspace (one engine per workspace; Conflict if another
        process holds it). Every experiment an earlier process left `running` is polled: a result
        is recorded (once), a vanished job is requeued (or `lost` after max_attempts), a live one
        is tracked again."""
        if self._started:
            return
        self._closed.clear()
        lock_path = self.state_dir / "engine.lock"
        f = open(lock_path, "a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            f.seek(0)
            holder = f.read().strip()
            f.close()
            raise Conflict(
                f"Another engine ({holder or 'unknown process'}) is running on the workspace {self.workspace.path}. "
                "Stop that server first (one engine per workspace), or use another workspace.") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}")
        f.flush()
        self._lock_file = f
        try:
            clusters = self.backend.reconcile()
            self.ledger.upsert_clusters(clusters, mark_missing_gone=True)
            self.scheduler.refresh_clusters(clusters)
            self.recovery = self.scheduler.recover()
            self.scheduler.start()
            self._exporter = threading.Thread(target=self._export_loop, name="autoresearch-export", daemon=True)
            self._exporter.start()
        except BaseException:
            self._release_lock()
            raise
        self._started = True

    def close(self) -> None:
        """Stop the scheduler thread. Running experiments keep running (recovered on next start).
        Wakes every `wait()` in progress (it returns what has finished, interrupted=True)."""
        self._closed.set()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()
        self.scheduler.stop()
        self._export_wake.set()
        if self._exporter is not None:
            self._exporter.join(10)
            self._exporter = None
        self.data.stop()
        try:
            self.export_results()
        except Exception:  # noqa: BLE001
            log.exception("results.tsv export failed")
        try:
            self.backend.close()
        except Exception:  # noqa: BLE001
            log.exception("backend close failed")
        try:
            self.workspace.close()   # gitpython's helper processes (reopened on demand)
        except Exception:  # noqa: BLE001
            log.exception("workspace close failed")
        self._release_lock()
        self._started = False

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            try:
                fcntl.flock(self._lock_file.fileno(), fcntl.LOCK_UN)
            finally:
                self._lock_file.close()
                self._lock_file = None

    def __enter__(self) -> "Engine":
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # internal: change notification, cache, export ------------------------------------------
    def _on_change(self, ids: list[str]) -> None:
        """Experiments changed (the cache already follows the ledger): mark results.tsv for
        export and wake the waiters."""
        self._tsv_pending = True
        self._export_wake.set()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _export_loop(self) -> None:
        """results.tsv follows the ledger: rewritten at most every 2 s while results arrive
        (off the scheduler thread: at 10k experiments an export takes ~0.1 s). Also loads the
        experiment cache once at start, so the first leaderboard call does not pay for it."""
        try:
            self.cache.all()
        except Exception:  # noqa: BLE001
            log.exception("loading the experiment cache failed")
        while not self._closed.is_set():
            self._export_wake.wait(30.0)
            self._export_wake.clear()
            if self._closed.is_set():
                break
            pause = 2.0 - (time.monotonic() - self._tsv_at)
            if pause > 0 and self._closed.wait(pause):
                break
            if self._tsv_pending:
                try:
                    self.export_results()
                except Exception:  # noqa: BLE001
                    log.exception("results.tsv export failed")

    def export_results(self, dest: str | os.PathLike[str] | None = None) -> Path:
        """Write results.tsv (default `<workspace>/.autoresearch/results.tsv`)."""
        if dest is None:
            self._tsv_pending = False     # before writing: a change during the export re-marks it
        path = self.ledger.export_tsv(dest or self.results_tsv)
        if dest is None:
            self._tsv_at = time.monotonic()
        return path

    # internal: callbacks of the parts ------------------------------------------------------
    def _data_finished(self) -> None:
        """Data preparation ended (either way): dispatch may go on; waits see the news."""
        self.scheduler.wake()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _started_on_slot(self, exp_id: str, attempt: int, started_at: float) -> None:
        """A job queued ahead on its slot started (scheduler thread): no longer waiting_for_slot."""
        if self.ledger.mark_started(exp_id, attempt, started_at):
            self._on_change([exp_id])

    def _launched(self, exps: list[Experiment]) -> None:
        """A launch is in the ledger (called under the launch lock; the cache has it already): wake
        the waiters and the scheduler."""
        self._on_change([])
        self.scheduler.wake()

    # clusters ------------------------------------------------------------------------------
    def list_clusters(self) -> list[Cluster]:
        """Every slot/cluster with its GPU type, state, the experiment training on it now and those
        queued ahead behind it (submitted; they start when it ends)."""
        slots = self.scheduler.refresh_clusters()
        self.ledger.upsert_clusters(slots)
        running: dict[str, list[str]] = {}
        ahead: dict[str, list[str]] = {}
        waiting = self.scheduler.queued_ahead()
        for f in self.scheduler.in_flight().values():
            (ahead if f.exp_id in waiting else running).setdefault(f.cluster, []).append(f.exp_id)
        return [c.model_copy(update={"running": sorted(running.get(c.name, [])),
                                     "queued_ahead": sorted(ahead.get(c.name, []))}) for c in slots]

    def provision_clusters(self, count: int, gpu_type: str | None = None) -> list[Cluster]:
        """Bring up `count` more clusters (of `gpu_type` where the backend can choose), within max_clusters."""
        count = check_int("count", count, 1, max(1, self.config.max_clusters))
        if gpu_type is not None:
            if not isinstance(gpu_type, str) or len(gpu_type) > 64:
                raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100', got {short(gpu_type)}.")
            gpu_type = gpus.lookup(gpu_type).name
        alive = [c for c in self.scheduler.refresh_clusters() if c.state != "gone"]
        if len(alive) + count > self.config.max_clusters:
            raise LimitExceeded(
                f"{len(alive)} clusters are up and {count} more were asked for; the limit is max_clusters="
                f"{self.config.max_clusters}. Tear some down ({Tool.TEARDOWN_CLUSTERS}) or ask for at most "
                f"{max(0, self.config.max_clusters - len(alive))}.")
        new = self.backend.provision(count, gpu_type)
        self.ledger.upsert_clusters(new)
        self.scheduler.refresh_clusters()
        return new

    def teardown_clusters(self, names: list[str] | None = None) -> list[str]:
        """Stop and delete the named clusters (None = all). Experiments that were running on a
        removed cluster are recorded as cancelled. (Local slots are this machine: nothing is
        removed and nothing is cancelled.) When some cluster could not be taken down the backend
        raises TeardownIncomplete: the clusters it did remove are recorded all the same, and the
        error is raised again (it names the clusters that are still there)."""
        current = {c.name: c for c in self.scheduler.refresh_clusters()}
        if names is not None:
            if not isinstance(names, (list, tuple)) or not names or len(names) > 1000:
                raise InvalidInput("names must be a non-empty list of cluster names (or omitted for all). "
                                   f"Call {Tool.LIST_CLUSTERS} to see them.")
            bad = [n for n in names if not isinstance(n, str) or n not in current]
            if bad:
                raise NotFound(f"Unknown cluster{'s' if len(bad) > 1 else ''}: {', '.join(short(b, 40) for b in bad[:10])}. "
                               f"Clusters: {', '.join(current) or 'none'}. Nothing was torn down.")
            names = list(dict.fromkeys(names))
        try:
            removed = self.backend.teardown(names)
        except TeardownIncomplete as exc:
            try:
                self._clusters_removed(exc.removed)
            except Exception:  # noqa: BLE001 - the agent must still hear which clusters survived
                log.exception("recording the clusters a partial teardown removed failed")
            raise
        self._clusters_removed(removed)
        return removed

    def _clusters_removed(self, removed: list[str]) -> None:
        """The backend took these clusters down: gone in the ledger, the experiments that were
        running on them cancelled, the scheduler's slots refreshed."""
        if removed:
            self.ledger.set_cluster_state(removed, "gone")
            victims = [f.exp_id for f in self.scheduler.in_flight().values() if f.cluster in removed]
            if victims:
                self.scheduler.cancel(victims, reason="cancelled: its cluster was torn down")
        self.scheduler.refresh_clusters()

    def gpu_info(self) -> reports.GpuInfo:
        """Per GPU type: slots, table figures (memory, peak bf16 TFLOP/s, bandwidth, $/h) and the
        throughput MEASURED by finished runs (steps and tokens within the budget)."""
        return reports.gpu_info(self.list_clusters(), self.cache.throughput(), self.time_budget_s, self.profile)

    def budget_status(self) -> reports.BudgetStatus:
        """GPU-hours and estimated cost spent, the limits, clusters alive, experiments live."""
        notes = list(self.notes)
        if self.data.error:
            notes.append(self.data.error)
        if self.scheduler.last_error:
            notes.append(f"scheduler: {self.scheduler.last_error}")
        return reports.budget_status(self.ledger.usage(), self.ledger.count_by_status(), self.scheduler.slots(),
                                     self.config, notes, waiting_for_slot=self.ledger.count_waiting_for_slot())

    # experiments ---------------------------------------------------------------------------
    def launch_experiment(
        self,
        description: str,
        overrides: dict[str, Any] | None = None,
        source: str | None = None,        # a file in the workspace to snapshot instead of train.py
        commit: str | None = None,        # or an existing commit / experiment id to derive from
        gpu_type: str | None = None,
        replicates: int = 1,
        seed: int | None = None,
        priority: int = 0,
    ) -> list[Experiment]:
        """Snapshot code and queue it: `replicates` experiments with the same code and seeds
        seed, seed+1, ... (default 42, 43, ...). The code is the working train.py (default), another
        workspace file (`source`), or an experiment's/commit's train.py (`commit`), with `overrides`
        (train.py constants -> literal values) applied through the AST. Its reference for verdicts
        (`parent_code_hash`) is the code at the parent commit (the branch head, or `commit`).
        Several replicates form a wave of kind 'replicates'. Returns the queued experiments."""
        return self.launcher.experiment(description, overrides, source, commit, gpu_type, replicates, seed, priority)


    def launch_wave(
        self,
        description: str,
        axes: dict[str, list[Any]],
        replicates: int = 1,
        include_control: bool = True,
        base: str | None = None,          # experiment id or commit the wave derives from (default: branch head + working train.py)
        gpu_type: str | None = None,
    ) -> Wave:
        """A full factorial over `axes` (constant -> levels), each cell `replicates` times with
        seeds 42, 43, ... (the same seeds in every cell), plus the unmodified base as a control
        with the same seeds. Every cell's reference is the control's code (`parent_code_hash`),
        so verdicts compare cells with the control on the same GPU type."""
        return self.launcher.wave(description, axes, replicates, include_control, base, gpu_type)


    def promote(self, experiment_ids: list[str], gpu_type: str, replicates: int = 3) -> Wave:
        """Rerun done experiments' exact code on `gpu_type`, `replicates` times each (seeds 42, ...),
        at promotion priority (ahead of other queued work). For each distinct parent code, a control
        set (the parent code, same seeds) is added on that GPU type unless it already has that many
        runs there, so verdicts on the new tier have a same-type reference."""
        return self.launcher.promotion(experiment_ids, gpu_type, replicates)


    def wait(
        self,
        experiment_ids: list[str] | None = None,
        wave_id: str | None = None,
        until: Literal["all", "first"] = "all",
        timeout_s: float = 600.0,
        on_progress: Callable[[int, int, str], None] | None = None,
    ) -> WaitResult:
        """Block until all (or the first) of the given experiments / the wave's experiments reach a
        terminal status, or `timeout_s` passes, or the engine closes. Neither given = every
        experiment live now. `on_progress(done, total, message)` is called (from this thread) once
        per experiment as it reaches a terminal status, e.g. "e0007 done val_bpb=1.2345 (H100)".
        Returns the finished experiments with their verdicts and the ids still live."""
        if until not in ("all", "first"):
            raise InvalidInput(f"until must be 'all' or 'first', got {short(until)}.")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s)\
                or not 0 <= timeout_s <= MAX_WAIT_S:
            raise InvalidInput(f"timeout_s must be a number of seconds from 0 to {MAX_WAIT_S:g}, got {short(timeout_s)}.")
        if on_progress is not None and not callable(on_progress):
            raise InvalidInput("on_progress must be callable.")
        targets: list[str] = []
        if experiment_ids is not None:
            targets += self.checks.experiment_ids(experiment_ids)
        if wave_id is not None:
            targets += self.checks.wave(wave_id).experiment_ids
        if experiment_ids is None and wave_id is None:
            live, _ = self.ledger.list_experiments(statuses=[s.value for s in LIVE], limit=MAX_QUEUED)
            targets = [e.id for e in live]
        targets = list(dict.fromkeys(targets))
        if not self._started and any(s in LIVE for s in self.ledger.statuses(targets).values()):
            raise Conflict("The engine is not started, so nothing would progress: call start() first.")
        deadline = time.monotonic() + float(timeout_s)
        reported: set[str] = set()
        total = len(targets)
        timed_out = interrupted = False
        while True:
            with self._cond:
                gen = self._generation
            statuses = self.ledger.statuses(targets)
            newly = [i for i in targets if statuses.get(i) in TERMINAL and i not in reported]
            if newly and on_progress is not None:
                for e in self.ledger.get_many(newly):
                    reported.add(e.id)
                    try:
                        on_progress(len(reported), total, self._progress_message(e))
                    except Exception:  # noqa: BLE001 - a progress sink must not break the wait
                        log.exception("on_progress failed")
            reported.update(newly)
            done_ids = [i for i in targets if statuses.get(i) in TERMINAL]
            if len(done_ids) == total or (until == "first" and done_ids):
                break
            if self._closed.is_set():
                interrupted = True
                break
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            with self._cond:
                if self._generation == gen:
                    self._cond.wait(min(remaining, 5.0))
        finished = self.ledger.get_many(done_ids)
        still = [i for i in targets if statuses.get(i) not in TERMINAL]
        if self._tsv_pending:
            try:
                self.export_results()
            except Exception:  # noqa: BLE001
                log.exception("results.tsv export failed")
        verdicts = self._verdicts(finished) if finished else []
        notes: list[str] = []
        if still:
            if self.data.error:
                notes.append(self.data.error)
            if self.scheduler.last_error:
                notes.append(f"scheduler: {self.scheduler.last_error}")
            types = self.checks.gpu_types_available()
            stuck = sorted({e.gpu_type for e in self.ledger.get_many(still) if e.gpu_type and e.gpu_type not in types})
            if stuck:
                notes.append(f"No slot of GPU type {', '.join(stuck)} is up, so experiments that need it stay queued; "
                             f"available: {self.checks.describe_types()}.")
        return WaitResult(finished=finished, verdicts=verdicts, still_running=still, timed_out=timed_out,
                          interrupted=interrupted, notes=notes)

    @staticmethod
    def _progress_message(e: Experiment) -> str:
        where = f" ({e.ran_on_gpu})" if e.ran_on_gpu else ""
        if e.status == Status.done and e.metrics.val_bpb is not None:
            return f"{e.id} done val_bpb={e.metrics.val_bpb:.4f}{where}"
        reason = (e.error or "").splitlines()[0][:160] if e.error else ""
        return f"{e.id} {e.status.value}{where}" + (f": {reason}" if reason else "")

    def cancel(self, experiment_ids: list[str]) -> list[Experiment]:
        """Cancel experiments: queued ones at once, running ones after the backend stopped them.
        Those already finished are returned unchanged."""
        ids = self.checks.experiment_ids(experiment_ids)
        self.scheduler.cancel(ids)
        return self.ledger.get_many(ids)

    def keep(self, experiment_id: str, force: bool = False) -> Experiment:
        """Keep a done experiment: the session branch moves to its snapshot (fast-forward; `force`
        resets when the branch moved since) and the working tree is updated. Records decision keep."""
        exp = self.checks.experiment(experiment_id)
        force = check_bool("force", force)
        if exp.status != Status.done:
            why = f" ({(exp.error or '').splitlines()[0][:200]})" if exp.error else ""
            raise Conflict(f"{exp.id} is {exp.status.value}{why}: only done experiments can be kept. "
                           f"Keep a done one (see {Tool.LEADERBOARD}), or fix the code and launch again.")
        with self._launch_lock:
            result = self.workspace.keep(exp.commit, force=force)
            detail = f"branch {result.get('branch')} -> {str(result.get('commit'))[:12]}"
            if not result.get("fast_forward", True):
                detail += " (reset: not a fast-forward)"
            self.ledger.set_decision(exp.id, Decision.keep, detail)
        self._on_change([exp.id])
        return self.checks.experiment(exp.id)

    def discard(self, experiment_id: str) -> Experiment:
        """Record decision discard for a done experiment (the branch does not move). Refused for a
        kept experiment while the session branch holds its commit (ledger and git would disagree)."""
        exp = self.checks.experiment(experiment_id)
        if exp.status != Status.done:
            raise Conflict(f"{exp.id} is {exp.status.value}: only done experiments take a keep/discard decision "
                           "(failed ones are already out of the running).")
        if exp.decision == Decision.keep and exp.commit:
            head = self.workspace.head_commit()
            if head == exp.commit or self.workspace.repo.is_ancestor(exp.commit, head):
                where = "is at" if head == exp.commit else "has moved on from (and still contains)"
                raise Conflict(
                    f"{exp.id} was kept: the session branch {self.workspace.branch} {where} its commit "
                    f"{exp.commit[:12]}, so a discard would contradict git. Nothing was changed. To move on, keep "
                    f"another experiment: {Tool.KEEP_EXPERIMENT}(experiment_id='<id>'); when that one does not descend "
                    f"from this commit, {Tool.KEEP_EXPERIMENT}(experiment_id='<id>', force=true) resets the branch to it.")
        self.ledger.set_decision(exp.id, Decision.discard)
        self._on_change([exp.id])
        return self.checks.experiment(exp.id)

    def get_experiment(self, experiment_id: str) -> Experiment:
        """One experiment in full."""
        return self.checks.experiment(experiment_id)

    def _log_text(self, exp: Experiment) -> str:
        if not exp.log_path:
            return ""
        path = Path(exp.log_path)
        try:
            with open(path, "rb") as f:
                data = f.read(64 << 20)
        except OSError:
            return ""
        return data.decode("utf-8", errors="replace")

    def read_log(self, experiment_id: str, offset: int = 0, limit: int = 4000) -> tuple[str, int | None]:
        """A page of the experiment's run log (its current attempt): `limit` characters from
        character `offset` (a negative offset counts from the end: -4000 = the last 4000). Returns
        (text, next offset) with next None at the end of the log. Empty while queued."""
        exp = self.checks.experiment(experiment_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > 10**12:
            raise InvalidInput(f"offset must be an integer (negative = from the end), got {short(offset)}.")
        limit = check_int("limit", limit, 1, MAX_LOG_LIMIT)
        text = self._log_text(exp)
        start = max(0, len(text) + offset) if offset < 0 else offset
        end = start + limit
        return text[start:end], (end if end < len(text) else None)

    def log_size(self, experiment_id: str) -> int:
        """Length of the experiment's run log in characters (for paging from the end)."""
        return len(self._log_text(self.checks.experiment(experiment_id)))

    def experiments(self, status: str | None = None, wave_id: str | None = None,
                    offset: int = 0, limit: int = 50) -> tuple[list[Experiment], int]:
        """A page of experiments in launch order (optionally one status / one wave) and the total."""
        if status is not None and status not in {s.value for s in Status}:
            raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)}, got {short(status)}.")
        if wave_id is not None:
            self.checks.wave(wave_id)
        offset = check_int("offset", offset, 0, 10**9)
        limit = check_int("limit", limit, 1, MAX_LIST_LIMIT)
        return self.ledger.list_experiments(status=status, wave_id=wave_id, offset=offset, limit=limit)

    def get_wave(self, wave_id: str) -> Wave:
        """One wave with its design and experiment ids."""
        return self.checks.wave(wave_id)

    def waves(self) -> list[Wave]:
        return self.ledger.waves()

    def events(self, experiment_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The event log (queued/submitted/finished/lost/requeued/cancelled/kept/...)."""
        if experiment_id is not None:
            self.checks.experiment(experiment_id)
        return self.ledger.events(experiment_id, check_int("limit", limit, 1, 100_000))

    def verdicts(self, experiment_ids: list[str]) -> list[Verdict]:
        """Verdict of each experiment vs its same-GPU-type reference (see analysis), answered from
        the analysis index (O(1) each; the index follows every change of the ledger)."""
        ids = self.checks.experiment_ids(experiment_ids)
        return self._verdicts(self.ledger.get_many(ids))

    def _verdicts(self, targets: list[Experiment]) -> list[Verdict]:
        with self.cache.indexed() as idx:
            return idx.verdicts(targets)

    def leaderboard(self, gpu_type: str | None = None, limit: int = 20) -> Leaderboard:
        """Groups of identical code ranked by mean val_bpb, per GPU type, with deltas and verdicts.
        Answered from the analysis index (updated per changed experiment, not recomputed over all of
        them) and cached until the index version moves."""
        if gpu_type is not None and (not isinstance(gpu_type, str) or len(gpu_type) > 64):
            raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100', got {short(gpu_type)}.")
        analysis.check_leaderboard_args(gpu_type, limit)
        return self.cache.leaderboard(gpu_type, limit)


__all__ = ["Engine", "WaitResult", "Verdict", "Leaderboard", "LeaderboardRow", "FleetError"]
