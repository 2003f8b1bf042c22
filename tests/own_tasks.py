"""Tasks of our own for the bring-your-own-autoresearch tests: small git repositories in other
people's layouts, written by the tests, CPU-sized (numpy only; the digits task reads
scikit-learn's bundled dataset). Nothing here is the fleet's template."""

from __future__ import annotations

import subprocess
from pathlib import Path

# karpathy's layout: prepare.py fixed (data), train.py edited, program.md; train.py prints only the
# `---` summary block, no RESULT_JSON. Here a least-squares fit on synthetic data, by numpy SGD.
KARPATHY_PREPARE = '''\
"""Fixed harness: writes the data once (idempotent)."""
import os
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("AUTORESEARCH_CACHE") or Path.home() / ".cache" / "tinytask")


def data_path():
    return CACHE / "tinytask.npz"


if __name__ == "__main__":
    CACHE.mkdir(parents=True, exist_ok=True)
    if not data_path().exists():
        rng = np.random.default_rng(0)
        x = rng.normal(size=(512, 8))
        w = rng.normal(size=8)
        y = x @ w + 0.1 * rng.normal(size=512)
        np.savez(data_path(), x=x, y=y)
    print("prepared", data_path())
'''

KARPATHY_UTILS = '''\
"""Fixed harness, second file: the evaluation."""
import numpy as np


def evaluate(w, x, y):
    return float(np.mean((x @ w - y) ** 2))
'''

KARPATHY_TRAIN = '''\
import os
import time

import numpy as np

from prepare import data_path
from utils import evaluate

LR = 0.05
STEPS = 60
BATCH = 32

t0 = time.time()
seed = int(os.environ.get("AUTORESEARCH_SEED", "0"))
rng = np.random.default_rng(seed)
d = np.load(data_path())
x, y = d["x"], d["y"]
xt, yt, xv, yv = x[:400], y[:400], x[400:], y[400:]
w = rng.normal(size=x.shape[1]) * 0.1
for step in range(STEPS):
    idx = rng.integers(0, len(xt), BATCH)
    grad = 2 * xt[idx].T @ (xt[idx] @ w - yt[idx]) / BATCH
    w -= LR * grad
    if step % 20 == 0:
        print(f"step {step:05d} | loss {evaluate(w, xt[idx], yt[idx]):.6f}")
val = evaluate(w, xv, yv)
t1 = time.time()
print("---")
print(f"val_bpb:          {val:.6f}")
print(f"training_seconds: {t1 - t0:.1f}")
print(f"total_seconds:    {t1 - t0:.1f}")
print(f"peak_vram_mb:     0.0")
print(f"num_steps:        {STEPS}")
print(f"num_params_M:     {x.shape[1] / 1e6:.6f}")
'''

KARPATHY_TOML = '''\
harness = ["prepare.py", "utils.py"]
prepare = ["python", "prepare.py"]
run = ["python", "train.py"]

[metric]
name = "val_bpb"
direction = "lower"
'''

# A task with a metric where higher is better: softmax regression on scikit-learn's digits.
DIGITS_PREPARE = '''\
"""Fixed harness: the digits split (scikit-learn ships the dataset)."""
import numpy as np
from sklearn.datasets import load_digits


def split():
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    rng = np.random.default_rng(0)
    order = rng.permutation(len(y))
    x, y = x[order], y[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


if __name__ == "__main__":
    split()
    print("digits ready")
'''

DIGITS_TRAIN = '''\
import os
import time

import numpy as np

from prepare import split

LR = 0.5
EPOCHS = 30

t0 = time.time()
rng = np.random.default_rng(int(os.environ.get("AUTORESEARCH_SEED", "0")))
xt, yt, xv, yv = split()
w = rng.normal(size=(xt.shape[1], 10)) * 0.01
onehot = np.eye(10)[yt]
for epoch in range(EPOCHS):
    for idx in np.array_split(rng.permutation(len(yt)), 10):
        z = xt[idx] @ w
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        w -= LR * xt[idx].T @ (p - onehot[idx]) / len(idx)
acc = float(np.mean(np.argmax(xv @ w, axis=1) == yv))
print("---")
print(f"val_accuracy:     {acc:.6f}")
print(f"training_seconds: {time.time() - t0:.1f}")
print(f"num_steps:        {EPOCHS * 10}")
'''

DIGITS_TOML = '''\
harness = ["prepare.py"]
run = ["python", "train.py"]

[metric]
name = "val_accuracy"
direction = "higher"
'''


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str], branch: str = "master") -> Path:
    """A git repository of someone else's: these files, one commit on `branch`."""
    path.mkdir(parents=True)
    _git(path, "init", "-q", "-b", branch)
    for name, text in files.items():
        (path / name).write_text(text)
    _git(path, "add", "-A")
    _git(path, "-c", "user.name=someone", "-c", "user.email=someone@example.org", "commit", "-q", "-m", "my task")
    return path


def karpathy_repo(path: Path, with_toml: bool = True) -> Path:
    files = {"prepare.py": KARPATHY_PREPARE, "utils.py": KARPATHY_UTILS, "train.py": KARPATHY_TRAIN,
             "program.md": "# program\nEdit train.py only.\n"}
    if with_toml:
        files["autoresearch.toml"] = KARPATHY_TOML
    return make_repo(path, files)


def digits_repo(path: Path) -> Path:
    return make_repo(path, {"prepare.py": DIGITS_PREPARE, "train.py": DIGITS_TRAIN,
                            "autoresearch.toml": DIGITS_TOML})
