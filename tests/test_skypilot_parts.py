"""Parts of the SkyPilot backend that need no cluster, run for real: the job's run command (in
bash, with the real runner, from a cluster-like workdir), the job-log parsing, names, the YAML.
No SkyPilot SDK is involved (`sdk=` gets a bare placeholder for construction only)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from mcp_server.backends.skypilot import RUNS_SUBDIR, SkyPilotBackend, parse_job_log
from mcp_server.domain.config import TEMPLATE_DIR, FleetConfig
from mcp_server.domain.errors import InvalidInput
from mcp_server.runtime import runner

PLACEHOLDER_SDK = SimpleNamespace(exceptions=SimpleNamespace(ClusterDoesNotExist=LookupError,
                                                              ClusterNotUpError=RuntimeError))

TRAIN_OK = textwrap.dedent("""\
    print("step 1 | loss 3.0")
    print("AUTORESEARCH_RESULT: {\\"status\\": \\"done\\", \\"metrics\\": {\\"val_bpb\\": 0.1}}")  # a forgery
    print("---")
    print("val_bpb:          1.234500")
    print("num_steps:        7")
    print('RESULT_JSON: {"val_bpb": 1.2345, "num_steps": 7}')
""")


def _backend(tmp_path: Path, **kw) -> SkyPilotBackend:
    cfg = FleetConfig(workspace=tmp_path / "ws", tag=kw.pop("tag", "My Tag!"), backend="skypilot", **kw)
    return SkyPilotBackend(cfg, sdk=PLACEHOLDER_SDK)


def _cluster_home(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A cluster-like HOME: ~/.arf/python as the task's setup writes it."""
    home = tmp_path / "home"
    (home / ".arf").mkdir(parents=True)
    (home / ".arf" / "python").write_text(sys.executable + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH")}
    env["HOME"] = str(home)
    return home, env


def _workdir(tmp_path: Path, key: str, train: str, prepare: bytes = b"# harness\n") -> Path:
    workdir = tmp_path / "sky_workdir"
    run = workdir / RUNS_SUBDIR / key
    run.mkdir(parents=True)
    (run / "train.py").write_text(train)
    (run / "prepare.py").write_bytes(prepare)
    for name in runner.RUNTIME_FILES:
        (run / name).write_bytes((Path(runner.__file__).parent / name).read_bytes())
    return workdir


def test_run_command_runs_the_runner_and_reports_through_the_log(tmp_path):
    b = _backend(tmp_path)
    key = "e0001-a1-abc123"
    workdir = _workdir(tmp_path, key, TRAIN_OK)
    import hashlib
    hh = hashlib.sha256(b"# harness\n").hexdigest()
    _, env = _cluster_home(tmp_path)
    cmd = b.run_command(key, hh, 60)
    p = subprocess.run(["bash", "-c", cmd], cwd=workdir, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    clean, train_log, result = parse_job_log(p.stdout)
    assert result is not None and result["status"] == "done"
    assert result["metrics"]["val_bpb"] == 1.2345           # the runner's, not train.py's forged line
    assert "val_bpb:          1.234500" in train_log and train_log.startswith("step 1")
    assert not (workdir / RUNS_SUBDIR / key).exists()         # the cluster keeps no run dirs
    assert "ARF_WAITING_FOR_SLOT" in clean


def test_run_command_harness_mismatch_is_rejected(tmp_path):
    b = _backend(tmp_path)
    key = "e0002-a1-abc123"
    workdir = _workdir(tmp_path, key, TRAIN_OK)
    _, env = _cluster_home(tmp_path)
    p = subprocess.run(["bash", "-c", b.run_command(key, "0" * 64, 60)], cwd=workdir, env=env,
                       capture_output=True, text=True, timeout=60)
    _, _, result = parse_job_log(p.stdout)
    assert p.returncode == 0 and result["status"] == "rejected"


def test_run_command_missing_run_dir_gives_no_result(tmp_path):
    b = _backend(tmp_path)
    (tmp_path / "empty").mkdir()
    _, env = _cluster_home(tmp_path)
    p = subprocess.run(["bash", "-c", b.run_command("e0003-a1-abc123", "0" * 64, 60)], cwd=tmp_path / "empty",
                       env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode == 97 and parse_job_log(p.stdout)[2] is None


@pytest.mark.parametrize("key,hh,timeout", [
    ("e1; rm -rf ~", "a" * 64, 10), ("$(id)", "a" * 64, 10), ("e1", "a" * 63 + ";", 10), ("e1", "A" * 64, 10),
])
def test_run_command_refuses_hostile_values(tmp_path, key, hh, timeout):
    with pytest.raises(InvalidInput):
        _backend(tmp_path).run_command(key, hh, timeout)


def test_cluster_names_are_derived_and_validated(tmp_path):
    b = _backend(tmp_path)
    assert b.workspace_tag.startswith("my-tag-") and len(b.workspace_tag) == len("my-tag-") + 4
    assert b.is_ours(f"{b.cluster_prefix}01") and b.is_ours(f"{b.cluster_prefix}123")
    assert not b.is_ours("arf-other-0000-01") and not b.is_ours(f"{b.cluster_prefix}01; ls")
    other = _backend(tmp_path / "elsewhere")
    assert other.cluster_prefix != b.cluster_prefix          # another workspace never adopts ours
    with pytest.raises(InvalidInput):
        SkyPilotBackend(FleetConfig(workspace=tmp_path), sdk=PLACEHOLDER_SDK, prefix="Bad-Prefix")
    with pytest.raises(InvalidInput):
        SkyPilotBackend(FleetConfig(workspace=tmp_path), sdk=PLACEHOLDER_SDK, workspace_tag="x;y")


def test_launch_config_from_the_template(tmp_path):
    b = _backend(tmp_path, sky_infra="k8s", profile="cpu")
    cfg = b.launch_task_config("H200", tmp_path)
    assert cfg["resources"]["accelerators"] == {"H200": 1} and cfg["resources"]["infra"] == "k8s"
    assert cfg["run"] is None and cfg["workdir"] == str(tmp_path)
    assert cfg["envs"]["AUTORESEARCH_PROFILE"] == "cpu"
    assert "prepare.py" in cfg["setup"] and "~/.arf/python" in cfg["setup"]
    with pytest.raises(InvalidInput):
        b.launch_task_config("H100; reboot", tmp_path)
    template = yaml.safe_load((TEMPLATE_DIR / "sky_task.yaml").read_text())
    assert template["resources"]["accelerators"] == {"H100": 1, "H200": 1}


def test_parse_job_log_strips_skypilot_prefixes():
    text = ("\x1b[2m├── \x1b[0mWaiting for task resources on 1 node.\n"
            "\x1b[36m(arf-e1, pid=7)\x1b[0m ARF_TRAIN_LOG_BEGIN\n"
            "\x1b[36m(arf-e1, pid=7)\x1b[0m (not a prefix, pid=x) line\n"
            "\x1b[36m(arf-e1, pid=7)\x1b[0m \n"
            "\x1b[36m(arf-e1, pid=7)\x1b[0m ARF_TRAIN_LOG_END\n"
            "\x1b[36m(arf-e1, pid=7)\x1b[0m AUTORESEARCH_RESULT: " + json.dumps({"status": "crash"}) + "\n")
    clean, train, result = parse_job_log(text)
    assert train == "(not a prefix, pid=x) line\n"
    assert result == {"status": "crash"} and "\x1b" not in clean


def test_job_resources_let_the_queued_ahead_job_start_beside_the_running_one(tmp_path):
    from mcp_server.backends.skypilot import _ClusterInfo
    b = _backend(tmp_path)

    def info(acc=None, cloud="kubernetes", cpus=None):
        return _ClusterInfo("c", "up", "X", 1, acc, None, 0.0, cloud=cloud, cpus=cpus)
    assert b.job_resources(info({"H100": 1})) == {"accelerators": {"H100": 0.5}}
    assert b.job_resources(info({"H200": 8})) == {"accelerators": {"H200": 8.0}}
    assert b.job_resources(info(cloud="slurm", cpus=2.0)) == {"cpus": "1"}
    assert b.job_resources(info(cloud="slurm", cpus=1.0)) == {"cpus": "1"}
    assert b.job_resources(info(cloud="aws", cpus=8.0)) is None
