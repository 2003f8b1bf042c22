"""SIMULATION pieces the benchmarks share: a stand-in trainer that sleeps its time budget and
prints a result in the contract's format (no torch, no data), a stand-in harness, and a
template directory made of them. What the benchmarks measure is the engine around them."""

from __future__ import annotations

import shutil
from pathlib import Path

STANDIN_PREPARE = '''"""SIMULATION stand-in harness: nothing to prepare."""
print("stand-in harness: nothing to prepare")
'''


def sleeping_train(constants: str, val_bpb: str, default_budget_s: float, light_start: bool = False) -> str:
    """A train.py that sleeps AUTORESEARCH_TIME_BUDGET (or `default_budget_s`) and reports
    `val_bpb` (a Python expression over `constants` and `seed`) in the summary block and RESULT_JSON.

    `light_start`: a DIAGNOSTIC variant that never imports json (its `re` and `enum` imports are
    ~17 ms of the stand-in's ~50 ms of start-up CPU here) and writes RESULT_JSON by hand; what
    it prints is the same. It shows how much the host's start-up capacity, not the engine,
    decides a burst of starts."""
    if light_start:
        imports = "import os, random, time"
        emit = ('print("RESULT_JSON: {" + ", ".join(f\'"{k}": \' + ("null" if v is None else f\'"{v}"\' '
                'if isinstance(v, str) else repr(v)) for k, v in r.items()) + "}", flush=True)')
    else:
        imports = "import json, os, random, time"
        emit = 'print("RESULT_JSON: " + json.dumps(r), flush=True)'
    return f'''"""SIMULATION stand-in for train.py: sleeps the time budget, then prints a result."""
{imports}
t0 = time.time()
{constants.strip()}
budget = float(os.environ.get("AUTORESEARCH_TIME_BUDGET") or {default_budget_s!r})
seed = int(os.environ.get("AUTORESEARCH_SEED") or 42)
time.sleep(budget)
r = {{"val_bpb": round({val_bpb}, 6), "training_seconds": budget,
     "total_seconds": round(time.time() - t0, 3), "peak_vram_mb": 0.0, "mfu_percent": None,
     "total_tokens_M": 0.0, "num_steps": 100, "num_params_M": 0.0, "depth": 0, "device": "simulation"}}
print("---")
for k, v in r.items():
    print(f"{{k + ':':<18}}{{v}}")
{emit}
'''


def make_template(root: Path, train: str, *, copy: tuple[Path, ...] = ()) -> Path:
    """`root/template` with the stand-in train.py and harness (plus `copy`'s files)."""
    t = root / "template"
    t.mkdir(parents=True)
    (t / "train.py").write_text(train)
    (t / "prepare.py").write_text(STANDIN_PREPARE)
    for f in copy:
        shutil.copyfile(f, t / f.name)
    return t
