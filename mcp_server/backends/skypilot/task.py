"""What SkyPilot is asked to run: the task YAML a cluster is launched from (pinned to one GPU
type), and each experiment's job on it (run command, resources, envs).

Agent-supplied strings never reach a shell unquoted: the run command is fixed text, and the
three values in it (run key, harness hash, timeout) are validated, then shlex-quoted; env names
and values are checked before SkyPilot gets them; a GPU type must look like an accelerator name."""

from __future__ import annotations

import copy
import math
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from mcp_server.backends.base import JobSpec
from mcp_server.backends.skypilot.joblog import TRAIN_LOG_BEGIN, TRAIN_LOG_END
from mcp_server.backends.skypilot.records import ClusterInfo
from mcp_server.domain import gpus
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import InvalidInput
from mcp_server.runtime import runner

RUNS_SUBDIR = "arf-runs"               # on the cluster: <workdir>/arf-runs/<key>/

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_~.-]{0,63}$")
_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_GPU_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,40}$")

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


# ---------------------------------------------------------------------------------------------
# the task YAML
# ---------------------------------------------------------------------------------------------
def task_path(config: FleetConfig, workspace: Path) -> Path:
    """`config.sky_task`, else the workspace's `sky_task.yaml`, else the template's."""
    if config.sky_task is not None:
        return Path(config.sky_task)
    ws = workspace / "sky_task.yaml"
    return ws if ws.is_file() else Path(config.template_dir) / "sky_task.yaml"


def read_task_config(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise InvalidInput(f"cannot read the SkyPilot task {path}: {e}") from None
    if not isinstance(cfg, dict):
        raise InvalidInput(f"the SkyPilot task {path} is not a YAML mapping")
    return cfg


def pin_accelerators(resources: dict[str, Any], gpu_type: str) -> dict[str, Any]:
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
    name = gpu_type
    raw_count: Any = 1   # the count as written in the yaml (str, int, float, ...)
    count: int | float
    for k, v in items:
        if same(k):
            name, raw_count = k, v
    try:
        c = float(raw_count)
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


#: the template YAML's preparation line (its setup's last step), replaced by a task's own command
TEMPLATE_PREPARE_LINE = '"$PY" prepare.py'


def setup_with_prepare(setup: str | None, prepare: list[str] | None) -> str:
    """The YAML's setup with the template's preparation line replaced by a task's own command
    (each argument quoted; "python" is the setup's interpreter), or removed when the task has
    none; appended when the YAML has no such line."""
    command = "" if not prepare else " ".join(
        ['"$PY"' if i == 0 and a == "python" else shlex.quote(a) for i, a in enumerate(prepare)])
    lines = (setup or "").splitlines()
    out, replaced = [], False
    for line in lines:
        if line.strip() == TEMPLATE_PREPARE_LINE:
            replaced = True
            if command:
                out.append(line[: len(line) - len(line.lstrip())] + command)
            continue
        out.append(line)
    if not replaced and command:
        out += ['PY=$(cat ~/.arf/python 2>/dev/null || command -v python3)', command]
    return "\n".join(out) + "\n"


def launch_task_config(task: dict[str, Any], config: FleetConfig, gpu_type: str | None,
                       workdir: Path, prepare: list[str] | None | bool = True) -> dict[str, Any]:
    """The YAML as launched: pinned GPU type, infra from config, profile/cache envs, workdir.
    `prepare`: True = the YAML's setup as it is (the built-in task); else a task's own preparation
    command (None: it has none), which replaces the template's `"$PY" prepare.py` line."""
    cfg = copy.deepcopy(task)
    if prepare is not True:
        cfg["setup"] = setup_with_prepare(cfg.get("setup"), prepare or None)
    res = dict(cfg.get("resources") or {})
    if gpu_type is not None:
        if not _GPU_RE.match(gpu_type):
            raise InvalidInput(f"gpu_type must be an accelerator name such as 'H100', got {gpu_type!r}.")
        res = pin_accelerators(res, gpu_type)
    if config.sky_infra:
        for k in ("cloud", "region", "zone", "infra"):
            res.pop(k, None)
        res["infra"] = config.sky_infra
    res.pop("autostop", None)   # ours is always set at launch
    cfg["resources"] = res
    envs = {str(k): ("" if v is None else str(v)) for k, v in (cfg.get("envs") or {}).items()}
    envs["AUTORESEARCH_PROFILE"] = config.profile or envs.get("AUTORESEARCH_PROFILE") or "gpu"
    cfg["envs"] = envs
    cfg["workdir"] = str(workdir)
    cfg["run"] = None            # setup only: no job
    return cfg


def yaml_envs(task: dict[str, Any]) -> dict[str, str]:
    return {str(k): ("" if v is None else str(v)) for k, v in (task.get("envs") or {}).items()}


# ---------------------------------------------------------------------------------------------
# one experiment's job
# ---------------------------------------------------------------------------------------------
def run_command(key: str, harness_hash: str, timeout_s: float) -> str:
    """The job's run command: fixed text; the three values are validated and quoted."""
    if not ID_RE.match(key):
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
        f'"$PY" -c {shlex.quote(_LOCK_AND_EXEC)} ~/.arf/slot.lock "$PY" {runner.RUNNER_SCRIPT}'
        f" --expected-hash {shlex.quote(harness_hash)} --timeout {timeout} --python \"$PY\"",
        "rc=$?",
        f"echo {TRAIN_LOG_BEGIN}",
        f"cat {runner.LOG_FILE} 2>/dev/null",
        f"echo; echo {TRAIN_LOG_END}",
        f'if [ -f result.json ]; then "$PY" -c {shlex.quote(_EMIT_RESULT)} && rc=0; fi',
        f"cd \"$W\" && rm -rf {run_dir}",
        "exit $rc",
    ])


def job_resources(info: ClusterInfo) -> dict[str, Any] | None:
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


def job_envs(task_envs: dict[str, str], job: JobSpec) -> dict[str, str]:
    """The YAML's envs, then the job's (validated): what the experiment's job runs with."""
    envs = dict(task_envs)
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
