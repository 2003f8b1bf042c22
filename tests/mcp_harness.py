"""The scripted MCP harness's plumbing: start the REAL server (`python -m mcp_server.cli serve`) as a
subprocess and talk to it over stdio or streamable HTTP with the SDK's real client; read the real
ledger and git state to check what a call did (or did not) change."""

from __future__ import annotations

import base64
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.models import Experiment, Metrics, Status, Wave
from mcp_server.engine.facade import Engine

REPO = Path(__file__).resolve().parent.parent


def serve_args(workspace: Path, cache: str | Path, *, tag: str = "t", slots: int = 2, budget: float = 2.0,
               extra: list[str] | None = None) -> list[str]:
    return ["-m", "mcp_server.cli", "serve", "--workspace", str(workspace), "--tag", tag, "--backend", "local",
            "--profile", "cpu", "--cpu-slots", str(slots), "--time-budget", str(budget),
            "--cache-dir", str(cache), "--max-wait-s", "900", *(extra or [])]
    # (a long cap, as .mcp.json gives Claude Code: these tests wait in one call; test_mcp_waits and
    # test_clients cover the default cap, whose early returns a client must follow)


@asynccontextmanager
async def stdio_session(args: list[str], log_path: Path) -> AsyncIterator[Client]:
    params = StdioServerParameters(command=sys.executable, args=args, cwd=str(REPO))
    with open(log_path, "a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=600) as client:
            yield client


def pct(values: list[float], q: float) -> float:
    """The q-quantile of `values` (nearest rank), as the benchmarks report p50 / p95."""
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def wait_until_answers(url: str, proc: subprocess.Popen, timeout_s: float = 60.0) -> bool:
    """Poll `url` until it answers 2xx (True); False once `proc` exited or `timeout_s` passed."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            httpx.get(url, timeout=2).raise_for_status()
            return True
        except httpx.HTTPError:
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@asynccontextmanager
async def http_server(args: list[str], log_path: Path, port: int, env: dict[str, str] | None = None,
                      startup_s: float = 60.0) -> AsyncIterator[subprocess.Popen]:
    """Start `serve --transport http` and wait until its port accepts connections."""
    with open(log_path, "a", encoding="utf-8") as errlog:
        proc = subprocess.Popen([sys.executable, *args], cwd=str(REPO), stdin=subprocess.DEVNULL,
                                stdout=errlog, stderr=errlog, env={**os.environ, **(env or {})})
        try:
            deadline = time.monotonic() + startup_s
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"server exited with {proc.returncode}; see {log_path}")
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                        break
                except OSError as e:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"server did not listen on {port} in {startup_s}s; see {log_path}") from e
                    await anyio.sleep(0.2)
            yield proc
        finally:
            stop(proc)


def stop(proc: subprocess.Popen, grace_s: float = 20.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def ok(client: Client, tool: str, args: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    """Call a tool that must succeed; return its structured content."""
    res = await client.call_tool(tool, args or {}, **kw)
    assert not res.is_error, f"{tool}({args}) failed: {res.content[0].text if res.content else res}"
    assert res.structured_content is not None, f"{tool} returned no structured content"
    # the text copy carries the same JSON for clients that ignore structured content
    assert json.loads(res.content[0].text) == res.structured_content
    return res.structured_content


async def err(client: Client, tool: str, args: dict[str, Any] | None = None) -> str:
    """Call a tool that must fail; return the error text."""
    res = await client.call_tool(tool, args or {})
    assert res.is_error, f"{tool}({args}) should have failed, got {res.structured_content}"
    assert res.content and res.content[0].type == "text"
    return res.content[0].text


def png_of(result: Any) -> bytes:
    images = [c for c in result.content if c.type == "image"]
    assert len(images) == 1 and images[0].mime_type == "image/png"
    return base64.b64decode(images[0].data)


# -- a big ledger, written through the engine's ledger API ----------------------------------------

GPU_TYPES = ["CPU", "CPU", "CPU", "H100", "H200"]


def seed_ledger(workspace: Path, n: int, rng: random.Random, per_wave: int = 100) -> None:
    """n finished experiments, written through the Ledger API: launch -> attempt -> result."""
    engine = Engine(FleetConfig(workspace=workspace, tag="bench", profile="cpu", cpu_slots=2))
    ledger = engine.ledger
    try:
        hashes = [f"{rng.getrandbits(160):040x}" for _ in range(n // 10 + 1)]
        t0 = time.time() - n * 10
        for w in range(0, n, per_wave):
            wave_id = f"w{w // per_wave + 1:04d}"
            ids = [f"e{i + 1:04d}" for i in range(w, min(n, w + per_wave))]
            exps = []
            for k, eid in enumerate(ids):
                lr = rng.choice([0.02, 0.03, 0.04, 0.06])
                exps.append(Experiment(
                    id=eid, description=f"wave {wave_id} cell MATRIX_LR={lr} DEPTH={4 + k % 4}", wave_id=wave_id,
                    commit=f"{rng.getrandbits(160):040x}", code_hash=rng.choice(hashes), parent_code_hash=hashes[0],
                    harness_hash="0" * 64, overrides={"MATRIX_LR": lr, "DEPTH": 4 + k % 4}, seed=42 + k % 3,
                    gpu_type=None, created_at=t0 + int(eid[1:]) * 10))
            wave = Wave(id=wave_id, description=f"bench wave {wave_id}", kind="factorial",
                        design={"axes": {"MATRIX_LR": [0.02, 0.03, 0.04, 0.06], "DEPTH": [4, 5, 6, 7]}},
                        experiment_ids=ids, created_at=t0 + w * 10)
            ledger.insert_launch(exps, {e.id: "factorial" for e in exps}, wave)
            for e in exps:
                gpu = rng.choice(GPU_TYPES)
                ledger.begin_attempt(e.id, 1, f"bench-{gpu.lower()}-{rng.randrange(8)}", gpu, 1, None,
                                     str(workspace / ".autoresearch" / "runs" / e.id / "a1"))
                roll = rng.random()
                if roll < 0.9:
                    speed = {"CPU": 1.0, "H100": 30.0, "H200": 40.0}[gpu]
                    m = Metrics(val_bpb=1.0 + rng.gauss(0, 0.01) - 0.05 * (gpu != "CPU"), training_seconds=300.0,
                                total_seconds=330.0, peak_vram_mb=40000.0, num_steps=int(30 * speed),
                                total_tokens_M=15.0 * speed, num_params_M=50.0, depth=e.overrides["DEPTH"],
                                device=gpu)
                    ledger.finish_attempt(e.id, 1, Status.done, metrics=m, busy_seconds=330.0)
                else:
                    ledger.finish_attempt(e.id, 1, rng.choice([Status.crash, Status.oom, Status.nan]),
                                          error="RuntimeError: synthetic failure", busy_seconds=20.0)
    finally:
        ledger.close()


# -- state of the workspace -----------------------------------------------------------------------


def git(workspace: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=workspace, check=True, capture_output=True, text=True).stdout.strip()


def git_state(workspace: Path) -> dict[str, str]:
    return {
        "refs": git(workspace, "for-each-ref", "--format=%(refname) %(objectname)"),
        "head": git(workspace, "symbolic-ref", "-q", "HEAD"),
        "head_commit": git(workspace, "rev-parse", "HEAD"),
        "status": git(workspace, "status", "--porcelain"),
        "train_py": (workspace / "train.py").read_text(),
    }


def ledger_path(workspace: Path) -> Path:
    return workspace / ".autoresearch" / "ledger.db"


def ledger_dump(workspace: Path) -> dict[str, Any]:
    from mcp_server.store.ledger import Ledger

    ledger = Ledger(ledger_path(workspace))
    try:
        return ledger.dump()
    finally:
        ledger.close()


def ledger_experiments(workspace: Path) -> dict[str, Any]:
    from mcp_server.store.ledger import Ledger

    ledger = Ledger(ledger_path(workspace))
    try:
        return {e.id: e for e in ledger.all_experiments()}
    finally:
        ledger.close()
