"""The scripted MCP harness: a real MCP client drives the real server process through a whole
research session on CPU (local backend, cpu profile, a 2 s budget), over stdio, and once more over
streamable HTTP. It checks the structured outputs of every step, then the ledger, results.tsv and
the git branch the session left behind."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from mcp_harness import (
    REPO,
    err,
    free_port,
    git,
    http_server,
    ledger_experiments,
    ok,
    png_of,
    serve_args,
    stdio_session,
)
from test_server_contract import ACTING, READ_ONLY

from mcp_server.domain.models import Decision, Status

pytestmark = pytest.mark.anyio

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


class Progress:
    def __init__(self) -> None:
        self.events: list[tuple[float, float | None, str | None]] = []
        self.heartbeats: list[tuple[float, float | None, str | None]] = []

    async def __call__(self, progress: float, total: float | None, message: str | None) -> None:
        # one event per finished experiment ("e0001 done ..."); the wait's heartbeats ("1/2 finished,
        # ...", sent while it blocks) are kept apart
        if message and re.match(r"^e\d{4,} ", message):
            self.events.append((progress, total, message))
        else:
            self.heartbeats.append((progress, total, message))


async def wait_all(client, progress: Progress | None = None, **args: Any) -> dict[str, Any]:
    out = await ok(client, "wait_for_experiments", {"timeout_s": 300, **args}, progress_callback=progress)
    assert out["still_running"] == [] and out["timed_out"] is False, out
    return out


async def run_workflow(client, workspace: Path) -> dict[str, Any]:
    """Everything a research session does, asserting each structured result. Returns the ids."""
    tools = await client.list_tools()
    assert {t.name for t in tools.tools} == READ_ONLY | ACTING

    clusters = await ok(client, "list_clusters")
    assert clusters["total"] == 2 and {c["gpu_type"] for c in clusters["clusters"]} == {"CPU"}
    info = await ok(client, "get_gpu_info")
    assert [t["gpu_type"] for t in info["gpu_types"]] == ["CPU"] and info["gpu_types"][0]["clusters"] == 2

    # 1. baseline with replicates, progress notifications as each finishes
    base = await ok(client, "launch_experiment", {"description": "baseline", "replicates": 2})
    base_ids = [e["id"] for e in base["experiments"]]
    assert base_ids == ["e0001", "e0002"] and {e["status"] for e in base["experiments"]} <= {"queued", "running"}
    assert "wait_for_experiments" in base["next_step"] and "e0001" in base["next_step"]
    progress = Progress()
    out = await wait_all(client, progress, experiment_ids=base_ids)
    assert sorted(e["id"] for e in out["finished"]) == base_ids
    # one GPU type: said once; each row carries its value, verdict and delta (full verdicts with detail=true)
    assert out["gpu_type"] == "CPU" and all("gpu_type" not in e for e in out["finished"])
    assert all(e["status"] == "done" and e["value"] > 0 and "verdict" in e for e in out["finished"])
    assert [p[0] for p in progress.events] == [1, 2] and all(p[1] == 2 for p in progress.events)
    assert all(m and ("e0001" in m or "e0002" in m) and "val_bpb" in m for _, _, m in progress.events)
    assert "verdicts" not in out and out["metric"] == "val_bpb (lower is better)"

    # 2. a factorial wave with a control
    wave = await ok(client, "launch_wave", {"description": "lr screen", "axes": {"MATRIX_LR": [0.02, 0.08]},
                                            "include_control": True})
    assert wave["kind"] == "factorial" and wave["design"]["axes"] == {"MATRIX_LR": [0.02, 0.08]}
    assert (len(wave["experiments"]) == 3
            and sorted(e.get("overrides", {}).get("MATRIX_LR", 0) for e in wave["experiments"]) == [0, 0.02, 0.08])
    assert f"wave_id='{wave['wave_id']}'" in wave["next_step"]
    progress = Progress()
    out = await wait_all(client, progress, wave_id=wave["wave_id"])
    assert len(out["finished"]) == 3 and len(progress.events) == 3
    cells = [e for e in out["finished"] if e.get("overrides", {})]
    assert all(e["status"] == "done" for e in cells)
    assert all(e["verdict"] in {"improvement", "within_noise", "worse"} for e in cells)
    notes = [e["note"] for e in cells if e.get("note")]
    assert notes and all("threshold" in n and "noise" in n and "seeds of e000" in n for n in notes)
    full = await ok(client, "wait_for_experiments", {"wave_id": wave["wave_id"], "detail": True})
    verdicts = {v["experiment_id"]: v for v in full["verdicts"]}
    assert all(verdicts[e["id"]]["reference_id"] is not None and verdicts[e["id"]]["noise"] is not None for e in cells)
    assert all(verdicts[e["id"]]["delta"] == e["delta"] and verdicts[e["id"]]["verdict"] == e["verdict"] for e in cells)
    best = min(cells, key=lambda e: e["value"])
    other = max(cells, key=lambda e: e["value"])

    # the wave's statistics, computed by the server (no hand arithmetic)
    analysis = (await ok(client, "analyze_wave", {"wave_id": wave["wave_id"]}))["analysis"]
    cpu = analysis["by_gpu_type"]["CPU"]
    (lr,) = cpu["axes"]
    assert lr["axis"] == "MATRIX_LR" and [lv["level"] for lv in lr["levels"]] == [0.02, 0.08]
    assert all(lv["runs"] == 1 and lv["se"] is not None for lv in lr["levels"])   # the baseline measured noise
    assert cpu["control"]["runs"] == 1 and cpu["balanced"] and "Holm" in analysis["method"]
    assert cpu["best_cell"]["overrides"] == best["overrides"] and "chance alone" in cpu["chance"]
    base_wave = (await ok(client, "get_experiment", {"experiment_id": base["experiments"][0]["id"]}))
    base_wave = base_wave["experiment"]["wave_id"]      # the replicates form a wave of their own
    refused = await err(client, "analyze_wave", {"wave_id": base_wave})
    assert "not a factorial" in refused

    # pagination: 5 experiments, pages of 2
    page = await ok(client, "fetch_results", {"limit": 2})
    assert page["total"] == 5 and [e["id"] for e in page["experiments"]] == ["e0001", "e0002"]
    assert page["next_offset"] == 2 and "offset=2" in page["next_step"]
    last = await ok(client, "fetch_results", {"limit": 2, "offset": 4})
    assert [e["id"] for e in last["experiments"]] == ["e0005"] and last.get("next_offset") is None
    in_wave = await ok(client, "fetch_results", {"wave_id": wave["wave_id"], "status": "done"})
    assert in_wave["total"] == 3

    board = await ok(client, "leaderboard", {"limit": 10})
    rows = board["leaderboard"]["by_gpu_type"]["CPU"]
    assert rows and rows[0]["rank"] == 1 and board["leaderboard"]["noise_floor"]["CPU"] is not None
    assert [r["val_bpb"] for r in rows] == sorted(r["val_bpb"] for r in rows)

    # 3. promote the best cell (same CPU tier here) with replicates
    promo = await ok(client, "promote", {"experiment_ids": [best["id"]], "gpu_type": "CPU", "replicates": 2})
    assert promo["kind"] == "promotion" and len(promo["experiments"]) >= 2
    assert all(e.get("overrides", {}) == best.get("overrides", {})
               for e in promo["experiments"] if e.get("overrides", {}))
    out = await wait_all(client, wave_id=promo["wave_id"])
    assert all(e["status"] == "done" for e in out["finished"])

    # 4. log paging, one experiment in full
    detail = await ok(client, "get_experiment", {"experiment_id": best["id"], "log_limit": 600})
    assert detail["experiment"]["id"] == best["id"] and detail["experiment"]["commit"]
    assert "RESULT_JSON" in detail["log"] and len(detail["log"]) <= 600 and detail.get("next_log_offset") is None
    assert detail["verdict"]["experiment_id"] == best["id"]
    head = await ok(client, "get_experiment", {"experiment_id": best["id"], "log_offset": 0, "log_limit": 100})
    assert head["log_offset"] == 0 and head["next_log_offset"] == 100 and "log_offset=100" in head["next_step"]

    # 5. decisions: keep moves the branch, discard does not
    branch_before = git(workspace, "rev-parse", "autoresearch/t")
    kept = await ok(client, "keep_experiment", {"experiment_id": best["id"], "reason": "best of the lr screen"})
    assert kept["experiment"]["decision"] == "keep" and kept["branch"] == "autoresearch/t"
    assert git(workspace, "rev-parse", "autoresearch/t") == kept["commit"] != branch_before
    assert f"MATRIX_LR = {best['overrides']['MATRIX_LR']}" in (workspace / "train.py").read_text()
    dropped = await ok(client, "discard_experiment", {"experiment_id": other["id"]})
    assert dropped["experiment"]["decision"] == "discard"
    assert git(workspace, "rev-parse", "autoresearch/t") == kept["commit"]

    # 6. cancel a queued/running experiment
    doomed = await ok(client, "launch_experiment", {"description": "to cancel", "overrides": {"DEPTH": 4}})
    doomed_id = doomed["experiments"][0]["id"]
    cancelled = await ok(client, "cancel_experiments", {"experiment_ids": [doomed_id, other["id"]]})
    assert {e["id"]: e["status"] for e in cancelled["cancelled"]} == {doomed_id: "cancelled", other["id"]: "done"}
    assert cancelled["cancelled_count"] == 1           # a finished one is listed as it is, not counted
    out = await wait_all(client, experiment_ids=[doomed_id])
    assert out["finished"][0]["status"] == "cancelled"

    # 7. the picture and the money
    pic = await client.call_tool("plot_progress", {})
    assert not pic.is_error and png_of(pic).startswith(PNG_MAGIC)
    assert (workspace / "progress.png").read_bytes() == png_of(pic)
    assert "1 kept" in pic.content[0].text
    budget = await ok(client, "budget_status")
    assert budget["gpu_hours_spent"] > 0 and budget["experiments_live"] == 0 and budget["clusters_alive"] == 2

    # 8. the research memory an agent reads after a compaction
    digest = await ok(client, "session_digest")
    assert digest["chars"] == len(digest["text"]) <= 10_000 and digest["experiments"] == 8
    assert best["id"] in digest["text"] and "best of the lr screen" in digest["text"]
    assert "MATRIX_LR: tried 0.02, 0.08" in digest["text"] and "CPU: noise" in digest["text"]
    return {"best": best["id"], "other": other["id"], "cancelled": doomed_id, "kept_commit": kept["commit"],
            "promoted": [e["id"] for e in promo["experiments"]], "digest": digest["text"]}


def check_session_left_behind(workspace: Path, ids: dict[str, Any]) -> None:
    exps = ledger_experiments(workspace)
    assert all(e.status not in (Status.queued, Status.running) for e in exps.values())
    assert exps[ids["best"]].decision == Decision.keep and exps[ids["other"]].decision == Decision.discard
    assert exps[ids["cancelled"]].status == Status.cancelled
    assert all(exps[i].status == Status.done for i in ids["promoted"])
    assert git(workspace, "rev-parse", "autoresearch/t") == ids["kept_commit"] == exps[ids["best"]].commit
    assert git(workspace, "symbolic-ref", "HEAD") == "refs/heads/autoresearch/t"
    assert git(workspace, "rev-parse", f"refs/autoresearch/experiments/{ids['best']}") == exps[ids["best"]].commit

    with open(workspace / ".autoresearch" / "results.tsv", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    by_id = {r["id"]: r for r in rows}
    assert set(by_id) == set(exps)  # every experiment is terminal, so every one is exported
    assert by_id[ids["best"]]["decision"] == "keep" and by_id[ids["best"]]["status"] == "keep"
    assert float(by_id[ids["best"]]["val_bpb"]) == pytest.approx(exps[ids["best"]].metrics.val_bpb, abs=1e-6)
    assert by_id[ids["cancelled"]]["status"] == "cancelled" and by_id[ids["best"]]["gpu"] == "CPU"


async def test_workflow_over_stdio(tmp_path, cache):
    ws = tmp_path / "ws"
    async with stdio_session(serve_args(ws, cache), tmp_path / "server.log") as client:
        ids = await run_workflow(client, ws)
    check_session_left_behind(ws, ids)
    assert "Traceback" not in (tmp_path / "server.log").read_text()

    # a restarted server gives the same digest, byte for byte (built from the ledger alone)
    async with stdio_session(serve_args(ws, cache), tmp_path / "server2.log") as client:
        assert (await ok(client, "session_digest"))["text"] == ids["digest"]

    # the CLI reads the same ledger once the server is gone
    status = cli(["status", "--workspace", str(ws)])
    assert "branch autoresearch/t" in status and "cancelled 1" in status and "best on CPU" in status
    (ws / "progress.png").unlink()
    report = cli(["report", "--workspace", str(ws)])
    assert "== CPU" in report and ids["best"] in report and (ws / "progress.png").exists()
    assert (ws / "results.tsv").read_text() == (ws / ".autoresearch" / "results.tsv").read_text()


def cli(args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", "mcp_server.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


async def test_workflow_over_streamable_http(tmp_path, cache):
    from mcp import Client

    ws = tmp_path / "ws"
    port = free_port()
    args = serve_args(ws, cache, extra=["--transport", "http", "--port", str(port)])
    async with (http_server(args, tmp_path / "server.log", port),
                Client(f"http://127.0.0.1:{port}/mcp", read_timeout_seconds=600) as client):
        ids = await run_workflow(client, ws)
    check_session_left_behind(ws, ids)


def test_stdout_carries_only_the_protocol(tmp_path, cache):
    """In stdio mode every byte on stdout is JSON-RPC, even while training runs (child processes)
    and the engine log: Claude Code would drop the server on a stray print."""
    requests = [
        {"jsonrpc": "2.0", "id": 1, "method": "initialize",
         "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                    "clientInfo": {"name": "raw", "version": "0"}}},
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
        {"jsonrpc": "2.0", "id": 2, "method": "tools/call",
         "params": {"name": "launch_experiment", "arguments": {"description": "stdout check"}}},
        {"jsonrpc": "2.0", "id": 3, "method": "tools/call",
         "params": {"name": "wait_for_experiments", "arguments": {"timeout_s": 300}}},
        {"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "plot_progress", "arguments": {}}},
    ]
    args = serve_args(tmp_path / "ws", cache, budget=1.0, extra=["--log-level", "DEBUG"])
    with open(tmp_path / "server.log", "w") as server_log:  # the child holds its own copy of the fd
        proc = subprocess.Popen([sys.executable, *args], cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=server_log, text=True)
    responses: dict[int, dict] = {}
    lines: list[str] = []
    try:
        for req in requests:
            proc.stdin.write(json.dumps(req) + "\n")
            proc.stdin.flush()
            if "id" not in req:
                continue
            while req["id"] not in responses:
                line = proc.stdout.readline()
                assert line, f"server closed stdout; see {tmp_path / 'server.log'}"
                lines.append(line)
                msg = json.loads(line)  # every line is one JSON-RPC message
                assert msg.get("jsonrpc") == "2.0"
                if "id" in msg:
                    responses[msg["id"]] = msg
        proc.stdin.close()
        rest = proc.stdout.read()
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rest == ""
    assert proc.returncode == 0
    waited = responses[3]["result"]["structuredContent"]
    assert [e["status"] for e in waited["finished"]] == ["done"]
    assert responses[4]["result"]["content"][1]["type"] == "image"
    log = (tmp_path / "server.log").read_text()
    assert "engine started" in log  # the log went to stderr
