"""A built wheel, installed into a fresh venv in an empty folder, serves over stdio; a real MCP
client lists the tools and one experiment finishes.

    python scripts/wheel_smoke.py            # builds the wheel from this checkout, then checks it
    python scripts/wheel_smoke.py --wheel dist/autoresearch_fleet-*.whl

Run by .ci/run. Nothing of the checkout is on the venv's path: the template, the runner and the
warm launcher must come from the installed package. CPU torch (torch==2.13.0) is installed first
so the `train` extra does not pull a CUDA build. Then `uv tool install` of the same wheel gives an
`autoresearch-fleet` outside any repo that serves the tools with its workspace in the current folder.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

CLIENT = textwrap.dedent("""
    import json, sys
    import anyio
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def main():
        server = StdioServerParameters(command=sys.argv[1],
                                       args=["serve", "--workspace", "research", "--profile", "cpu", "--cpu-slots", "1",
                                             "--time-budget", "3", "--log-level", "WARNING"])
        async with Client(stdio_client(server), read_timeout_seconds=900) as client:
            tools = sorted(t.name for t in (await client.list_tools()).tools)
            launched = await client.call_tool("launch_experiment", {"description": "wheel smoke: baseline"})
            assert not launched.is_error, launched.content
            exp_id = launched.structured_content["experiments"][0]["id"]
            for _ in range(60):
                waited = await client.call_tool("wait_for_experiments", {"experiment_ids": [exp_id], "timeout_s": 30})
                assert not waited.is_error, waited.content
                if not waited.structured_content["still_running"]:
                    break
            got = await client.call_tool("get_experiment", {"experiment_id": exp_id, "log_limit": 0})
            print(json.dumps({"tools": tools, "experiment": got.structured_content["experiment"]}))

    anyio.run(main)
""")


LIST_TOOLS = textwrap.dedent("""
    import json, sys
    import anyio
    from mcp import Client, StdioServerParameters
    from mcp.client.stdio import stdio_client

    async def main():
        server = StdioServerParameters(command=sys.argv[1], args=["serve", "--profile", "cpu"])
        async with Client(stdio_client(server), read_timeout_seconds=300) as client:
            print(json.dumps(sorted(t.name for t in (await client.list_tools()).tools)))

    anyio.run(main)
""")


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    print("+", " ".join(map(str, cmd)), flush=True)
    return subprocess.run(cmd, check=True, **kw)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wheel", type=Path, default=None)
    a = ap.parse_args()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="arf-wheel-") as tmp:
        tmp_path = Path(tmp)
        wheel = a.wheel
        if wheel is None:
            run([sys.executable, "-m", "build", "--wheel", "--outdir", str(tmp_path / "dist"), str(REPO)],
                stdout=subprocess.DEVNULL)
            wheel = next((tmp_path / "dist").glob("*.whl"))
        venv = tmp_path / "venv"
        run([sys.executable, "-m", "venv", str(venv)])
        py = venv / "bin" / "python"
        quiet = ["-q", "--disable-pip-version-check"]
        run([str(py), "-m", "pip", "install", *quiet, "torch==2.13.0"])
        run([str(py), "-m", "pip", "install", *quiet, f"{wheel}[train]"])
        empty = tmp_path / "empty"
        empty.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        out = run([str(py), "-c", CLIENT, str(venv / "bin" / "autoresearch-fleet")], cwd=empty, env=env,
                  capture_output=True, text=True, timeout=1200)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        exp = result["experiment"]
        site = subprocess.run([str(py), "-c", "import mcp_server, sys; print(mcp_server.__file__)"], cwd=empty,
                              env=env, capture_output=True, text=True, check=True).stdout.strip()
        print(f"package imported from {site}")
        print(f"{len(result['tools'])} tools; {exp['id']} {exp['status']} val_bpb={exp['metrics'].get('val_bpb')} "
              f"in {time.monotonic() - t0:.0f} s")
        ok = (str(REPO) not in site and len(result["tools"]) >= 16 and exp["status"] == "done"
              and exp["metrics"].get("val_bpb") is not None and (empty / "research" / "train.py").is_file())
        if not ok:
            print("wheel smoke FAILED", file=sys.stderr)
            return 1
        # `uv tool install` of the same wheel: an `autoresearch-fleet` on PATH outside any repo,
        # whose default workspace is ./research in the folder it is started from
        run([str(py), "-m", "pip", "install", *quiet, "uv"])
        tools, bin_dir, there = tmp_path / "uv-tools", tmp_path / "uv-bin", tmp_path / "elsewhere"
        there.mkdir()
        uv_env = {**env, "UV_TOOL_DIR": str(tools), "UV_TOOL_BIN_DIR": str(bin_dir)}
        run([str(venv / "bin" / "uv"), "tool", "install", "--quiet", str(wheel)], env=uv_env)
        listing = run([str(py), "-c", LIST_TOOLS, str(bin_dir / "autoresearch-fleet")], cwd=there, env=env,
                      capture_output=True, text=True, timeout=600)
        names = json.loads(listing.stdout.strip().splitlines()[-1])
        print(f"uv tool install: {len(names)} tools; workspace {there / 'research'}")
        if len(names) < 16 or not (there / "research" / "train.py").is_file():
            print("wheel smoke (uv tool install) FAILED", file=sys.stderr)
            return 1
    print("wheel smoke: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
