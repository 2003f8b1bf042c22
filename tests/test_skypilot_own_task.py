"""The SkyPilot backend with a task of its own (autoresearch.toml): the launch workdir holds every
harness file, the cluster setup runs the task's preparation command (no YAML edit), and a run
on the cluster checks every harness file and reads karpathy's summary block. The SkyPilot SDK
is a placeholder here (no cluster); the setup and run commands are executed for real in bash."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from test_skypilot_parts import _backend, _cluster_home, _workdir

from mcp_server.backends.skypilot import RUNS_SUBDIR, parse_job_log
from mcp_server.backends.skypilot.staging import stage_prepare
from mcp_server.runtime import runner

TOML = """\
harness = ["prepare.py", "lib/evaluate.py"]
prepare = ["python", "prepare.py", "--size", "tiny set"]
[metric]
name = "val_loss"
direction = "lower"
"""
PREPARE = "import sys\nopen('prepared.txt', 'w').write(' '.join(sys.argv[1:]))\n"


def _own_workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    (ws / "lib").mkdir(parents=True)
    (ws / "autoresearch.toml").write_text(TOML)
    (ws / "prepare.py").write_text(PREPARE)
    (ws / "lib" / "evaluate.py").write_text("LOSS = 1\n")
    (ws / "train.py").write_text("print('not shipped at launch')\n")
    return ws


def test_launch_ships_every_harness_file_and_the_setup_runs_the_tasks_preparation(tmp_path: Path) -> None:
    ws = _own_workspace(tmp_path)
    b = _backend(tmp_path, profile="cpu")
    stage = stage_prepare(tmp_path / "state", ws, b.config)
    assert sorted(str(p.relative_to(stage)) for p in stage.rglob("*") if p.is_file()) == [
        "lib/evaluate.py", "prepare.py"]
    cfg = b.launch_task_config(None, stage)
    assert "\"$PY\" prepare.py --size 'tiny set'" in cfg["setup"]
    assert '"$PY" prepare.py\n' not in cfg["setup"]
    # the setup as SkyPilot runs it, on a node whose Python is ready (ARF_PYTHON, as on local Slurm)
    home, env = _cluster_home(tmp_path)
    env.update(ARF_PYTHON=sys.executable, AUTORESEARCH_PROFILE="cpu")
    p = subprocess.run(["bash", "-c", cfg["setup"]], cwd=stage, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert (stage / "prepared.txt").read_text() == "--size tiny set"


def test_builtin_task_keeps_the_yaml_setup_as_it_is(tmp_path: Path) -> None:
    b = _backend(tmp_path, profile="cpu")
    assert b.launch_task_config(None, tmp_path)["setup"] == b.task_config()["setup"]


def test_a_task_without_preparation_drops_the_prepare_line(tmp_path: Path) -> None:
    ws = _own_workspace(tmp_path)
    (ws / "autoresearch.toml").write_text(TOML.replace('prepare = ["python", "prepare.py", "--size", "tiny set"]\n',
                                                       "prepare = []\n"))
    b = _backend(tmp_path, profile="cpu")
    setup = b.launch_task_config(None, tmp_path)["setup"]
    assert "prepare.py" not in setup and "~/.arf/python" in setup


def test_run_on_the_cluster_checks_every_harness_file_and_reads_the_summary_block(tmp_path: Path) -> None:
    b = _backend(tmp_path)
    train = "print('---')\nprint('val_loss:     0.75')\nprint('num_steps:    3')\n"
    for name, tamper in (("ok", None), ("bad", "lib/evaluate.py")):
        key = f"e0001-a1-{name}"
        workdir = _workdir(tmp_path / name, key, train)
        run = workdir / RUNS_SUBDIR / key
        (run / "lib").mkdir()
        (run / "lib" / "evaluate.py").write_text("LOSS = 1\n")
        hashes = {n: runner.harness_hash(run / n) for n in ("prepare.py", "lib/evaluate.py")}
        (run / runner.TASK_JSON).write_text(json.dumps({"harness": hashes, "run": ["python", "train.py"],
                                                        "metric": "val_loss"}))
        if tamper:
            (run / tamper).write_text("LOSS = 0  # easier\n")
        _, env = _cluster_home(tmp_path / name)
        p = subprocess.run(["bash", "-c", b.run_command(key, runner.harness_pin(hashes), 60)], cwd=workdir,
                           env=env, capture_output=True, text=True, timeout=60)
        _, _, result = parse_job_log(p.stdout)
        assert result is not None, p.stdout + p.stderr
        if tamper:
            assert result["status"] == "rejected" and "lib/evaluate.py was modified" in result["error"]
        else:
            assert result["status"] == "done" and result["metrics"] == {"val_loss": 0.75, "num_steps": 3}
