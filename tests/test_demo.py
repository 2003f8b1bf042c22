"""`autoresearch-fleet demo`, the README's main command, end to end: the real server over stdio,
real CPU training. Here with a 3 s budget to keep the suite short; the demo's own default (8 s)
is timed by running the command itself (it prints its total wall time)."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys

import pytest
from mcp_harness import REPO

from mcp_server.store.ledger import Ledger


@pytest.mark.slow
def test_demo_runs_a_whole_session(tmp_path, cache):
    ws = tmp_path / "demo"
    env = dict(os.environ, AUTORESEARCH_CACHE=str(cache))
    proc = subprocess.run([sys.executable, "-m", "mcp_server.cli", "demo", "--workspace", str(ws),
                           "--time-budget", "3"], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout
    assert proc.returncode == 0, f"{out[-3000:]}\n{proc.stderr[-3000:]}"
    for step in ("1. baseline x3 replicates", "2. factorial wave 2x2 + control", "3. promote the best 2", "4. decide"):
        assert step in out
    assert re.search(r"baseline: 3/3 +e000\d done val_bpb=", out)  # progress notifications printed
    assert "== CPU" in out and re.search(r"total wall time \d+\.\d+s", out)
    kept = re.search(r"^kept: (\S+)$", out, re.M).group(1)

    ledger = Ledger(ws / ".autoresearch" / "ledger.db")
    try:
        exps = {e.id: e for e in ledger.all_experiments()}
        waves = ledger.waves()
    finally:
        ledger.close()
    assert len(exps) >= 3 + 5 + 4 and [w.kind for w in waves] == ["replicates", "factorial", "promotion"]
    if kept == "nothing":
        assert "keeping nothing" in out and not any(e.decision for e in exps.values())
    else:
        assert exps[kept].decision.value == "keep"
        head = subprocess.run(["git", "rev-parse", "autoresearch/demo"], cwd=ws, capture_output=True,
                              text=True).stdout.strip()
        assert head == exps[kept].commit
    with open(ws / "results.tsv", newline="") as f:
        assert {r["id"] for r in csv.DictReader(f, delimiter="\t")} == set(exps)
    assert (ws / "progress.png").read_bytes().startswith(b"\x89PNG")
