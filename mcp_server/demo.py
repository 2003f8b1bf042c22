"""`autoresearch-fleet demo`: a real research session, scripted, through the real MCP server.

Starts `autoresearch-fleet serve` as a subprocess and talks to it over stdio like Claude Code
would, on the local backend with the tiny `cpu` profile:

  1. baseline x3 replicates (measures the noise floor)
  2. a 2x2 factorial wave + control
  3. promote the best 2 cells with replicates
  4. keep the winner if its verdict is an improvement beyond the noise (else keep nothing)

then prints the leaderboard and writes progress.png and results.tsv into the workspace.
"""

from __future__ import annotations

import sys
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio

from mcp_server.domain import paths
from mcp_server.domain.tool_names import Tool

# Two knobs of train_template/train.py (module-level constants) and two levels each.
DEMO_AXES: dict[str, list[Any]] = {"MATRIX_LR": [0.02, 0.08], "DEPTH": [4, 8]}
DEFAULT_TIME_BUDGET = 8.0
DEFAULT_SLOTS = 2
WAIT_TIMEOUT = 600


class DemoFailed(RuntimeError):
    pass


def _say(text: str = "") -> None:
    print(text, flush=True)


def default_workspace() -> Path:
    return Path("research") / time.strftime("demo-%Y%m%d-%H%M%S")


def server_command(workspace: Path, time_budget: float, slots: int, tag: str = "demo") -> tuple[str, list[str]]:
    return sys.executable, ["-m", "mcp_server.cli", "serve", "--transport", "stdio", "--workspace", str(workspace),
                            "--tag", tag, "--backend", "local", "--profile", "cpu", "--cpu-slots", str(slots),
                            "--time-budget", str(time_budget)]


class Session:
    """A thin client wrapper: call a tool, fail loudly on is_error, return structured content."""

    def __init__(self, client: Any, t0: float) -> None:
        self.client = client
        self.t0 = t0

    def elapsed(self) -> str:
        return f"[{time.monotonic() - self.t0:6.1f}s]"

    async def call(self, tool: str, args: dict[str, Any] | None = None, **kw: Any) -> Any:
        res = await self.client.call_tool(tool, args or {}, **kw)
        if res.is_error:
            text = res.content[0].text if res.content else "(no text)"
            raise DemoFailed(f"{tool} failed: {text}")
        return res.structured_content if res.structured_content is not None else res

    async def wait(self, label: str, **args: Any) -> dict[str, Any]:
        async def progress(done: float, total: float | None, message: str | None) -> None:
            _say(f"{self.elapsed()}   {label}: {int(done)}/{int(total or 0)}  {message or ''}")

        # one call blocks at most the server's cap (serve --max-wait-s): call again, as next_step says
        deadline = time.monotonic() + WAIT_TIMEOUT
        while True:
            # detail: the demo prints each verdict in full (noise, group means); an agent reads the lean rows
            out = await self.call(f"{Tool.WAIT_FOR_EXPERIMENTS}", {"timeout_s": WAIT_TIMEOUT, "detail": True, **args},
                                  progress_callback=progress, read_timeout_seconds=WAIT_TIMEOUT + 60)
            if not out["still_running"]:
                return out
            if out.get("blocked"):
                raise DemoFailed(f"{label}: {out['next_step']}")
            if time.monotonic() > deadline:
                raise DemoFailed(f"{label}: still running after {WAIT_TIMEOUT}s: {out['still_running']}")


def _fmt(x: float | None, spec: str = ".5f") -> str:
    return "-" if x is None else format(x, spec)


def _print_verdicts(out: dict[str, Any]) -> None:
    briefs = {e["id"]: e for e in out["finished"]}
    for v in out["verdicts"]:
        e = briefs.get(v["experiment_id"], {})
        _say(f"      {v['experiment_id']}  val_bpb {_fmt(v.get('val_bpb'))}  delta {_fmt(v.get('delta'), '+.5f')}"
             f"  {v['verdict']:<13} {e.get('description', '')[:50]}")


async def run_session(session: Session, slots: int) -> dict[str, Any]:
    s = session
    info = await s.call(f"{Tool.GET_GPU_INFO}")
    clusters = await s.call(f"{Tool.LIST_CLUSTERS}")
    _say(f"{s.elapsed()} fleet: {clusters['total']} slots: "
         + ", ".join(f"{c['name']} ({c['gpu_type']})" for c in clusters["clusters"]))
    gpu = info["gpu_types"][0]["gpu_type"] if info["gpu_types"] else "CPU"

    _say(f"\n{s.elapsed()} 1. baseline x3 replicates (noise floor)")
    base = await s.call(f"{Tool.LAUNCH_EXPERIMENT}", {"description": "baseline", "replicates": 3})
    base_ids = [e["id"] for e in base["experiments"]]
    _say(f"{s.elapsed()}    launched {base_ids}")
    out = await s.wait("baseline", experiment_ids=base_ids)
    _print_verdicts(out)

    _say(f"\n{s.elapsed()} 2. factorial wave 2x2 + control: {DEMO_AXES}")
    wave = await s.call(f"{Tool.LAUNCH_WAVE}", {"description": "lr x depth screen", "axes": DEMO_AXES,
                                        "include_control": True})
    _say(f"{s.elapsed()}    wave {wave['wave_id']}: " + ", ".join(
        f"{e['id']} {e.get('overrides') or 'control'}" for e in wave["experiments"]))
    out = await s.wait(f"wave {wave['wave_id']}", wave_id=wave["wave_id"])
    _print_verdicts(out)
    cells = [v for v in out["verdicts"] if v.get("val_bpb") is not None
             and any(e["id"] == v["experiment_id"] and e.get("overrides") for e in out["finished"])]
    cells.sort(key=lambda v: v["val_bpb"])
    best2 = [v["experiment_id"] for v in cells[:2]]
    if not best2:
        raise DemoFailed(f"no wave cell finished with a val_bpb; see {Tool.GET_EXPERIMENT} for the logs")

    _say(f"\n{s.elapsed()} 3. {Tool.PROMOTE} the best 2 {best2} with 2 replicates each on {gpu}")
    promo = await s.call(f"{Tool.PROMOTE}", {"experiment_ids": best2, "gpu_type": gpu, "replicates": 2})
    out = await s.wait(f"promotion {promo['wave_id']}", wave_id=promo["wave_id"])
    _print_verdicts(out)

    _say(f"\n{s.elapsed()} 4. decide")
    improvements = [v for v in out["verdicts"] if v["verdict"] == "improvement"]
    kept = None
    if improvements:
        winner = min(improvements, key=lambda v: v.get("mean_val_bpb") or v.get("val_bpb") or 1e9)
        res = await s.call(f"{Tool.KEEP_EXPERIMENT}", {"experiment_id": winner["experiment_id"]})
        kept = winner["experiment_id"]
        _say(f"{s.elapsed()}    kept {kept}: branch {res['branch']} -> {str(res['commit'])[:10]} "
             f"(delta {_fmt(winner.get('delta'), '+.5f')} beyond the noise floor {_fmt(winner.get('noise'))})")
    else:
        best = min(out["verdicts"], key=lambda v: v.get("val_bpb") or 1e9)
        _say(f"{s.elapsed()}    no promoted variant beat the baseline beyond the noise "
             f"(best {best['experiment_id']}: {best['verdict']}); keeping nothing, the branch stays where it was.")

    board = await s.call(f"{Tool.LEADERBOARD}", {"limit": 10})
    plot = await s.call(f"{Tool.PLOT_PROGRESS}")
    plot_text = next((c.text for c in plot.content if getattr(c, "type", "") == "text"), "")
    return {"board": board[f"{Tool.LEADERBOARD}"], "kept": kept, "plot": plot_text}


async def _amain(workspace: Path, time_budget: float, slots: int) -> int:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    from mcp_server.domain.analysis import Leaderboard, leaderboard_text

    workspace = workspace.resolve()
    workspace.parent.mkdir(parents=True, exist_ok=True)
    server_log = workspace.parent / f"{workspace.name}.server.log"
    command, args = server_command(workspace, time_budget, slots)
    t0 = time.monotonic()
    _say(f"autoresearch-fleet demo: workspace {workspace}")
    _say(f"server: {command} {' '.join(args)}  (stderr -> {server_log})")
    with open(server_log, "w", encoding="utf-8") as errlog:
        async with AsyncExitStack() as stack:
            params = StdioServerParameters(command=command, args=args, cwd=str(Path.cwd()))
            client = await stack.enter_async_context(Client(stdio_client(params, errlog=errlog),
                                                            read_timeout_seconds=WAIT_TIMEOUT + 120))
            tools = await client.list_tools()
            _say(f"[{time.monotonic() - t0:6.1f}s] connected over stdio: {len(tools.tools)} tools")
            result = await run_session(Session(client, t0), slots)
    print(leaderboard_text(Leaderboard.model_validate(result["board"])))
    _say(f"\n{result['plot']}")
    tsv = _export_tsv(workspace)
    _say(f"wrote {paths.report_png(workspace)} and {tsv}")
    _say(f"kept: {result['kept'] or 'nothing'}")
    _say(f"total wall time {time.monotonic() - t0:.1f}s")
    return 0


def _export_tsv(workspace: Path) -> Path:
    from mcp_server.store.ledger import Ledger

    ledger = Ledger(paths.ledger_path(workspace))
    try:
        return ledger.export_tsv(paths.report_tsv(workspace))
    finally:
        ledger.close()


def main(workspace: Path | None = None, time_budget: float | None = None, slots: int | None = None) -> int:
    workspace = workspace or default_workspace()
    try:
        return anyio.run(_amain, workspace, time_budget or DEFAULT_TIME_BUDGET, slots or DEFAULT_SLOTS)
    except DemoFailed as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
