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
one concern each: the mixins `clusters`, `waiting`, `decisions`, `queries` and `research` (over the parts
declared in `parts`), `checks` (argument validation), `launch_planning` (planning and writing
launches), `data_prep` (prepare.py before the first local run), `rundirs` (run directories and
jobs), `experiment_cache` (every experiment and the analysis index, in memory), `reports` (GPU
and budget reports), `blockers` (why live work cannot progress).

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
import os
import threading
import time
from pathlib import Path
from typing import Any

from mcp_server.backends.base import Backend
from mcp_server.domain import paths
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import Conflict, FleetError, InvalidInput
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.models import Experiment, Wave
from mcp_server.domain.profiles import DEFAULT_BUDGETS_S, budgets_from_harness
from mcp_server.domain.task import TASK_FILE, Task, load_task
from mcp_server.engine.checks import Checks
from mcp_server.engine.clusters import ClustersMixin
from mcp_server.engine.data_prep import DataPreparation
from mcp_server.engine.decisions import DecisionOutcome, DecisionsMixin
from mcp_server.engine.experiment_cache import ExperimentCache
from mcp_server.engine.launch_planning import LaunchPlanner
from mcp_server.engine.queries import QueriesMixin
from mcp_server.engine.research import ResearchMixin
from mcp_server.engine.rundirs import RunDirs
from mcp_server.engine.waiting import Progress, WaitingMixin, WaitResult
from mcp_server.runtime.runner import harness_pin as task_harness_pin
from mcp_server.scheduling.scheduler import Scheduler
from mcp_server.store.ledger import Ledger
from mcp_server.store.workspace import Workspace
from mcp_server.trackers import Exporter, make_trackers
from mcp_server.trackers import parse_spec as parse_track_spec

log = logging.getLogger("autoresearch.engine")



def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Engine(ClustersMixin, WaitingMixin, DecisionsMixin, QueriesMixin, ResearchMixin):
    """The research engine of one workspace. Thread-safe: the MCP layer may call it from worker
    threads while the scheduler thread runs."""

    def __init__(self, config: FleetConfig, backend: Backend | None = None, *,
                 poll_interval_s: float = 0.5, watchdog_margin_s: float | None = None) -> None:
        """Open (or create from the template) the workspace and its ledger, and the backend
        (`config.backend`: local by default). Nothing runs until `start()`."""
        self.config = config
        #: what this workspace trains (its autoresearch.toml; the built-in template's task without one)
        self.task: Task = load_task(Path(config.workspace).expanduser())
        self.workspace = Workspace(Path(config.workspace), config.tag, Path(config.template_dir),
                                   harness=tuple(self.task.harness))
        self.state_dir = paths.state_dir(self.workspace.path)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir = paths.runs_dir(self.workspace.path)
        self.results_tsv = paths.results_tsv(self.workspace.path)
        self.ledger = Ledger(paths.ledger_path(self.workspace.path))
        self.backend = backend if backend is not None else self._make_backend(config)

        self.template_prepare = Path(config.template_dir) / "prepare.py"
        self.harness_files: dict[str, str] = {}    # a task's own harness: file -> sha256 at the session start
        if self.task.is_default:
            template_hash = _sha256_file(self.template_prepare)
            budgets = budgets_from_harness(self.template_prepare)
        else:
            head = self.workspace.head_commit()
            self.harness_files = {n: self.workspace.harness_hash_at(head, n) for n in self.task.harness}
            template_hash = task_harness_pin(self.harness_files)
            own = self.workspace.path / "prepare.py"
            budgets = budgets_from_harness(own) if own.is_file() else dict(DEFAULT_BUDGETS_S)
            budgets.update(self.task.budget or {})
        profile = config.profile or self._detect_profile()
        if profile not in budgets:
            raise InvalidInput(f"profile must be one of {sorted(budgets)} (or omitted), got {profile!r}.")
        meta = self.ledger.init_session(harness_hash=template_hash, profile=profile, tag=config.tag,
                                        backend=self.backend.name)
        self.notes: list[str] = []
        if (meta["harness_hash"] != template_hash and not self.task.is_default
                and self.ledger.max_experiment_seq() == 0):
            # described (autoresearch-fleet init) after a first start that ran nothing: pin this task's harness
            self.ledger.set_meta("harness_hash", template_hash)
            meta["harness_hash"] = template_hash
        self.harness_hash = meta["harness_hash"]
        if self.task.is_default:
            try:
                own_prepare = self.workspace.harness_hash_at(self.workspace.head_commit())
            except FleetError:
                own_prepare = template_hash
            if own_prepare != template_hash:
                self.notes.append(
                    f"This workspace's prepare.py is not the built-in template's and it has no {TASK_FILE}, so runs "
                    f"are checked against the template's harness and rejected: describe its task first with "
                    f"`autoresearch-fleet init {self.workspace.path}` (docs/task.md), then restart the server.")
        if self.harness_hash != template_hash and not self.task.is_default:
            self.notes.append(
                f"The task's harness ({', '.join(self.task.harness)}: pin {template_hash[:12]}) differs from the one "
                f"pinned when this session was created ({self.harness_hash[:12]}); runs are checked against the "
                "pinned one.")
        elif self.harness_hash != template_hash:
            self.notes.append(
                f"The template's prepare.py (sha256 {template_hash[:12]}) differs from the harness pinned when this "
                f"session was created ({self.harness_hash[:12]}); runs are checked against the pinned one.")
        self.profile = config.profile or meta["profile"]
        #: what results are judged by (the task's metric; the template's is val_bpb, lower is better)
        self.metric: Metric = self.task.metric if not self.task.is_default else DEFAULT_METRIC
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
        self.cache = ExperimentCache(self.ledger, self.metric)
        self._research_cache: dict[Any, tuple[int, Any]] = {}   # analyze_wave / session_digest answers
        # ... and so do results.tsv and the waiters: every committed change reaches _on_change
        self.ledger.subscribe(self._on_change)
        self._tsv_pending = True
        self._tsv_at = 0.0
        self._tsv_lock = threading.Lock()   # one export of results.tsv at a time: the newest snapshot lands last
        self._export_wake = threading.Event()
        self._exporter: threading.Thread | None = None
        # data preparation (local backend): once per engine process, in its own thread
        self.prepare_log = paths.prepare_log(self.workspace.path)
        own_task = not self.task.is_default
        self.data = DataPreparation(prepare_py=self.template_prepare,
                                    cwd=self.workspace.path if own_task else self.state_dir, log_path=self.prepare_log,
                                    profile=self.profile, cache_dir=config.cache_dir, ledger=self.ledger,
                                    needed=self.backend.name == "local" and self.task.prepare is not None,
                                    on_finished=self._data_finished,
                                    command=list(self.task.prepare) if own_task and self.task.prepare else None)
        self.run_dirs = RunDirs(self.workspace, config, profile=self.profile, hard_timeout_s=self.hard_timeout_s,
                                harness_hash=self.harness_hash,
                                task=None if self.task.is_default else {
                                    "harness": self.harness_files, "run": list(self.task.run),
                                    "metric": self.metric.name})
        self._build_job = self.run_dirs.build_job

        self.scheduler = Scheduler(
            self.ledger, self.backend, self.run_dirs.build_job, self.runs_dir,
            max_attempts=config.max_attempts, max_concurrent=config.max_concurrent,
            hard_timeout_s=self.hard_timeout_s, watchdog_margin_s=margin, poll_interval_s=poll_interval_s,
            # local polls are cheap (a stat per job): poll jobs that are about to end every 20 ms
            fast_poll_s=0.02 if self.backend.name == "local" else poll_interval_s,
            before_dispatch=self.data.ensure, stage=self.run_dirs.stage,
            orphan_cleanup=getattr(self.backend, "kill_orphans", None),   # local: runners without a saved handle
            on_started=self._started_on_slot, expected_run_s=self.time_budget_s,
        )
        self.scheduler.metric_name = self.metric.name
        self.checks = Checks(self.ledger, self.scheduler, config, self.backend.name)
        # experiment trackers (serve --track): a background exporter while the engine runs
        self.trackers: Exporter | None = None
        for spec in config.trackers:
            parse_track_spec(spec)      # a bad --track value is refused before anything runs
        self.planner = LaunchPlanner(self.workspace, self.ledger, self.checks, harness_hash=self.harness_hash,
                                 lock=self._launch_lock, all_experiments=self.cache.all,
                                 written=self._launched, time_budget_s=self.time_budget_s)

    @staticmethod
    def _make_backend(config: FleetConfig) -> Backend:
        if config.backend == "local":
            from mcp_server.backends.local.backend import LocalBackend
            return LocalBackend.from_config(config)
        if config.backend == "skypilot":
            from mcp_server.backends.skypilot import SkyPilotBackend
            return SkyPilotBackend.from_config(config)
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
        f = open(lock_path, "a+")  # noqa: SIM115 - held open for the engine's life: it is the workspace lock
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
            if self.config.trackers:
                self.trackers = Exporter(self.ledger, make_trackers(self.config.trackers, self.config.tag,
                                                                    self.state_dir),
                                         paths.trackers_db(self.workspace.path), metric=self.metric,
                                         session_tag=self.config.tag, verdicts_of=self._verdict_labels)
                self.trackers.start()
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
        if self.trackers is not None:
            self.trackers.close()
            self.trackers = None
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

    def __enter__(self) -> Engine:
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

    def _verdict_labels(self, exps: list[Experiment]) -> dict[str, str]:
        """Verdict label per experiment (same-GPU-type reference), for the trackers' tags."""
        return {v.experiment_id: v.verdict for v in self._verdicts(exps)}

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
        if dest is not None:
            return self.ledger.export_tsv(dest, self.metric.name)
        # Serialised: the export thread and a returning wait() both write it, and the one that read
        # its rows first could replace the file last (a result missing until the next change).
        with self._tsv_lock:
            self._tsv_pending = False     # before reading: a change during the export re-marks it
            path = self.ledger.export_tsv(self.results_tsv, self.metric.name)
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
        self.ledger.mark_started(exp_id, attempt, started_at)   # the change hook tells the waiters

    def _launched(self, exps: list[Experiment]) -> None:
        """A launch is in the ledger (called under the launch lock; the cache and the waiters have
        heard through the ledger's change hook): wake the scheduler."""
        self.scheduler.wake()

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
        hypothesis: str | None = None,
        allow_rerun: bool = False,
    ) -> list[Experiment]:
        """Snapshot code and queue it: `replicates` experiments with the same code and seeds
        seed, seed+1, ... (default: the smallest seeds from 42 up not yet used for this code on this
        GPU type). An explicit seed that this code already ran with on this GPU type (same harness
        and budget) is refused (Conflict naming that experiment) unless `allow_rerun`. The code is
        the working train.py (default), another
        workspace file (`source`), or an experiment's/commit's train.py (`commit`), with `overrides`
        (train.py constants -> literal values) applied through the AST. Its reference for verdicts
        (`parent_code_hash`) is the code at the parent commit (the branch head, or `commit`).
        Several replicates form a wave of kind 'replicates'. Returns the queued experiments."""
        return self.planner.experiment(description, overrides, source, commit, gpu_type, replicates, seed, priority,
                                       hypothesis, allow_rerun)


    def launch_wave(
        self,
        description: str,
        axes: dict[str, list[Any]],
        replicates: int = 1,
        include_control: bool = True,
        base: str | None = None,          # experiment id or commit the wave derives from
        #                                   (default: branch head + working train.py)
        gpu_type: str | None = None,
        hypothesis: str | None = None,
    ) -> Wave:
        """A full factorial over `axes` (constant -> levels), each cell `replicates` times with
        seeds 42, 43, ... (the same seeds in every cell), plus the unmodified base as a control
        with the same seeds. Every cell's reference is the control's code (`parent_code_hash`),
        so verdicts compare cells with the control on the same GPU type."""
        return self.planner.wave(description, axes, replicates, include_control, base, gpu_type, hypothesis)


    def promote(self, experiment_ids: list[str], gpu_type: str, replicates: int = 3) -> Wave:
        """Rerun done experiments' exact code on `gpu_type`, `replicates` times each (seeds 42, ...),
        at promotion priority (ahead of other queued work). For each distinct parent code, a control
        set (the parent code, same seeds) is added on that GPU type unless it already has that many
        runs there, so verdicts on the new tier have a same-type reference."""
        return self.planner.promotion(experiment_ids, gpu_type, replicates)



__all__ = ["DecisionOutcome", "Engine", "Progress", "WaitResult"]
