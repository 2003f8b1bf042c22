"""The SkyPilot backend: experiments on GPU clusters anywhere SkyPilot reaches (Kubernetes, a
cloud, Slurm), through SkyPilot's Python SDK in this one long-lived process.

Clusters. `provision(n)` launches n clusters from the task YAML (`config.sky_task`, else the
workspace's `sky_task.yaml`, else the template's) named `<prefix>-<workspace tag>-NN`, always
with autostop + down. The YAML's `setup` installs the training deps and runs `prepare.py` once
per cluster. Each cluster's GPU type is read back from SkyPilot
(`handle.launched_resources.accelerators`): `{H100: 1, H200: 1}` in the YAML means "either", so a
fleet can come up mixed and every result says which GPU it ran on.

Experiments. `submit` never launches: it `sky.exec`s a Task on a warm cluster whose workdir is a
clean staging copy of that experiment's run dir, laid out as `arf-runs/<key>/...` so that the
additive workdir rsync puts each experiment in its own directory on the cluster. The run command
is built here from fixed parts (every value shlex-quoted): it takes a per-cluster lock, runs the
runner, then prints the train log between markers and the result line. `queue_depth` is 2: the
next experiment is submitted while one runs. Where the job's resource request lets SkyPilot
start it at once (CPU clusters; single-GPU clusters request half the GPU) it is already running,
waiting on the lock, when the previous runner exits: the gap between experiments is the time to
take a lock. Elsewhere SkyPilot's own job queue starts it (a few seconds).

Polling. `poll` never blocks on SkyPilot: a background thread refreshes, per cluster with jobs in
flight, `sky.queue` (one call per cluster, jobs matched by their unique names) and fetches the
log of each finished job with `sky.tail_logs`; `poll` hands out what it found. A handle carries
the cluster, job name and exec request id, so handles from an earlier process are recognised.
A cluster that no longer exists (preempted, downed, its Slurm job cancelled) makes its jobs
`lost`; the engine requeues them.

`reconcile` adopts this workspace's clusters (by name prefix) and makes sure each has autostop.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import hashlib
import io
import json
import logging
import math
import os
import re
import shlex
import shutil
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ... import gpus, runner
from ...config import FleetConfig
from ...errors import Conflict, FleetError, InvalidInput, NotFound
from ...models import Cluster
from ..base import Backend, JobHandle, JobOutcome, JobSpec

log = logging.getLogger("autoresearch.skypilot")

DEFAULT_PREFIX = "arf"
RUNS_SUBDIR = "arf-runs"               # on the cluster: <workdir>/arf-runs/<key>/
TRAIN_LOG_BEGIN = "ARF_TRAIN_LOG_BEGIN"
TRAIN_LOG_END = "ARF_TRAIN_LOG_END"
SKY_JOB_LOG = "sky_job.log"            # the whole SkyPilot job log, next to run.log
RUNNER_SOURCE = Path(runner.__file__).resolve()
STAGE_SKIP = {runner.RESULT_FILE, runner.LOG_FILE, runner.TRAIN_PID_FILE, SKY_JOB_LOG, "runner.out"}
MAX_STAGE_BYTES = 64 << 20

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")
_TAG_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,22}[a-z0-9])?$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_~.-]{0,63}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_GPU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")
_ANSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_SKY_PREFIX_RE = re.compile(r"^\([^()]*, pid=\d+\) ?")

# Held by the runner for its whole run: one experiment at a time per cluster, and the job queued
# ahead (already started where the infra allows) waits here instead of in SkyPilot's queue.
_LOCK_AND_EXEC = (
    "import fcntl,os,sys\n"
    "fd=os.open(sys.argv[1],os.O_CREAT|os.O_RDWR,0o600)\n"
    "fcntl.flock(fd,fcntl.LOCK_EX)\n"
    "os.set_inheritable(fd,True)\n"
    "os.execv(sys.argv[2],sys.argv[2:])\n"
)
_EMIT_RESULT = (
    "import json\n"
    "print('AUTORESEARCH_RESULT: '+json.dumps(json.load(open('result.json')),sort_keys=True),flush=True)\n"
)

_TERMINAL = {"SUCCEEDED", "FAILED", "FAILED_SETUP", "FAILED_DRIVER", "CANCELLED"}
_STARTED = _TERMINAL | {"RUNNING"}
_REQ_DONE_BAD = {"FAILED", "CANCELLED"}


class ProvisionFailed(FleetError):
    """No cluster could be brought up."""


def _val(x: Any) -> str:
    """An enum's value or the string itself: 'UP', 'SUCCEEDED'."""
    v = getattr(x, "value", x)
    return str(v) if v is not None else ""


def _strip_sky_line(line: str) -> str:
    return _SKY_PREFIX_RE.sub("", _ANSI_RE.sub("", line), count=1)


def parse_job_log(text: str) -> tuple[str, str, dict[str, Any] | None]:
    """(clean job log, train log, runner result or None) from a SkyPilot job log.

    SkyPilot prefixes each line of the job's output with `(task-name, pid=N) ` and colours it;
    both are removed. The train log is what the run command printed between the markers."""
    clean_lines = [_strip_sky_line(line.rstrip("\r")) for line in text.splitlines()]
    clean = "\n".join(clean_lines) + ("\n" if clean_lines else "")
    train: list[str] | None = None
    collected: list[str] = []
    outside: list[str] = []      # the result line is looked for here only: train.py cannot forge it
    for line in clean_lines:
        if train is None and line.strip() == TRAIN_LOG_BEGIN:
            train = []
            continue
        if train is not None and line.strip() == TRAIN_LOG_END:
            collected, train = train, None
            continue
        (train if train is not None else outside).append(line)
    if train is not None:        # cut off: keep what there is
        collected = train
    while collected and collected[-1] == "":
        collected.pop()
    train_log = "\n".join(collected) + ("\n" if collected else "")
    return clean, train_log, runner.parse_runner_output("\n".join(outside))


def accelerators_of(record: Any) -> dict[str, float] | None:
    handle = getattr(record, "handle", None)
    res = getattr(handle, "launched_resources", None)
    acc = getattr(res, "accelerators", None)
    return dict(acc) if acc else None


def gpu_label(accelerators: dict[str, float] | None) -> tuple[str, int]:
    """('H100', 1) from {'H100': 1}; ('CPU', 1) without accelerators (one slot, like local)."""
    if not accelerators:
        return "CPU", 1
    name, count = next(iter(accelerators.items()))
    known = gpus.find(str(name))
    return (known.name if known else str(name)), max(1, int(math.ceil(float(count))))


@dataclass
class _Job:
    """A job this process knows about (submitted here or seen again through `poll`)."""

    handle: JobHandle
    cluster: str
    name: str
    request_id: str | None
    submitted_at: float
    job_id: int | None = None
    status: str = ""
    outcome: JobOutcome | None = None
    cancelled: bool = False
    cancel_sent: bool = False
    stage: str | None = None
    spec: dict[str, Any] | None = None   # what to exec (kept on disk too: state_dir/stage/<key>.json)
    deferred: bool = False               # not exec'd yet: waits until the job ahead is RUNNING
    exec_busy: bool = False
    exec_at: float | None = None
    request_done_at: float | None = None   # its exec request finished: the job is in the cluster's queue

    @property
    def key(self) -> tuple[str, int]:
        return (self.handle.experiment_id, self.handle.attempt)


@dataclass
class _ClusterInfo:
    name: str
    state: str
    gpu_type: str
    gpu_count: int
    accelerators: dict[str, float] | None
    cost_per_hour: float | None
    created_at: float
    autostop: int | None = None
    cloud: str = ""                 # lower case: slurm, kubernetes, aws, ...
    cpus: float | None = None


@dataclass
class _Watch:
    """Per-cluster refresh bookkeeping."""

    busy: bool = False
    last: float = 0.0
    failing_since: float | None = None
    last_error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class SkyPilotBackend(Backend):
    """Clusters through SkyPilot's SDK; see the module docstring."""

    name = "skypilot"

    def __init__(self, config: FleetConfig, *, sdk: Any = None, prefix: str = DEFAULT_PREFIX,
                 workspace_tag: str | None = None, refresh_interval_s: float = 1.0,
                 unreachable_lost_s: float = 300.0, request_grace_s: float = 180.0,
                 max_workers: int = 8) -> None:
        if not _PREFIX_RE.match(prefix or ""):
            raise InvalidInput(f"cluster name prefix must be 1-10 lowercase letters/digits starting with a letter, got {prefix!r}.")
        self.config = config
        self.prefix = prefix
        self.workspace = Path(config.workspace).resolve()
        self.workspace_tag = workspace_tag if workspace_tag is not None else self.default_workspace_tag(config)
        if not _TAG_RE.match(self.workspace_tag):
            raise InvalidInput(f"workspace tag must be lowercase letters, digits and '-' (<= 24), got {self.workspace_tag!r}.")
        self.cluster_prefix = f"{prefix}-{self.workspace_tag}-"
        self._name_re = re.compile("^" + re.escape(self.cluster_prefix) + r"(\d{2,4})$")
        self.state_dir = self.workspace / ".autoresearch" / "skypilot"
        self.refresh_interval_s = refresh_interval_s
        self.unreachable_lost_s = unreachable_lost_s
        self.request_grace_s = request_grace_s
        if sdk is None:
            import sky as sdk  # noqa: PLC0415 - heavy (~4 s): only when this backend is used
        self.sky = sdk
        self._exc_gone = getattr(sdk.exceptions, "ClusterDoesNotExist")
        self._exc_not_up = getattr(sdk.exceptions, "ClusterNotUpError")
        self._lock = threading.RLock()
        self._provision_lock = threading.Lock()
        self._jobs: dict[tuple[str, int], _Job] = {}
        self._watch: dict[str, _Watch] = {}
        self._clusters: dict[str, _ClusterInfo] = {}
        self._clusters_at = 0.0
        self._gone: set[str] = set()          # vanished under us (their jobs are lost)
        self._torn_down: set[str] = set()     # removed by teardown (their jobs are cancelled)
        self._pool = cf.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="arf-sky")
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_provision_errors: dict[str, str] = {}
        self._done: deque[tuple[str, int]] = deque(maxlen=4096)
        self.exec_log: deque[tuple[str, str, float, float]] = deque(maxlen=1000)   # name, cluster, submit, exec   # outcomes handed out: cancel is a no-op
        self.timings: dict[str, deque[float]] = {k: deque(maxlen=1000) for k in
                                                 ("launch_s", "exec_submit_s", "queue_s", "logs_s")}

    @classmethod
    def from_config(cls, config: FleetConfig) -> "SkyPilotBackend":
        return cls(config)

    @staticmethod
    def default_workspace_tag(config: FleetConfig) -> str:
        """`<session tag>-<4 hex of the workspace path>`: two workspaces never adopt each other's clusters."""
        tag = re.sub(r"[^a-z0-9-]+", "-", str(config.tag).lower()).strip("-")[:12].strip("-") or "fleet"
        digest = hashlib.sha1(str(Path(config.workspace).resolve()).encode()).hexdigest()[:4]
        return f"{tag}-{digest}"

    # ---------------------------------------------------------------------------------------
    # the task YAML
    # ---------------------------------------------------------------------------------------
    def task_path(self) -> Path:
        if self.config.sky_task is not None:
            return Path(self.config.sky_task)
        ws = self.workspace / "sky_task.yaml"
        return ws if ws.is_file() else Path(self.config.template_dir) / "sky_task.yaml"

    def task_config(self) -> dict[str, Any]:
        path = self.task_path()
        try:
            cfg = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as e:
            raise InvalidInput(f"cannot read the SkyPilot task {path}: {e}") from None
        if not isinstance(cfg, dict):
            raise InvalidInput(f"the SkyPilot task {path} is not a YAML mapping")
        return cfg

    @staticmethod
    def _pin_accelerators(resources: dict[str, Any], gpu_type: str) -> dict[str, Any]:
        """Resources restricted to one GPU type, with the count (and spelling) the YAML gives it, else 1."""
        want = gpus.find(gpu_type)

        def same(name: str) -> bool:
            return name.lower() == gpu_type.lower() or (want is not None and gpus.find(name) == want)

        acc = resources.get("accelerators")
        if isinstance(acc, dict):
            items = [(str(k).strip(), v) for k, v in acc.items()]
        else:
            entries = [acc] if isinstance(acc, str) else (acc if isinstance(acc, list) else [])
            items = []
            for entry in entries:
                name, _, n = str(entry).partition(":")
                items.append((name.strip(), n.strip() or 1))
        name, count = gpu_type, 1
        for k, v in items:
            if same(k):
                name, count = k, v
        try:
            c = float(count)
            count = int(c) if c.is_integer() else c
        except (TypeError, ValueError):
            count = 1
        out = dict(resources)
        out.pop("any_of", None)
        out.pop("ordered", None)
        if gpu_type.upper() == "CPU":
            out.pop("accelerators", None)
        else:
            out["accelerators"] = {name: count}
        return out

    def launch_task_config(self, gpu_type: str | None, workdir: Path) -> dict[str, Any]:
        """The YAML as launched: pinned GPU type, infra from config, profile/cache envs, workdir."""
        cfg = copy.deepcopy(self.task_config())
        res = dict(cfg.get("resources") or {})
        if gpu_type is not None:
            if not _GPU_RE.match(gpu_type):
                raise InvalidInput(f"gpu_type must be an accelerator name such as 'H100', got {gpu_type!r}.")
            res = self._pin_accelerators(res, gpu_type)
        if self.config.sky_infra:
            for k in ("cloud", "region", "zone", "infra"):
                res.pop(k, None)
            res["infra"] = self.config.sky_infra
        res.pop("autostop", None)   # ours is always set at launch
        cfg["resources"] = res
        envs = {str(k): ("" if v is None else str(v)) for k, v in (cfg.get("envs") or {}).items()}
        envs["AUTORESEARCH_PROFILE"] = self.config.profile or envs.get("AUTORESEARCH_PROFILE") or "gpu"
        cfg["envs"] = envs
        cfg["workdir"] = str(workdir)
        cfg["run"] = None            # setup only: no job
        return cfg

    def _yaml_envs(self) -> dict[str, str]:
        return {str(k): ("" if v is None else str(v)) for k, v in (self.task_config().get("envs") or {}).items()}

    # ---------------------------------------------------------------------------------------
    # clusters
    # ---------------------------------------------------------------------------------------
    def is_ours(self, name: str) -> bool:
        return bool(self._name_re.match(name))

    def _status(self, names: list[str] | None = None, refresh: str = "NONE") -> list[Any]:
        mode = getattr(self.sky.StatusRefreshMode, refresh)
        return list(self.sky.get(self.sky.status(cluster_names=names, refresh=mode)))

    def _info(self, rec: Any) -> _ClusterInfo:
        acc = accelerators_of(rec)
        gpu_type, count = gpu_label(acc)
        state = {"UP": "up", "INIT": "provisioning", "STOPPED": "stopped",
                 "AUTOSTOPPING": "stopped"}.get(_val(getattr(rec, "status", "")), "gone")
        res = getattr(getattr(rec, "handle", None), "launched_resources", None)
        cloud = str(getattr(res, "cloud", "") or "").lower()
        cost = None
        if cloud not in ("kubernetes", "slurm", "ssh"):   # own hardware: no price to report
            try:
                c = float(res.get_cost(3600))
                cost = c if c > 0 else None
            except Exception:  # noqa: BLE001
                cost = None
            if cost is None and gpu_type != "CPU":         # rough list price (gpus.py)
                known = gpus.find(gpu_type)
                if known is not None and known.price_per_hour is not None:
                    cost = round(known.price_per_hour * count, 2)
        autostop = getattr(rec, "autostop", None)
        try:
            cpus = float(str(getattr(res, "cpus", "") or "").rstrip("+"))
        except ValueError:
            cpus = None
        return _ClusterInfo(cloud=cloud, cpus=cpus, name=str(rec.name), state=state, gpu_type=gpu_type, gpu_count=count,
                            accelerators=acc, cost_per_hour=cost,
                            created_at=float(getattr(rec, "launched_at", 0) or 0),
                            autostop=int(autostop) if isinstance(autostop, (int, float)) else None)

    def _refresh_clusters(self, refresh: str = "NONE", max_age_s: float = 0.0) -> dict[str, _ClusterInfo]:
        with self._lock:
            if max_age_s and time.monotonic() - self._clusters_at < max_age_s:
                return dict(self._clusters)
        recs = self._status(None, refresh)
        infos = {i.name: i for i in (self._info(r) for r in recs) if self.is_ours(i.name)}
        with self._lock:
            for name in list(self._gone):
                if name not in infos:
                    continue
                infos.pop(name)                  # stale record of a cluster we saw vanish
            self._clusters = infos
            self._clusters_at = time.monotonic()
            return dict(infos)

    def _cluster_model(self, info: _ClusterInfo) -> Cluster:
        with self._lock:
            running = sorted(j.handle.experiment_id for j in self._jobs.values()
                             if j.cluster == info.name and j.outcome is None and not j.cancelled)
        return Cluster(name=info.name, backend=self.name, gpu_type=info.gpu_type, gpu_count=info.gpu_count,
                       state=info.state, cost_per_hour=info.cost_per_hour, simulated=False,
                       running=running, created_at=info.created_at)

    def clusters(self) -> list[Cluster]:
        infos = self._refresh_clusters(max_age_s=2.0)
        return [self._cluster_model(i) for i in sorted(infos.values(), key=lambda i: i.name)]

    def queue_depth(self, cluster: str) -> int:
        return 2

    def _next_names(self, count: int) -> list[str]:
        used = set()
        for rec in self._status(None):
            m = self._name_re.match(str(rec.name))
            if m:
                used.add(int(m.group(1)))
        names, i = [], 1
        while len(names) < count:
            if i not in used:
                names.append(f"{self.cluster_prefix}{i:02d}")
            i += 1
        return names

    def _stage_prepare(self) -> Path:
        """A clean launch workdir: prepare.py (the harness the setup runs) and nothing else."""
        src = self.workspace / "prepare.py"
        if not src.is_file():
            src = Path(self.config.template_dir) / "prepare.py"
        stage = self.state_dir / "stage" / f"launch-{uuid.uuid4().hex[:8]}"
        stage.mkdir(parents=True)
        shutil.copyfile(src, stage / "prepare.py")
        return stage

    def provision(self, count: int, gpu_type: str | None = None) -> list[Cluster]:
        if not isinstance(count, int) or count < 1 or count > 256:
            raise InvalidInput(f"count must be an integer from 1 to 256, got {count!r}.")
        with self._provision_lock:
            stage = self._stage_prepare()
            try:
                cfg = self.launch_task_config(gpu_type, stage)
                try:
                    task = self.sky.Task.from_yaml_config(copy.deepcopy(cfg))
                except Exception as e:  # noqa: BLE001 - SkyPilot's validation message is the useful part
                    raise InvalidInput(f"the SkyPilot task {self.task_path()} is not valid: {e}") from None
                names = self._next_names(count)
                with self._lock:
                    self._gone.difference_update(names)
                    self._torn_down.difference_update(names)
                t0 = time.monotonic()
                requests = {}
                errors: dict[str, str] = {}
                ok: list[str] = []
                for name in names:
                    try:
                        requests[name] = self.sky.launch(
                            task, cluster_name=name, idle_minutes_to_autostop=int(self.config.sky_autostop_minutes),
                            down=True, retry_until_up=False)
                    except Exception as e:  # noqa: BLE001
                        errors[name] = f"{type(e).__name__}: {_ANSI_RE.sub('', str(e))[:2000]}"

                def wait(name: str) -> None:
                    try:
                        self.sky.get(requests[name])
                        ok.append(name)
                    except Exception as e:  # noqa: BLE001
                        errors[name] = f"{type(e).__name__}: {_ANSI_RE.sub('', str(e))[:2000]}"

                if requests:   # its own threads: the refresher keeps the shared pool
                    with cf.ThreadPoolExecutor(max_workers=min(32, len(requests))) as waiters:
                        list(waiters.map(wait, list(requests)))
                self.timings["launch_s"].append(time.monotonic() - t0)
                for name in errors:           # never leave a half-launched cluster billing
                    try:
                        self.sky.get(self.sky.down(name))
                    except Exception:  # noqa: BLE001
                        log.warning("down of failed cluster %s failed", name, exc_info=True)
                self.last_provision_errors = errors
            finally:
                shutil.rmtree(stage, ignore_errors=True)
        infos = self._refresh_clusters()
        if not ok:
            detail = "; ".join(f"{n}: {e}" for n, e in errors.items())
            raise ProvisionFailed(
                f"No cluster came up ({detail[:3000]}). Check the task YAML's resources/infra "
                f"({self.task_path()}) and `sky check`; the failed clusters were taken down.")
        return [self._cluster_model(infos[n]) for n in sorted(ok) if n in infos]

    def teardown(self, names: list[str] | None = None) -> list[str]:
        current = self._refresh_clusters()
        if names is None:
            targets = sorted(current)
        else:
            bad = [n for n in names if not isinstance(n, str) or not self.is_ours(n)]
            if bad:
                raise InvalidInput(f"not clusters of this workspace (names start with {self.cluster_prefix!r}): {bad[:10]}")
            targets = list(dict.fromkeys(names))
        with self._lock:
            self._torn_down.update(targets)
        requests = {n: self.sky.down(n) for n in targets}
        removed: list[str] = []
        errors: dict[str, str] = {}
        for n, rid in requests.items():
            try:
                self.sky.get(rid)
                removed.append(n)
            except self._exc_gone:
                removed.append(n)
            except Exception as e:  # noqa: BLE001
                errors[n] = f"{type(e).__name__}: {_ANSI_RE.sub('', str(e))[:500]}"
        self._refresh_clusters()
        if errors and not removed:
            raise Conflict(f"teardown failed: {errors}. Retry teardown_clusters; `sky status` shows what is left.")
        for n, e in errors.items():
            log.warning("sky down %s failed: %s", n, e)
        return removed

    def reconcile(self) -> list[Cluster]:
        """This workspace's clusters as SkyPilot sees them now (refreshed); autostop re-armed where unset."""
        infos = self._refresh_clusters(refresh="AUTO")
        for info in infos.values():
            if info.state == "up" and (info.autostop is None or info.autostop < 0):
                try:
                    self.sky.get(self.sky.autostop(info.name, int(self.config.sky_autostop_minutes), down=True))
                except Exception:  # noqa: BLE001
                    log.warning("could not set autostop on %s", info.name, exc_info=True)
        return [self._cluster_model(i) for i in sorted(infos.values(), key=lambda i: i.name)]

    def live_jobs(self) -> dict[str, list[str]]:
        """Per cluster, the fleet's job names SkyPilot reports as not finished (for diagnostics/adoption)."""
        out: dict[str, list[str]] = {}
        for name, info in self._refresh_clusters().items():
            if info.state != "up":
                continue
            try:
                recs = self.sky.get(self.sky.queue(name, skip_finished=True))
            except Exception:  # noqa: BLE001
                continue
            out[name] = [str(r.job_name) for r in recs if str(getattr(r, "job_name", "")).startswith("arf-")]
        return out

    # ---------------------------------------------------------------------------------------
    # jobs
    # ---------------------------------------------------------------------------------------
    def run_command(self, key: str, harness_hash: str, timeout_s: float) -> str:
        """The job's run command: fixed text; the three values are validated and quoted."""
        if not _ID_RE.match(key):
            raise InvalidInput(f"bad run key {key!r}")
        if not _HASH_RE.match(harness_hash):
            raise InvalidInput(f"harness_hash must be 64 lowercase hex characters, got {harness_hash!r}")
        timeout = int(math.ceil(float(timeout_s)))
        run_dir = shlex.quote(f"{RUNS_SUBDIR}/{key}")
        return "\n".join([
            "PY=$(cat ~/.arf/python 2>/dev/null || command -v python3)",
            "W=$PWD",
            f"cd {run_dir} || {{ echo 'ARF_ERROR: the run directory is missing on the cluster'; exit 97; }}",
            "mkdir -p ~/.arf",
            'echo "ARF_WAITING_FOR_SLOT $(date +%s.%N)"',
            f'"$PY" -c {shlex.quote(_LOCK_AND_EXEC)} ~/.arf/slot.lock "$PY" runner.py'
            f" --expected-hash {shlex.quote(harness_hash)} --timeout {timeout} --python \"$PY\"",
            "rc=$?",
            f"echo {TRAIN_LOG_BEGIN}",
            "cat run.log 2>/dev/null",
            f"echo; echo {TRAIN_LOG_END}",
            f'if [ -f result.json ]; then "$PY" -c {shlex.quote(_EMIT_RESULT)} && rc=0; fi',
            f"cd \"$W\" && rm -rf {run_dir}",
            "exit $rc",
        ])

    def job_resources(self, info: _ClusterInfo) -> dict[str, Any] | None:
        """sky.Resources(...) arguments for one experiment on this cluster: small enough that the
        job queued ahead is started beside the running one and waits on the cluster lock.

        - one GPU: half of it (Kubernetes/clouds run both jobs; Slurm rounds it up to the GPU,
          then SkyPilot's queue holds the second job until the first ends: a few seconds more);
        - several GPUs: all of them (one experiment uses the whole cluster);
        - no GPU, on Slurm: half the cluster's CPUs (SkyPilot would ask for all of them);
        - no GPU elsewhere: nothing (SkyPilot's default of half a CPU)."""
        if info.accelerators:
            name, count = next(iter(info.accelerators.items()))
            return {"accelerators": {name: 0.5} if float(count) <= 1 else {name: float(count)}}
        if info.cloud == "slurm" and info.cpus:
            return {"cpus": str(max(1, int(info.cpus // 2)))}
        return None

    def _job_envs(self, job: JobSpec) -> dict[str, str]:
        envs = self._yaml_envs()
        for k, v in job.env.items():
            if k == "AUTORESEARCH_CACHE":
                continue   # a path on the engine's machine; the cluster's cache is the YAML's
            envs[k] = v
        envs["AUTORESEARCH_PROFILE"] = job.profile
        envs["AUTORESEARCH_SEED"] = str(int(job.seed))
        bad = [k for k, v in envs.items() if not _ENV_NAME_RE.match(k) or not isinstance(v, str)
               or "\0" in v or len(v) > 4096]
        if bad:
            raise InvalidInput(f"job env entries must be NAME -> str (no NUL, <= 4096 chars); bad: {bad!r}")
        return envs

    def _stage_run(self, job: JobSpec, key: str) -> Path:
        """A clean workdir holding only this experiment: <stage>/arf-runs/<key>/{train.py, prepare.py, runner.py, ...}."""
        src = Path(job.run_dir).resolve()
        if not src.is_dir():
            raise InvalidInput(f"run directory {src} does not exist; export the snapshot before submit")
        missing = [n for n in ("train.py", "prepare.py") if not (src / n).is_file()]
        if missing:
            raise InvalidInput(f"run directory {src} lacks {', '.join(missing)}")
        if (src / runner.RESULT_FILE).exists():
            raise Conflict(f"run directory {src} already holds a result.json; each attempt needs a fresh run directory")
        stage = self.state_dir / "stage" / key
        dest = stage / RUNS_SUBDIR / key
        if stage.exists():
            shutil.rmtree(stage)
        dest.mkdir(parents=True)
        total = 0
        for path in sorted(src.rglob("*")):
            rel = path.relative_to(src)
            if path.is_symlink() or not path.is_file() or rel.parts[0] in STAGE_SKIP or rel.parts[0].startswith("."):
                continue
            total += path.stat().st_size
            if total > MAX_STAGE_BYTES:
                shutil.rmtree(stage, ignore_errors=True)
                raise InvalidInput(f"run directory {src} holds more than {MAX_STAGE_BYTES >> 20} MiB; keep it to the code")
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / rel)
        shutil.copyfile(RUNNER_SOURCE, dest / "runner.py")
        shutil.copyfile(RUNNER_SOURCE, src / "runner.py")   # the run dir shows what ran, as with local
        return stage

    def submit(self, cluster: str, job: JobSpec) -> JobHandle:
        if not self.is_ours(cluster):
            raise NotFound(f"{cluster!r} is not a cluster of this workspace (prefix {self.cluster_prefix!r}).")
        if not isinstance(job.experiment_id, str) or not _ID_RE.match(job.experiment_id):
            raise InvalidInput(f"experiment_id must match {_ID_RE.pattern}, got {job.experiment_id!r}")
        if not isinstance(job.attempt, int) or job.attempt < 0:
            raise InvalidInput(f"attempt must be a non-negative integer, got {job.attempt!r}")
        if not (isinstance(job.timeout_s, (int, float)) and 0 < job.timeout_s < 10 * 86400):
            raise InvalidInput(f"timeout_s must be a positive number of seconds below 10 days, got {job.timeout_s!r}")
        if job.profile not in ("cpu", "gpu"):
            raise InvalidInput(f"profile must be 'cpu' or 'gpu', got {job.profile!r}")
        info = self._refresh_clusters(max_age_s=2.0).get(cluster)
        if info is None or cluster in self._gone:
            raise NotFound(f"cluster {cluster} does not exist (any more). Call list_clusters.")
        if info.state != "up":
            raise Conflict(f"cluster {cluster} is {info.state}, not up; experiments run on up clusters only.")
        key = f"{job.experiment_id}-a{job.attempt}-{uuid.uuid4().hex[:6]}"
        spec = {"cluster": cluster, "name": f"arf-{key}", "key": key,
                "run": self.run_command(key, job.harness_hash, job.timeout_s),
                "envs": self._job_envs(job), "resources": self.job_resources(info), "request_id": None}
        stage = self._stage_run(job, key)
        spec["stage"] = str(stage)
        self._write_spec(spec)
        now = time.time()
        handle = JobHandle(experiment_id=job.experiment_id, attempt=job.attempt, cluster=cluster,
                           run_dir=str(Path(job.run_dir).resolve()),
                           backend_ref={"job_name": spec["name"], "key": key, "timeout_s": float(job.timeout_s)},
                           submitted_at=now)
        tracked = _Job(handle=handle, cluster=cluster, name=spec["name"], request_id=None, submitted_at=now,
                       stage=str(stage), spec=spec, deferred=True)
        with self._lock:
            self._jobs[tracked.key] = tracked
        try:
            self._dispatch_deferred(cluster, raise_errors=True)
        except Exception:
            with self._lock:
                self._jobs.pop(tracked.key, None)
            self._drop_stage(tracked)
            raise
        handle.backend_ref["request_id"] = tracked.request_id
        self._ensure_thread()
        self._wake.set()
        return handle

    # A job is exec'd only when every earlier job of ours on the cluster is RUNNING (or over):
    # SkyPilot's per-cluster FIFO scheduler starts a queued job only when it is submitted or when
    # a job ends, so a job submitted while the one ahead is still PENDING would wait for that one
    # to END before it is even started. Exec'd once the one ahead runs, it is started at once
    # (where its resource request fits beside it) and waits on the cluster lock instead.
    def _dispatch_deferred(self, cluster: str, raise_errors: bool = False) -> None:
        with self._lock:
            jobs = sorted((j for j in self._jobs.values() if j.cluster == cluster and j.outcome is None
                           and not j.cancelled), key=lambda j: j.submitted_at)
            # "started enough": seen RUNNING (or over), or its exec request is done -- the next
            # exec needs seconds to reach the cluster's queue, by which time the job ahead runs.
            ahead_starting = any(not j.deferred and j.status not in _STARTED and j.request_done_at is None
                                 for j in jobs)
            nxt = next((j for j in jobs if j.deferred and not j.exec_busy), None)
            if nxt is None or ahead_starting or any(j.exec_busy for j in jobs):
                return
            nxt.exec_busy = True
        try:
            spec = nxt.spec or {}
            task = self.sky.Task(name=spec["name"], run=spec["run"], workdir=spec["stage"], envs=spec["envs"])
            if spec.get("resources"):
                task.set_resources(self.sky.Resources(**spec["resources"]))
            t0 = time.monotonic()
            request_id = str(self.sky.exec(task, cluster_name=cluster))
            self.timings["exec_submit_s"].append(time.monotonic() - t0)
        except Exception as e:
            with self._lock:
                nxt.exec_busy = False
            if raise_errors:
                raise
            self._finish(nxt, JobOutcome(nxt.handle, lost=True,
                                         reason=f"exec on {cluster} failed: {type(e).__name__}: {_ANSI_RE.sub('', str(e))[:500]}"))
            return
        with self._lock:
            nxt.request_id = request_id
            nxt.deferred = False
            nxt.exec_busy = False
            nxt.exec_at = time.time()
            self.exec_log.append((nxt.name, cluster, nxt.submitted_at, nxt.exec_at))
            spec["request_id"] = request_id
        self._write_spec(spec)

    def _spec_path(self, key: str) -> Path:
        return self.state_dir / "stage" / f"{key}.json"

    def _write_spec(self, spec: dict[str, Any]) -> None:
        path = self._spec_path(spec["key"])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(spec, sort_keys=True))
        os.replace(tmp, path)

    def _drop_stage(self, job: _Job) -> None:
        if job.stage:
            shutil.rmtree(job.stage, ignore_errors=True)
        key = (job.spec or {}).get("key") or (job.handle.backend_ref or {}).get("key")
        if isinstance(key, str) and _ID_RE.match(key):
            try:
                self._spec_path(key).unlink()
            except OSError:
                pass

    def _track(self, handle: JobHandle) -> _Job | None:
        """The job of a handle; one from an earlier process is rebuilt from the handle and its spec file."""
        key = (handle.experiment_id, handle.attempt)
        with self._lock:
            job = self._jobs.get(key)
            if job is not None:
                return job
            ref = handle.backend_ref or {}
            name = ref.get("job_name")
            if not isinstance(name, str) or not name.startswith("arf-"):
                return None
            job = _Job(handle=handle, cluster=handle.cluster, name=name,
                       request_id=ref.get("request_id"), submitted_at=float(handle.submitted_at or time.time()))
            rkey = ref.get("key")
            if isinstance(rkey, str) and _ID_RE.match(rkey):
                try:
                    spec = json.loads(self._spec_path(rkey).read_text())
                except (OSError, ValueError):
                    spec = None
                if isinstance(spec, dict) and spec.get("name") == name:
                    job.spec = spec
                    job.stage = spec.get("stage")
                    job.request_id = spec.get("request_id") or job.request_id
                    job.deferred = job.request_id is None    # never exec'd: this process does it
            self._jobs[key] = job
            return job

    def poll(self, handles: list[JobHandle]) -> list[JobOutcome]:
        out: list[JobOutcome] = []
        for h in handles:
            job = self._track(h)
            if job is None:
                out.append(JobOutcome(h, lost=True, reason="the handle carries no SkyPilot job name (not a skypilot job)"))
                continue
            with self._lock:
                if job.outcome is not None:
                    out.append(job.outcome)
                    self._jobs.pop(job.key, None)
                    self._done.append(job.key)
        self._ensure_thread()
        self._wake.set()
        return out

    def cancel(self, handle: JobHandle) -> None:
        with self._lock:
            if (handle.experiment_id, handle.attempt) in self._done:
                return      # its outcome was handed out: nothing runs any more
        job = self._track(handle)
        if job is None:
            return
        with self._lock:
            job.cancelled = True
            if job.outcome is not None or job.status in _TERMINAL:
                self._jobs.pop(job.key, None)
                return
            if (handle.cluster in self._gone or handle.cluster in self._torn_down
                    or (job.deferred and not job.exec_busy)):
                self._jobs.pop(job.key, None)    # nothing runs (any more), or it was never exec'd
                drop = True
            else:
                drop = False
        if drop:
            self._drop_stage(job)
            return
        self._send_cancel(job)
        self._ensure_thread()
        self._wake.set()

    def _send_cancel(self, job: _Job) -> None:
        """Fire the cancel request (SkyPilot runs it server-side); the refresher retries until the job is over."""
        if job.job_id is None and job.request_id:
            try:   # the exec request may be done: its return value is the job id
                st = self.sky.api_status([job.request_id])
                if st and _val(st[0].status) == "SUCCEEDED":
                    job.job_id = int(self.sky.get(job.request_id)[0])
            except Exception:  # noqa: BLE001
                pass
        if job.job_id is None:
            return   # not on the cluster yet: the refresher cancels it when it appears
        try:
            self.sky.cancel(job.cluster, job_ids=[job.job_id])
            job.cancel_sent = True
        except Exception:  # noqa: BLE001
            log.warning("cancel of %s on %s failed", job.name, job.cluster, exc_info=True)

    # ---------------------------------------------------------------------------------------
    # the refresher thread
    # ---------------------------------------------------------------------------------------
    def _ensure_thread(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="arf-sky-refresh", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._refresh_round()
            except Exception:  # noqa: BLE001 - keep refreshing whatever one round did
                log.exception("skypilot refresh round failed")
            self._wake.wait(self.refresh_interval_s)
            self._wake.clear()

    def _refresh_round(self) -> None:
        self._check_requests()
        now = time.monotonic()
        with self._lock:
            clusters = sorted({j.cluster for j in self._jobs.values() if j.outcome is None})
            todo = []
            for c in clusters:
                w = self._watch.setdefault(c, _Watch())
                if not w.busy and now - w.last >= self.refresh_interval_s:
                    w.busy = True
                    todo.append(c)
        for c in todo:
            self._pool.submit(self._refresh_cluster_safe, c)

    def _check_requests(self) -> None:
        """Which exec requests have finished (a local API-server call, cheap); a deferred job
        behind a finished one is exec'd at once instead of after the next queue round."""
        with self._lock:
            waiting = {j.request_id: j for j in self._jobs.values()
                       if j.request_id and not j.deferred and j.request_done_at is None and j.outcome is None}
        if not waiting:
            return
        try:
            payloads = self.sky.api_status(list(waiting))
        except Exception:  # noqa: BLE001 - the queue round decides anyway
            return
        clusters = set()
        for p in payloads:
            job = waiting.get(str(getattr(p, "request_id", "")))
            if job is not None and _val(getattr(p, "status", "")) == "SUCCEEDED":
                job.request_done_at = time.time()
                clusters.add(job.cluster)
        for c in clusters:
            with self._lock:
                has_deferred = any(j.cluster == c and j.deferred for j in self._jobs.values())
            if has_deferred:
                self._pool.submit(self._dispatch_deferred_safe, c)

    def _dispatch_deferred_safe(self, cluster: str) -> None:
        try:
            self._dispatch_deferred(cluster)
        except Exception:  # noqa: BLE001
            log.exception("deferred exec on %s failed", cluster)

    def _refresh_cluster_safe(self, cluster: str) -> None:
        try:
            self._refresh_cluster(cluster)
        except Exception:  # noqa: BLE001
            log.exception("refresh of %s failed", cluster)
        finally:
            with self._lock:
                w = self._watch.setdefault(cluster, _Watch())
                w.busy = False
                w.last = time.monotonic()
            self._wake.set()

    def _finish(self, job: _Job, outcome: JobOutcome) -> None:
        with self._lock:
            if job.cancelled:
                self._jobs.pop(job.key, None)
            else:
                job.outcome = outcome
        self._drop_stage(job)

    def _jobs_on(self, cluster: str) -> list[_Job]:
        with self._lock:
            return [j for j in self._jobs.values() if j.cluster == cluster and j.outcome is None]

    def _refresh_cluster(self, cluster: str) -> None:
        jobs = self._jobs_on(cluster)
        if not jobs:
            return
        if cluster in self._torn_down:
            for j in jobs:
                self._finish(j, JobOutcome(j.handle, result={
                    "status": "cancelled", "error": f"cluster {cluster} was torn down", "metrics": {}}))
            return
        if cluster in self._gone:
            self._lose_all(jobs, f"cluster {cluster} vanished")
            return
        asked_at = time.time()
        t0 = time.monotonic()
        try:
            records = list(self.sky.get(self.sky.queue(cluster, skip_finished=False)))
        except self._exc_gone:
            with self._lock:
                self._gone.add(cluster)
                self._clusters.pop(cluster, None)
            self._lose_all(jobs, f"cluster {cluster} vanished (preempted, autostopped, or removed outside the fleet)")
            return
        except self._exc_not_up as e:
            self._unreachable(cluster, jobs, f"cluster {cluster} is not up: {_ANSI_RE.sub('', str(e))[:300]}",
                              confirm=True)
            return
        except Exception as e:  # noqa: BLE001 - network, ssh, API server: retried, lost only if it lasts
            self._unreachable(cluster, jobs, f"{type(e).__name__}: {_ANSI_RE.sub('', str(e))[:300]}")
            return
        self.timings["queue_s"].append(time.monotonic() - t0)
        with self._lock:
            self._watch.setdefault(cluster, _Watch()).failing_since = None
        by_name: dict[str, Any] = {}
        for r in records:
            name = str(getattr(r, "job_name", "") or "")
            prev = by_name.get(name)
            if prev is None or int(r.job_id) > int(prev.job_id):
                by_name[name] = r
        finished: list[tuple[_Job, Any]] = []
        for job in jobs:
            if job.deferred:
                continue
            rec = by_name.get(job.name)
            if rec is None:
                self._not_in_queue(job, asked_at)
                continue
            job.job_id = int(rec.job_id)
            job.status = _val(rec.status)
            if job.cancelled and job.status not in _TERMINAL and not job.cancel_sent:
                self._send_cancel(job)
            if job.status in _TERMINAL:
                finished.append((job, rec))
        for job, rec in finished:
            self._collect(job, rec)
        self._dispatch_deferred(cluster)

    def _unreachable(self, cluster: str, jobs: list[_Job], reason: str, confirm: bool = False) -> None:
        with self._lock:
            w = self._watch.setdefault(cluster, _Watch())
            if w.failing_since is None:
                w.failing_since = time.monotonic()
            w.last_error = reason
            failing_for = time.monotonic() - w.failing_since
        if confirm:
            try:
                recs = self._status([cluster], refresh="AUTO")
            except Exception:  # noqa: BLE001
                recs = None
            if recs is not None and (not recs or _val(recs[0].status) != "UP"):
                with self._lock:
                    self._gone.add(cluster)
                self._lose_all(jobs, reason)
                return
        if failing_for > self.unreachable_lost_s:
            for j in jobs:          # in case it is still running there: it must not hold the cluster
                if j.job_id is not None:
                    try:
                        self.sky.cancel(cluster, job_ids=[j.job_id])
                    except Exception:  # noqa: BLE001
                        pass
            self._lose_all(jobs, f"cluster {cluster} unreachable for {failing_for:.0f} s: {reason}")

    def _lose_all(self, jobs: list[_Job], reason: str) -> None:
        for j in jobs:
            self._finish(j, JobOutcome(j.handle, lost=True, reason=reason))

    def _not_in_queue(self, job: _Job, asked_at: float) -> None:
        """The job is not (yet) in the cluster's queue: its exec request decides."""
        status = ""
        finished_at = None
        if job.request_id:
            try:
                st = self.sky.api_status([job.request_id])
            except Exception:  # noqa: BLE001
                return   # ask again next round
            if st:
                status = _val(st[0].status)
                finished_at = getattr(st[0], "finished_at", None)
        if status in ("PENDING", "WAITING", "RUNNING"):
            return
        if status in _REQ_DONE_BAD:
            try:
                self.sky.get(job.request_id)
                why = f"exec request {status.lower()}"
            except Exception as e:  # noqa: BLE001
                why = f"exec failed: {type(e).__name__}: {_ANSI_RE.sub('', str(e))[:500]}"
            self._finish(job, JobOutcome(job.handle, lost=True, reason=why))
            return
        if status == "SUCCEEDED":
            if finished_at is None or float(finished_at) >= asked_at - 1.0:
                return   # it finished while we were asking: next round sees the job
            self._finish(job, JobOutcome(job.handle, lost=True,
                                         reason=f"job {job.name} is not on {job.cluster} although it was submitted"))
            return
        # unknown request (an API server that lost its state) and not on the cluster
        if time.time() - job.submitted_at > self.request_grace_s:
            self._finish(job, JobOutcome(job.handle, lost=True,
                                         reason=f"job {job.name} is not on {job.cluster} and its exec request is unknown"))

    def _collect(self, job: _Job, rec: Any) -> None:
        """A finished job: its log from SkyPilot -> run.log, sky_job.log, result.json; the outcome."""
        if job.cancelled:
            self._finish(job, JobOutcome(job.handle, result={"status": "cancelled", "metrics": {}}))
            return
        buf = io.StringIO()
        t0 = time.monotonic()
        try:
            self.sky.tail_logs(job.cluster, job.job_id, follow=False, output_stream=buf)
        except self._exc_gone:
            self._finish(job, JobOutcome(job.handle, lost=True, reason=f"cluster {job.cluster} vanished before its log was read"))
            return
        except Exception as e:  # noqa: BLE001
            with self._lock:
                w = self._watch.setdefault(job.cluster, _Watch())
                tries = w.extra.get(job.name, 0) + 1
                w.extra[job.name] = tries
            if tries >= 5:
                self._finish(job, JobOutcome(job.handle, lost=True, reason=f"could not read the job log: {e}"))
            return
        self.timings["logs_s"].append(time.monotonic() - t0)
        clean, train_log, result = parse_job_log(buf.getvalue())
        run_dir = Path(job.handle.run_dir)
        log_path: str | None = None
        try:
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / SKY_JOB_LOG).write_text(clean, encoding="utf-8")
            (run_dir / runner.LOG_FILE).write_text(train_log if train_log else clean, encoding="utf-8")
            log_path = str(run_dir / runner.LOG_FILE)
            if result is not None:
                tmp = run_dir / ".result.json.tmp"
                tmp.write_text(json.dumps(result, sort_keys=True), encoding="utf-8")
                os.replace(tmp, run_dir / runner.RESULT_FILE)
        except OSError:
            log.warning("could not write the logs of %s into %s", job.name, run_dir, exc_info=True)
        status = job.status
        if result is not None:
            self._finish(job, JobOutcome(job.handle, result=result, log_path=log_path))
        elif status == "CANCELLED":
            self._finish(job, JobOutcome(job.handle, lost=True, log_path=log_path,
                                         reason=f"job {job.name} was cancelled outside the fleet"))
        else:
            last = [line for line in clean.splitlines() if line.strip()][-3:]
            self._finish(job, JobOutcome(job.handle, lost=True, log_path=log_path,
                                         reason=f"SkyPilot job ended {status} without a result line: "
                                                + " | ".join(last)[:500]))

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        t = self._thread
        if t is not None:
            t.join(timeout=30)
        self._pool.shutdown(wait=False, cancel_futures=True)
