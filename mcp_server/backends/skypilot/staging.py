"""What travels to a cluster, staged under `<workspace>/.autoresearch/skypilot/stage/`: the launch
workdir (prepare.py only), each experiment's workdir (`arf-runs/<key>/...`, so that SkyPilot's
additive workdir rsync gives each experiment its own directory on the cluster), and the spec
file of each job (what to exec; a later process picks up a job from its handle and this file)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

from mcp_server.backends.base import JobSpec
from mcp_server.backends.skypilot.joblog import SKY_JOB_LOG
from mcp_server.backends.skypilot.task import RUNS_SUBDIR
from mcp_server.domain.config import FleetConfig
from mcp_server.domain.errors import Conflict, InvalidInput
from mcp_server.domain.task import load_task
from mcp_server.runtime import runner

RUNNER_SOURCE = Path(runner.__file__).resolve()
STAGE_SKIP = {runner.RESULT_FILE, runner.LOG_FILE, runner.TRAIN_PID_FILE, SKY_JOB_LOG, runner.RUNNER_OUT}
MAX_STAGE_BYTES = 64 << 20


def stage_prepare(state_dir: Path, workspace: Path, config: FleetConfig) -> Path:
    """A clean launch workdir: the harness the setup runs and nothing else: prepare.py for the
    built-in task; every harness file of a task with its own description (domain/task.py)."""
    task = load_task(workspace)
    stage = state_dir / "stage" / f"launch-{uuid.uuid4().hex[:8]}"
    if task.is_default:
        src = workspace / "prepare.py"
        if not src.is_file():
            src = Path(config.template_dir) / "prepare.py"
        stage.mkdir(parents=True)
        shutil.copyfile(src, stage / "prepare.py")
        return stage
    missing = [n for n in task.harness if not (workspace / n).is_file()]
    if missing:
        raise InvalidInput(f"the task's harness files {', '.join(missing)} are missing from {workspace}; "
                           "restore them (git checkout -- <file>) before provisioning")
    stage.mkdir(parents=True)
    for name in task.harness:
        (stage / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(workspace / name, stage / name)
    return stage


def stage_run(state_dir: Path, job: JobSpec, key: str) -> Path:
    """A clean workdir holding only this experiment: <stage>/arf-runs/<key>/{train.py, prepare.py, runner.py, ...}."""
    src = Path(job.run_dir).resolve()
    if not src.is_dir():
        raise InvalidInput(f"run directory {src} does not exist; export the snapshot before submit")
    missing = [n for n in (runner.TRAIN_SCRIPT, *runner.harness_files(src)) if not (src / n).is_file()]
    if missing:
        raise InvalidInput(f"run directory {src} lacks {', '.join(missing)}")
    if (src / runner.RESULT_FILE).exists():
        raise Conflict(f"run directory {src} already holds a result.json; each attempt needs a fresh run directory")
    stage = state_dir / "stage" / key
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
    for name in runner.RUNTIME_FILES:     # runner.py and what it imports
        shutil.copyfile(RUNNER_SOURCE.parent / name, dest / name)
        shutil.copyfile(RUNNER_SOURCE.parent / name, src / name)   # the run dir shows what ran, as with local
    return stage


def spec_path(state_dir: Path, key: str) -> Path:
    return state_dir / "stage" / f"{key}.json"


def write_spec(state_dir: Path, spec: dict[str, Any]) -> None:
    path = spec_path(state_dir, spec["key"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, sort_keys=True))
    os.replace(tmp, path)
