"""The benchmarks' stand-in trainer (SIMULATION: it sleeps instead of training): its light-start
diagnostic variant must report what the default one reports, and start without json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from mcp_server.runtime.run_log import parse_result

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from standin import sleeping_train  # noqa: E402

CONSTANTS, VAL = "LEARNING_RATE = 0.04", "1.0 + random.Random(seed).gauss(0, 0.002)"


def _run(tmp_path: Path, light: bool, *flags: str) -> subprocess.CompletedProcess[str]:
    train = tmp_path / ("light.py" if light else "default.py")
    train.write_text(sleeping_train(CONSTANTS, VAL, 2.0, light_start=light))
    return subprocess.run([sys.executable, *flags, str(train)], capture_output=True, text=True, timeout=60,
                          env={"AUTORESEARCH_TIME_BUDGET": "0", "AUTORESEARCH_SEED": "7"}, check=True)


def test_the_light_stand_in_reports_what_the_default_one_reports(tmp_path):
    default, light = (parse_result(_run(tmp_path, lt).stdout) for lt in (False, True))
    assert default["val_bpb"] != 1.0 and default.get("device") == "simulation"
    default.pop("total_seconds")
    light.pop("total_seconds")
    assert light == default


def _imported(proc: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.split("|")[-1].strip() for line in proc.stderr.splitlines()}   # -X importtime's lines


def test_the_light_stand_in_starts_without_importing_json(tmp_path):
    light = _imported(_run(tmp_path, True, "-S", "-X", "importtime"))
    assert "random" in light and "json" not in light
    assert "json" in _imported(_run(tmp_path, False, "-X", "importtime"))
