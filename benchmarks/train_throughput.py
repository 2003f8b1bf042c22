"""Throughput and fixed overhead of the baseline train.py, on this machine.

    python benchmarks/train_throughput.py                      # cpu profile, 10 s budget
    python benchmarks/train_throughput.py --profile gpu        # gpu profile, 60 s budget
    python benchmarks/train_throughput.py --profile gpu --data demo --budget 60   # offline GPU box

Runs train_template/train.py once for real (in a scratch copy, data prepared first if needed)
and prints tokens/s, MFU, and the fixed overhead: total_seconds - training_seconds, i.e.
imports + setup, the untimed warm-up steps (torch.compile on GPU), and the evaluation.
Targets on one H100 with the gpu profile: MFU >= 40%, fixed overhead <= 15 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "train_template"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=["cpu", "gpu"], default=None, help="default: gpu if CUDA is available")
    ap.add_argument("--budget", type=float, default=None, help="training seconds (default: cpu 10, gpu 60)")
    ap.add_argument("--data", default=None, help="AUTORESEARCH_DATA (default: the profile's; demo works offline)")
    ap.add_argument("--cache", default=None, help="AUTORESEARCH_CACHE (default: the harness's)")
    ap.add_argument("--threads", type=int, default=None, help="AUTORESEARCH_THREADS for cpu runs")
    ap.add_argument("--num-shards", type=int, default=None, help="climbmix shards to prepare if missing")
    args = ap.parse_args()

    profile = args.profile
    if profile is None:
        try:
            import torch
            profile = "gpu" if torch.cuda.is_available() else "cpu"
        except ImportError:
            profile = "cpu"
    env = dict(os.environ, AUTORESEARCH_PROFILE=profile,
               AUTORESEARCH_TIME_BUDGET=str(args.budget or (60 if profile == "gpu" else 10)))
    for key, value in (("AUTORESEARCH_DATA", args.data), ("AUTORESEARCH_CACHE", args.cache),
                       ("AUTORESEARCH_THREADS", args.threads)):
        if value is not None:
            env[key] = str(value)

    prep = [sys.executable, str(TEMPLATE / "prepare.py")]
    prep += ["--num-shards", str(args.num_shards)] if args.num_shards else []
    t0 = time.time()
    subprocess.run(prep, cwd=TEMPLATE, env=env, check=True, stdout=subprocess.DEVNULL)
    print(f"data ready ({time.time() - t0:.1f}s, not part of a run)")

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as d:
        for name in ("prepare.py", "train.py"):
            shutil.copyfile(TEMPLATE / name, Path(d) / name)
        t0 = time.time()
        proc = subprocess.run([sys.executable, "train.py"], cwd=d, env=env, capture_output=True, text=True)
        wall = time.time() - t0
    out = proc.stdout
    if proc.returncode != 0 or "RESULT_JSON: " not in out:
        print(out[-4000:] + proc.stderr[-4000:])
        print(f"train.py failed (exit {proc.returncode})")
        return 1
    r = json.loads(out.rsplit("RESULT_JSON: ", 1)[1])

    def grab(pattern: str) -> float:
        return float(m.group(1).replace(",", "")) if (m := re.search(pattern, out, re.M)) else float("nan")

    setup = grab(r"^setup: ([\d.]+)s")
    warmup = grab(r"^warm-up: \d+ untimed steps in ([\d.]+)s")
    evaluation = grab(r"^eval: ([\d.]+)s")
    tok_s = grab(r"\(\d+ timed\): ([\d,]+) tok/s")
    overhead = r["total_seconds"] - r["training_seconds"]
    for line in out.splitlines():
        if line.startswith(("profile", "model:", "batch:")):
            print(line)
    print(f"device:          {r['device']}")
    print(f"tokens/s:        {tok_s:,.0f}")
    print(f"mfu_percent:     {'n/a (cpu)' if r['mfu_percent'] is None else r['mfu_percent']}")
    print(f"val_bpb:         {r['val_bpb']}  ({r['num_steps']} steps, {r['total_tokens_M']}M tokens)")
    print(f"training:        {r['training_seconds']:.1f}s")
    print(f"total:           {r['total_seconds']:.1f}s (process wall {wall:.1f}s)")
    print(f"fixed overhead:  {overhead:.1f}s = setup {setup:.1f}s (imports, data, model) + warm-up {warmup:.1f}s "
          f"(untimed steps) + eval {evaluation:.1f}s + other {overhead - setup - warmup - evaluation:.1f}s")
    print(f"peak memory:     {r['peak_vram_mb']:.0f} MB ({'RSS' if r['device'] == 'cpu' else 'CUDA allocated'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
