"""Every tool result stays within limits.MAX_RESULT_CHARS whatever the ledger's size: 10,000
finished experiments (seeded through the engine's ledger API, on three GPU types), one wide wave
(4 axes, 128 runs spread over six GPU types) and a run log of 200,000 awkward characters, served by
the real server over stdio. Each read tool is called with the arguments that make its answer
longest; a list that had to be cut says so and names the call that goes on."""

from __future__ import annotations

import itertools
import random
import time
from pathlib import Path

import pytest
from mcp_harness import seed_ledger, stdio_session

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.limits import MAX_RESULT_CHARS, TOOL_LEADERBOARD_ROWS, TOOL_LOG_PAGE_MAX, TOOL_PAGE_MAX
from mcp_server.domain.models import Experiment, Metrics, Status, Wave
from mcp_server.engine.facade import Engine

pytestmark = pytest.mark.anyio

N = 10_000
WIDE_AXES = {"MATRIX_LR": [0.02, 0.03, 0.04, 0.06], "DEPTH": [4, 6, 8, 10], "WARMUP_RATIO": [0.0, 0.05, 0.1, 0.2],
             "WINDOW_PATTERN": ["SSSL", "LLLL"]}
WIDE_GPUS = ["A10G", "L4", "A100", "H100", "H200", "B200"]
WIDE = "w0101"
LONG_LOG = "e0005"


def add_wide_wave(workspace, rng: random.Random) -> None:
    """128 runs: every cell of a 4x4x4x2 design once, each on one of six GPU types, plus the log."""
    eng = Engine(FleetConfig(workspace=workspace, tag="bench", profile="cpu", cpu_slots=2))
    ledger = eng.ledger
    try:
        cells = [dict(zip(WIDE_AXES, combo, strict=True)) for combo in itertools.product(*WIDE_AXES.values())]
        t0 = time.time()
        exps = [Experiment(id=f"e{N + 1 + k:05d}", description=f"wide wave cell {k}", wave_id=WIDE,
                           commit=f"{rng.getrandbits(160):040x}", code_hash=f"{k:040x}", parent_code_hash="0" * 40,
                           harness_hash="0" * 64, overrides=cell, seed=42, gpu_type=WIDE_GPUS[k % 6],
                           created_at=t0 + k) for k, cell in enumerate(cells)]
        ledger.insert_launch(exps, {e.id: "factorial" for e in exps},
                             Wave(id=WIDE, description="wide wave", kind="factorial",
                                  design={"axes": WIDE_AXES}, experiment_ids=[e.id for e in exps], created_at=t0))
        for e in exps:
            ledger.begin_attempt(e.id, 1, f"wide-{e.gpu_type}", e.gpu_type, 1, None,
                                 str(workspace / ".autoresearch" / "runs" / e.id / "a1"))
            ledger.finish_attempt(e.id, 1, Status.done, busy_seconds=300.0,
                                  metrics=Metrics(val_bpb=1.0 + rng.gauss(0, 0.01), num_steps=100))
        log = eng.get_experiment(LONG_LOG).log_path
    finally:
        ledger.close()
    assert log
    # quotes, backslashes and control characters: each one is several characters of JSON
    chunk = 'step 100 "loss" 3.21 \\ tab\there \x01\x02 ' + "é" * 4 + "\n"
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as f:
        f.write(chunk * (200_000 // len(chunk)))


async def test_every_read_result_stays_within_the_bound_at_10k_experiments(tmp_path):
    ws = tmp_path / "ws"
    seed_ledger(ws, N, random.Random(5), per_wave=100)
    add_wide_wave(ws, random.Random(6))
    args = ["-m", "mcp_server.cli", "serve", "--workspace", str(ws), "--tag", "bench", "--profile", "cpu",
            "--cpu-slots", "2"]
    sizes: dict[str, int] = {}
    async with stdio_session(args, tmp_path / "server.log") as client:
        async def call(label, tool, arguments=None, error=False):
            res = await client.call_tool(tool, arguments or {})
            assert res.is_error == error, (label, res.content[0].text[:500])
            text = "".join(getattr(c, "text", "") or "" for c in res.content)
            sizes[label] = len(text)
            return text if error else res.structured_content

        for tool in ("get_gpu_info", "list_clusters", "budget_status", "session_digest"):
            await call(tool, tool)
        page = await call("fetch_results", "fetch_results", {"limit": TOOL_PAGE_MAX})
        assert page["total"] == N + 128 and 0 < len(page["experiments"]) <= TOOL_PAGE_MAX
        assert page["next_offset"] == len(page["experiments"]) and f"offset={page['next_offset']}" in page["next_step"]
        await call("fetch_results done", "fetch_results", {"limit": TOOL_PAGE_MAX, "status": "done",
                                                           "offset": 5_000})
        board = await call("leaderboard", "leaderboard", {"limit": TOOL_LEADERBOARD_ROWS})
        assert set(board["leaderboard"]["by_gpu_type"]) == {"CPU", "H100", "H200", *WIDE_GPUS}
        cut = [n for n in board["leaderboard"]["notes"] if "size bound" in n]
        assert cut and "gpu_type=" in cut[0]       # the tables were cut, and the note says how to see one whole
        one = await call("leaderboard H100", "leaderboard", {"limit": TOOL_LEADERBOARD_ROWS, "gpu_type": "H100"})
        assert len(one["leaderboard"]["by_gpu_type"]["H100"]) >= 10

        wide = await call("analyze_wave wide", "analyze_wave", {"wave_id": WIDE})
        shown = set(wide["analysis"]["by_gpu_type"])
        assert shown and shown | set(wide.get("gpu_types_omitted", [])) == set(WIDE_GPUS)
        if wide.get("gpu_types_omitted"):
            assert "gpu_type=" in wide["next_step"]
        for gpu in WIDE_GPUS:
            alone = await call(f"analyze_wave wide {gpu}", "analyze_wave", {"wave_id": WIDE, "gpu_type": gpu})
            assert set(alone["analysis"]["by_gpu_type"]) == {gpu}
        await call("analyze_wave", "analyze_wave", {"wave_id": "w0050"})
        assert "it ran on: A100, A10G, B200" in await call("analyze_wave unknown type", "analyze_wave",
                                               {"wave_id": WIDE, "gpu_type": "CPU"}, error=True)

        detail = await call("get_experiment log", "get_experiment", {"experiment_id": LONG_LOG,
                                                                     "log_limit": TOOL_LOG_PAGE_MAX})
        assert detail["log"] and detail.get("next_log_offset") is None   # the tail, as much as fits
        head = await call("get_experiment log head", "get_experiment", {"experiment_id": LONG_LOG, "log_offset": 0,
                                                                        "log_limit": TOOL_LOG_PAGE_MAX})
        assert head["next_log_offset"] == len(head["log"])           # the next page starts where this one ended

        for detail_flag in (False, True):
            out = await call(f"wait wide detail={detail_flag}", "wait_for_experiments",
                             {"wave_id": WIDE, "detail": detail_flag})
            assert out["finished_count"] == 128 and out["omitted"] == 128 - len(out["finished"])
        await call("wait everything", "wait_for_experiments", {"experiment_ids": [f"e{i:04d}" for i in
                                                                                   range(1, 257)]})
        await call("plot_progress", "plot_progress")
        await call("unknown tool", "no_such_tool", error=True)
        await call("bad arguments", "fetch_results", {"limit": 10**6, "status": "nope", "offset": -1}, error=True)
        await call("unknown wave", "analyze_wave", {"wave_id": "w9999"}, error=True)

    print("\n".join(f"{k:<32} {v:>7,}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])))
    over = {k: v for k, v in sizes.items() if v > MAX_RESULT_CHARS}
    assert not over, f"results over {MAX_RESULT_CHARS:,} characters: {over}"
