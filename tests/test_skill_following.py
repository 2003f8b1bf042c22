"""The skill-following scenario: a scripted MCP client performs exactly the workflow the skills
prescribe (skills/fleet-research-loop, factorial-waves, hardware-tiering, cluster-operations),
against the real server process over stdio, and the outcome is checked in the ledger and in git.

SIMULATION: there are no GPUs here. The server runs on the local backend with its CPU slots
labelled as GPU types (`serve --simulate-tiers`, i.e. FleetConfig.slot_labels): five slots called
H100 (the common tier) and two called H200 (the fast tier). The labels exercise the tiering
workflow - per-type baselines, per-type noise floors and verdicts, promotion - but the "H200"
slots are no faster than the "H100" ones; the server marks every such slot `simulated`.

The workflow, step by step as the skills say it:
 1. setup: get_gpu_info, list_clusters, budget_status; common tier = most clusters, fast = the other
 2. baseline: the unmodified code with 3 replicates on EACH GPU type; a noise floor per type
 3. screen: a 2 x 2 factorial wave plus its control on the common tier, one seed per cell
 4. promote the top 2 cells to the fast tier with 3 replicates each
 5. read the verdicts there (never across tiers); keep the best improvement, discard the rest
 6. end: leaderboard, plot_progress, budget_status, teardown_clusters(all_clusters=true)
"""

from __future__ import annotations

import csv
from typing import Any

import pytest
from mcp_harness import git, ledger_experiments, ok, serve_args, stdio_session

from mcp_server.domain.models import Decision, Status

pytestmark = pytest.mark.anyio

TIERS = ["H100"] * 5 + ["H200"] * 2           # SIMULATION: labels on local CPU slots
SCREEN_AXES = {"DEPTH": [4, 6], "ASPECT_RATIO": [32, 48]}  # smaller models: more steps in a 2 s budget
REPLICATES = 3
TOP = 2
BUDGET_S = 2.0
WAIT_S = 900
TAG = "skills"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def wait_done(client, **args: Any) -> dict[str, Any]:
    out = await ok(client, "wait_for_experiments", {"timeout_s": WAIT_S, **args})
    assert out["still_running"] == [] and not out["timed_out"], out
    return out


def main_effects(cells: list[dict[str, Any]], axes: dict[str, list[Any]]) -> dict[str, dict[Any, float]]:
    """The factorial-waves skill's reading of a grid: per factor, the mean val_bpb at each level."""
    effects: dict[str, dict[Any, float]] = {}
    for name, levels in axes.items():
        effects[name] = {}
        for level in levels:
            values = [c["value"] for c in cells if c.get("overrides", {}).get(name) == level]
            effects[name][level] = sum(values) / len(values)
    return effects


async def test_skill_following_two_tier_simulation(tmp_path, cache):  # noqa: F811
    ws = tmp_path / "research"
    args = serve_args(ws, cache, tag=TAG, slots=len(TIERS), budget=BUDGET_S,
                      extra=["--simulate-tiers", ",".join(TIERS)])
    log = tmp_path / "server.log"
    async with stdio_session(args, log) as client:
        # -- 1. setup: look at the fleet (fleet-research-loop step 1, hardware-tiering) ---------
        info = await ok(client, "get_gpu_info")
        types = {t["gpu_type"]: t for t in info["gpu_types"]}
        assert set(types) == {"H100", "H200"}
        assert all(t["simulated"] for t in types.values()), "labelled local slots must say they are a simulation"
        common = max(types, key=lambda g: types[g]["clusters"])
        fast = next(g for g in types if g != common)
        assert (common, types[common]["clusters"], types[fast]["clusters"]) == ("H100", 5, 2)
        clusters = await ok(client, "list_clusters")
        assert clusters["total"] == len(TIERS) and all(c["simulated"] for c in clusters["clusters"])
        budget = await ok(client, "budget_status")
        assert budget["experiments_live"] == 0
        branch = f"autoresearch/{TAG}"
        start_commit = git(ws, "rev-parse", branch)
        start_train = (ws / "train.py").read_text()

        # -- 2. baseline with replicates on every GPU type ------------------------------------
        baseline: dict[str, list[str]] = {}
        for gpu in (common, fast):
            res = await ok(client, "launch_experiment", {"description": "baseline: unmodified train.py",
                                                         "replicates": REPLICATES, "gpu_type": gpu})
            baseline[gpu] = [e["id"] for e in res["experiments"]]
            assert len(baseline[gpu]) == REPLICATES
        out = await wait_done(client, experiment_ids=baseline[common] + baseline[fast])
        assert {e["status"] for e in out["finished"]} == {"done"}, [e.get("error") for e in out["finished"]]
        for e in out["finished"]:
            assert e["gpu_type"] == (common if e["id"] in baseline[common] else fast)
        board = (await ok(client, "leaderboard", {}))["leaderboard"]
        assert set(board["by_gpu_type"]) == {common, fast}, "one table per GPU type"
        assert all(board["noise_floor"][g] is not None for g in (common, fast)), "a noise floor per type"
        assert any("not comparable" in n for n in board["notes"])
        info = await ok(client, "get_gpu_info")
        measured = {t["gpu_type"]: t["measured"] for t in info["gpu_types"]}
        assert all(measured[g] and measured[g]["runs"] >= REPLICATES for g in (common, fast)), measured

        # -- 3. screen a factorial wave on the common tier ------------------------------------
        wave = await ok(client, "launch_wave", {"description": "screen: depth x aspect ratio",
                                                "axes": SCREEN_AXES, "gpu_type": common})
        assert wave["kind"] == "factorial" and len(wave["experiments"]) == 4 + 1  # 2 x 2 cells + control
        assert wave["design"]["gpu_type"] == common and all("gpu_type" not in e for e in wave["experiments"])
        out = await wait_done(client, wave_id=wave["wave_id"])
        finished = {e["id"]: e for e in out["finished"]}
        cells = [e for e in finished.values() if e.get("overrides", {})]
        assert len(cells) == 4 and all(e["status"] == "done" for e in cells) and out["gpu_type"] == common
        for c in cells:       # each row carries its verdict (vs the same-tier reference) and delta
            assert c["verdict"] in {"improvement", "within_noise", "worse"} and c["delta"] is not None
        effects = main_effects(cells, SCREEN_AXES)
        assert all(len(levels) == 2 for levels in effects.values())
        top = [c["id"] for c in sorted(cells, key=lambda c: c["value"])[:TOP]]

        # -- 4. promote the top 2 to the fast tier with replicates ----------------------------
        promo = await ok(client, "promote", {"experiment_ids": top, "gpu_type": fast, "replicates": REPLICATES})
        assert promo["kind"] == "promotion"
        promoted = [e for e in promo["experiments"] if e.get("overrides", {})]
        # The baseline already has REPLICATES runs on the fast tier: it is the reference, no extra control.
        assert len(promo["experiments"]) == len(promoted) == TOP * REPLICATES
        assert promo["design"]["gpu_type"] == fast and all("gpu_type" not in e for e in promo["experiments"])
        assert sorted(map(str, (e.get("overrides", {}) for e in promoted))) == sorted(
            map(str, (finished[i].get("overrides", {}) for i in top for _ in range(REPLICATES))))
        out = await wait_done(client, wave_id=promo["wave_id"])
        assert {e["status"] for e in out["finished"]} == {"done"} and out["gpu_type"] == fast

        # -- 5. read the verdicts on the fast tier only (in full before a keep); keep or discard ---
        out = await ok(client, "wait_for_experiments", {"wave_id": promo["wave_id"], "detail": True})
        verdicts = {v["experiment_id"]: v for v in out["verdicts"]}
        exps = ledger_experiments(ws)
        for v in verdicts.values():
            assert v["gpu_type"] == fast and v["replicates"] == REPLICATES
            ref = exps[v["reference_id"]]
            assert ref.ran_on_gpu == fast, "a fast-tier verdict must never be measured against the common tier"
            assert ref.code_hash == exps[baseline[fast][0]].code_hash
        print(f"screen on {common}: main effects {effects}; top {top}")
        print("promoted on", fast, [(v["experiment_id"], v["verdict"], round(v["delta"], 5), round(v["threshold"], 5))
                                   for v in verdicts.values() if v.get("delta") is not None])
        wins = [v for v in verdicts.values() if v["verdict"] == "improvement" and v["replicates"] >= 2]
        kept = min(wins, key=lambda v: v["mean_val_bpb"])["experiment_id"] if wins else None
        if kept:
            res = await ok(client, "keep_experiment", {"experiment_id": kept})
            assert res["branch"] == branch
        print("kept:", kept)
        for eid in [*finished, *verdicts]:
            e = exps[eid]
            if eid != kept and e.overrides and e.decision is None:
                await ok(client, "discard_experiment", {"experiment_id": eid})

        # -- 6. end of session: record, check the money, tear down ----------------------------
        board = (await ok(client, "leaderboard", {"gpu_type": fast}))["leaderboard"]
        assert list(board["by_gpu_type"]) == [fast]
        pic = await client.call_tool("plot_progress", {})
        assert not pic.is_error and (ws / "progress.png").is_file()
        budget = await ok(client, "budget_status")
        assert budget["experiments_live"] == 0 and budget["gpu_hours_spent"] > 0
        down = await ok(client, "teardown_clusters", {"all_clusters": True})
        assert down["removed"] == []  # local slots are this machine: nothing to stop or pay for
        budget = await ok(client, "budget_status")
        assert budget["experiments_live"] == 0

    # -- the outcome, in the ledger and in git ------------------------------------------------
    exps = ledger_experiments(ws)
    assert all(e.status == Status.done for e in exps.values()), {i: e.status for i, e in exps.items()}
    assert len(exps) == 2 * REPLICATES + 5 + TOP * REPLICATES
    # every experiment ran on the tier it was launched for
    assert all(e.ran_on_gpu == e.gpu_type for e in exps.values())
    # nothing with overrides is left undecided; at most one code was kept
    assert all(e.decision is not None for e in exps.values() if e.overrides)
    kept_ids = [i for i, e in exps.items() if e.decision == Decision.keep]
    head = git(ws, "rev-parse", branch)
    if kept:
        assert kept_ids == [kept]
        k = exps[kept]
        assert k.ran_on_gpu == fast and k.wave_id == promo["wave_id"]
        assert head == k.commit != start_commit
        assert git(ws, "show", f"{head}:train.py") == (ws / "train.py").read_text().rstrip("\n")
        for name, value in k.overrides.items():
            assert f"{name} = {value!r}" in (ws / "train.py").read_text()
    else:
        assert kept_ids == [] and head == start_commit and (ws / "train.py").read_text() == start_train
    assert git(ws, "symbolic-ref", "HEAD") == f"refs/heads/{branch}"
    with open(ws / ".autoresearch" / "results.tsv", newline="") as f:
        rows = {r["id"]: r for r in csv.DictReader(f, delimiter="\t")}
    assert set(rows) == set(exps)
    assert {rows[i]["gpu"] for i in baseline[common]} == {common}
    assert {rows[i]["gpu"] for i in baseline[fast]} == {fast}
    assert "Traceback" not in log.read_text()
