"""The experiment engine: the one object the MCP tools call. Knows nothing about MCP.

It composes the layers below it:

* `Workspace` (git): every experiment's code is a snapshot commit on a hidden ref;
* `variants`: constant overrides and factorial designs, rewritten through the AST;
* `Ledger` (SQLite, WAL): experiments, attempts, waves, slots, events; `results.tsv` export;
* `Scheduler`: a background thread that dispatches queued experiments to free slots of the
  right GPU type, polls the backend, enforces the watchdog, retries lost attempts;
* a `Backend` (local slots by default, SkyPilot clusters);
* `analysis`: noise floors, verdicts and leaderboards per GPU type.

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
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

from pydantic import BaseModel, Field

from . import analysis, gpus, variants
from .analysis import Leaderboard, LeaderboardRow, Verdict  # noqa: F401 (re-exported: the engine API returns them)
from .backends.base import Backend, JobSpec
from .config import FleetConfig
from .errors import Conflict, FleetError, InvalidInput, LimitExceeded, NotFound
from .ledger import Ledger, format_exp_id, format_wave_id
from .models import LIVE, TERMINAL, Cluster, Decision, Experiment, Status, Wave
from .scheduler import Scheduler
from .workspace import EXPERIMENT_REF_PREFIX, STATE_DIR, Workspace

log = logging.getLogger("autoresearch.engine")

#: Training budget of each harness profile (train_template/prepare.py PROFILES[...]["time_budget"]).
PROFILE_BUDGET_S = {"gpu": 300.0, "cpu": 15.0}

MAX_DESCRIPTION = 500          # characters
MAX_REPLICATES = 16
MAX_WAVE_EXPERIMENTS = 128     # (cells + control) x replicates
MAX_PROMOTE = 16               # experiments promoted in one call
MAX_QUEUED = 1000              # live (queued + running) experiments: a sanity bound
MAX_IDS = 1000                 # ids in one call
MAX_WAIT_S = 86400.0
MAX_LOG_LIMIT = 200_000
MAX_LIST_LIMIT = 500
USER_PRIORITY = (-100, 100)
PROMOTION_PRIORITY = 1000      # promotions run before any user-launched work
DEFAULT_SEED = 42
MAX_SEED = 2**31 - 1
EXP_ID = re.compile(r"^e\d{4,9}$")
WAVE_ID = re.compile(r"^w\d{4,9}$")
_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class WaitResult(BaseModel):
    finished: list[Experiment]
    verdicts: list[Verdict]
    still_running: list[str]
    timed_out: bool
    # additions beyond the first stub
    interrupted: bool = Field(False, description="True when the engine was closed while waiting.")
    notes: list[str] = Field(default_factory=list, description="Why live experiments may not progress (data preparation failed, no slot of their GPU type, ...).")


@dataclass
class _Base:
    """The code a launch derives from."""

    source: str                  # text of train.py to apply overrides to
    parent_commit: str           # commit the snapshots are built on
    parent_id: str | None        # experiment that commit belongs to, if any
    label: str                   # for descriptions / wave design


@dataclass
class _Planned:
    """One experiment a launch will create (validated, not yet written)."""

    description: str
    source: str
    overrides: dict[str, Any]
    seed: int
    base: _Base
    parent_code_hash: str | None
    kind: str
    priority: int
    gpu_type: str | None
    parent_id: str | None = None
    code_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def _sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _short(value: Any, n: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= n else text[: n - 3] + "..."


class Engine:
    """The research engine of one workspace. Thread-safe: the MCP layer may call it from worker
    threads while the scheduler thread runs."""

    def __init__(self, config: FleetConfig, backend: Backend | None = None, *,
                 poll_interval_s: float = 0.5, watchdog_margin_s: float | None = None) -> None:
        """Open (or create from the template) the workspace and its ledger, and the backend
        (`config.backend`: local by default). Nothing runs until `start()`."""
        self.config = config
        self.workspace = Workspace(Path(config.workspace), config.tag, Path(config.template_dir))
        self.state_dir = self.workspace.path / STATE_DIR
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.runs_dir = self.state_dir / "runs"
        self.results_tsv = self.state_dir / "results.tsv"
        self.ledger = Ledger(self.state_dir / "ledger.db")
        self.backend = backend if backend is not None else self._make_backend(config)

        self.template_prepare = Path(config.template_dir) / "prepare.py"
        template_hash = _sha256_file(self.template_prepare)
        profile = config.profile or self._detect_profile()
        if profile not in PROFILE_BUDGET_S:
            raise InvalidInput(f"profile must be one of {sorted(PROFILE_BUDGET_S)} (or omitted), got {profile!r}.")
        meta = self.ledger.init_session(harness_hash=template_hash, profile=profile, tag=config.tag,
                                        backend=self.backend.name)
        self.notes: list[str] = []
        self.harness_hash = meta["harness_hash"]
        if self.harness_hash != template_hash:
            self.notes.append(
                f"The template's prepare.py (sha256 {template_hash[:12]}) differs from the harness pinned when this "
                f"session was created ({self.harness_hash[:12]}); runs are checked against the pinned one.")
        self.profile = config.profile or meta["profile"]
        self.time_budget_s = float(config.time_budget_s or PROFILE_BUDGET_S[self.profile])
        self.hard_timeout_s = self.time_budget_s * 2 + float(config.timeout_grace_s)
        margin = watchdog_margin_s if watchdog_margin_s is not None else max(30.0, 0.1 * self.hard_timeout_s)

        self._cond = threading.Condition()
        self._generation = 0
        self._closed = threading.Event()
        self._launch_lock = threading.RLock()
        self._lock_file: Any = None
        self._started = False
        # Every experiment, and the analysis index over them (groups, noise floors): loaded once,
        # then kept current by every write path of this engine (`_remember`), both under _cache_lock.
        self._cache: dict[str, Experiment] | None = None
        self._index: analysis.Index | None = None
        # answers cached per (index object, index version): a change that matters moves the version
        self._board_cache: dict[tuple[Any, ...], tuple[analysis.Index, int, Leaderboard]] = {}
        self._throughput_cache: tuple[analysis.Index, int, dict[str, dict[str, Any]]] | None = None
        self._cache_lock = threading.Lock()
        self._tsv_pending = True
        self._tsv_at = 0.0
        self._export_wake = threading.Event()
        self._exporter: threading.Thread | None = None
        # data preparation (local backend): once per engine process, in its own thread
        self._data_state = "idle" if self.backend.name == "local" else "ready"
        self._data_error: str | None = None
        self._data_failed_at = 0.0
        self._data_proc: subprocess.Popen[bytes] | None = None
        self._data_lock = threading.Lock()
        self.prepare_log = self.state_dir / "prepare.log"

        self.scheduler = Scheduler(
            self.ledger, self.backend, self._build_job, self.runs_dir,
            max_attempts=config.max_attempts, max_concurrent=config.max_concurrent,
            hard_timeout_s=self.hard_timeout_s, watchdog_margin_s=margin, poll_interval_s=poll_interval_s,
            # local polls are cheap (a stat per job): poll jobs that are about to end every 20 ms
            fast_poll_s=0.02 if self.backend.name == "local" else poll_interval_s,
            before_dispatch=self._ensure_data, on_change=self._on_change, stage=self._stage_run_dir,
            orphan_cleanup=self._kill_orphans if self.backend.name == "local" else None,
        )

    @staticmethod
    def _make_backend(config: FleetConfig) -> Backend:
        if config.backend == "local":
            from .backends.local import LocalBackend
            return LocalBackend.from_config(config)
        if config.backend == "skypilot":
            from .backends import skypilot
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
        with self._data_lock:
            proc = self._data_proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
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
        with self._cache_lock:
            if self._cache is not None and ids:
                self._remember(self.ledger.get_many(list(dict.fromkeys(ids))))
        self._tsv_pending = True
        self._export_wake.set()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    def _remember(self, exps: list[Experiment]) -> None:
        """Put the current version of these experiments into the cache and the analysis index.
        Call with _cache_lock held, after the ledger write and before the generation moves (so a
        reader that sees the new generation sees the new state)."""
        if self._cache is None or self._index is None:
            return
        try:
            for e in exps:
                self._cache[e.id] = e
                self._index.put(e)
        except Exception:  # noqa: BLE001 - never serve a half-updated index: reload it on next use
            log.exception("updating the analysis index failed; it is rebuilt from the ledger")
            self._cache = self._index = None

    def _load_cache(self) -> None:
        """Load the cache and build the index (with _cache_lock held) if not loaded."""
        if self._cache is None or self._index is None:
            exps = self.ledger.all_experiments()
            self._index = analysis.Index(exps)
            self._cache = {e.id: e for e in exps}

    @contextmanager
    def _indexed(self) -> Iterator[analysis.Index]:
        """The analysis index, current with every change this engine has recorded, held under
        _cache_lock for the duration of the block (keep the block short: writers wait)."""
        with self._cache_lock:
            self._load_cache()
            assert self._index is not None
            yield self._index

    def _all_experiments(self) -> list[Experiment]:
        """Every experiment (cached; kept current by every write path of this engine)."""
        with self._cache_lock:
            self._load_cache()
            assert self._cache is not None
            return list(self._cache.values())

    def _export_loop(self) -> None:
        """results.tsv follows the ledger: rewritten at most every 2 s while results arrive
        (off the scheduler thread: at 10k experiments an export takes ~0.1 s). Also loads the
        experiment cache once at start, so the first leaderboard call does not pay for it."""
        try:
            self._all_experiments()
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

    # internal: running -----------------------------------------------------------------------
    def _ensure_data(self) -> bool:
        """Before the first run on the local backend: `python prepare.py` of the template, once,
        in its own thread (stdout to prepare.log). Dispatch waits until it has succeeded."""
        with self._data_lock:
            if self._data_state == "ready":
                return True
            if self._data_state == "running":
                return False
            if self._data_state == "failed" and time.time() - self._data_failed_at < 60:
                return False
            self._data_state = "running"
        threading.Thread(target=self._prepare_data, name="autoresearch-prepare", daemon=True).start()
        return False

    def _prepare_data(self) -> None:
        env = dict(os.environ)
        env["AUTORESEARCH_PROFILE"] = self.profile
        if self.config.cache_dir is not None:
            env["AUTORESEARCH_CACHE"] = str(self.config.cache_dir)
        env["PYTHONUNBUFFERED"] = "1"
        t0 = time.time()
        try:
            with open(self.prepare_log, "ab") as out:
                out.write(f"== {time.ctime()} python prepare.py (profile {self.profile})\n".encode())
                out.flush()
                proc = subprocess.Popen([sys.executable, str(self.template_prepare)], cwd=self.state_dir, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                        close_fds=True)
                with self._data_lock:
                    self._data_proc = proc
                code = proc.wait()
        except OSError as exc:
            code, err = -1, str(exc)
        else:
            err = f"exit code {code}"
        with self._data_lock:
            self._data_proc = None
            if code == 0:
                self._data_state, self._data_error = "ready", None
                self.ledger.add_event(None, "note", f"data prepared in {time.time() - t0:.1f} s")
            else:
                self._data_state, self._data_failed_at = "failed", time.time()
                self._data_error = (f"data preparation (python prepare.py, profile {self.profile}) failed ({err}); "
                                    f"see {self.prepare_log}. Queued experiments wait; it is retried every minute.")
                self.ledger.add_event(None, "note", self._data_error)
        self.scheduler.wake()
        with self._cond:
            self._generation += 1
            self._cond.notify_all()

    @staticmethod
    def _kill_orphans(run_dir: Path) -> int:
        """Local backend, recovery only: kill the process groups of every process whose working
        directory is `run_dir` (a runner started just before the engine died, without a saved
        handle). Returns how many processes were found."""
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

    def _stage_run_dir(self, exp: Experiment, attempt: int, dest: Path) -> None:
        """Export an experiment's snapshot ahead of its dispatch (atomically: tmp dir + rename)."""
        tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.workspace.export(exp.commit, tmp)
        os.rename(tmp, dest)

    def _build_job(self, exp: Experiment, attempt: int, slot: Cluster, run_dir: Path, staged: bool = False) -> JobSpec:
        """A fresh run directory with the snapshot's files (unless staged ahead), and the job for it."""
        if not staged:
            if run_dir.exists():
                shutil.rmtree(run_dir)
            self.workspace.export(exp.commit, run_dir)
        env: dict[str, str] = {}
        if self.config.time_budget_s is not None:
            env["AUTORESEARCH_TIME_BUDGET"] = repr(float(self.config.time_budget_s))
        if self.config.cache_dir is not None:
            env["AUTORESEARCH_CACHE"] = str(self.config.cache_dir)
        return JobSpec(experiment_id=exp.id, attempt=attempt, run_dir=run_dir, profile=self.profile,
                       timeout_s=self.hard_timeout_s, harness_hash=self.harness_hash, seed=exp.seed, env=env)

    # validation helpers ----------------------------------------------------------------------
    @staticmethod
    def _check_int(name: str, value: Any, lo: int, hi: int) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"{name} must be an integer from {lo} to {hi}, got {_short(value)}.")
        if not lo <= value <= hi:
            raise InvalidInput(f"{name} must be from {lo} to {hi}, got {value}.")
        return value

    @staticmethod
    def _check_bool(name: str, value: Any) -> bool:
        if not isinstance(value, bool):
            raise InvalidInput(f"{name} must be true or false, got {_short(value)}.")
        return value

    @staticmethod
    def _check_description(description: Any) -> str:
        if not isinstance(description, str) or not description.strip():
            raise InvalidInput("description must be a non-empty text saying what the experiment tests, "
                               "e.g. 'depth 10 instead of 8'.")
        text = " ".join(description.split())
        if len(text) > MAX_DESCRIPTION:
            raise InvalidInput(f"description is {len(text)} characters; at most {MAX_DESCRIPTION}. Say what changed "
                               "in one line; details belong in train.py comments.")
        if _CONTROL_CHARS.search(text):
            raise InvalidInput("description contains control characters; use plain text.")
        return text

    def _check_exp_id(self, exp_id: Any, what: str = "experiment_id") -> str:
        if not isinstance(exp_id, str) or not EXP_ID.match(exp_id):
            raise InvalidInput(f"{what} must be an experiment id like 'e0042', got {_short(exp_id)}. "
                               "Call fetch_results to list experiments.")
        return exp_id

    def _get(self, exp_id: Any, what: str = "experiment_id") -> Experiment:
        exp = self.ledger.get(self._check_exp_id(exp_id, what))
        if exp is None:
            last = self.ledger.max_experiment_seq()
            span = f"ids run from e0001 to {format_exp_id(last)}" if last else "no experiment has been launched yet"
            raise NotFound(f"No experiment {exp_id} ({span}). Call fetch_results to list experiments.")
        return exp

    def _check_ids(self, ids: Any, what: str = "experiment_ids", max_n: int = MAX_IDS) -> list[str]:
        if not isinstance(ids, (list, tuple)) or not ids:
            raise InvalidInput(f"{what} must be a non-empty list of experiment ids like ['e0001', 'e0002'].")
        if len(ids) > max_n:
            raise InvalidInput(f"{what} has {len(ids)} ids; at most {max_n} per call.")
        out = [self._check_exp_id(i, what) for i in ids]
        out = list(dict.fromkeys(out))
        missing = [i for i in out if i not in self.ledger.existing_ids(out)]
        if missing:
            raise NotFound(f"Unknown experiment id{'s' if len(missing) > 1 else ''}: {', '.join(missing[:20])}. "
                           "Nothing was changed. Call fetch_results to list experiments.")
        return out

    def _gpu_types_available(self) -> dict[str, int]:
        types: dict[str, int] = {}
        for c in self.scheduler.slots():
            if c.state in ("up", "provisioning"):
                types[c.gpu_type] = types.get(c.gpu_type, 0) + 1
        return types

    def _check_gpu_type(self, gpu_type: Any, required: bool = False) -> str | None:
        if gpu_type is None:
            if required:
                raise InvalidInput(f"gpu_type is required here; available: {self._describe_types()}.")
            return None
        if not isinstance(gpu_type, str) or not gpu_type.strip() or len(gpu_type) > 64:
            raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100' (or omitted for any slot), "
                               f"got {_short(gpu_type)}. Available: {self._describe_types()}.")
        available = self._gpu_types_available()
        known = gpus.find(gpu_type)
        name = known.name if known else gpu_type.strip()
        match = {t.lower(): t for t in available}.get(name.lower())
        if match is None:
            hint = ("provision_clusters(count, gpu_type=...) to add some"
                    if self.backend.name != "local" else "the local backend's slots are fixed (config slot_labels)")
            raise InvalidInput(f"No slot of GPU type {gpu_type!r}. Available: {self._describe_types()}. "
                               f"Omit gpu_type to run on any slot, or use {hint}.")
        return match

    def _describe_types(self) -> str:
        types = self._gpu_types_available()
        return ", ".join(f"{t} ({n} slot{'s' if n != 1 else ''})" for t, n in sorted(types.items())) or "none (no slots up)"

    def _check_capacity(self, n: int) -> None:
        counts = self.ledger.count_by_status()
        live = counts.get("queued", 0) + counts.get("running", 0)
        if live + n > MAX_QUEUED:
            raise LimitExceeded(
                f"{live} experiments are queued or running and this launch adds {n}; the server allows at most "
                f"{MAX_QUEUED} live at once. Wait for some (wait_for_experiments) or cancel_experiments, then launch again.")
        budget = self.config.gpu_hour_budget
        if budget is not None:
            usage = self.ledger.usage()
            spent = usage["gpu_hours"] + usage["gpu_hours_in_flight"]
            if spent >= budget:
                raise LimitExceeded(
                    f"GPU-hour budget spent: {spent:.3f} of {budget:.3f} GPU-hours used (limit gpu_hour_budget). "
                    f"No new launches; this launch asked for {n} experiment{'s' if n != 1 else ''}. "
                    "Call budget_status for details; raise the limit in the server config to continue.")

    def _check_overrides(self, overrides: Any) -> dict[str, Any]:
        if overrides is None:
            return {}
        if not isinstance(overrides, dict):
            raise InvalidInput("overrides must be an object mapping train.py constant names to literal values, "
                               f"e.g. {{\"DEPTH\": 10}}; got {type(overrides).__name__}.")
        return dict(overrides)

    def _resolve_base(self, *, source: Any = None, commit: Any = None, what: str = "commit") -> _Base:
        """The code to derive from: an experiment id or commit, a workspace file, or the working train.py."""
        if source is not None and commit is not None:
            raise InvalidInput("Give either source (a file in the workspace) or commit (an experiment id or commit), "
                               "not both.")
        if commit is not None:
            if not isinstance(commit, str) or not commit.strip() or len(commit) > 200:
                raise InvalidInput(f"{what} must be an experiment id (e.g. 'e0042') or a commit sha/ref, "
                                   f"got {_short(commit)}.")
            if EXP_ID.match(commit):
                exp = self._get(commit, what)
                if not exp.commit:
                    raise Conflict(f"{commit} has no code snapshot to derive from.")
                return _Base(self.workspace.file_at(exp.commit, "train.py"), exp.commit, exp.id, exp.id)
            sha = self.workspace.resolve_commit(commit)
            return _Base(self.workspace.file_at(sha, "train.py"), sha, self._experiment_of_commit(sha), sha[:12])
        text = self.workspace.read_source(source)
        return _Base(text, self.workspace.head_commit(), None, source or "train.py")

    def _experiment_of_commit(self, sha: str) -> str | None:
        for e in self._all_experiments():
            if e.commit == sha:
                return e.id
        return None

    # writing a launch --------------------------------------------------------------------------
    def _write_launch(self, planned: list[_Planned], wave: dict[str, Any] | None) -> tuple[list[Experiment], Wave | None]:
        """Allocate ids, snapshot each experiment, insert them (and the wave) in one transaction.
        Called with every argument validated; on failure the refs created here are removed."""
        with self._launch_lock:
            self._check_capacity(len(planned))
            first = self.ledger.max_experiment_seq() + 1
            ids = [format_exp_id(first + i) for i in range(len(planned))]
            wave_obj = None
            now = time.time()
            if wave is not None:
                wave_obj = Wave(id=format_wave_id(self.ledger.max_wave_seq() + 1), description=wave["description"],
                                kind=wave["kind"], design=wave["design"], experiment_ids=ids, created_at=now)
            exps: list[Experiment] = []
            created: list[str] = []
            try:
                for eid, p in zip(ids, planned):
                    msg = f"{eid}: {p.description}"
                    if p.overrides:
                        msg += "\n\noverrides: " + variants.describe(p.overrides)
                    sha = self.workspace.snapshot(eid, p.source, p.base.parent_commit, msg)
                    created.append(eid)
                    exps.append(Experiment(
                        id=eid, description=p.description, wave_id=wave_obj.id if wave_obj else None,
                        parent_id=p.parent_id if p.parent_id is not None else p.base.parent_id,
                        parent_commit=p.base.parent_commit, commit=sha, code_hash=p.code_hash,
                        parent_code_hash=p.parent_code_hash, harness_hash=self.harness_hash,
                        overrides=p.overrides, seed=p.seed, gpu_type=p.gpu_type, priority=p.priority,
                        status=Status.queued, created_at=now))
                self.ledger.insert_launch(exps, {e.id: p.kind for e, p in zip(exps, planned)}, wave_obj)
            except BaseException:
                for eid in created:
                    try:
                        self.workspace.repo.git.update_ref("-d", EXPERIMENT_REF_PREFIX + eid)
                    except Exception:  # noqa: BLE001
                        log.exception("could not remove ref of %s", eid)
                raise
            with self._cache_lock:
                self._remember(exps)
        self._on_change([])
        self.scheduler.wake()
        return exps, wave_obj

    # clusters ------------------------------------------------------------------------------
    def list_clusters(self) -> list[Cluster]:
        """Every slot/cluster with its GPU type, state and the experiments running on it now."""
        slots = self.scheduler.refresh_clusters()
        self.ledger.upsert_clusters(slots)
        running: dict[str, list[str]] = {}
        for f in self.scheduler.in_flight().values():
            running.setdefault(f.cluster, []).append(f.exp_id)
        return [c.model_copy(update={"running": sorted(running.get(c.name, []))}) for c in slots]

    def provision_clusters(self, count: int, gpu_type: str | None = None) -> list[Cluster]:
        """Bring up `count` more clusters (of `gpu_type` where the backend can choose), within max_clusters."""
        count = self._check_int("count", count, 1, max(1, self.config.max_clusters))
        if gpu_type is not None:
            if not isinstance(gpu_type, str) or len(gpu_type) > 64:
                raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100', got {_short(gpu_type)}.")
            gpu_type = gpus.lookup(gpu_type).name
        alive = [c for c in self.scheduler.refresh_clusters() if c.state != "gone"]
        if len(alive) + count > self.config.max_clusters:
            raise LimitExceeded(
                f"{len(alive)} clusters are up and {count} more were asked for; the limit is max_clusters="
                f"{self.config.max_clusters}. Tear some down (teardown_clusters) or ask for at most "
                f"{max(0, self.config.max_clusters - len(alive))}.")
        new = self.backend.provision(count, gpu_type)
        self.ledger.upsert_clusters(new)
        self.scheduler.refresh_clusters()
        return new

    def teardown_clusters(self, names: list[str] | None = None) -> list[str]:
        """Stop and delete the named clusters (None = all). Experiments that were running on a
        removed cluster are recorded as cancelled. (Local slots are this machine: nothing is
        removed and nothing is cancelled.)"""
        current = {c.name: c for c in self.scheduler.refresh_clusters()}
        if names is not None:
            if not isinstance(names, (list, tuple)) or not names or len(names) > 1000:
                raise InvalidInput("names must be a non-empty list of cluster names (or omitted for all). "
                                   "Call list_clusters to see them.")
            bad = [n for n in names if not isinstance(n, str) or n not in current]
            if bad:
                raise NotFound(f"Unknown cluster{'s' if len(bad) > 1 else ''}: {', '.join(_short(b, 40) for b in bad[:10])}. "
                               f"Clusters: {', '.join(current) or 'none'}. Nothing was torn down.")
            names = list(dict.fromkeys(names))
        removed = self.backend.teardown(names)
        if removed:
            self.ledger.set_cluster_state(removed, "gone")
            victims = [f.exp_id for f in self.scheduler.in_flight().values() if f.cluster in removed]
            if victims:
                self.scheduler.cancel(victims, reason="cancelled: its cluster was torn down")
        self.scheduler.refresh_clusters()
        return removed

    def gpu_info(self) -> dict[str, Any]:
        """Per GPU type: slots, table figures (memory, peak bf16 TFLOP/s, bandwidth, $/h) and the
        throughput MEASURED by finished runs (steps and tokens within the budget)."""
        slots = self.list_clusters()
        measured = self._throughput()
        by_type: dict[str, dict[str, Any]] = {}
        for c in slots:
            if c.state == "gone":
                continue
            t = by_type.setdefault(c.gpu_type, {"gpu_type": c.gpu_type, "clusters": 0, "gpus": 0,
                                                "simulated": False, "cluster_names": []})
            t["clusters"] += 1
            t["gpus"] += c.gpu_count
            t["simulated"] = t["simulated"] or c.simulated
            t["cluster_names"].append(c.name)
            if c.cost_per_hour is not None:
                t["price_per_hour_usd"] = c.cost_per_hour
        for name in measured:
            by_type.setdefault(name, {"gpu_type": name, "clusters": 0, "gpus": 0, "simulated": False,
                                      "cluster_names": []})
        out = []
        for name, t in sorted(by_type.items()):
            entry = gpus.find(name)
            table = gpus.as_dict(entry) if entry else {}
            t.setdefault("price_per_hour_usd", table.get("price_per_hour_usd"))
            t.update(memory_gib=table.get("memory_gib"), peak_bf16_tflops=table.get("peak_bf16_tflops"),
                     bandwidth_tbs=table.get("bandwidth_tbs"))
            m = measured.get(name)
            t["measured"] = None if not m else {
                "runs": m["runs"],
                "mean_steps": m["mean_num_steps"],
                "mean_tokens_per_s": m["mean_tokens_per_s"],
                "mean_training_seconds": m["mean_training_seconds"],
                "mean_peak_vram_mb": m["mean_peak_vram_mb"],
                "best_val_bpb": m["best_val_bpb"],
            }
            out.append(t)
        notes = [f"Training budget {self.time_budget_s:g} s per run (profile {self.profile}); a faster GPU fits more "
                 "steps, so results are compared only within one GPU type."]
        if any(t["simulated"] for t in out):
            notes.append("SIMULATION: some slots are local CPU/GPU slots LABELLED as GPU types (config slot_labels); "
                         "their table figures describe the label, not the hardware that ran.")
        return {"gpu_types": out, "clusters": [c.model_dump() for c in slots], "notes": notes}

    def _throughput(self) -> dict[str, dict[str, Any]]:
        """`ledger.throughput_by_gpu()`, cached until the analysis index version moves (it does when
        a finished experiment's status, GPU type or metrics change). Until the index is loaded
        (the exporter thread loads it at start) changes are not tracked, so nothing is cached."""
        with self._cache_lock:
            idx = self._index
            version = idx.version if idx is not None else -1   # read before the query: the answer is at least this new
            hit = self._throughput_cache
            if idx is not None and hit is not None and hit[0] is idx and hit[1] == version:
                return hit[2]
        measured = self.ledger.throughput_by_gpu()
        if idx is not None:
            self._throughput_cache = (idx, version, measured)
        return measured

    def budget_status(self) -> dict[str, Any]:
        """GPU-hours and estimated cost spent, the limits, clusters alive, experiments live."""
        usage = self.ledger.usage()
        counts = self.ledger.count_by_status()
        slots = [c for c in self.scheduler.slots() if c.state != "gone"]
        spent = usage["gpu_hours"] + usage["gpu_hours_in_flight"]
        budget = self.config.gpu_hour_budget
        cost_now = sum((c.cost_per_hour or 0.0) * c.gpu_count for c in slots)
        notes = list(self.notes)
        if self._data_error:
            notes.append(self._data_error)
        if self.scheduler.last_error:
            notes.append(f"scheduler: {self.scheduler.last_error}")
        if not any(c.cost_per_hour for c in slots):
            notes.append("Cost is estimated from cluster prices; local slots cost nothing here.")
        return {
            "gpu_hours_spent": round(spent, 6),
            "gpu_hours_finished_runs": round(usage["gpu_hours"], 6),
            "gpu_hours_in_flight": round(usage["gpu_hours_in_flight"], 6),
            "gpu_hours_by_type": usage["gpu_hours_by_type"],
            "gpu_hour_budget": budget,
            "gpu_hours_left": None if budget is None else round(max(0.0, budget - spent), 6),
            "estimated_cost_usd": round(usage["cost_usd"] + usage["cost_usd_in_flight"], 4),
            "cost_per_hour_now": cost_now,
            "clusters_alive": len(slots),
            "max_clusters": self.config.max_clusters,
            "experiments_live": counts.get("queued", 0) + counts.get("running", 0),
            "experiments_queued": counts.get("queued", 0),
            "experiments_running": counts.get("running", 0),
            "experiments_by_status": counts,
            "max_concurrent": self.config.max_concurrent,
            "max_live": MAX_QUEUED,
            "notes": notes,
        }

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
        desc = self._check_description(description)
        overrides = self._check_overrides(overrides)
        n = self._check_int("replicates", replicates, 1, MAX_REPLICATES)
        seed0 = DEFAULT_SEED if seed is None else self._check_int("seed", seed, 0, MAX_SEED - MAX_REPLICATES)
        prio = self._check_int("priority", priority, *USER_PRIORITY)
        gpu = self._check_gpu_type(gpu_type)
        with self._launch_lock:
            base = self._resolve_base(source=source, commit=commit)
            text = variants.apply_overrides(base.source, overrides) if overrides else base.source
            code_hash = self.workspace.blob_sha(text)
            parent_hash = self.workspace.code_hash_at(base.parent_commit)
            label = variants.describe(overrides)
            planned = []
            for k in range(n):
                d = desc if n == 1 else f"{desc} [seed {seed0 + k}]"
                planned.append(_Planned(d, text, overrides, seed0 + k, base, parent_hash,
                                        "replicate" if n > 1 else "single", prio, gpu, code_hash=code_hash))
            wave = None
            if n > 1:
                wave = {"description": desc, "kind": "replicates",
                        "design": {"replicates": n, "seeds": [seed0 + k for k in range(n)], "overrides": overrides,
                                   "label": label, "base": base.label, "gpu_type": gpu}}
            exps, _ = self._write_launch(planned, wave)
        return exps

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
        desc = self._check_description(description)
        n = self._check_int("replicates", replicates, 1, MAX_REPLICATES)
        control = self._check_bool("include_control", include_control)
        gpu = self._check_gpu_type(gpu_type)
        cells = variants.factorial(axes, max_cells=MAX_WAVE_EXPERIMENTS)
        total = (len(cells) + (1 if control else 0)) * n
        if total > MAX_WAVE_EXPERIMENTS:
            raise InvalidInput(
                f"This wave would launch ({len(cells)} cells{' + control' if control else ''}) x {n} replicates = {total} "
                f"experiments; at most {MAX_WAVE_EXPERIMENTS} per wave. Use fewer levels or replicates, or split it.")
        with self._launch_lock:
            b = self._resolve_base(commit=base, what="base")
            parent_hash = self.workspace.blob_sha(b.source)
            planned: list[_Planned] = []
            seeds = [DEFAULT_SEED + k for k in range(n)]
            if control:
                for s in seeds:
                    d = f"{desc} [control]" + (f" [seed {s}]" if n > 1 else "")
                    planned.append(_Planned(d, b.source, {}, s, b, parent_hash, "control", 0, gpu,
                                            code_hash=parent_hash))
            for cell in cells:
                text = variants.apply_overrides(b.source, cell)
                code_hash = self.workspace.blob_sha(text)
                for s in seeds:
                    d = f"{desc} [{variants.describe(cell)}]" + (f" [seed {s}]" if n > 1 else "")
                    planned.append(_Planned(d, text, dict(cell), s, b, parent_hash, "factorial", 0, gpu,
                                            code_hash=code_hash))
            design = {"axes": axes, "cells": len(cells), "replicates": n, "seeds": seeds,
                      "include_control": control, "base": b.label, "gpu_type": gpu}
            _, wave = self._write_launch(planned, {"description": desc, "kind": "factorial", "design": design})
        assert wave is not None
        return wave

    def promote(self, experiment_ids: list[str], gpu_type: str, replicates: int = 3) -> Wave:
        """Rerun done experiments' exact code on `gpu_type`, `replicates` times each (seeds 42, ...),
        at promotion priority (ahead of other queued work). For each distinct parent code, a control
        set (the parent code, same seeds) is added on that GPU type unless it already has that many
        runs there, so verdicts on the new tier have a same-type reference."""
        ids = self._check_ids(experiment_ids, max_n=MAX_PROMOTE)
        gpu = self._check_gpu_type(gpu_type, required=True)
        n = self._check_int("replicates", replicates, 1, MAX_REPLICATES)
        exps = self.ledger.get_many(ids)
        not_done = [e for e in exps if e.status != Status.done]
        if not_done:
            raise Conflict("Only done experiments can be promoted: " + ", ".join(
                f"{e.id} is {e.status.value}" for e in not_done[:10]) + ". Nothing was launched.")
        seeds = [DEFAULT_SEED + k for k in range(n)]
        with self._launch_lock:
            planned: list[_Planned] = []
            chosen_hashes = {e.code_hash for e in exps}
            controls: list[dict[str, Any]] = []
            notes: list[str] = []
            parents_done: set[str] = set()
            everything = self._all_experiments()
            for e in exps:
                src = self.workspace.file_at(e.commit, "train.py")
                base = _Base(src, e.parent_commit or e.commit, e.id, e.id)
                for s in seeds:
                    planned.append(_Planned(f"promote {e.id} to {gpu}: {e.description}"[:MAX_DESCRIPTION] +
                                            (f" [seed {s}]" if n > 1 else ""), src, dict(e.overrides), s, base,
                                            e.parent_code_hash, "promotion", PROMOTION_PRIORITY, gpu,
                                            parent_id=e.id, code_hash=e.code_hash or self.workspace.blob_sha(src)))
                pch = e.parent_code_hash
                if not pch or pch in parents_done or pch in chosen_hashes:
                    continue
                parents_done.add(pch)
                have = sum(1 for x in everything if x.code_hash == pch and (
                    (x.status == Status.done and x.ran_on_gpu == gpu) or (x.status in LIVE and x.gpu_type == gpu)))
                if have >= n:
                    notes.append(f"parent code of {e.id} already has {have} runs on {gpu}: no extra control")
                    continue
                ref = next((x for x in everything if x.code_hash == pch and x.commit), None)
                if ref is not None:
                    psrc, pcommit, pid = self.workspace.file_at(ref.commit, "train.py"), ref.parent_commit or ref.commit, ref.id
                elif e.parent_commit and self.workspace.code_hash_at(e.parent_commit) == pch:
                    psrc, pcommit, pid = self.workspace.file_at(e.parent_commit, "train.py"), e.parent_commit, None
                else:
                    notes.append(f"parent code of {e.id} not found: no control added")
                    continue
                pbase = _Base(psrc, pcommit, pid, pid or pcommit[:12])
                for s in seeds[have:]:
                    planned.append(_Planned(f"control for promotion to {gpu} (parent code of {e.id})" +
                                            (f" [seed {s}]" if n > 1 else ""), psrc, {}, s, pbase, pch, "control",
                                            PROMOTION_PRIORITY, gpu, parent_id=pid, code_hash=pch))
                controls.append({"parent_code_hash": pch, "of": e.id, "runs": n - have})
            design = {"experiments": ids, "gpu_type": gpu, "replicates": n, "seeds": seeds, "controls": controls,
                      "notes": notes}
            desc = f"promote {', '.join(ids)} to {gpu} x{n}"[:MAX_DESCRIPTION]
            _, wave = self._write_launch(planned, {"description": desc, "kind": "promotion", "design": design})
        assert wave is not None
        return wave

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
            raise InvalidInput(f"until must be 'all' or 'first', got {_short(until)}.")
        if isinstance(timeout_s, bool) or not isinstance(timeout_s, (int, float)) or not math.isfinite(timeout_s) \
                or not 0 <= timeout_s <= MAX_WAIT_S:
            raise InvalidInput(f"timeout_s must be a number of seconds from 0 to {MAX_WAIT_S:g}, got {_short(timeout_s)}.")
        if on_progress is not None and not callable(on_progress):
            raise InvalidInput("on_progress must be callable.")
        targets: list[str] = []
        if experiment_ids is not None:
            targets += self._check_ids(experiment_ids)
        if wave_id is not None:
            targets += self._get_wave(wave_id).experiment_ids
        if experiment_ids is None and wave_id is None:
            live, _ = self.ledger.list(statuses=[s.value for s in LIVE], limit=MAX_QUEUED)
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
            if self._data_error:
                notes.append(self._data_error)
            if self.scheduler.last_error:
                notes.append(f"scheduler: {self.scheduler.last_error}")
            types = self._gpu_types_available()
            stuck = sorted({e.gpu_type for e in self.ledger.get_many(still) if e.gpu_type and e.gpu_type not in types})
            if stuck:
                notes.append(f"No slot of GPU type {', '.join(stuck)} is up, so experiments that need it stay queued; "
                             f"available: {self._describe_types()}.")
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
        ids = self._check_ids(experiment_ids)
        self.scheduler.cancel(ids)
        return self.ledger.get_many(ids)

    def keep(self, experiment_id: str, force: bool = False) -> Experiment:
        """Keep a done experiment: the session branch moves to its snapshot (fast-forward; `force`
        resets when the branch moved since) and the working tree is updated. Records decision keep."""
        exp = self._get(experiment_id)
        force = self._check_bool("force", force)
        if exp.status != Status.done:
            why = f" ({(exp.error or '').splitlines()[0][:200]})" if exp.error else ""
            raise Conflict(f"{exp.id} is {exp.status.value}{why}: only done experiments can be kept. "
                           "Keep a done one (see leaderboard), or fix the code and launch again.")
        with self._launch_lock:
            result = self.workspace.keep(exp.commit, force=force)
            detail = f"branch {result.get('branch')} -> {str(result.get('commit'))[:12]}"
            if not result.get("fast_forward", True):
                detail += " (reset: not a fast-forward)"
            self.ledger.set_decision(exp.id, Decision.keep, detail)
        self._on_change([exp.id])
        return self._get(exp.id)

    def discard(self, experiment_id: str) -> Experiment:
        """Record decision discard for a done experiment (the branch does not move)."""
        exp = self._get(experiment_id)
        if exp.status != Status.done:
            raise Conflict(f"{exp.id} is {exp.status.value}: only done experiments take a keep/discard decision "
                           "(failed ones are already out of the running).")
        self.ledger.set_decision(exp.id, Decision.discard)
        self._on_change([exp.id])
        return self._get(exp.id)

    def get_experiment(self, experiment_id: str) -> Experiment:
        """One experiment in full."""
        return self._get(experiment_id)

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
        exp = self._get(experiment_id)
        if isinstance(offset, bool) or not isinstance(offset, int) or abs(offset) > 10**12:
            raise InvalidInput(f"offset must be an integer (negative = from the end), got {_short(offset)}.")
        limit = self._check_int("limit", limit, 1, MAX_LOG_LIMIT)
        text = self._log_text(exp)
        start = max(0, len(text) + offset) if offset < 0 else offset
        end = start + limit
        return text[start:end], (end if end < len(text) else None)

    def log_size(self, experiment_id: str) -> int:
        """Length of the experiment's run log in characters (for paging from the end)."""
        return len(self._log_text(self._get(experiment_id)))

    def experiments(self, status: str | None = None, wave_id: str | None = None,
                    offset: int = 0, limit: int = 50) -> tuple[list[Experiment], int]:
        """A page of experiments in launch order (optionally one status / one wave) and the total."""
        if status is not None and status not in {s.value for s in Status}:
            raise InvalidInput(f"status must be one of {', '.join(s.value for s in Status)}, got {_short(status)}.")
        if wave_id is not None:
            self._get_wave(wave_id)
        offset = self._check_int("offset", offset, 0, 10**9)
        limit = self._check_int("limit", limit, 1, MAX_LIST_LIMIT)
        return self.ledger.list(status=status, wave_id=wave_id, offset=offset, limit=limit)

    def _get_wave(self, wave_id: Any) -> Wave:
        if not isinstance(wave_id, str) or not WAVE_ID.match(wave_id):
            raise InvalidInput(f"wave_id must be a wave id like 'w0003', got {_short(wave_id)}.")
        wave = self.ledger.get_wave(wave_id)
        if wave is None:
            last = self.ledger.max_wave_seq()
            raise NotFound(f"No wave {wave_id} ({f'waves run from w0001 to {format_wave_id(last)}' if last else 'no wave yet'}).")
        return wave

    def get_wave(self, wave_id: str) -> Wave:
        """One wave with its design and experiment ids."""
        return self._get_wave(wave_id)

    def waves(self) -> list[Wave]:
        return self.ledger.waves()

    def events(self, experiment_id: str | None = None, limit: int = 1000) -> list[dict[str, Any]]:
        """The event log (queued/submitted/finished/lost/requeued/cancelled/kept/...)."""
        if experiment_id is not None:
            self._get(experiment_id)
        return self.ledger.events(experiment_id, self._check_int("limit", limit, 1, 100_000))

    def verdicts(self, experiment_ids: list[str]) -> list[Verdict]:
        """Verdict of each experiment vs its same-GPU-type reference (see analysis), answered from
        the analysis index (O(1) each; the index follows every change of the ledger)."""
        ids = self._check_ids(experiment_ids)
        return self._verdicts(self.ledger.get_many(ids))

    def _verdicts(self, targets: list[Experiment]) -> list[Verdict]:
        with self._indexed() as idx:
            return idx.verdicts(targets)

    def leaderboard(self, gpu_type: str | None = None, limit: int = 20) -> Leaderboard:
        """Groups of identical code ranked by mean val_bpb, per GPU type, with deltas and verdicts.
        Answered from the analysis index (updated per changed experiment, not recomputed over all of
        them) and cached until the index version moves."""
        if gpu_type is not None and (not isinstance(gpu_type, str) or len(gpu_type) > 64):
            raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100', got {_short(gpu_type)}.")
        analysis.check_leaderboard_args(gpu_type, limit)
        key = (gpu_type, limit)
        with self._indexed() as idx:
            hit = self._board_cache.get(key)
            if hit is not None and hit[0] is idx and hit[1] == idx.version:
                board = hit[2]
            else:
                board = idx.leaderboard(gpu_type, limit)
                if len(self._board_cache) > 64:
                    self._board_cache.clear()
                self._board_cache[key] = (idx, idx.version, board)
        return board.model_copy(deep=True)


__all__ = ["Engine", "WaitResult", "Verdict", "Leaderboard", "LeaderboardRow", "FleetError", "PROFILE_BUDGET_S"]
