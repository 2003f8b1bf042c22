"""Results stay compact with a big ledger: 1,000 finished experiments in waves of 100 (seeded
through the engine's ledger API), served by the real server over stdio. Long lists are capped or
paginated with an explicit next call, and no result comes near Claude Code's ~10k-token warning."""

from __future__ import annotations

import random

import pytest
from mcp_harness import ok, png_of, seed_ledger, stdio_session

pytestmark = pytest.mark.anyio

MAX_CHARS = 30_000  # ~7.5k tokens


async def test_results_stay_compact_and_paginate(tmp_path):
    ws = tmp_path / "ws"
    seed_ledger(ws, 1000, random.Random(1), per_wave=100)
    args = ["-m", "mcp_server.cli", "serve", "--workspace", str(ws), "--tag", "bench", "--profile", "cpu",
            "--cpu-slots", "2"]
    async with stdio_session(args, tmp_path / "server.log") as client:
        async def call(tool, arguments=None):
            res = await client.call_tool(tool, arguments or {})
            assert not res.is_error, res.content[0].text
            assert len(res.content[0].text) < MAX_CHARS, f"{tool}: {len(res.content[0].text)} chars"
            return res

        out = (await call("wait_for_experiments", {"wave_id": "w0003"})).structured_content
        assert out["finished_count"] == 100 and len(out["finished"]) == 30 and out["omitted"] == 70
        assert all(e["verdict"] for e in out["finished"]) and "verdicts" not in out   # on each row
        full = (await call("wait_for_experiments", {"wave_id": "w0003", "detail": True})).structured_content
        assert [v["experiment_id"] for v in full["verdicts"]] == [e["id"] for e in full["finished"]]
        failed = [e for e in out["finished"] if e["status"] != "done"]
        done = sorted(e["value"] for e in out["finished"] if e["status"] == "done")
        assert failed and done  # failures are always shown, then the best results
        all_done, offset = [], 0
        while offset is not None:          # pages stop at the result's size bound: follow next_offset
            page = await ok(client, "fetch_results", {"wave_id": "w0003", "status": "done", "limit": 50,
                                                      "offset": offset})
            all_done += [e["val_bpb"] for e in page["experiments"]]
            offset = page.get("next_offset")
        all_done.sort()
        assert done == all_done[: len(done)]
        assert "leaderboard" in out["next_step"] and "fetch_results(wave_id='w0003', status='done')" in out["next_step"]

        idle = (await call("wait_for_experiments")).structured_content
        assert idle["finished"] == [] and idle["still_running"] == [] and "Nothing to wait for" in idle["next_step"]

        page = (await call("fetch_results", {"limit": 50})).structured_content
        n = len(page["experiments"])
        assert page["total"] == 1000 and 0 < n <= 50 and page["next_offset"] == n and f"offset={n}" in page["next_step"]

        board = (await call("leaderboard", {"limit": 25})).structured_content["leaderboard"]
        assert set(board["by_gpu_type"]) == {"CPU", "H100", "H200"}
        for rows in board["by_gpu_type"].values():
            assert 0 < len(rows) <= 25 and all(len(r.get("experiment_ids", [])) <= 5 for r in rows)

        info = (await call("get_gpu_info")).structured_content
        steps = {t["gpu_type"]: t["measured"]["mean_steps"] for t in info["gpu_types"] if t["measured"]}
        assert steps["H200"] > steps["H100"] > steps["CPU"]  # measured throughput shows the faster tier

        wave = (await call("analyze_wave", {"wave_id": "w0003"})).structured_content
        analysis = wave["analysis"]   # every type, or as many as the size bound holds and the rest named
        assert set(analysis["by_gpu_type"]) | set(wave.get("gpu_types_omitted", [])) == {"CPU", "H100", "H200"}
        assert all(len(g["cells"]) <= 8 for g in analysis["by_gpu_type"].values())
        digest = (await call("session_digest")).structured_content
        assert digest["experiments"] == 1000 and digest["chars"] <= 10_000

        await call("get_experiment", {"experiment_id": "e0500"})
        await call("budget_status")
        pic = await client.call_tool("plot_progress", {})
        assert png_of(pic).startswith(b"\x89PNG") and "1000 experiments" in pic.content[0].text
