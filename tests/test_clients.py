"""Real MCP clients nobody here wrote, against the real server over stdio: the MCP Inspector CLI
and a small client on the official TypeScript SDK (with its default 60 s request timeout), both
from npm (tests/js/package.json; .ci/run installs them with `npm ci`, and a test installs them
itself when they are missing, or skips saying that npm could not).

The TypeScript client runs a baseline, a wave longer than 90 s and a keep, once re-calling the
wait after each early return (as every client can) and once with resetTimeoutOnProgress (a
single wait call of more than 60 s, kept alive by progress). train.py is a stand-in there
(SIMULATION: it sleeps and prints a result) because what is measured is the client's timeout,
not training.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import npm_clients
import pytest
from conftest import harness_env

REPO = Path(__file__).resolve().parent.parent
JS = npm_clients.JS


def node_tool(name: str) -> Path:
    exe, why = npm_clients.tool(name)
    if exe is None:
        pytest.skip(why)
    return exe


def serve(workspace: Path, cache: Path, *extra: str) -> list[str]:
    # (no --log-level: the Inspector CLI takes that flag for itself wherever it appears)
    return [sys.executable, "-m", "mcp_server.cli", "serve", "--workspace", str(workspace), "--tag", "clients",
            "--profile", "cpu", "--cpu-slots", "1", "--time-budget", "30", "--cache-dir", str(cache), *extra]


def test_mcp_inspector_cli_lists_the_tools_and_calls_each_read_only_tool(tmp_path, cache):
    inspector = node_tool("mcp-inspector")
    ws = tmp_path / "research"
    env = harness_env(cache)

    def inspect(*args: str) -> dict:
        out = subprocess.run([str(inspector), "--cli", *serve(ws, cache), *args], cwd=REPO, env=env,
                             capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
        return json.loads(out.stdout)

    listed = {t["name"]: t for t in inspect("--method", "tools/list")["tools"]}
    assert len(listed) == 18 and sum(1 for t in listed.values() if t.get("outputSchema")) >= 17
    launched = inspect("--method", "tools/call", "--tool-name", "launch_experiment",
                       "--tool-arg", "description=inspector: baseline")
    exp_id = launched["structuredContent"]["experiments"][0]["id"]
    wave = inspect("--method", "tools/call", "--tool-name", "launch_wave", "--tool-arg",
                   "description=inspector: a wave", "axes={\"MATRIX_LR\": [0.02]}")
    wave_id = wave["structuredContent"]["wave_id"]
    read_only = sorted(n for n, t in listed.items() if t.get("annotations", {}).get("readOnlyHint"))
    assert {"get_gpu_info", "list_clusters", "get_experiment", "fetch_results", "leaderboard", "budget_status",
            "plot_progress", "analyze_wave", "session_digest"} <= set(read_only)
    for name in read_only:
        args = {"get_experiment": [f"experiment_id={exp_id}"], "analyze_wave": [f"wave_id={wave_id}"],
                "wait_for_experiments": [f"experiment_ids=[\"{exp_id}\"]", "timeout_s=1"]}.get(name, [])
        res = inspect("--method", "tools/call", "--tool-name", name, *(["--tool-arg", *args] if args else []))
        assert not res.get("isError"), (name, res)
        assert res.get("structuredContent") is not None or name == "plot_progress", name


@pytest.mark.parametrize("mode", ["recall", "reset"])
def test_typescript_sdk_client_finishes_a_wave_longer_than_its_request_timeout(tmp_path, cache, mode):
    node_tool("mcp-inspector")        # the same npm install brings the SDK
    ws = tmp_path / "research"
    # recall: the default cap (50 s) returns each wait before the SDK's 60 s; reset: one call may
    # block for the whole wave because progress restarts the SDK's timer
    extra = ["--max-wait-s", "300"] if mode == "reset" else []
    cfg = {"command": sys.executable, "args": serve(ws, cache, *extra)[1:], "workspace": str(ws), "mode": mode,
           "sleep_s": 24}
    out = subprocess.run(["node", str(JS / "sdk_client.mjs"), json.dumps(cfg)], cwd=REPO, env=harness_env(cache),
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    # every tool with an outputSchema (all but plot_progress, which returns an image) validated
    assert result["tools"] == 18 and result["validated"] >= 17 and result["schema_errors"] == [], result
    assert result["wave_seconds"] > 90, result["wave_seconds"]
    assert [status for _, status, _ in result["finished"]] == ["done"] * 4
    assert result["kept"] == result["best"] and result["kept_decision"] == "keep"
    if mode == "reset":
        assert result["wave_calls"] == 1 and result["longest_call_s"] > 60
    else:
        assert result["wave_calls"] >= 2 and result["longest_call_s"] < 60
    stamps = [p[0] for p in result["progress"]]
    gaps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    assert stamps and max(gaps) <= 15, gaps
