"""Analysis: noise floor, verdicts and leaderboards, always within one GPU type."""

from __future__ import annotations

import math
import random
import statistics

import pytest

from mcp_server.analysis import leaderboard, noise_floor, verdicts
from mcp_server.errors import InvalidInput
from mcp_server.models import Decision, Experiment, Metrics, Status

_counter = iter(range(1, 10**9))


def exp(code: str, val: float | None, gpu: str | None = "H100", parent: str | None = "base", *,
        status: Status = Status.done, seed: int = 0, decision: Decision | None = None,
        steps: int | None = None, error: str | None = None, id: str | None = None) -> Experiment:
    n = next(_counter)
    return Experiment(
        id=id or f"e{n:04d}", description=f"{code} seed {seed}", code_hash=code, parent_code_hash=parent,
        seed=seed, status=status, ran_on_gpu=gpu, decision=decision, error=error, created_at=float(n),
        metrics=Metrics(val_bpb=val, num_steps=steps),
    )


def replicates(code: str, values: list[float], gpu: str = "H100", parent: str | None = "base", **kw) -> list[Experiment]:
    return [exp(code, v, gpu, parent, seed=i, **kw) for i, v in enumerate(values)]


# -- noise floor ------------------------------------------------------------------------------


def test_noise_floor_is_the_pooled_std_of_replicated_groups():
    a = replicates("base", [1.000, 1.002, 1.004], parent=None)
    b = replicates("v1", [0.990, 0.994])
    single = [exp("v2", 0.5)]  # one seed: says nothing about noise
    ss = sum((x - 1.002) ** 2 for x in [1.000, 1.002, 1.004]) + sum((x - 0.992) ** 2 for x in [0.990, 0.994])
    assert noise_floor(a + b + single, "H100") == pytest.approx(math.sqrt(ss / (2 + 1)))


def test_noise_floor_is_per_gpu_type_and_ignores_failures():
    runs = replicates("base", [1.0, 1.1], gpu="H200", parent=None) + [
        exp("base", 1.0, "H100", None), exp("base", None, "H100", None, status=Status.crash)]
    assert noise_floor(runs, "H100") is None
    assert noise_floor(runs, "H200") == pytest.approx(statistics.stdev([1.0, 1.1]))
    assert noise_floor([], "H100") is None


# -- verdicts ---------------------------------------------------------------------------------


def test_verdict_rule_uses_two_standard_errors_of_the_difference():
    base = replicates("base", [1.000, 1.002, 1.004], parent=None)  # noise = 0.002, n_ref = 3
    better = exp("fast", 0.990)
    close = exp("close", 0.999)
    worse = exp("slow", 1.010)
    [vb, vc, vw] = verdicts(base + [better, close, worse], [better, close, worse])
    threshold = 2 * 0.002 * math.sqrt(1 / 1 + 1 / 3)
    assert vb.verdict == "improvement" and vb.delta == pytest.approx(-0.012) and vb.threshold == pytest.approx(threshold)
    assert vb.reference_id == base[0].id and vb.reference_replicates == 3 and vb.noise == pytest.approx(0.002)
    assert "Single seed" in vb.note
    assert vc.verdict == "within_noise" and abs(vc.delta) <= threshold
    assert vw.verdict == "worse"


def test_replicated_target_uses_its_group_mean_and_a_tighter_band():
    base = replicates("base", [1.000, 1.002, 1.004], parent=None)
    target = replicates("v", [0.996, 0.997, 0.998])
    [v] = verdicts(base + target, [target[0]])
    assert v.mean_val_bpb == pytest.approx(0.997) and v.replicates == 3 and v.val_bpb == 0.996
    assert v.delta == pytest.approx(-0.005)
    assert v.verdict == "improvement"  # |delta| > 2 * noise * sqrt(2/3)


def test_no_cross_gpu_comparison_and_the_note_names_types_with_a_reference():
    base = replicates("base", [1.0, 1.001], gpu="H100", parent=None)
    target = exp("v", 0.95, gpu="H200")
    [v] = verdicts(base + [target], [target])
    assert v.verdict == "no_reference" and v.delta is None and v.gpu_type == "H200"
    assert "on: H100" in v.note and "not comparable" in v.note and "H200" in v.note


def test_no_reference_anywhere_says_to_launch_a_control():
    target = exp("v", 0.95, parent="never-ran")
    [v] = verdicts([target], [target])
    assert v.verdict == "no_reference" and "control" in v.note


def test_baseline_without_parent_has_no_reference():
    b = exp("base", 1.0, parent=None)
    [v] = verdicts([b], [b])
    assert v.verdict == "no_reference" and "baseline" in v.note


def test_failed_and_pending_targets():
    crashed = exp("v", None, status=Status.crash, error="ZeroDivisionError")
    queued = exp("v", None, gpu=None, status=Status.queued)
    [vc, vq] = verdicts([crashed, queued], [crashed, queued])
    assert vc.verdict == "failed" and "crash" in vc.note and "ZeroDivisionError" in vc.note
    assert vq.verdict == "pending" and "queued" in vq.note


def test_control_is_within_noise_with_zero_delta():
    base = replicates("base", [1.0, 1.003], parent=None)
    control = exp("base", 1.004, parent="base")
    [v] = verdicts(base + [control], [control])
    assert v.verdict == "within_noise" and v.delta == 0.0 and "control" in v.note


def test_without_noise_estimate_the_verdict_says_so():
    base = exp("base", 1.0, parent=None)
    target = exp("v", 0.99)
    [v] = verdicts([base, target], [target])
    assert v.verdict == "improvement" and v.noise is None and v.threshold is None
    assert "launch replicates of the baseline" in v.note


# -- leaderboard ------------------------------------------------------------------------------


def test_leaderboard_groups_seeds_ranks_by_mean_and_separates_gpu_types():
    base = replicates("base", [1.000, 1.002, 1.004], parent=None, steps=900)
    good = replicates("good", [0.980, 0.982], steps=950)
    meh = [exp("meh", 1.001)]
    h200 = replicates("base", [0.995, 0.996], gpu="H200", parent=None)
    board = leaderboard(base + good + meh + h200)
    assert set(board.by_gpu_type) == {"H100", "H200"}
    rows = board.by_gpu_type["H100"]
    assert [r.code_hash for r in rows] == ["good", "meh", "base"]
    assert [r.rank for r in rows] == [1, 2, 3]
    assert rows[0].val_bpb == pytest.approx(0.981) and rows[0].seeds == 2
    assert rows[0].std == pytest.approx(statistics.stdev([0.980, 0.982]))
    assert rows[0].num_steps == 950 and rows[0].experiment_id == good[0].id
    assert rows[0].experiment_ids == [e.id for e in good]
    # The baseline (code others derive from) is the reference; no H200 result is compared with H100.
    assert board.reference["H100"] == base[0].id and rows[2].verdict == "reference" and rows[2].delta == 0
    assert rows[0].verdict == "improvement" and rows[0].delta == pytest.approx(0.981 - 1.002)
    assert rows[1].verdict == "within_noise"
    assert board.by_gpu_type["H200"][0].verdict == "reference"
    assert board.noise_floor["H100"] is not None and board.noise_floor["H200"] is not None
    assert any("H100 and H200" in n and "not comparable" in n for n in board.notes)


def test_reference_is_the_best_kept_group_when_something_was_kept():
    base = replicates("base", [1.0, 1.001], parent=None)
    kept = [exp("k1", 0.99, decision=Decision.keep)]
    better = [exp("k2", 0.97, parent="k1")]
    board = leaderboard(base + kept + better)
    assert board.reference["H100"] == kept[0].id
    row = {r.code_hash: r for r in board.by_gpu_type["H100"]}
    assert row["k1"].verdict == "reference" and row["k1"].decision == "keep"
    assert row["base"].delta == pytest.approx(1.0005 - 0.99) and row["base"].verdict == "worse"
    assert any("best kept" in n for n in board.notes)


def test_reference_falls_back_to_the_first_result():
    a = exp("a", 1.0, parent=None)
    b = exp("b", 0.9, parent=None)
    board = leaderboard([a, b])
    assert board.reference["H100"] == a.id
    assert any("first result" in n for n in board.notes)
    assert any("no noise estimate" in n for n in board.notes)


def test_leaderboard_filter_limit_and_unranked_notes():
    runs = replicates("base", [1.0, 1.001], parent=None) + [exp(f"v{i}", 0.9 + i / 1000) for i in range(10)]
    runs += [exp("x", None, status=Status.crash), exp("y", None, status=Status.nan), exp("z", None, gpu=None, status=Status.running)]
    runs += [exp("base", 0.99, gpu="H200", parent=None)]
    board = leaderboard(runs, gpu_type="h100", limit=3)  # type names match case-insensitively
    assert list(board.by_gpu_type) == ["H100"] and len(board.by_gpu_type["H100"]) == 3
    assert not any("not comparable" in n for n in board.notes)
    assert any("ranks below the top 3" in n for n in board.notes)
    assert any("Not ranked (no val_bpb): 1 crash, 1 nan" in n for n in board.notes)
    assert any("1 experiment is still queued or running" in n for n in board.notes)
    empty = leaderboard(runs, gpu_type="A100")
    assert empty.by_gpu_type == {} and "GPU types with results: H100, H200" in empty.notes[0]


@pytest.mark.parametrize("limit", [0, -1, 1001, "5", True, 2.5])
def test_leaderboard_rejects_bad_limit(limit):
    with pytest.raises(InvalidInput, match="limit must be an integer from 1 to 1000"):
        leaderboard([], limit=limit)


def test_leaderboard_rejects_bad_gpu_type():
    with pytest.raises(InvalidInput, match="gpu_type must be a GPU type name"):
        leaderboard([], gpu_type=["H100"])  # type: ignore[arg-type]


def test_leaderboard_of_nothing():
    board = leaderboard([])
    assert board.by_gpu_type == {} and board.noise_floor == {}


def test_leaderboard_at_10000_experiments():
    rng = random.Random(0)
    runs = []
    for i in range(10_000):
        gpu = "H100" if i % 4 else "H200"
        code = f"c{rng.randrange(2500)}"
        runs.append(Experiment(
            id=f"e{i:05d}", description=f"variant {code}", code_hash=code, parent_code_hash="c0",
            seed=i, ran_on_gpu=gpu, created_at=float(i),
            status=Status.done if i % 10 else Status.crash,
            decision=Decision.keep if i % 997 == 0 else None,
            metrics=Metrics(val_bpb=1.0 + rng.gauss(0, 0.01) if i % 10 else None, num_steps=900),
        ))
    # Its speed (target < 50 ms) is measured by benchmarks/scheduler_utilization.py, not asserted here.
    board = leaderboard(runs)
    assert len(board.by_gpu_type["H100"]) == 20
    means = [row.val_bpb for row in board.by_gpu_type["H100"]]
    assert means == sorted(means)
