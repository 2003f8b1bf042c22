"""How fast does the SkyPilot backend keep a warm cluster busy? (real SkyPilot, local Slurm)

    python benchmarks/skypilot_dispatch.py [--experiments 4] [--budget 45] [--json out.json] [--keep]

Needs `sudo scripts/local-slurm.sh up`. Brings up one real SkyPilot cluster on the local Slurm
(2 CPUs), then measures:

- launch_cold_s: `provision(1)` = sky.launch of a new cluster incl. setup (prepare.py);
- exec_to_start_s: an experiment submitted to an idle warm cluster -> its runner starts
  (sky.exec: workdir sync + job submission + job start);
- gap_s: one experiment's runner ends -> the next one's runner starts on the same cluster, with
  the next one queued ahead as the scheduler does (queue depth 2). Target: <= 2 s;
- queued_ahead: whether the next job was already started, waiting on the cluster lock, when the
  previous one ended (the mechanism behind a small gap);
- launch_to_start_s: the same experiment run with `sky.launch` on the warm cluster instead of
  `sky.exec` (what a launch per experiment would cost even without provisioning);
- the per-call SDK latencies the backend saw (exec request, queue, logs).

Timestamps come from the runner's result.json (started_at/ended_at) and the job log, all on this
machine's clock. The cluster is torn down at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mcp_server.backends.base import JobSpec
from mcp_server.backends.skypilot import SkyPilotBackend, parse_job_log
from mcp_server.domain.config import TEMPLATE_DIR, FleetConfig
from mcp_server.runtime import runner


def local_slurm_ok() -> str | None:
    if shutil.which("sinfo") is None or not (Path.home() / ".slurm" / "config").is_file():
        return "no local Slurm: run `sudo scripts/local-slurm.sh up` first"
    p = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=15)
    if p.returncode != 0 or not re.search(r"idle|mix|alloc", p.stdout):
        return f"local Slurm not ready: {(p.stdout + p.stderr).strip()[:200]}"
    return None


def make_run_dir(root: Path, eid: str) -> Path:
    d = root / "runs" / eid / "a1"
    d.mkdir(parents=True)
    for f in ("train.py", "prepare.py"):
        shutil.copyfile(TEMPLATE_DIR / f, d / f)
    return d


def waiting_at(run_dir: Path) -> float | None:
    try:
        m = re.search(r"^ARF_WAITING_FOR_SLOT (\S+)", (Path(run_dir) / "sky_job.log").read_text(), re.M)
    except OSError:
        return None
    return float(m.group(1)) if m else None


def wait_outcomes(backend: SkyPilotBackend, handles: list, n: int, timeout: float) -> list:
    out: list = []
    deadline = time.time() + timeout
    while len(out) < n and time.time() < deadline:
        out += backend.poll(handles)
        time.sleep(0.05)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experiments", type=int, default=4, help="experiments run back to back on one cluster")
    ap.add_argument("--budget", type=float, default=45.0, help="training seconds per experiment (cpu profile)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    ap.add_argument("--keep", action="store_true", help="leave the cluster up")
    ap.add_argument("--no-launch", action="store_true", help="skip the sky.launch-per-experiment comparison")
    args = ap.parse_args()
    reason = local_slurm_ok()
    if reason:
        print(reason, file=sys.stderr)
        return 2

    root = Path(tempfile.mkdtemp(prefix="arf-skybench-"))
    cache = Path.home() / ".cache" / "autoresearch-fleet-bench"
    task = yaml.safe_load((TEMPLATE_DIR / "sky_task.yaml").read_text())
    task["resources"] = {"infra": "slurm", "cpus": 2, "memory": 2}
    task["envs"].update(ARF_PYTHON=sys.executable, AUTORESEARCH_CACHE=str(cache), AUTORESEARCH_PROFILE="cpu")
    (root / "task.yaml").write_text(yaml.safe_dump(task))
    config = FleetConfig(workspace=root / "ws", tag="bench", backend="skypilot", profile="cpu",
                         sky_task=root / "task.yaml", sky_autostop_minutes=20)
    backend = SkyPilotBackend(config)
    hh = runner.harness_hash(TEMPLATE_DIR / "prepare.py")
    timeout_s = args.budget * 2 + 240
    env = {"AUTORESEARCH_TIME_BUDGET": repr(float(args.budget))}
    figures: dict = {"budget_s": args.budget, "experiments": args.experiments, "machine": "local Slurm, 2-CPU cluster"}
    try:
        t0 = time.monotonic()
        [cluster] = backend.provision(1)
        figures["launch_cold_s"] = round(time.monotonic() - t0, 1)
        print(f"provisioned {cluster.name} in {figures['launch_cold_s']} s", flush=True)

        # back to back, queue depth 2 (what the scheduler does)
        pending = [f"e{i + 1:04d}" for i in range(args.experiments)]
        submitted: dict[str, float] = {}
        live: list = []
        results: dict = {}
        while pending or live:
            while pending and len(live) < backend.queue_depth(cluster.name):
                eid = pending.pop(0)
                spec = JobSpec(experiment_id=eid, attempt=1, run_dir=make_run_dir(root, eid), profile="cpu",
                               timeout_s=timeout_s, harness_hash=hh, seed=42 + len(submitted), env=env)
                submitted[eid] = time.time()
                live.append(backend.submit(cluster.name, spec))
            for o in wait_outcomes(backend, live, 1, timeout_s * 2):
                live = [h for h in live if h.experiment_id != o.handle.experiment_id]
                if o.lost or not o.result:
                    raise RuntimeError(f"{o.handle.experiment_id} lost: {o.reason}")
                results[o.handle.experiment_id] = (o.result, waiting_at(Path(o.handle.run_dir)))
                r = o.result
                print(f"{o.handle.experiment_id}: {r['status']} val_bpb={r['metrics'].get('val_bpb')} "
                      f"ran {r['ended_at'] - r['started_at']:.1f} s", flush=True)
        order = sorted(results, key=lambda e: results[e][0]["started_at"])
        first = results[order[0]][0]
        figures["exec_to_start_s"] = round(first["started_at"] - submitted[order[0]], 1)
        gaps, ahead = [], []
        for prev, nxt in zip(order, order[1:], strict=False):
            gaps.append(round(results[nxt][0]["started_at"] - results[prev][0]["ended_at"], 2))
            w = results[nxt][1]
            ahead.append(w is not None and w < results[prev][0]["ended_at"])
        execs = {name.split("-")[1]: t_exec for name, _c, _s, t_exec in backend.exec_log}
        figures["next_exec_after_prev_start_s"] = [
            round(execs[nxt] - results[prev][0]["started_at"], 1) if nxt in execs else None
            for prev, nxt in zip(order, order[1:], strict=False)]
        figures["next_waiting_before_prev_end_s"] = [
            round(results[prev][0]["ended_at"] - results[nxt][1], 1) if results[nxt][1] else None
            for prev, nxt in zip(order, order[1:], strict=False)]
        figures["gap_s"] = gaps
        figures["gap_median_s"] = round(statistics.median(gaps), 2) if gaps else None
        figures["queued_ahead"] = ahead
        figures["run_s"] = [round(results[e][0]["ended_at"] - results[e][0]["started_at"], 1) for e in order]

        if not args.no_launch:
            # the same experiment through sky.launch on the warm cluster (no provisioning): setup + run
            eid = "e9001"
            spec = JobSpec(experiment_id=eid, attempt=1, run_dir=make_run_dir(root, eid), profile="cpu",
                           timeout_s=timeout_s, harness_hash=hh, seed=7, env=env)
            key = f"{eid}-a1-launch"
            stage = backend._stage_run(spec, key)
            cfg = backend.launch_task_config(None, stage)
            cfg.update(name=f"arf-{key}", run=backend.run_command(key, hh, timeout_s))
            cfg["envs"].update(backend._job_envs(spec))
            sky = backend.sky
            t = time.time()
            job_id, _ = sky.get(sky.launch(sky.Task.from_yaml_config(cfg), cluster_name=cluster.name,
                                           idle_minutes_to_autostop=20, down=True))
            import io
            buf = io.StringIO()
            sky.tail_logs(cluster.name, job_id, follow=True, output_stream=buf)
            _, _, res = parse_job_log(buf.getvalue())
            figures["launch_to_start_s"] = round(res["started_at"] - t, 1) if res else None
        figures["sdk_latency_s"] = {k: round(statistics.median(v), 2) for k, v in backend.timings.items() if v}
    finally:
        if not args.keep:
            t = time.monotonic()
            backend.teardown(None)
            figures["down_s"] = round(time.monotonic() - t, 1)
        backend.close()
        shutil.rmtree(root, ignore_errors=True)

    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    ok = figures.get("gap_median_s") is not None and figures["gap_median_s"] <= 2.0
    print(f"gap target <= 2 s: {'met' if ok else 'NOT met'} (median {figures.get('gap_median_s')} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
