"""Benchmark: how many characters of tool results a research session puts into the agent's
context, per finished experiment and by tool, and the largest single result.

SIMULATION. The real MCP server (`mcp_server.cli serve`, stdio, the SDK's real client as in
tests/mcp_harness.py) on the local backend with simulated tiers (--simulate-tiers: 4 slots
labelled H100, 4 labelled H200); the trainer is a STAND-IN train.py that sleeps the time budget
and prints a result whose val_bpb depends a little on two constants and the seed (no torch, no
data), and the harness a stand-in prepare.py. The server is started through this file
(`--serve`), which only points the config's template at the stand-in; everything else is the
shipped server.

The scripted session follows the skills' loop (skills/fleet-research-loop, factorial-waves,
hardware-tiering): baselines with replicates on both tiers, then rounds of a 2x2 factorial wave
with replicates and a control on the common tier, waits re-called as next_step says until the
wave is finished, a leaderboard of that tier, the best improvements promoted to the fast tier and
waited for, then keep the best or discard -- until at least --experiments have finished. One
fetch_results page is read at the end.

    python benchmarks/agent_context.py [--experiments 200] [--budget 0.5] [--max-wait-s 20]

Prints characters returned to the client (the text content of each tool result: what a client
puts in the model's context) per finished experiment, by tool (calls, total, per call, largest),
the largest single result, the tool list once (not counted per experiment) and the load average.
Targets: <= 600 characters per finished experiment; no single result over 12,000
(limits.MAX_RESULT_CHARS, which tests/test_result_size.py checks for every read tool at 10,000
experiments).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mcp_server.domain.limits import MAX_RESULT_CHARS  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import make_template, sleeping_train  # noqa: E402

# the loss has a minimum at MATRIX_LR = 0.05 and falls with warm-up: waves over them find something
STANDIN_TRAIN = sleeping_train(
    "MATRIX_LR = 0.04\nWARMUP_RATIO = 0.0",
    "1.0 + 4 * (MATRIX_LR - 0.05) ** 2 - 0.02 * WARMUP_RATIO + random.Random(seed).gauss(0, 0.001)", 1.0)

TIERS = "H100,H100,H100,H100,H200,H200,H200,H200"


def serve(template: Path, argv: list[str]) -> int:
    """The shipped `serve` command, its config's template pointed at the stand-in."""
    from mcp_server import cli

    real = cli.config_from_args

    def with_template(args: argparse.Namespace):  # type: ignore[no-untyped-def]
        return real(args).model_copy(update={"template_dir": template})
    cli.config_from_args = with_template  # type: ignore[assignment]
    return cli.main(["serve", *argv])


class Meter:
    """Characters of every tool result, by tool."""

    def __init__(self) -> None:
        self.calls: dict[str, list[int]] = defaultdict(list)
        self.largest: tuple[int, str] = (0, "")
        self.samples: dict[str, str] = {}    # the largest result of each tool (written with --keep)

    def add(self, tool: str, chars: int, text: str = "") -> None:
        if chars > max(self.calls[tool], default=-1):
            self.samples[tool] = text
        self.calls[tool].append(chars)
        if chars > self.largest[0]:
            self.largest = (chars, tool)


async def session(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    template = make_template(root, STANDIN_TRAIN)
    serve_argv = ["--workspace", str(root / "ws"), "--tag", "ctx", "--backend", "local", "--profile", "cpu",
                  "--simulate-tiers", TIERS, "--time-budget", str(args.budget), "--cache-dir", str(root / "cache"),
                  "--max-wait-s", str(args.max_wait_s), "--log-level", "WARNING"]
    params = StdioServerParameters(command=sys.executable,
                                   args=[str(Path(__file__).resolve()), "--serve", str(template), *serve_argv],
                                   cwd=str(REPO), env=dict(os.environ))
    meter = Meter()
    tool_list_chars = 0

    with open(root / "server.log", "a", encoding="utf-8") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=600) as client:

            async def call(tool: str, arguments: dict[str, Any] | None = None) -> dict[str, Any]:
                res = await client.call_tool(tool, arguments or {})
                texts = [getattr(c, "text", "") or "" for c in res.content]
                meter.add(tool, sum(len(t) for t in texts), "".join(texts))
                if res.is_error:
                    raise RuntimeError(f"{tool}({arguments}) failed: {res.content[0].text if res.content else res}")
                assert res.structured_content is not None
                return res.structured_content

            async def wait(**target: Any) -> list[dict[str, Any]]:
                """Wait as the skill says: re-call with what next_step names until nothing is live."""
                while True:
                    out = await call("wait_for_experiments", target)
                    if not out["still_running"] or out.get("blocked"):
                        return out["finished"]      # each row carries its verdict, delta and a note

            tools = await client.list_tools()
            tool_list_chars = len(json.dumps([t.model_dump(mode="json", exclude_none=True) for t in tools.tools]))
            await call("list_clusters")
            await call("get_gpu_info")
            finished = 0
            for tier in ("H100", "H200"):
                b = await call("launch_experiment", {"description": f"baseline {tier}", "replicates": 3,
                                                     "gpu_type": tier})
                await wait(experiment_ids=[e["id"] for e in b["experiments"]])
                finished += len(b["experiments"])
            rnd = 0
            while finished < args.experiments:
                rnd += 1
                lr = [round(0.03 + 0.005 * (rnd % 5), 4), round(0.06 + 0.005 * (rnd % 4), 4)]
                warmup = [0.0, round(0.1 * (1 + rnd % 3), 2)]
                w = await call("launch_wave", {"description": f"round {rnd}: lr x warmup",
                                               "axes": {"MATRIX_LR": lr, "WARMUP_RATIO": warmup},
                                               "replicates": 2, "gpu_type": "H100"})
                verdicts = await wait(wave_id=w["wave_id"])
                finished += w["experiment_count"]
                await call("leaderboard", {"gpu_type": "H100"})
                wins = sorted((v for v in verdicts if v["verdict"] == "improvement"),
                              key=lambda v: v.get("delta") or 0.0)
                if wins:
                    p = await call("promote", {"experiment_ids": [wins[0]["id"]], "gpu_type": "H200",
                                               "replicates": 2})
                    pv = await wait(wave_id=p["wave_id"])
                    finished += p["experiment_count"]
                    best = [v for v in pv if v["verdict"] == "improvement"]
                    if best:
                        await call("keep_experiment", {"experiment_id": best[0]["id"]})
                    else:
                        await call("discard_experiment", {"experiment_id": wins[0]["id"]})
                elif verdicts:
                    await call("discard_experiment", {"experiment_id": verdicts[-1]["id"]})
            await call("leaderboard", {"gpu_type": "H200"})
            await call("fetch_results", {"status": "done"})
            await call("budget_status")
            counted = await call("fetch_results", {"limit": 1})
            finished = counted["total"]
    return {"meter": meter, "tool_list_chars": tool_list_chars, "finished": finished, "rounds": rnd}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--serve"]:
        return serve(Path(argv[1]), argv[2:])
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=200, help="finished experiments at least")
    ap.add_argument("--budget", type=float, default=0.5, help="stand-in training seconds per run")
    ap.add_argument("--max-wait-s", type=float, default=20.0, help="the server's cap on one wait call")
    ap.add_argument("--keep", type=Path, default=None, help="keep the workspace in this directory")
    args = ap.parse_args(argv)
    root = args.keep or Path(tempfile.mkdtemp(prefix="autoresearch-ctx-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        t0 = time.monotonic()
        load0 = os.getloadavg()
        r = asyncio.run(session(args, root))
        load1 = os.getloadavg()
        m: Meter = r["meter"]
        n = r["finished"]
        total = sum(sum(v) for v in m.calls.values())
        print(f"SIMULATION: the real MCP server over stdio, local backend, 8 slots labelled {TIERS}, stand-in "
              f"trainer ({args.budget:g} s); {r['rounds']} rounds, {n} finished experiments in "
              f"{time.monotonic() - t0:.0f} s")
        print(f"characters returned per finished experiment: {total / n:.0f}  ({total:,} in "
              f"{sum(len(v) for v in m.calls.values())} calls)   (target <= 600)")
        print("by tool: calls | total chars | per call | per finished experiment | largest")
        for tool, sizes in sorted(m.calls.items(), key=lambda kv: -sum(kv[1])):
            print(f"  {tool:<22} {len(sizes):>5} | {sum(sizes):>9,} | {sum(sizes) / len(sizes):>8.0f} | "
                  f"{sum(sizes) / n:>6.1f} | {max(sizes):>7,}")
        print(f"largest single result: {m.largest[0]:,} characters ({m.largest[1]})   "
              f"(target <= {MAX_RESULT_CHARS:,})")
        print(f"tool list, once per session (not counted above): {r['tool_list_chars']:,} characters")
        print(f"load average (1 min) before / after: {load0[0]:.2f} / {load1[0]:.2f} "
              "(character counts do not depend on it; a wait cut short by a slow machine adds a call)")
        if args.keep is not None:
            (root / "largest_results.json").write_text(json.dumps(m.samples, indent=1))
        ok = total / n <= 600 and m.largest[0] <= MAX_RESULT_CHARS
        print(f"targets: {'MET' if ok else 'NOT MET'}")
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
