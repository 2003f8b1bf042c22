"""Issue 15 item 3: count the API requests per experiment on the REAL local Slurm and compare
them with the simulation (benchmarks/skypilot_scale.py) run with the same shape.

    python benchmarks/sky_real_requests.py [--rounds 3] [--budget 30] [--scale 5] [--json out.json]
                                           [--real-json earlier.json]

Needs `sudo scripts/local-slurm.sh up`. Steps:

1. the real engine + SkyPilot backend provision 2 real clusters on the local Slurm (cpu profile);
2. `--rounds` experiments per cluster (2 x rounds) are launched and waited for; the window
   [after provisioning, after the engine closed] is what is counted (the simulation counts the
   same: no launch, no teardown);
3. the API server's own request table (benchmarks/sky_request_log.py) gives requests by kind in
   that window and each kind's latency (created -> finished); `sky.queue` gives each job's
   start/end (matched to its exec request by the job id the request returned), so exec request
   -> job start and the run length (its overhead on top of the budget) are measured too; the
   real figures go to --json at once;
4. the clusters are torn down (sky down);
5. the simulation runs 2 clusters x rounds, the same budget, an API server with the real one's
   long/short worker counts (from its start-up log line), and draws each latency and each run's
   overhead from the samples just measured; requests per experiment by kind are printed side by
   side (issue 15: within +-1). `--real-json OUT` re-runs only this step on an earlier output.

`api_status` makes no request row (GET /api/status reads the request table); the comparison
leaves it out on both sides and says how many the simulation made.
"""

from __future__ import annotations

import argparse
import json
import os
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
    """exec request created -> job start, and each job's run length, from sky.queue (real).

    Jobs are matched to exec requests by the job id the request returned: a cluster's job 1 is
    the launch's own (provisioning), not an experiment."""
    import sky
    to_start, runs, unmatched = [], [], 0
    for c in clusters:
        req: Any = sky.queue(c, skip_finished=False)
        recs = {int(r.job_id): r for r in sky.get(req)}
        mine = sorted((r for r in exec_rows if r.get("cluster_name") == c), key=lambda r: r["created_at"])
        prev_end = 0.0
        for row in mine:
            rec = recs.get(row.get("job_id"))  # type: ignore[arg-type]
            if rec is None:
                unmatched += 1
                continue
            if rec.start_at:
                to_start.append(round(float(rec.start_at) - row["created_at"], 3))
            if rec.start_at and rec.end_at:
                # from when it could train (started, and the job ahead ended: the cluster lock)
                runs.append(round(float(rec.end_at) - max(float(rec.start_at), prev_end), 3))
                prev_end = float(rec.end_at)
    return {"exec_to_start_s": to_start, "run_s": runs, "exec_requests_without_a_job": unmatched}


def measure_real(args: argparse.Namespace) -> dict:
    """Steps 1-4: the real engine on 2 real clusters; the request table over the window."""
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
    real: dict = {"rounds": args.rounds, "budget_s": args.budget, "api_server_workers": workers,
                  "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                  "load_avg_start": [round(x, 2) for x in os.getloadavg()]}
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
        real["load_avg_end"] = [round(x, 2) for x in os.getloadavg()]
        real["window_s"] = round(until - since, 1)
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
    return real


def simulate(real: dict, scale: float) -> dict:
    """Step 5: the simulation with the real run's shape and worker counts, drawing every latency
    and run length from the ones just measured (as they are: under load they are heavy-tailed,
    a uniform min..max would over-weight the rare slow one)."""
    budget, rounds, workers = real["budget_s"], real["rounds"], real["api_server_workers"]
    t = real["timings"]
    bad = [x for x in t["exec_to_start_s"] + t["run_s"] if x < 0]
    if bad:
        raise SystemExit(f"negative timings {bad}: jobs were matched to the wrong exec requests")
    samples = {k: list(v["all"]) for k, v in real["latency_s"].items()
               if v["all"] and k in ("exec", "queue", "logs", "status", "status_refresh")}
    if t["exec_to_start_s"]:
        samples["exec_start"] = list(t["exec_to_start_s"])   # exec request created -> job started
    overheads = [max(0.0, r - budget) for r in t["run_s"]]  # the run on top of the budget
    sroot = Path(tempfile.mkdtemp(prefix="arf-skyreq-sim-"))
    try:
        sim = run_fleet(sroot, 2, rounds, budget, scale, workers[0], workers[1],
                        latency_samples_s=samples, run_overhead_samples_s=overheads or None, timeline=True)
    finally:
        shutil.rmtree(sroot, ignore_errors=True)
    sim["latency_samples_s_used"] = samples
    sim["run_overhead_samples_s_used"] = overheads
    return sim


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="experiments per cluster (2 clusters)")
    ap.add_argument("--budget", type=float, default=30.0, help="training seconds per experiment (cpu profile)")
    ap.add_argument("--scale", type=float, default=5.0, help="the simulation's time scale")
    ap.add_argument("--db", type=Path, default=sky_request_log.DEFAULT_DB)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--real-json", type=Path, default=None,
                    help="skip the real run: simulate against the `real` part of an earlier --json output")
    args = ap.parse_args()
    if args.real_json:
        real = json.loads(args.real_json.read_text())["real"]
    else:
        reason = local_slurm_ok()
        if reason:
            print(reason, file=sys.stderr)
            return 2
        real = measure_real(args)
        if args.json:   # kept at once: the clusters are gone, a failed simulation must not lose it
            args.json.write_text(json.dumps({"real": real}, indent=2, default=str) + "\n")
    sim = simulate(real, args.scale)
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
    print(f"| window (s: after provisioning -> every result in) | {real.get('window_s', '?')} | "
          f"{sim.get('window_s', float('nan')):.0f} | |")
    print(f"(simulation api_status {sim['requests_per_experiment_by_kind'].get('api_status', 0)} per experiment: "
          f"no request row on a real server; real load average {real.get('load_avg_start')} -> "
          f"{real.get('load_avg_end')})")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
