"""SkyPilot at scale, SIMULATED: the real engine and the real SkyPilot backend against a STAND-IN
SkyPilot SDK and API server (benchmarks/sky_standin.py) with 16, 64 and 128 clusters.

    python benchmarks/skypilot_scale.py [--clusters 16,64,128] [--rounds 3] [--budget 300]
                                        [--scale 20] [--long-workers 8] [--short-workers 9] [--json out.json]

No cluster exists and nothing trains: the stand-in answers every SDK call after a service time
drawn from the measured latencies (docs/skypilot-scale.md says where each one comes from), through
a bounded long/short worker pool like SkyPilot's API server; its simulated jobs run the budget
plus a start-up/eval overhead. Time is SCALED: every simulated second takes 1/scale s of wall time
(default 20: a 300 s run takes 15 s); the backend's and the engine's intervals are divided by the
same factor. Their CPU time is not scaled, so each real millisecond they spend counts `scale`
simulated milliseconds: every figure is pessimistic.

Reported per fleet size (simulated seconds):
* utilization = busy cluster-seconds (a job holding the cluster lock and training) / the sum over
  clusters of [its first start, its last end]: ceiling 1.0 (no gap between a cluster's jobs);
  also to the fleet's last end (adds the tail: clusters whose last run ended earlier, set by the
  workload's random run lengths, not by dispatch), and overall from the first exec sent (adds
  the ramp: each cluster's first exec through the API server's long queue), and the ramp;
* dispatch gap: on one cluster, a job's end -> the next job's start (p50 / p95 / max);
* API requests per finished experiment, by kind (exec, queue, logs, api_status, status, ...),
  and the total; peak requests in flight at the API server (queued + running), by queue;
* detection: a job's end -> the engine has its result (mean / p95).
"""

from __future__ import annotations

import argparse
import heapq
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from sky_standin import StandinSkyPilot  # noqa: E402
from standin import make_template  # noqa: E402

from mcp_server.backends.skypilot import SkyPilotBackend  # noqa: E402
from mcp_server.domain.config import TEMPLATE_DIR, FleetConfig  # noqa: E402
from mcp_server.domain.limits import MAX_QUEUED  # noqa: E402
from mcp_server.engine.facade import Engine  # noqa: E402

STANDIN_TRAIN = '''"""SIMULATION stand-in train.py: never runs (the stand-in SkyPilot simulates the job)."""
print("stand-in")
'''


def _template(root: Path) -> Path:
    return make_template(root, STANDIN_TRAIN, copy=(TEMPLATE_DIR / "sky_task.yaml",))


def _pct(xs: list[float], q: float) -> float:
    return sorted(xs)[int(q * (len(xs) - 1))] if xs else float("nan")


def _ideal_makespan(runs: list[dict], clusters: int) -> float:
    """The same runs, in their start order, each to the first free cluster, all free at 0."""
    free = [0.0] * clusters
    for r in sorted(runs, key=lambda r: r["start"]):
        heapq.heapreplace(free, free[0] + r["end"] - r["start"])
    return max(free)


def run_fleet(root: Path, clusters: int, rounds: int, budget: float, scale: float, long_workers: int,
              short_workers: int, latency_s: dict[str, tuple[float, float]] | None = None,
              run_overhead_s: tuple[float, float] | None = None, waves: list[int] | None = None,
              latency_samples_s: dict[str, list[float]] | None = None,
              run_overhead_samples_s: list[float] | None = None, timeline: bool = False) -> dict:
    """`waves`: launch these many experiments one batch after another, each once the one before
    has finished (e.g. [1, 3]: a baseline, then a wave of 3), instead of clusters x rounds at once.
    `timeline`: also return every counted request (kind, cluster, simulated s from the window's start)."""
    kw: dict = {} if run_overhead_s is None else {"run_overhead_s": run_overhead_s}
    sky = StandinSkyPilot(scale=scale, long_workers=long_workers, short_workers=short_workers, seed=clusters,
                          latency_s=latency_s, latency_samples_s=latency_samples_s,
                          run_overhead_samples_s=run_overhead_samples_s, **kw)
    template = _template(root)
    cfg = FleetConfig(workspace=root / "fleet", tag="sim", backend="skypilot", profile="gpu",
                      time_budget_s=budget / scale, timeout_grace_s=60 / scale, template_dir=template,
                      max_concurrent=clusters)
    backend = SkyPilotBackend(cfg, sdk=sky, refresh_interval_s=1.0 / scale, unreachable_lost_s=300.0 / scale,
                              request_grace_s=180.0 / scale, cluster_cache_s=30.0 / scale)
    t_prov = time.time()
    backend.provision(clusters)
    eng = Engine(cfg, backend=backend, poll_interval_s=1.0 / scale)
    eng.scheduler.cluster_refresh_s = 10.0 / scale
    n = sum(waves) if waves else clusters * rounds
    cap = MAX_QUEUED - 16          # the engine's bound on live experiments: top up as they finish
    launched = 0

    def top_up(live: int) -> None:
        nonlocal launched
        while launched < n and live + min(16, n - launched) <= cap:
            k = min(16, n - launched)
            eng.launch_experiment(f"sim batch {launched // 16}", replicates=k, seed=launched)
            launched += k
            live += k

    # the engine's start-up (its reconcile: one `sky status` with refresh) is not counted, as on
    # the real server (benchmarks/sky_real_requests.py counts from after provisioning)
    eng.start()
    since = time.time()
    provision_requests = len([e for e in sky.log if e["sent"] < since])
    if not waves:
        top_up(0)
    deadline = time.time() + max(120.0, 6 * rounds * (budget + 60) / scale)
    timed_out = False
    for w in waves or []:
        batch = [e.id for e in eng.launch_experiment(f"sim wave {launched}", replicates=w, seed=launched)]
        launched += w
        timed_out = timed_out or eng.wait(batch, timeout_s=max(1.0, deadline - time.time())).timed_out
    while not waves:
        left = deadline - time.time()
        if left <= 0:
            timed_out = True
            break
        res = eng.wait(until="first" if launched < n else "all", timeout_s=min(left, 30.0))
        if launched < n:
            top_up(len(res.still_running))
        elif not res.still_running:
            break
    window_end = time.time()       # the engine has every result: the real benchmark's window ends here
    recorded = {}
    conn = eng.ledger._conn()
    for eid, ended in conn.execute("SELECT experiment_id, ended_at FROM attempts WHERE outcome='done'"):
        recorded[eid] = ended
    eng.close()
    backend.close()
    sky.close()
    runs = [r for r in sky.runs() if not r["cancelled"]]
    by_kind = sky.requests_by_kind(since)
    total_req = sum(by_kind.values())
    first_submit = min(e["sent"] for e in sky.log if e["kind"] == "exec")
    last_end = max(r["end"] for r in runs)
    busy = sum(r["end"] - r["start"] for r in runs)
    per: dict[str, list[dict]] = {}
    for r in runs:
        per.setdefault(r["cluster"], []).append(r)
    gaps: list[float] = []
    window = 0.0          # per cluster: its first start .. the fleet's last end
    own = 0.0             # per cluster: its first start .. its own last end
    first_starts = []
    for lst in per.values():
        lst.sort(key=lambda r: r["start"])
        window += last_end - lst[0]["start"]
        own += max(r["end"] for r in lst) - lst[0]["start"]
        first_starts.append(lst[0]["start"] - first_submit)
        gaps += [b["start"] - a["end"] for a, b in zip(lst, lst[1:], strict=False)]
    detect = []
    for r in runs:
        eid = r["name"].split("-")[1]
        if eid in recorded and recorded[eid]:
            detect.append(recorded[eid] - r["end"])
    s = scale
    n_done = len(recorded)
    extra: dict = {}
    if timeline:
        extra["timeline"] = [(e["kind"], e.get("cluster"), round(s * (e["sent"] - since), 1))
                             for e in sky.log if e["sent"] >= since]
    return extra | {
        "clusters": clusters, "experiments": n, "finished": n_done, "timed_out": timed_out,
        "budget_s": budget, "scale": scale,
        "api_server": {"long_workers": long_workers, "short_workers": short_workers},
        "utilization": busy / own if own else float("nan"), "ceiling": 1.0,
        "utilization_to_fleet_end": busy / window if window else float("nan"),
        "utilization_overall": busy / (clusters * (last_end - first_submit)),
        # the workload's own ceiling for the fleet window: the same runs, dispatched in the same
        # order to the first free cluster with no ramp and no gap (the fleet still ends with its
        # last run: random run lengths leave a tail)
        "ceiling_fleet": busy / (clusters * _ideal_makespan(runs, clusters)),
        "ramp_first_start_s": {"mean": s * statistics.mean(first_starts), "max": s * max(first_starts)},
        "gap_s": {"p50": s * _pct(gaps, 0.5), "p95": s * _pct(gaps, 0.95), "max": s * max(gaps) if gaps else None},
        "detect_s": {"mean": s * statistics.mean(detect) if detect else None, "p95": s * _pct(detect, 0.95)},
        "requests_per_experiment": round(total_req / max(1, n_done), 2),
        "requests_per_experiment_by_kind": {k: round(v / max(1, n_done), 2) for k, v in sorted(by_kind.items())},
        "requests_provisioning": provision_requests,
        "peak_in_flight": sky.peak_in_flight, "peak_in_flight_by_queue": dict(sky.peak_by_queue),
        "simulated_s": s * (last_end - first_submit), "window_s": s * (window_end - since),
        "wall_s": time.time() - t_prov,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clusters", default="16,64,128")
    ap.add_argument("--rounds", type=int, default=3, help="experiments per cluster")
    ap.add_argument("--budget", type=float, default=300.0, help="simulated training budget (s)")
    ap.add_argument("--scale", type=float, default=20.0, help="simulated seconds per wall second")
    ap.add_argument("--long-workers", type=int, default=8, help="API server long-request workers")
    ap.add_argument("--short-workers", type=int, default=9, help="API server short-request workers")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = []
    for c in [int(x) for x in args.clusters.split(",")]:
        root = Path(tempfile.mkdtemp(prefix=f"arf-skyscale-{c}-"))
        try:
            fig = run_fleet(root, c, args.rounds, args.budget, args.scale, args.long_workers, args.short_workers)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        out.append(fig)
        print(json.dumps(fig), flush=True)
    print()
    print("| clusters | per cluster / ceiling 1.0 | to fleet end | overall (with ramp) | fleet ceiling | "
          "overall / fleet ceiling | ramp mean / max | gap p50 / p95 | requests / exp | by kind | peak in flight |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for f in out:
        kinds = ", ".join(f"{k} {v}" for k, v in f["requests_per_experiment_by_kind"].items())
        print(f"| {f['clusters']} | {f['utilization']:.3f} | {f['utilization_to_fleet_end']:.3f} | "
              f"{f['utilization_overall']:.3f} | {f['ceiling_fleet']:.3f} | "
              f"{f['utilization_overall'] / f['ceiling_fleet']:.3f} | "
              f"{f['ramp_first_start_s']['mean']:.0f} / {f['ramp_first_start_s']['max']:.0f} s | "
              f"{f['gap_s']['p50']:.1f} / {f['gap_s']['p95']:.1f} s | "
              f"{f['requests_per_experiment']} | {kinds} | {f['peak_in_flight']} |")
    if args.json:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
