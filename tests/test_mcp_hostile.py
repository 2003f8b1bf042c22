"""Hostile input through MCP: malformed, out-of-range, unknown, injected and limit-breaking calls
to the real server over stdio. Every one must come back as is_error with text that names the
problem and what to do instead, and none may change the ledger or the git repository."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from mcp_harness import err, git_state, ledger_dump, ok, serve_args, stdio_session

pytestmark = pytest.mark.anyio

GUIDANCE = re.compile(r"\b(call|valid|must|at most|at least|one of|give|use|available|fix|only|should|"
                      r"expected|omit|wait|limit|tear)\b", re.IGNORECASE)

INJECT = "x'; import os; os.system('touch /tmp/pwned') #"


def hostile_calls(done: str, crashed: str) -> list[tuple[str, dict[str, Any], list[str]]]:
    """(tool, arguments, substrings the error must contain)."""
    return [
        # unknown tools and arguments
        ("rm_rf", {}, ["Unknown tool", "launch_wave"]),
        ("get_gpu_info", {"verbose": True}, ["Unknown argument", "verbose"]),
        ("launch_wave", {"description": "x", "axes": {"DEPTH": [4, 6]}, "gpu": "H100"}, ["'gpu'", "gpu_type"]),
        # launch_experiment
        ("launch_experiment", {}, ["description", "Field required"]),
        ("launch_experiment", {"description": ""}, ["description"]),
        ("launch_experiment", {"description": "d" * 5000}, ["description", "200"]),
        ("launch_experiment", {"description": "x", "overrides": {"NOPE": 1}}, ["NOPE", "DEPTH"]),
        ("launch_experiment", {"description": "x", "overrides": {"depth": 4}}, ["overrides"]),
        ("launch_experiment", {"description": "x", "overrides": {"DEPTH": INJECT}}, ["DEPTH"]),
        ("launch_experiment", {"description": "x", "overrides": {"__import__('os')": 1}}, ["overrides"]),
        ("launch_experiment", {"description": "x", "replicates": 0}, ["replicates"]),
        ("launch_experiment", {"description": "x", "replicates": 10_000}, ["replicates"]),
        ("launch_experiment", {"description": "x", "seed": -1}, ["seed"]),
        ("launch_experiment", {"description": "x", "gpu_type": "H100; rm -rf /"}, ["gpu_type"]),
        ("launch_experiment", {"description": "x", "gpu_type": "H100"}, ["H100", "CPU"]),
        ("launch_experiment", {"description": "x", "source": "../../etc/passwd.py"}, ["source"]),
        ("launch_experiment", {"description": "x", "source": "variants/../../../etc/x.py"}, ["source", ".."]),
        ("launch_experiment", {"description": "x", "source": "/etc/passwd"}, ["source"]),
        ("launch_experiment", {"description": "x", "source": "nothere.py"}, ["nothere.py"]),
        ("launch_experiment", {"description": "x", "base": "e9999"}, ["e9999", "fetch_results"]),
        ("launch_experiment", {"description": "x", "base": "HEAD; reboot"}, ["base"]),
        ("launch_experiment", {"description": "x", "priority": 10**6}, ["priority"]),
        ("launch_experiment", {"description": "x", "source": "train.py", "base": done}, ["source", "base", "not both"]),
        # launch_wave
        ("launch_wave", {"description": "x", "axes": {}}, ["axes"]),
        ("launch_wave", {"description": "x", "axes": {f"A{i}": [1, 2] for i in range(5)}}, ["axes"]),
        ("launch_wave", {"description": "x", "axes": {"DEPTH": list(range(1, 10))}}, ["DEPTH"]),
        ("launch_wave", {"description": "x", "axes": {"DEPTH": [4, 4]}}, ["DEPTH", "twice"]),
        ("launch_wave", {"description": "x", "axes": {"DEPTH": 4}}, ["axes"]),
        ("launch_wave", {"description": "x", "axes": {"DEPTH": ["deep", "deeper"]}}, ["DEPTH"]),
        # promote
        ("promote", {"experiment_ids": [], "gpu_type": "CPU"}, ["experiment_ids"]),
        ("promote", {"experiment_ids": [done]}, ["gpu_type", "Field required"]),
        ("promote", {"experiment_ids": [crashed], "gpu_type": "CPU"}, [crashed, "done"]),
        ("promote", {"experiment_ids": [done], "gpu_type": "H200"},
         ["No slot of GPU type 'H200'", "Available: CPU", "choose one of those, or", "--simulate-tiers"]),
        ("promote", {"experiment_ids": [done], "gpu_type": "B200"}, ["B200", "CPU"]),
        # wait / cancel
        ("wait_for_experiments", {"wave_id": "w9999"}, ["w9999"]),
        ("wait_for_experiments", {"timeout_s": -5}, ["timeout_s"]),
        ("wait_for_experiments", {"until": "some"}, ["until", "'all'"]),
        ("cancel_experiments", {}, ["experiment_ids", "wave_id"]),
        ("cancel_experiments", {"experiment_ids": [done], "wave_id": "w0001"}, ["exactly one"]),
        ("cancel_experiments", {"experiment_ids": ["e9999"]}, ["e9999", "fetch_results"]),
        # decisions
        ("keep_experiment", {"experiment_id": "e9999"}, ["e9999", "fetch_results"]),
        ("keep_experiment", {"experiment_id": crashed}, [crashed, "crash", "only done"]),
        ("keep_experiment", {"experiment_id": "E0001; git push"}, ["experiment_id"]),
        ("discard_experiment", {"experiment_id": crashed}, [crashed]),
        # reads with bad arguments
        ("get_experiment", {"experiment_id": "../../etc/passwd"}, ["experiment_id"]),
        ("get_experiment", {"experiment_id": done, "log_limit": 10**9}, ["log_limit"]),
        ("fetch_results", {"status": "exploded"}, ["status", "'done'"]),
        ("fetch_results", {"limit": 0}, ["limit"]),
        ("fetch_results", {"offset": -1}, ["offset"]),
        ("fetch_results", {"wave_id": "w0999"}, ["w0999"]),
        ("leaderboard", {"gpu_type": "x" * 100}, ["gpu_type"]),
        # clusters and limits: the numbers must reach the model
        ("teardown_clusters", {}, ["names", "all_clusters"]),
        ("teardown_clusters", {"names": ["no-such-cluster"]}, ["no-such-cluster", "local-cpu0"]),
        ("teardown_clusters", {"names": ["local-cpu0"], "all_clusters": True}, ["exactly one"]),
        ("provision_clusters", {"count": 0}, ["count"]),
        ("provision_clusters", {"count": 1}, ["set when the server starts", "--cpu-slots", "--simulate-tiers",
                                              "--backend skypilot"]),
        ("launch_experiment", {"description": "over budget"}, ["GPU-hour budget", "0.001", "budget_status"]),
        ("launch_wave", {"description": "over budget", "axes": {"DEPTH": [4, 6]}}, ["GPU-hour budget"]),
    ]


async def test_hostile_calls_fail_with_guidance_and_change_nothing(tmp_path, cache):
    ws = tmp_path / "ws"
    args = serve_args(ws, cache, extra=["--max-clusters", "2", "--gpu-hour-budget", "0.001"])
    async with stdio_session(args, tmp_path / "server.log") as client:
        done = (await ok(client, "launch_experiment", {"description": "baseline"}))["experiments"][0]["id"]
        crashed = (await ok(client, "launch_experiment", {"description": "head dim zero",
                                                          "overrides": {"HEAD_DIM": 0}}))["experiments"][0]["id"]
        out = await ok(client, "wait_for_experiments", {"timeout_s": 300})
        status = {e["id"]: e["status"] for e in out["finished"]}
        assert status == {done: "done", crashed: "crash"}, out
        budget = await ok(client, "budget_status")
        assert budget["gpu_hours_spent"] >= 0.001  # the budget is spent: valid launches are refused

        before = (ledger_dump(ws), git_state(ws))
        calls = hostile_calls(done, crashed)
        assert len(calls) >= 30
        failures = []
        for tool, arguments, needles in calls:
            text = await err(client, tool, arguments)
            missing = [n for n in needles if n not in text]
            if missing or not GUIDANCE.search(text) or len(text) > 4000:
                failures.append(f"{tool}({str(arguments)[:80]}): missing {missing} in: {text[:300]}")
        assert not failures, "\n".join(failures)
        assert (ledger_dump(ws), git_state(ws)) == before
        assert not Path("/tmp/pwned").exists()
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log, "a hostile call reached an unexpected exception"


async def test_unexpected_failure_is_reported_and_logged(tmp_path, cache):
    """A failure nobody anticipated (here: the workspace's git repository vanishes under the server)
    still reaches the model as an error saying what failed and what to do, the traceback goes to
    the server's stderr, and the server keeps serving."""
    import shutil

    ws = tmp_path / "ws"
    log = tmp_path / "server.log"
    async with stdio_session(serve_args(ws, cache), log) as client:
        await ok(client, "list_clusters")
        shutil.rmtree(ws / ".git")
        text = await err(client, "launch_experiment", {"description": "after the repo vanished"})
        assert "launch_experiment" in text and GUIDANCE.search(text), text
        clusters = await ok(client, "list_clusters")  # still serving
        assert clusters["total"] == 2
    assert "Traceback" in log.read_text()


async def test_second_server_on_a_workspace_refuses_in_one_line(tmp_path, cache):
    """One engine per workspace: a second server says why in one line and exits; the first serves on."""
    import subprocess
    import sys

    from mcp_harness import REPO

    ws = tmp_path / "ws"
    async with stdio_session(serve_args(ws, cache), tmp_path / "server.log") as client:
        await ok(client, "list_clusters")
        proc = subprocess.run([sys.executable, *serve_args(ws, cache)], cwd=REPO, input="", capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 1 and proc.stdout == ""
        assert "cannot serve: Another engine" in proc.stderr and "Traceback" not in proc.stderr
        assert (await ok(client, "list_clusters"))["total"] == 2
