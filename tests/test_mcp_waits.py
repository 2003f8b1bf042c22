"""Waits over MCP that every client survives, and cluster tools that tell the truth on the local
backend: the REAL server over stdio, real CPU training (cpu profile), a real MCP client.

* one wait call blocks at most the server's cap (`serve --max-wait-s`) and says how to go on;
  while it blocks it sends progress at least every HEARTBEAT_S (clients reset their request
  timeout on progress);
* in a mixed fleet, replicates launched without gpu_type all go to one GPU type, and the result
  says which;
* provision_clusters / teardown_clusters on the local backend say what is true and what to do.
"""

from __future__ import annotations

import time

import pytest
from mcp_harness import ok, serve_args, stdio_session

from mcp_server.domain.limits import HEARTBEAT_S

pytestmark = pytest.mark.anyio


async def test_a_capped_wait_returns_early_says_how_to_continue_and_sends_progress(tmp_path, cache):
    ws = tmp_path / "ws"
    args = serve_args(ws, cache, slots=1, budget=12.0, extra=["--max-wait-s", "5"])   # a run takes > 12 s
    async with stdio_session(args, tmp_path / "server.log") as client:
        [exp] = (await ok(client, "launch_experiment", {"description": "baseline"}))["experiments"]
        stamps: list[float] = []

        async def progress(done: float, total: float | None, message: str | None) -> None:
            stamps.append(time.monotonic())

        calls, t0 = 0, time.monotonic()
        while True:
            calls += 1
            started = time.monotonic()
            res = await ok(client, "wait_for_experiments", {"experiment_ids": [exp["id"]], "timeout_s": 600},
                           progress_callback=progress)
            assert res["waited_s"] <= 5 + 2 and time.monotonic() - started < 5 + 5
            if not res["still_running"]:
                break
            # an early return names the cap and the exact call to make next
            assert res["timed_out"] and "cap of 5 s" in res["next_step"] and "--max-wait-s" in res["next_step"]
            assert f"experiment_ids=['{exp['id']}']" in res["next_step"]
            assert calls < 60
        assert res["finished"][0]["status"] == "done" and calls >= 2
        gaps = [b - a for a, b in zip([t0, *stamps], stamps, strict=False)]
        assert stamps and max(gaps) < HEARTBEAT_S + 5, gaps


async def test_mixed_fleet_replicates_stay_on_one_gpu_type(tmp_path, cache):
    ws = tmp_path / "ws"
    args = serve_args(ws, cache, slots=3, budget=1.0, extra=["--simulate-tiers", "H100,H100,H200"])
    async with stdio_session(args, tmp_path / "server.log") as client:
        res = await ok(client, "launch_experiment", {"description": "baseline", "replicates": 3})
        assert {e["gpu_type"] for e in res["experiments"]} == {"H100"}
        assert "All of them run on H100" in res["next_step"]
        ids = [e["id"] for e in res["experiments"]]
        done = await ok(client, "wait_for_experiments", {"experiment_ids": ids})
        while done["still_running"]:
            done = await ok(client, "wait_for_experiments", {"experiment_ids": ids})
        assert done["gpu_type"] == "H100" and all("gpu_type" not in e for e in done["finished"])  # said once
        # a named type is kept, and a wave without one goes to one type too
        one = await ok(client, "launch_experiment", {"description": "on h200", "gpu_type": "H200", "replicates": 2})
        assert {e["gpu_type"] for e in one["experiments"]} == {"H200"} and "All of them" not in one["next_step"]
        wave = await ok(client, "launch_wave", {"description": "lr", "axes": {"MATRIX_LR": [0.03, 0.05]}})
        assert wave["design"]["gpu_type"] == "H100" and all("gpu_type" not in e for e in wave["experiments"])
        await ok(client, "cancel_experiments", {"wave_id": wave["wave_id"]})


async def test_local_cluster_tools_say_what_is_true(tmp_path, cache):
    ws = tmp_path / "ws"
    async with stdio_session(serve_args(ws, cache), tmp_path / "server.log") as client:
        refused = await client.call_tool("provision_clusters", {"count": 1})
        assert refused.is_error
        text = refused.content[0].text
        assert "set when the server starts" in text and "--cpu-slots" in text and "--backend skypilot" in text
        down = await ok(client, "teardown_clusters", {"all_clusters": True})
        assert down["removed"] == [] and down["clusters_left"] == 2
        assert "local slots are this machine's own" in down["next_step"]
