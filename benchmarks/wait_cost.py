"""What a capped wait costs the agent: tool calls and characters returned per finished experiment,
at each server-wide cap on one wait call (`serve --max-wait-s`), measured through the real server
over stdio with a real MCP client.

    python benchmarks/wait_cost.py [--caps 20,50,540] [--sleep 15] [--cells 4] [--slots 2]

SIMULATION: train.py is a stand-in that sleeps `--sleep` seconds and prints a result (the cost of a
wait does not depend on what trains). Each cap gets a fresh workspace: a baseline, then a wave of
`--cells` cells plus a control, waited for to the end by re-calling as next_step says.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import anyio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mcp import Client, StdioServerParameters  # noqa: E402
from mcp.client.stdio import stdio_client  # noqa: E402

SLEEPER = """# SIMULATION: a stand-in train.py (sleeps, then prints a result in the contract's format)
import time
SLEEP_S = {sleep}
MATRIX_LR = 0.04
time.sleep(SLEEP_S)
bpb = 1.0 + abs(MATRIX_LR - 0.05) * 10
print("---")
print(f"val_bpb:          {{bpb:.6f}}")
print(f'RESULT_JSON: {{{{"val_bpb": {{bpb}}, "num_steps": 1}}}}', flush=True)
"""


async def measure(cap: float, sleep_s: float, cells: int, slots: int, root: Path) -> dict:
    ws = root / f"cap{cap:g}" / "research"
    params = StdioServerParameters(command=sys.executable, cwd=str(REPO), args=[
        "-m", "mcp_server.cli", "serve", "--workspace", str(ws), "--profile", "cpu", "--cpu-slots", str(slots),
        "--time-budget", str(sleep_s * 2), "--max-wait-s", str(cap), "--log-level", "WARNING"])
    stats = {"cap_s": cap, "wait_calls": 0, "wait_chars": 0, "progress": 0, "finished": 0}
    with open(root / f"cap{cap:g}.log", "w") as errlog:
        async with Client(stdio_client(params, errlog=errlog), read_timeout_seconds=cap + 120) as client:
            async def call(name: str, args: dict) -> dict:
                res = await client.call_tool(name, args)
                assert not res.is_error, res.content
                return res.structured_content

            async def progress(*_: object) -> None:
                stats["progress"] += 1

            async def wait_all(args: dict) -> dict:
                while True:
                    res = await client.call_tool("wait_for_experiments", {**args, "timeout_s": 3600},
                                                 progress_callback=progress)
                    stats["wait_calls"] += 1
                    stats["wait_chars"] += sum(len(c.text) for c in res.content if getattr(c, "text", None))
                    if not res.structured_content["still_running"]:
                        return res.structured_content

            (ws / "sleeper.py").write_text(SLEEPER.format(sleep=sleep_s))
            base = (await call("launch_experiment", {"description": "baseline", "source": "sleeper.py"}))
            base_id = base["experiments"][0]["id"]
            await wait_all({"experiment_ids": [base_id]})
            levels = [round(0.025 + 0.01 * i, 3) for i in range(cells)]      # none equal to the base value
            t0 = time.monotonic()
            wave = await call("launch_wave", {"description": "lr", "axes": {"MATRIX_LR": levels}, "base": base_id})
            done = await wait_all({"wave_id": wave["wave_id"]})
            stats["wave_s"] = round(time.monotonic() - t0, 1)
            stats["finished"] = 1 + done["finished_count"]
    n = stats["finished"]
    stats["calls_per_experiment"] = round(stats["wait_calls"] / n, 2)
    stats["chars_per_experiment"] = round(stats["wait_chars"] / n)
    return stats


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--caps", default="20,50,540")
    ap.add_argument("--sleep", type=float, default=15.0)
    ap.add_argument("--cells", type=int, default=4)
    ap.add_argument("--slots", type=int, default=2)
    a = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="arf-wait-cost-") as tmp:
        for cap in (float(c) for c in a.caps.split(",")):
            rows.append(anyio.run(measure, cap, a.sleep, a.cells, a.slots, Path(tmp)))
    print(f"SIMULATION: stand-in trainer sleeping {a.sleep:g} s; baseline + wave of {a.cells} cells + control "
          f"on {a.slots} slots")
    print(f"{'cap s':>6} {'wave s':>7} {'finished':>8} {'wait calls':>10} {'calls/exp':>9} {'chars/exp':>9} "
          f"{'progress msgs':>13}")
    for r in rows:
        print(f"{r['cap_s']:>6g} {r['wave_s']:>7} {r['finished']:>8} {r['wait_calls']:>10} "
              f"{r['calls_per_experiment']:>9} {r['chars_per_experiment']:>9} {r['progress']:>13}")
    print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
