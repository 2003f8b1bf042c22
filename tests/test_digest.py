"""The session digest: bounded whatever the ledger size, complete on what matters (every kept
change, every constant explored), deterministic, identical after a restart. A real ledger built
through its API (1,000 experiments), read by a real Engine."""

from __future__ import annotations

import random
import time

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.digest import build_digest
from mcp_server.domain.limits import MAX_DIGEST_CHARS
from mcp_server.domain.metric import DEFAULT_METRIC
from mcp_server.domain.models import Decision, Experiment, Metrics, Status, Wave
from mcp_server.engine.facade import Engine

CONSTANTS = {"MATRIX_LR": [0.02, 0.03, 0.04, 0.06], "DEPTH": [4, 6, 8], "WEIGHT_DECAY": [0.0, 0.1],
             "WARMUP_RATIO": [0.0, 0.05], "ADAM_BETA2": [0.95, 0.99], "HEAD_DIM": [64, 128],
             "EMBEDDING_LR": [0.2, 0.4, 0.6], "WINDOW_PATTERN": ["SSSL", "L"]}
N = 1000
KEPT = 12


def build_ledger(workspace, rng: random.Random) -> dict:
    """N experiments in waves over CONSTANTS, a chain of KEPT keeps with reasons, hand-written code
    changes, failures of a few classes, and some live ones."""
    eng = Engine(FleetConfig(workspace=workspace, tag="digest", profile="cpu", cpu_slots=2))
    ledger = eng.ledger
    t0 = time.time() - N * 10
    names = list(CONSTANTS)
    code = "c0"                       # the current kept code
    kept: list[tuple[str, str]] = []
    seq = 0
    wave_no = 0
    try:
        while seq < N:
            wave_no += 1
            wid = f"w{wave_no:04d}"
            axes = {n: CONSTANTS[n] for n in rng.sample(names, 2)}
            cells = [{a: rng.choice(v) for a, v in axes.items()} for _ in range(8)]
            exps = []
            for k, cell in enumerate(cells + [{}, {}]):   # 8 cells + 2 control runs
                seq += 1
                if seq > N:
                    break
                hand = not cell and k == 9 and wave_no % 3 == 0     # a hand-written change now and then
                ch = code if not cell and not hand else f"{code}-{wid}-{k}"
                exps.append(Experiment(
                    id=f"e{seq:04d}", description=("hand-written: rope scaling " + wid) if hand else
                    f"{wid} {' '.join(f'{a}={v}' for a, v in cell.items()) or 'control'}", wave_id=wid,
                    commit=f"{rng.getrandbits(160):040x}", code_hash=ch, parent_code_hash=code,
                    harness_hash=eng.harness_hash, overrides=cell, seed=42 + k % 2, gpu_type="H100",
                    created_at=t0 + seq * 10, hypothesis=f"hypothesis of {wid}"))
            ledger.insert_launch(exps, {e.id: "factorial" for e in exps},
                                 Wave(id=wid, description=f"wave {wid}", kind="factorial",
                                      design={"axes": axes, "hypothesis": f"hypothesis of {wid}"},
                                      experiment_ids=[e.id for e in exps], created_at=t0 + seq * 10))
            best = None
            for e in exps:
                if seq >= N - 5 and e is exps[-1]:
                    continue                                    # the last few stay queued
                ledger.begin_attempt(e.id, 1, "h100-1", "H100", 1, 3.0, str(workspace / "runs" / e.id))
                roll = rng.random()
                if roll < 0.08:
                    err = rng.choice(["CUDA out of memory at 31.2 GiB", "loss is nan at step 120",
                                      "RuntimeError: shape mismatch 64 vs 128"])
                    st = Status.oom if "memory" in err else Status.nan if "nan" in err else Status.crash
                    ledger.finish_attempt(e.id, 1, st, error=err, busy_seconds=30.0)
                    continue
                v = 1.0 - 0.01 * len(kept) + rng.gauss(0, 0.003) - 0.004 * bool(e.overrides)
                ledger.finish_attempt(e.id, 1, Status.done, metrics=Metrics(val_bpb=v, num_steps=100),
                                      busy_seconds=300.0)
                if e.overrides and (best is None or v < best[1]):
                    best = (e, v)
            if best is not None and len(kept) < KEPT and wave_no % 4 == 1:
                e = best[0]
                reason = f"kept {e.id}: beyond noise, reason {len(kept) + 1}"
                assert ledger.set_decision(e.id, Decision.keep, reason=reason)
                kept.append((e.id, reason))
                code = e.code_hash
        return {"kept": kept, "constants": names}
    finally:
        ledger.close()


def test_a_1000_experiment_digest_is_bounded_complete_and_survives_a_restart(tmp_path):
    ws = tmp_path / "ws"
    facts = build_ledger(ws, random.Random(12))
    eng = Engine(FleetConfig(workspace=ws, tag="digest", profile="cpu", cpu_slots=2))
    try:
        d = eng.session_digest()
        again = eng.session_digest()
    finally:
        eng.ledger.close()
    text = d.text
    print(f"digest: {d.chars} chars for {d.experiments} experiments")
    assert d.experiments == N and d.chars == len(text) <= MAX_DIGEST_CHARS
    assert again.text == text
    assert len(facts["kept"]) == KEPT
    for eid, reason in facts["kept"]:              # every kept change, with its reason
        assert eid in text and reason in text, eid
    for name in facts["constants"]:                # every constant explored
        assert f"{name}: tried" in text, name
    assert "== near misses" in text and "== failures" in text and "oom x" in text and "(e.g. e" in text
    assert "hand-written: rope scaling" in text and "H100: noise" in text
    assert "queued" in text and "== next step:" in text and "GPU-hours spent" in text

    # a restart (a new engine on the same ledger) gives the identical digest
    eng2 = Engine(FleetConfig(workspace=ws, tag="digest", profile="cpu", cpu_slots=2))
    try:
        assert eng2.session_digest().text == text
    finally:
        eng2.ledger.close()


def test_the_digest_is_deterministic_and_capped_with_counts():
    rng = random.Random(3)
    exps = []
    for i in range(1, 400):
        exps.append(Experiment(
            id=f"e{i:04d}", description=f"try {i}", code_hash=f"c{i}", parent_code_hash="c0", seed=42,
            overrides={f"CONST_{i % 40}": i}, status=Status.done, ran_on_gpu="H100", created_at=float(i),
            decision=Decision.keep if i % 5 == 0 else None, reason=f"why {i}" if i % 5 == 0 else None,
            metrics=Metrics(val_bpb=1.0 + rng.gauss(0, 0.01))))
    kw = dict(noise={"H100": 0.01}, gpu_hours=12.5, gpu_hour_budget=100.0, time_budget_s=300.0)
    a = build_digest(exps, [], DEFAULT_METRIC, **kw)
    b = build_digest(list(reversed(exps)), [], DEFAULT_METRIC, **kw)
    assert a.text == b.text and a.chars <= MAX_DIGEST_CHARS
    assert "and 55 earlier keeps" in a.text        # 79 keeps, the latest 24 shown
    assert "and 16 more constants" in a.text       # 40 constants, 24 shown, the rest named
    assert "CONST_9" in a.text and "87.50 of 100" in a.text
