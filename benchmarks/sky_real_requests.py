"""Issue 15 item 3: count the API requests per experiment on the REAL local Slurm and compare
them with the simulation (benchmarks/skypilot_scale.py) run with the same shape.

    python benchmarks/sky_real_requests.py [--rounds 3] [--budget 30] [--scale 5] [--json out.json]

Needs `sudo scripts/local-slurm.sh up`. Steps:

1. the real engine + SkyPilot backend provision 2 real clusters on the local Slurm (cpu profile);
2. `--rounds` experiments per cluster (2 x rounds) are launched and waited for; the window
   [after provisioning, after the engine closed] is what is counted (the simulation counts the
   same: no launch, no teardown);
3. the API server's own request table (benchmarks/sky_request_log.py) gives requests by kind in
   that window and each kind's latency (created -> finished); `sky.queue` gives each job's
   submitted/start/end, so exec request -> job start and the run length (its overhead on top of
   the budget) are measured too;
4. the clusters are torn down (sky down);
5. the simulation runs 2 clusters x rounds, the same budget, an API server with the real one's
   long/short worker counts (from its start-up log line), and the latencies and run overhead
   just measured; requests per experiment by kind are printed side by side (issue 15: within
   +-1).

`api_status` makes no request row (GET /api/status reads the request table); the comparison
leaves it out on both sides and says how many the simulation made.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import sky_request_log  # noqa: E402
from skypilot_dispatch import local_slurm_ok  # noqa: E402
from skypilot_scale import run_fleet  # noqa: E402

from mcp_server.backends.skypilot import SkyPilotBackend  # noqa: E402
from mcp_server.domain.config import TEMPLATE_DIR, FleetConfig  # noqa: E402
from mcp_server.engine.facade import Engine  # noqa: E402

SERVER_LOG = Path("~/.sky/api_server/server.log")


def server_workers(log: Path = SERVER_LOG) -> tuple[int, int] | None:
    """(long workers, short requests in parallel) from the API server's last start-up line."""
    try:
        text = log.expanduser().read_text(errors="replace")
    except OSError:
        return None
    m = re.findall(r"with (\d+) background workers for long requests and will allow at max (\d+) short", text)
    return (int(m[-1][0]), int(m[-1][1])) if m else None


def job_timings(clusters: list[str], exec_rows: list[dict]) -> dict:
    """exec request created -> job start, and each job's run length, from sky.queue (real)."""
    import sky
    to_start, runs = [], []
    for c in clusters:
        req: Any = sky.queue(c, skip_finished=False)
        recs: list[Any] = sorted(sky.get(req), key=lambda r: r.job_id)
        mine = sorted((r for r in exec_rows if r.get("cluster_name") == c), key=lambda r: r["created_at"])
        prev_end = 0.0
        for rec, req in zip(recs, mine, strict=False):
            if rec.start_at:
                to_start.append(float(rec.start_at) - req["created_at"])
            if rec.start_at and rec.end_at:
                runs.append(float(rec.end_at) - max(float(rec.start_at), prev_end))
                prev_end = float(rec.end_at)
    return {"exec_to_start_s": to_start, "run_s": runs}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="experiments per cluster (2 clusters)")
    ap.add_argument("--budget", type=float, default=30.0, help="training seconds per experiment (cpu profile)")
    ap.add_argument("--scale", type=float, default=5.0, help="the simulation's time scale")
    ap.add_argument("--db", type=Path, default=sky_request_log.DEFAULT_DB)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    reason = local_slurm_ok()
    if reason:
        print(reason, file=sys.stderr)
        return 2
    workers = server_workers() or (4, 66)
    root = Path(tempfile.mkdtemp(prefix="arf-skyreq-"))
    task = yaml.safe_load((TEMPLATE_DIR / "sky_task.yaml").read_text())
    task["resources"] = {"infra": "slurm", "cpus": 2, "memory": 2}
    task["envs"].update(ARF_PYTHON=sys.executable, AUTORESEARCH_CACHE=str(Path.home() / ".cache" / "arf-skyreq"),
                        AUTORESEARCH_PROFILE="cpu")
    (root / "task.yaml").write_text(yaml.safe_dump(task))
    config = FleetConfig(workspace=root / "ws", tag="skyreq", backend="skypilot", profile="cpu",
                         time_budget_s=args.budget, timeout_grace_s=240.0, sky_task=root / "task.yaml",
                         sky_autostop_minutes=20, max_attempts=1, max_clusters=2)
    real: dict = {"rounds": args.rounds, "budget_s": args.budget, "api_server_workers": workers}
    eng = Engine(config)
    eng.start()
    closed = False
    try:
        t0 = time.time()
        clusters = [c.name for c in eng.provision_clusters(2)]
        real["provision_s"] = round(time.time() - t0, 1)
        since = time.time()
        exps = eng.launch_experiment("request count", replicates=2 * args.rounds)
        ids = [e.id for e in exps]
        res = eng.wait(experiment_ids=ids, timeout_s=args.rounds * (args.budget + 300) + 600)
        done = [e for e in res.finished if e.status.value == "done"]
        print(f"{len(done)}/{len(ids)} done (timed out: {res.timed_out})", flush=True)
        eng.close()
        closed = True
        until = time.time()
        fig = sky_request_log.read(args.db.expanduser(), since, until, "arf-")
        real.update(fig)
        real["finished"] = len(done)
        real["per_finished_experiment"] = {k: round(v / max(1, len(done)), 2) for k, v in fig["by_kind"].items()}
        rows = sky_request_log.rows(args.db.expanduser(), since, until, "arf-")
        real["timings"] = job_timings(clusters, [r for r in rows if r["kind"] == "exec"])
    finally:
        if not closed:
            eng.close()
        b = SkyPilotBackend(config)
        try:
            b.teardown(None)
        finally:
            b.close()
    lat = {k: (min(v["all"]), max(v["all"])) for k, v in real["latency_s"].items() if v["all"]}
    runs = real["timings"]["run_s"]
    overhead = (max(0.0, min(runs) - args.budget), max(0.0, max(runs) - args.budget)) if runs else None
    if real["timings"]["exec_to_start_s"]:
        lat["exec"] = (min(real["timings"]["exec_to_start_s"]), max(real["timings"]["exec_to_start_s"]))
    sim_lat = {k: v for k, v in lat.items() if k in ("exec", "queue", "logs", "status", "status_refresh")}
    sroot = Path(tempfile.mkdtemp(prefix="arf-skyreq-sim-"))
    try:
        sim = run_fleet(sroot, 2, args.rounds, args.budget, args.scale, workers[0], workers[1],
                        latency_s=sim_lat, run_overhead_s=overhead)
    finally:
        shutil.rmtree(sroot, ignore_errors=True)
    sim["latency_s_used"] = sim_lat
    sim["run_overhead_s_used"] = overhead
    real_k = real["per_finished_experiment"]
    sim_k = {k: v for k, v in sim["requests_per_experiment_by_kind"].items() if k != "api_status"}
    kinds = sorted(set(real_k) | set(sim_k))
    rows_out = [(k, real_k.get(k, 0.0), sim_k.get(k, 0.0)) for k in kinds]
    tot_r, tot_s = sum(r for _, r, _ in rows_out), sum(s for _, _, s in rows_out)
    agree = all(abs(r - s) <= 1.0 for _, r, s in rows_out) and abs(tot_r - tot_s) <= 1.0
    out = {"real": real, "simulation": sim, "agree_within_1": agree,
           "compared": {k: {"real": r, "simulation": s} for k, r, s in rows_out}}
    print(json.dumps(out, indent=2, default=str))
    print()
    print(f"| kind | real (per experiment, {real['finished']} experiments) | simulation ({sim['finished']}) | diff |")
    print("| --- | --- | --- | --- |")
    for k, r, s in rows_out:
        print(f"| {k} | {r:.2f} | {s:.2f} | {s - r:+.2f} |")
    print(f"| total (without api_status) | {tot_r:.2f} | {tot_s:.2f} | {tot_s - tot_r:+.2f} |")
    print(f"(simulation api_status {sim['requests_per_experiment_by_kind'].get('api_status', 0)} per experiment: "
          "no request row on a real server)")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
