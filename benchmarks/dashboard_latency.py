"""Latency of the dashboard's JSON endpoints with a big ledger, over real HTTP, as the page polls them.

    python benchmarks/dashboard_latency.py [--experiments 10000] [--iterations 50] [--json out.json]

Seeds the ledger the way tool_latency.py does (10,000 finished experiments in 100 waves, several GPU
types, some failures), starts `autoresearch-fleet dashboard` on that workspace (standalone: it
follows the ledger from its own connection) and times every JSON endpoint twice:

* idle: nothing changes between requests (the page's steady state);
* live: before each request another process's write lands (a decision on an experiment, with its
  event), so every answer is out of date (the page during a busy session). The dashboard then
  serves its previous answer while it recomputes in the background (stale by one recompute), so
  this phase measures what a poll waits for, with those recomputes competing for the CPU.

Target: p95 < 100 ms for each endpoint in both phases. Exit code 1 when one misses it.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
from mcp_harness import pct, seed_ledger, wait_until_answers  # noqa: E402

from mcp_server.domain.models import Decision  # noqa: E402
from mcp_server.store.ledger import Ledger  # noqa: E402

TARGET_P95_MS = 100.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoints(n: int, rng: random.Random) -> dict[str, object]:
    return {
        "version": lambda: "/version",
        "overview": lambda: "/overview",
        "experiments (page, launch order)": lambda: f"/experiments?offset={rng.randrange(0, n - 50)}&limit=50",
        "experiments (sorted by metric)": lambda: "/experiments?sort=value&order=asc&limit=50",
        "experiments (status+wave filter)": lambda: f"/experiments?status=done&wave=w{rng.randrange(1, n // 100):04d}",
        "leaderboard": lambda: "/board?limit=20",
        "progress": lambda: "/progress",
        "waves": lambda: "/waves",
        "wave": lambda: f"/waves/w{rng.randrange(1, n // 100):04d}",
        "experiment": lambda: f"/experiments/e{rng.randrange(1, n + 1):04d}",
        "log (tail)": lambda: f"/experiments/e{rng.randrange(1, n + 1):04d}/log?offset=-8000",
    }


def measure(base: str, calls: dict, iterations: int, change=None) -> dict[str, dict]:
    out = {}
    with httpx.Client(base_url=base, timeout=60) as http:
        for name, make in calls.items():
            for _ in range(3):
                http.get(make()).raise_for_status()
            times = []
            for _ in range(iterations):
                if change is not None:
                    change()
                t = time.perf_counter()
                r = http.get(make())
                times.append((time.perf_counter() - t) * 1000)
                r.raise_for_status()
            out[name] = {"n": iterations, "p50_ms": statistics.median(times), "p95_ms": pct(times, 0.95),
                         "max_ms": max(times), "bytes": len(r.content)}
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--experiments", type=int, default=10_000)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--workspace", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    rng = random.Random(a.seed)
    tmp = Path(tempfile.mkdtemp(prefix="arf-dash-bench-"))
    ws = a.workspace or tmp / "ws"
    if not (ws / ".autoresearch" / "ledger.db").exists():
        t = time.perf_counter()
        seed_ledger(ws, a.experiments, rng)
        print(f"seeded {a.experiments} experiments in {time.perf_counter() - t:.1f}s ({ws})", file=sys.stderr)
    port = free_port()
    log = open(tmp / "dashboard.log", "w")  # noqa: SIM115 - the server's log, for the run's duration
    proc = subprocess.Popen([sys.executable, "-m", "mcp_server.cli", "dashboard", "--workspace", str(ws),
                             "--port", str(port)], cwd=str(REPO), stdout=log, stderr=log)
    base = f"http://127.0.0.1:{port}/dashboard/api"
    writer = Ledger(ws / ".autoresearch" / "ledger.db")
    done_ids = [e.id for e in writer.all_experiments(statuses=["done"])]
    try:
        if not wait_until_answers(base + "/version", proc):
            raise SystemExit(f"the dashboard did not start; see {tmp / 'dashboard.log'}")
        calls = endpoints(a.experiments, rng)
        load_before = os.getloadavg()
        idle = measure(base, calls, a.iterations)

        def change() -> None:      # what a session does between two polls: a result or a decision lands
            writer.set_decision(rng.choice(done_ids), rng.choice([Decision.keep, Decision.discard]), "bench")

        live = measure(base, calls, max(10, a.iterations // 2), change)
        load_after = os.getloadavg()
    finally:
        writer.close()
        proc.terminate()
        proc.wait(20)
        log.close()
    print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{' '.join(f'{x:.2f}' for x in load_after)} after (timings scale with it); {a.experiments} experiments")
    print(f"{'endpoint':<34}{'phase':>6}{'n':>5}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'bytes':>10}"
          f"  target p95<{TARGET_P95_MS:g}ms")
    missed = []
    for phase, res in (("idle", idle), ("live", live)):
        for name, r in res.items():
            verdict = "ok" if r["p95_ms"] < TARGET_P95_MS else "MISSED"
            if verdict == "MISSED":
                missed.append(f"{name} ({phase})")
            print(f"{name:<34}{phase:>6}{r['n']:>5}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}{r['max_ms']:>9.1f}"
                  f"{r['bytes']:>10}  {verdict}")
    if a.json:
        a.json.write_text(json.dumps({"experiments": a.experiments, "idle": idle, "live": live,
                                      "cpus": os.cpu_count(), "load_before": load_before, "load_after": load_after},
                                     indent=2))
    if missed:
        print("missed: " + ", ".join(missed))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
