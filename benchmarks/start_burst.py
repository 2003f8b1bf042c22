"""Benchmark: how long this host takes to start N stand-in trainers at once, with no engine.

When every slot of a local fleet ends (or starts) at the same moment, every slot's train.py
starts at that moment. This measures that burst alone: the stand-in train.py of
scheduler_utilization.py (the same interpreter, the same imports, its budget set to 0 so it exits
at once), N copies started together, each in its own session as the runner starts it. No engine,
runner, launcher or ledger is involved: what it prints is a property of the host, and it is what
the fleet's first round (and every round while the slots are still in step) costs there.

    python benchmarks/scheduler_utilization.py ...   # the fleet
    python benchmarks/start_burst.py [--n 1,16,64,128,256] [--python PYTHON] [--repeat 3]

Prints, per N: wall time until the last of them has exited, CPU time per start (user + system of
the children), and how much of the host's CPUs the burst kept busy; then how many trainer starts
per second the host does. On a 2-CPU host, 128 at once keep both CPUs busy for ~1.5-2 s: a fleet
that starts 128 slots together cannot have all of them training sooner than that.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scheduler_utilization import LIGHT_RUN, STANDIN_TRAIN, STANDIN_TRAIN_LIGHT  # noqa: E402


def burst(python: str, train: Path, n: int, flags: tuple[str, ...] = ()) -> tuple[float, float]:
    """(wall s until all n have exited, CPU s per start) for n stand-ins started at once."""
    env = dict(os.environ, AUTORESEARCH_TIME_BUDGET="0")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    procs = [subprocess.Popen([python, *flags, str(train)], cwd=train.parent, env=env, stdout=subprocess.DEVNULL,
                              stdin=subprocess.DEVNULL, start_new_session=True) for _ in range(n)]
    codes = [p.wait() for p in procs]
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if any(codes):
        raise SystemExit(f"a stand-in failed (exit codes {sorted(set(codes))}): run {python} {train} to see why")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu / n


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", default="1,16,64,128,256", help="burst sizes, comma-separated")
    ap.add_argument("--python", default=sys.executable, help="the interpreter the slots start train.py with")
    ap.add_argument("--repeat", type=int, default=3, help="bursts per size (the median is printed)")
    ap.add_argument("--light", action="store_true",
                    help="the DIAGNOSTIC light stand-in of scheduler_utilization.py --light-start")
    args = ap.parse_args(argv)
    sizes = [int(x) for x in args.n.split(",") if x.strip()]
    if not sizes or min(sizes) < 1 or args.repeat < 1:
        ap.error("--n needs positive sizes and --repeat at least 1")
    cores = os.cpu_count() or 1
    print(f"host: {cores} CPUs, load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}; "
          f"interpreter {args.python}{' (light stand-in, ' + ' '.join(LIGHT_RUN) + ')' if args.light else ''}")
    flags = tuple(LIGHT_RUN[1:-1]) if args.light else ()
    with tempfile.TemporaryDirectory(prefix="autoresearch-burst-") as tmp:
        train = Path(tmp) / "train.py"
        train.write_text(STANDIN_TRAIN_LIGHT if args.light else STANDIN_TRAIN)
        burst(args.python, train, 2, flags)   # warm the page cache
        print("   N | wall until all exited | CPU per start | CPUs busy | starts/s")
        for n in sizes:
            runs = [burst(args.python, train, n, flags) for _ in range(args.repeat)]
            wall = statistics.median(w for w, _ in runs)
            cpu = statistics.median(c for _, c in runs)
            print(f"  {n:>4} | {wall:8.2f} s | {1000 * cpu:6.1f} ms | {n * cpu / (cores * wall):.2f} | {n / wall:6.0f}")
            time.sleep(1.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
