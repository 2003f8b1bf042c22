"""The baseline train.py, trained for real on the cpu profile: summary + RESULT_JSON, a val_bpb
better than the model at initialisation, the time budget, NaN failure, deterministic eval, and
constants that an AST rewrite can change on both profiles."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcp_server.domain.variants import apply_overrides, list_constants

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "train_template"
SUMMARY_KEYS = ["val_bpb", "training_seconds", "total_seconds", "peak_vram_mb", "mfu_percent",
                "total_tokens_M", "num_steps", "num_params_M", "depth", "device"]
TUNABLES = ["DEPTH", "ASPECT_RATIO", "HEAD_DIM", "MLP_RATIO", "WINDOW_PATTERN", "LOGIT_SOFTCAP", "TOTAL_BATCH_SIZE",
            "DEVICE_BATCH_SIZE", "MATRIX_LR", "MUON_MOMENTUM", "EMBEDDING_LR", "UNEMBEDDING_LR", "SCALAR_LR",
            "ADAM_BETAS", "WEIGHT_DECAY", "WARMUP_RATIO", "WARMDOWN_RATIO", "FINAL_LR_FRAC",
            "CPU_DEPTH_DIVISOR", "CPU_WIDTH_DIVISOR", "CPU_BATCH_DIVISOR"]


def run_dir(tmp_path: Path, **overrides) -> Path:
    """A run directory like the runner's: prepare.py + train.py, with constants rewritten."""
    d = tmp_path / "run"
    d.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(TEMPLATE / "prepare.py", d / "prepare.py")
    source = (TEMPLATE / "train.py").read_text()
    (d / "train.py").write_text(apply_overrides(source, overrides) if overrides else source)  # the engine's AST rewrite
    return d


def train(d: Path, cache: Path, budget: float | None = None,
          timeout: float = 300) -> tuple[subprocess.CompletedProcess, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AUTORESEARCH_")}
    env.update(AUTORESEARCH_PROFILE="cpu", AUTORESEARCH_DATA="demo", AUTORESEARCH_CACHE=str(cache),
               AUTORESEARCH_THREADS="1", AUTORESEARCH_SEED="42")
    if budget is not None:
        env["AUTORESEARCH_TIME_BUDGET"] = str(budget)
    t0 = time.time()
    proc = subprocess.run([sys.executable, "train.py"], cwd=d, env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout)
    return proc, time.time() - t0


def load_template(monkeypatch, d: Path, cache: Path, profile: str = "cpu"):
    """Import prepare.py and train.py from d in-process (train.py's training sits under __main__)."""
    for key in [k for k in os.environ if k.startswith("AUTORESEARCH_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("AUTORESEARCH_PROFILE", profile)
    monkeypatch.setenv("AUTORESEARCH_DATA", "demo")
    monkeypatch.setenv("AUTORESEARCH_CACHE", str(cache))
    modules = []
    for name in ("prepare", "train"):
        spec = importlib.util.spec_from_file_location(name, d / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, name, module)
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def summary(stdout: str) -> tuple[dict[str, str], dict]:
    lines = stdout.rstrip("\n").splitlines()
    sep = len(lines) - 1 - lines[::-1].index("---")
    block = dict(line.split(":", 1) for line in lines[sep + 1:-1])
    assert lines[-1].startswith("RESULT_JSON: "), "RESULT_JSON must be the last line"
    return {k: v.strip() for k, v in block.items()}, json.loads(lines[-1][len("RESULT_JSON: "):])


def init_bpb(monkeypatch, d: Path, cache: Path) -> float:
    prepare, train_mod = load_template(monkeypatch, d, cache)
    model = train_mod.build_model(prepare.Tokenizer.load().vocab_size, "cpu")
    return prepare.evaluate_bpb(model, 8)


def test_cpu_baseline_trains_within_budget_and_beats_its_initialisation(tmp_path, prepared_cache, monkeypatch):
    d = run_dir(tmp_path)
    proc, wall = train(d, prepared_cache)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    block, result = summary(proc.stdout)
    assert list(block) == SUMMARY_KEYS
    assert list(result) == SUMMARY_KEYS
    budget = 15.0  # the cpu profile's
    assert wall < budget + 60
    assert result["training_seconds"] >= budget
    assert result["device"] == block["device"] == "cpu"
    assert result["mfu_percent"] is None and block["mfu_percent"] == "n/a"
    assert result["depth"] == 2 and result["num_steps"] > 10 and result["peak_vram_mb"] > 0
    assert f"{result['val_bpb']:.6f}" == block["val_bpb"]
    assert result["total_seconds"] > result["training_seconds"]

    val_bpb = result["val_bpb"]
    assert math.isfinite(val_bpb) and val_bpb > 0
    at_init = init_bpb(monkeypatch, d, prepared_cache)
    assert math.isfinite(at_init)
    assert val_bpb < at_init - 0.5, (val_bpb, at_init)  # it learned, clearly
    print(f"cpu baseline: val_bpb {val_bpb} (init {at_init:.4f}), training {result['training_seconds']}s, "
          f"total {result['total_seconds']}s, overhead {result['total_seconds'] - result['training_seconds']:.1f}s")


def test_time_budget_is_honoured(tmp_path, prepared_cache):
    budget = 3.0
    proc, _ = train(run_dir(tmp_path), prepared_cache, budget=budget)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _, result = summary(proc.stdout)
    timed_steps = int(re.search(r"\((\d+) timed\)", proc.stdout).group(1))
    mean_step = result["training_seconds"] / timed_steps
    # the loop stops at the first step that reaches the budget: never early, at most one step late
    # (slack: steps on a shared CPU vary a lot, and the figure is rounded to 0.1 s)
    assert budget <= result["training_seconds"] < budget + 3 * mean_step + 0.5, (result, mean_step)


def test_diverging_run_fails_with_nonzero_exit(tmp_path, prepared_cache):
    d = run_dir(tmp_path, MATRIX_LR=1e6, EMBEDDING_LR=1e6, UNEMBEDDING_LR=1e6, SCALAR_LR=1e6)
    proc, _ = train(d, prepared_cache, budget=10)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    fails = [line for line in proc.stdout.splitlines() if line.startswith("FAIL:")]
    assert len(fails) == 1 and ("nan" in fails[0] or "exploded" in fails[0])
    assert "RESULT_JSON" not in proc.stdout


def test_evaluation_is_deterministic(tmp_path, prepared_cache, monkeypatch, request):
    import torch

    prepare, train_mod = load_template(monkeypatch, run_dir(tmp_path), prepared_cache)
    vocab = prepare.Tokenizer.load().vocab_size
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CPU is shared; the assertions hold for any thread count
    request.addfinalizer(lambda: torch.set_num_threads(threads))

    def trained_model():
        model = train_mod.build_model(vocab, "cpu")
        optimizers = train_mod.make_optimizers(model)
        loader = prepare.make_dataloader(4, "train", seed=3)
        for _ in range(5):  # a few real steps, so the model is not the near-uniform initialisation
            x, y, _ = next(loader)
            model(x, y).backward()
            for opt in optimizers:
                opt.step()
            model.zero_grad(set_to_none=True)
        return model

    model = trained_model()
    first = prepare.evaluate_bpb(model, 8)
    assert prepare.evaluate_bpb(model, 8) == pytest.approx(first, abs=1e-6)
    assert prepare.evaluate_bpb(model, 32) == pytest.approx(first, abs=1e-5)  # batch size does not matter
    assert prepare.evaluate_bpb(trained_model(), 8) == pytest.approx(first, abs=1e-6)  # same seed, same model


def test_tunables_are_module_level_literals_that_change_both_profiles(tmp_path, prepared_cache, monkeypatch):
    constants = list_constants((TEMPLATE / "train.py").read_text())  # what the engine can override
    assert set(TUNABLES) <= set(constants), set(TUNABLES) - set(constants)
    assert constants["TOTAL_BATCH_SIZE"] == 2**19 and constants["WINDOW_PATTERN"] == "L"

    def config(profile, **overrides):
        _, train_mod = load_template(monkeypatch,
                                     run_dir(tmp_path / f"{profile}{len(overrides)}{sorted(overrides)}", **overrides),
                                     prepared_cache, profile)
        return train_mod.model_config(8192 if profile == "gpu" else 1024), train_mod

    gpu, gpu_mod = config("gpu")
    assert (gpu.n_layer, gpu.model_dim, gpu.n_head, gpu.head_dim) == (8, 512, 4, 128)  # karpathy/autoresearch's
    import torch
    with torch.device("meta"):
        params = sum(p.numel() for p in gpu_mod.GPT(gpu).parameters())
    assert 45e6 < params < 55e6
    cpu, _ = config("cpu")
    assert (cpu.n_layer, cpu.model_dim, cpu.n_head, cpu.head_dim) == (2, 64, 4, 16)

    gpu4, _ = config("gpu", DEPTH=4)
    cpu4, _ = config("cpu", DEPTH=4)
    assert gpu4.n_layer == 4 and cpu4.n_layer == 1  # the same edit shrinks both
    assert cpu4.model_dim < cpu.model_dim
    wide, _ = config("cpu", ASPECT_RATIO=128)
    assert wide.model_dim == 2 * cpu.model_dim and wide.n_layer == cpu.n_layer
