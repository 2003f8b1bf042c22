"""Benchmark: how busy the scheduler keeps a fleet, what the engine costs per experiment, and how
fast ledger queries are at 10,000 experiments.

SIMULATION. The fleet is N local slots (default 16) (LocalBackend, cpu_slots=16) on this machine, and the
trainer is a STAND-IN train.py that sleeps its time budget and prints a result in the contract's
format (no torch, no data): it measures the engine, the scheduler, the real runner and the real
LocalBackend -- not training. The harness is a stand-in prepare.py (the runner still checks its
hash). Everything else is the real engine: git snapshots, SQLite ledger, run directories.

    python benchmarks/scheduler_utilization.py [--slots 16 | --slots 16,64,128,256] [--experiments 200]
                                               [--budget 2] [--ledger-size 10000 | 0] [--keep DIR]

Prints:
* utilization = busy slot-seconds / (slots x wall), where busy = the runner's own start..end of
  each run (result.json `started_at`..`ended_at`: from when the runner had the slot and started
  train.py until train.py's process group was gone and the slot released; a runner waiting
  queued ahead is not busy, and neither is the result write after the release) and wall = first
  submit .. last run end (target >= 0.95); also the best any scheduler could do for this
  workload (the last round is partly empty) and utilization while experiments were still
  waiting in the queue;
* engine overhead per experiment: launch cost, gap between a run ending and the next starting
  on the same slot (a job queued ahead -- LocalBackend queue_depth 2 -- starts by a lock
  hand-off; a cold start is result detection + dispatch + runner start), the slots' first starts,
  how long after a run ended its result was recorded, scheduler tick time;
* engine CPU per experiment (this process's CPU time over the run / experiments), hand-off gap
  p50/p95, ledger write latency p50/p95 (every write transaction, lock wait and change hooks
  included), peak RSS of the engine process;
* ledger query time with 10,000 experiments: leaderboard (target < 50 ms), a list page,
  verdicts, budget status.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import resource
import shutil
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.ids import format_exp_id, format_wave_id
from mcp_server.domain.limits import MAX_QUEUED
from mcp_server.domain.models import Experiment, Wave
from mcp_server.domain.task import TASK_FILE
from mcp_server.engine.facade import Engine

sys.path.insert(0, str(Path(__file__).resolve().parent))
from standin import make_template, sleeping_train  # noqa: E402

_STANDIN = ("LEARNING_RATE = 0.04", "1.0 + random.Random(seed).gauss(0, 0.002)", 2.0)
STANDIN_TRAIN = sleeping_train(*_STANDIN)
# DIAGNOSTIC (--light-start): the same stand-in without the json import, started as `python -S`
STANDIN_TRAIN_LIGHT = sleeping_train(*_STANDIN, light_start=True)
LIGHT_RUN = ["python", "-S", "train.py"]


def _rss_mb() -> float:
    """This process's resident set now (MB): at the end of a run, with every experiment in the cache."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _runners_cpu_ms(eng: Engine) -> float:
    """CPU time (ms) of the runners and trainers the warm launcher started and reaped (its
    children's CPU, from /proc), NaN when there is no launcher."""
    try:
        from mcp_server.backends.local.launcher_client import launcher_for
        proc = launcher_for(getattr(eng.backend, "python", sys.executable))._proc
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split() if proc else None
    except (OSError, AttributeError):
        fields = None
    if not fields:
        return float("nan")
    return 1000 * (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def run_fleet(root: Path, slots: int, n: int, budget: float, light_start: bool = False) -> dict:
    template = make_template(root, STANDIN_TRAIN_LIGHT if light_start else STANDIN_TRAIN)
    if light_start:
        # the light stand-in needs only the standard library: the task's own run command starts
        # it without the site import (see start_burst.py for what each start costs)
        (root / "fleet").mkdir(parents=True)
        (root / "fleet" / TASK_FILE).write_text(f"run = {json.dumps(LIGHT_RUN)}\n")
    cfg = FleetConfig(workspace=root / "fleet", tag="bench", profile="cpu", time_budget_s=budget,
                      timeout_grace_s=30, cpu_slots=slots, template_dir=template, max_concurrent=slots)
    eng = Engine(cfg)
    writes: list[float] = []
    tx = eng.ledger.tx

    @contextmanager
    def timed_tx():   # every ledger write: write-lock wait + BEGIN IMMEDIATE..COMMIT + change hooks
        t = time.perf_counter()
        with tx() as c:
            yield c
        writes.append(time.perf_counter() - t)
    eng.ledger.tx = timed_tx  # type: ignore[method-assign]
    per_call = 16
    t0 = time.perf_counter()
    ids: list[str] = []
    while len(ids) < n:
        k = min(per_call, n - len(ids))
        ids += [e.id for e in eng.launch_experiment(f"sim batch {len(ids) // per_call}", replicates=k,
                                                    seed=len(ids))]
    launch_s = time.perf_counter() - t0

    writes.clear()
    cpu0 = time.process_time()   # this process = the engine (runners and trainers are other processes)
    eng.start()
    # data preparation (stand-in) happens before the first dispatch; wall starts at the first submit
    res = eng.wait(ids, timeout_s=max(600.0, 4 * n * budget / slots))
    engine_cpu = time.process_time() - cpu0
    load = os.getloadavg()[0]
    fleet_cpu_ms = _runners_cpu_ms(eng) / n
    rss_mb = _rss_mb()
    ticks_cpu = eng.scheduler.stats["tick_seconds"]
    sched_stats = dict(eng.scheduler.stats, ticks=eng.scheduler.ticks)
    eng.close()
    assert not res.timed_out and all(e.status.value == "done" for e in res.finished), "not all runs finished"

    conn = eng.ledger._conn()
    rows = conn.execute("SELECT experiment_id, cluster, run_dir, submitted_at, ended_at FROM attempts "
                        "WHERE outcome='done'").fetchall()
    runs = []
    for eid, cluster, run_dir, submitted, recorded in rows:
        r = json.loads((Path(run_dir) / "result.json").read_text())
        runs.append({"id": eid, "slot": cluster, "submitted": submitted, "recorded": recorded,
                     "start": r["started_at"], "end": r["ended_at"]})
    first_submit = min(r["submitted"] for r in runs)
    last_submit = max(r["submitted"] for r in runs)
    last_end = max(r["end"] for r in runs)
    wall = last_end - first_submit
    busy = sum(r["end"] - r["start"] for r in runs)
    util = busy / (slots * wall)
    mean_run = busy / len(runs)
    rounds = math.ceil(len(runs) / slots)
    ceiling = len(runs) * mean_run / (slots * (rounds * mean_run))
    # while work was waiting: [first submit, last submit]
    win = last_submit - first_submit
    busy_win = sum(max(0.0, min(r["end"], last_submit) - max(r["start"], first_submit)) for r in runs)
    util_queue = busy_win / (slots * win) if win > 0 else float("nan")
    gaps, detect, handoff, cold, cold_start, first_start = [], [], [], [], [], []
    by_slot: dict[str, list[dict]] = {}
    for r in runs:
        by_slot.setdefault(r["slot"], []).append(r)
        detect.append(r["recorded"] - r["end"])
    drain = []   # after each slot's last run until the fleet's last run ended
    for lst in by_slot.values():
        lst.sort(key=lambda r: r["start"])
        first_start.append(lst[0]["start"] - first_submit)
        drain.append(last_end - lst[-1]["end"])
        for a, b in zip(lst, lst[1:], strict=False):
            gaps.append(b["start"] - a["end"])
            # queued ahead: submitted before the run ahead of it ended (its runner was waiting)
            (handoff if b["submitted"] < a["end"] else cold).append(b["start"] - a["end"])
            if b["submitted"] >= a["end"]:
                cold_start.append(b["start"] - b["submitted"])
    # per round (each slot's k-th run): how far apart the slots' starts are, and how much longer
    # than the budget a run took (its start-up under contention counts as busy time)
    rounds_start_spread, rounds_over_budget = [], []
    for k in range(max(len(lst) for lst in by_slot.values())):
        kth = [lst[k] for lst in by_slot.values() if len(lst) > k]
        rounds_start_spread.append(max(r["start"] for r in kth) - min(r["start"] for r in kth))
        rounds_over_budget.append(statistics.mean(r["end"] - r["start"] - budget for r in kth))

    def mean_ms(xs: list[float]) -> float:
        return 1000 * statistics.mean(xs) if xs else float("nan")

    def pct_ms(xs: list[float], q: float) -> float:
        return 1000 * sorted(xs)[int(q * (len(xs) - 1))] if xs else float("nan")
    return {
        "experiments": len(runs), "slots": slots, "budget_s": budget, "wall_s": wall,
        "busy_slot_s": busy, "utilization": util, "ceiling": ceiling, "utilization_while_queued": util_queue,
        "mean_run_s": mean_run, "launch_ms_per_exp": 1000 * launch_s / n,
        "gap_ms_mean": 1000 * statistics.mean(gaps), "gap_ms_p95": 1000 * sorted(gaps)[int(0.95 * (len(gaps) - 1))],
        "gap_ms_max": 1000 * max(gaps), "handoffs": len(handoff), "handoff_ms_mean": mean_ms(handoff),
        "cold": len(cold), "cold_gap_ms_mean": mean_ms(cold), "cold_start_ms_mean": mean_ms(cold_start),
        "first_start_ms_mean": mean_ms(first_start), "first_start_ms_max": 1000 * max(first_start),
        "detect_ms_mean": mean_ms(detect), "sched_cpu_ms_per_exp": 1000 * ticks_cpu / n,
        "slots_used": len(by_slot), "scheduler": sched_stats,
        "handoff_ms_p50": pct_ms(handoff, 0.5), "handoff_ms_p95": pct_ms(handoff, 0.95),
        "cold_ms_p50": pct_ms(cold, 0.5), "cold_ms_p95": pct_ms(cold, 0.95),
        "first_start_ms_p50": pct_ms(first_start, 0.5), "load": load, "fleet_cpu_ms_per_exp": fleet_cpu_ms,
        "gap_ms_p50": pct_ms(gaps, 0.5), "engine_cpu_ms_per_exp": 1000 * engine_cpu / n,
        "writes": len(writes), "write_ms_p50": pct_ms(writes, 0.5), "write_ms_p95": pct_ms(writes, 0.95),
        # where the idle slot-time went (the three add up to 1 - utilization; a slot that never
        # ran idles before its first start for the whole wall)
        "rss_mb": rss_mb, "idle_first": (sum(first_start) + (slots - len(by_slot)) * wall) / (slots * wall),
        "idle_between": sum(gaps) / (slots * wall), "idle_drain": sum(drain) / (slots * wall),
        "round_start_spread_s": rounds_start_spread,
        "round_over_budget_s": rounds_over_budget,
    }


def build_ledger(root: Path, size: int) -> Engine:
    """A workspace whose ledger holds `size` finished experiments: 2 GPU types, waves of 10,
    groups of 3 replicates, controls, ~5% failures, some kept/discarded."""
    template = root / "template"
    if not template.exists():
        make_template(root, STANDIN_TRAIN)
    cfg = FleetConfig(workspace=root / "big", tag="bench", profile="cpu", time_budget_s=2.0, cpu_slots=2,
                      template_dir=template)
    eng = Engine(cfg)
    rng = random.Random(0)
    now = time.time()
    exps, waves = [], []
    for w in range(size // 10):
        wid = format_wave_id(w + 1)
        control_hash = f"{w:040x}"
        ids = []
        for j in range(10):
            n = w * 10 + j + 1
            code = control_hash if j < 3 else f"{(w << 8) + (j // 3):040x}"
            exps.append(Experiment(
                id=format_exp_id(n), description=f"wave {w} cell {j}", wave_id=wid, commit=f"{n:040x}",
                code_hash=code, parent_code_hash=control_hash, harness_hash="0" * 64,
                overrides={"LEARNING_RATE": 0.01 * (j + 1)}, seed=42 + j % 3, gpu_type=None, created_at=now + n))
            ids.append(format_exp_id(n))
        waves.append((Wave(id=wid, description=f"wave {w}", kind="factorial", design={"axes": {}},
                           experiment_ids=ids, created_at=now + w), exps[-10:]))
    for wave, members in waves:
        eng.ledger.insert_launch(members, {}, wave)
    with eng.ledger.tx() as c:
        for e in exps:
            n = int(e.id[1:])
            status = "crash" if rng.random() < 0.05 else "done"
            gpu = "H100" if n % 4 else "H200"
            c.execute("UPDATE experiments SET status=?, ran_on_gpu=?, cluster=?, attempts=1, val_bpb=?, num_steps=?, "
                      "training_seconds=300, total_tokens_M=500, ended_at=?, decision=? WHERE id=?",
                      (status, gpu, f"c-{gpu.lower()}", None if status == "crash" else 1.0 + rng.gauss(0, 0.01),
                       None if status == "crash" else 950, now + n,
                       "keep" if n % 97 == 0 and status == "done" else None, e.id))
            c.execute("INSERT INTO attempts(experiment_id, attempt, cluster, gpu_type, run_dir, submitted_at, "
                      "ended_at, busy_seconds, outcome) VALUES(?,?,?,?,?,?,?,?,?)",
                      (e.id, 1, f"c-{gpu.lower()}", gpu, "/nonexistent", now, now + 300, 300.0, status))
    return eng


def _timed(fn, repeat: int = 7) -> tuple[float, float]:
    """(first call ms, median of the following calls ms)."""
    t0 = time.perf_counter()
    fn()
    first = 1000 * (time.perf_counter() - t0)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(1000 * (time.perf_counter() - t0))
    return first, statistics.median(times)


def bench_queries(root: Path, size: int) -> dict:
    t0 = time.perf_counter()
    eng = build_ledger(root, size)
    build_s = time.perf_counter() - t0
    out = {"experiments": size, "build_s": build_s}
    out["leaderboard"] = _timed(lambda: eng.leaderboard(limit=20))
    probe = [format_exp_id(size)]

    def after_change():          # the first leaderboard after a new result: computed, not cached
        with eng.ledger.tx() as c:   # a real change (on_change of an unchanged experiment recomputes nothing)
            c.execute("UPDATE experiments SET val_bpb = val_bpb + 1e-6 WHERE id=?", probe)
        eng._on_change(probe)
        eng.leaderboard(limit=20)
    out["leaderboard_fresh"] = _timed(after_change, repeat=5)
    out["leaderboard_h200"] = _timed(lambda: eng.leaderboard(gpu_type="H200", limit=20))
    out["list_page"] = _timed(lambda: eng.experiments(offset=size // 2, limit=50))
    out["list_done_page"] = _timed(lambda: eng.experiments(status="done", offset=100, limit=50))
    ids = [format_exp_id(i) for i in range(size - 19, size + 1)]
    out["verdicts_20"] = _timed(lambda: eng.verdicts(ids))
    out["budget_status"] = _timed(lambda: eng.budget_status())
    out["get_experiment"] = _timed(lambda: eng.get_experiment(format_exp_id(size // 3)))
    out["export_tsv"] = _timed(lambda: eng.export_results(root / "results.tsv"), repeat=3)
    eng.close()
    eng.workspace.close()
    return out


def print_fleet(f: dict) -> None:
    print(f"  wall {f['wall_s']:.1f} s for {f['experiments']} runs on {f['slots_used']} slots, "
          f"mean run {f['mean_run_s']:.3f} s (runner start..end)")
    print(f"  utilization = busy slot-seconds / (slots x wall) = {f['busy_slot_s']:.1f} / "
          f"({f['slots']} x {f['wall_s']:.2f}) = {f['utilization']:.3f}; ceiling for this workload (last round "
          f"{f['experiments'] % f['slots'] or f['slots']}/{f['slots']} slots busy) {f['ceiling']:.3f}: "
          f"{f['utilization'] / f['ceiling']:.3f} of the ceiling; while experiments were queued "
          f"{f['utilization_while_queued']:.3f}")
    print(f"  idle slot-time (of slots x wall): before the first start {f['idle_first']:.3f}, between runs "
          f"{f['idle_between']:.3f}, after the slot's last run until the last run ended (drain) {f['idle_drain']:.3f}")
    print("    by round: slots' start spread " + " / ".join(f"{x:.1f}" for x in f["round_start_spread_s"])
          + " s; mean run minus budget " + " / ".join(f"{x:.2f}" for x in f["round_over_budget_s"]) + " s")
    print(f"  engine CPU {f['engine_cpu_ms_per_exp']:.1f} ms per experiment (this process: scheduler, waiter, "
          f"ledger, git; runners and trainers excluded); server RSS {f['rss_mb']:.0f} MB at the end of the run")
    print(f"  engine overhead per experiment: launch {f['launch_ms_per_exp']:.1f} ms (snapshot + ledger); "
          f"slot gap end->next start {f['gap_ms_mean']:.1f} ms mean / {f['gap_ms_p50']:.1f} p50 / "
          f"{f['gap_ms_p95']:.1f} ms p95 / {f['gap_ms_max']:.0f} ms max")
    print(f"    {f['handoffs']} starts were hand-offs to a runner queued ahead ({f['handoff_ms_mean']:.1f} ms mean, "
          f"{f['handoff_ms_p50']:.1f} p50, {f['handoff_ms_p95']:.1f} p95), {f['cold']} cold starts "
          f"({f['cold_gap_ms_mean']:.0f} ms mean gap, {f['cold_ms_p50']:.0f} p50, {f['cold_ms_p95']:.0f} p95; "
          f"submit->start {f['cold_start_ms_mean']:.0f} ms); first-start ramp: each slot's first start "
          f"{f['first_start_ms_mean']:.0f} ms mean / {f['first_start_ms_p50']:.0f} p50 / "
          f"{f['first_start_ms_max']:.0f} ms max after the first submit")
    print(f"    runners + trainers (the launcher's children): {f['fleet_cpu_ms_per_exp']:.1f} ms CPU per experiment; "
          f"load average {f['load']:.1f} at the end of the run")
    # what the whole fleet asks of this host's CPUs: when it nears 1 in the bursts where every slot
    # ends at once, a runner handed its slot waits for a CPU and the hand-off tail grows
    demand = (f["engine_cpu_ms_per_exp"] + f["fleet_cpu_ms_per_exp"]) * f["experiments"] / 1000
    cores = os.cpu_count() or 1
    print(f"    CPU asked of the host: {demand:.1f} CPU-s (engine + runners + trainers) over {f['wall_s']:.1f} s on "
          f"{cores} CPUs = {demand / (cores * f['wall_s']):.2f} of it on average")
    print(f"    results recorded {f['detect_ms_mean']:.0f} ms after the run ended (mean); scheduler tick time "
          f"{f['sched_cpu_ms_per_exp']:.1f} ms per experiment; {f['writes']} ledger writes "
          f"{f['write_ms_p50']:.1f} ms p50 / {f['write_ms_p95']:.1f} ms p95 (lock wait + transaction + change hooks)")
    st = f["scheduler"]
    print(f"  scheduler: {st['ticks']} ticks, {st['polls']} polls, {st['dispatched']} dispatched, "
          f"{st['staged_used']} from run dirs staged ahead")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slots", default="16", help="slot count, or several comma-separated (16,64,128,256): "
                    "one fleet run each, then a summary")
    ap.add_argument("--experiments", type=int, default=200,
                    help="experiments per run (with several slot counts: 7 rounds each when not given, "
                    "fewer where that would pass the server's cap of live experiments)")
    ap.add_argument("--budget", type=float, default=2.0)
    ap.add_argument("--ledger-size", type=int, default=10_000, help="0 skips the ledger query part")
    ap.add_argument("--keep", type=Path, default=None, help="keep the workspaces in this directory")
    ap.add_argument("--light-start", action="store_true",
                    help="DIAGNOSTIC, not the benchmark's figure: a stand-in trainer whose start costs about "
                    "half the CPU (no json import, `python -S`; start_burst.py --light measures it), to "
                    "see how much of a result is the host's start-up capacity rather than the engine")
    args = ap.parse_args(argv)
    slot_counts = [int(x) for x in str(args.slots).split(",") if x.strip()]
    explicit_n = any(a == "--experiments" or a.startswith("--experiments=") for a in (argv or sys.argv[1:]))
    root = args.keep or Path(tempfile.mkdtemp(prefix="autoresearch-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        print(f"host: {os.cpu_count()} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
              "(timings scale with it)")
        fleets = []
        for slots in slot_counts:
            # 7 rounds each, within the server's cap on live experiments
            n = args.experiments if explicit_n or len(slot_counts) == 1 else min(7, MAX_QUEUED // slots) * slots
            light = " (DIAGNOSTIC --light-start: about half the start-up CPU)" if args.light_start else ""
            print(f"SIMULATION: {slots} local slots, stand-in trainer{light} sleeping {args.budget:g} s, "
                  f"{n} experiments (real engine, runner, LocalBackend, git, SQLite)")
            f = run_fleet(root / f"s{slots}", slots, n, args.budget, light_start=args.light_start)
            print_fleet(f)
            fleets.append(f)
        if len(fleets) > 1:
            print("summary: slots | exps | util (ceiling) | util/ceiling | engine CPU ms/exp | hand-off n p50/p95 ms | "
                  "cold n p50/p95 ms | first start mean/max ms | write p95 ms | RSS MB | load")
            for f in fleets:
                print(f"  {f['slots']:>5} | {f['experiments']:>4} | {f['utilization']:.3f} ({f['ceiling']:.3f}) | "
                      f"{f['utilization'] / f['ceiling']:.3f} | {f['engine_cpu_ms_per_exp']:.1f} | "
                      f"{f['handoffs']} {f['handoff_ms_p50']:.1f}/{f['handoff_ms_p95']:.1f} | "
                      f"{f['cold']} {f['cold_ms_p50']:.0f}/{f['cold_ms_p95']:.0f} | "
                      f"{f['first_start_ms_mean']:.0f}/{f['first_start_ms_max']:.0f} | {f['write_ms_p95']:.1f} | "
                      f"{f['rss_mb']:.0f} | {f['load']:.1f}")
        ok = all(f["utilization"] / f["ceiling"] >= 0.96 and f["handoff_ms_p95"] <= 30 for f in fleets)
        print(f"targets: utilization >= 0.96 of the ceiling and hand-off p95 <= 30 ms: {'MET' if ok else 'NOT MET'}")
        if args.ledger_size:
            q = bench_queries(root, args.ledger_size)
            print(f"ledger queries at {q['experiments']:,} experiments (built in {q['build_s']:.1f} s); "
                  "first call / median of the next 7, ms:")
            for key in ("leaderboard", "leaderboard_fresh", "leaderboard_h200", "list_page", "list_done_page",
                        "verdicts_20", "budget_status", "get_experiment", "export_tsv"):
                first, med = q[key]
                print(f"  {key:<18} {first:8.1f} / {med:8.1f}")
            print("  (leaderboard: the first call loads the experiment cache; 'fresh' = recomputed after a ledger "
                  "change; repeated calls between changes are served from the cache)")
            lb_ok = q["leaderboard"][1] < 50
            print(f"target: leaderboard < 50 ms: {'MET' if lb_ok else 'NOT MET'}")
            ok = ok and lb_ok
        return 0 if ok else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
