"""Bring your own autoresearch, through the real MCP server over stdio: a repository in karpathy's
layout (its own prepare.py + utils.py harness, a train.py that prints only the `---` summary
block) runs a baseline with replicates, a factorial wave and a keep; an edit of its SECOND
harness file is rejected; a higher-is-better task (digits accuracy) judges a broken variant
"worse", ranks best-first and plots."""

from __future__ import annotations

import csv
import json
import subprocess
from pathlib import Path

import pytest
from mcp_harness import git, ledger_experiments, ok, png_of, serve_args, stdio_session
from own_tasks import digits_repo, karpathy_repo

from mcp_server.domain.models import Decision, Status

pytestmark = pytest.mark.anyio


async def _wait(client, **args):
    out = await ok(client, "wait_for_experiments", {"timeout_s": 300, **args})
    assert out["still_running"] == [] and out["timed_out"] is False, out
    return out


async def test_karpathy_layout_task_baseline_wave_keep(tmp_path: Path) -> None:
    repo = karpathy_repo(tmp_path / "theirs")
    cache = tmp_path / "cache"
    user_branches = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads")
    async with stdio_session(serve_args(repo, cache), tmp_path / "server.log") as client:
        base = await ok(client, "launch_experiment", {"description": "baseline", "replicates": 3})
        base_ids = [e["id"] for e in base["experiments"]]
        out = await _wait(client, experiment_ids=base_ids)
        assert all(e["status"] == "done" for e in out["finished"]), out["finished"]
        assert all(e["value"] > 0 and "val_bpb" not in e for e in out["finished"])   # one name: value

        wave = await ok(client, "launch_wave", {"description": "lr x steps", "replicates": 1,
                                                "axes": {"LR": [0.01, 0.1], "STEPS": [20, 120]}})
        assert wave["kind"] == "factorial" and len(wave["experiments"]) == 5   # 4 cells + control
        out = await _wait(client, wave_id=wave["wave_id"])
        cells = [e for e in out["finished"] if e.get("overrides", {})]
        assert len(cells) == 4 and all(e["status"] == "done" for e in cells)
        assert all(e["verdict"] in {"improvement", "within_noise", "worse"} for e in cells)
        notes = [e["note"] for e in cells if e.get("note")]
        assert notes and all("noise n/a" not in n for n in notes)   # the baseline's 3 seeds measured it
        best = min(cells, key=lambda e: e["value"])
        kept = await ok(client, "keep_experiment", {"experiment_id": best["id"],
                                                          "reason": "best cell of the LR x STEPS screen"})
        assert kept["experiment"]["decision"] == "keep"
        assert f"LR = {best['overrides']['LR']}" in (repo / "train.py").read_text()

        # the second harness file is checked too: an edit of utils.py is shipped and rejected
        (repo / "utils.py").write_text((repo / "utils.py").read_text() + "\n# tampered\n")
        bad = await ok(client, "launch_experiment", {"description": "edits the harness"})
        out = await _wait(client, experiment_ids=[bad["experiments"][0]["id"]])
        assert out["finished"][0]["status"] == "rejected"
        assert "utils.py was modified" in out["finished"][0]["error"]
        (repo / "utils.py").write_text((repo / "utils.py").read_text().replace("\n# tampered\n", ""))

        board = await ok(client, "leaderboard", {"limit": 10})
        assert board["leaderboard"]["metric"] == "val_bpb (lower is better)"
        rows = board["leaderboard"]["by_gpu_type"]["CPU"]
        assert [r["val_bpb"] for r in rows] == sorted(r["val_bpb"] for r in rows)

    exps = ledger_experiments(repo)
    assert exps[best["id"]].decision == Decision.keep and exps[best["id"]].metrics.num_steps is not None
    # the user's branches are untouched; ours is the session branch, the snapshots are hidden refs
    assert git(repo, "rev-parse", "master") == git(repo, "rev-parse", "autoresearch/t~1")
    assert user_branches in git(repo, "for-each-ref", "--format=%(refname)", "refs/heads")
    assert git(repo, "for-each-ref", "--format=%(refname)", "refs/autoresearch/experiments").count("\n") >= 8
    assert (repo / ".autoresearch" / "ledger.db").is_file()


async def test_higher_is_better_task_judges_ranks_and_plots_that_way(tmp_path: Path) -> None:
    repo = digits_repo(tmp_path / "digits")
    async with stdio_session(serve_args(repo, tmp_path / "cache"), tmp_path / "server.log") as client:
        base = await ok(client, "launch_experiment", {"description": "baseline", "replicates": 2})
        await _wait(client, experiment_ids=[e["id"] for e in base["experiments"]])
        wave = await ok(client, "launch_wave", {"description": "lr", "replicates": 2,
                                                "axes": {"LR": [0.0, 2.0]}})
        out = await _wait(client, wave_id=wave["wave_id"])
        by_lr = {e.get("overrides", {}).get("LR"): e for e in out["finished"]}
        broken = by_lr[0.0]     # no learning at all: accuracy near chance
        assert broken["status"] == "done" and broken["value"] < 0.3 and "val_bpb" not in broken
        assert broken["verdict"] == "worse", broken
        assert out["metric"] == "val_accuracy (higher is better)"

        board = (await ok(client, "leaderboard", {"limit": 10}))["leaderboard"]
        rows = board["by_gpu_type"]["CPU"]
        assert [r["val_accuracy"] for r in rows] == sorted((r["val_accuracy"] for r in rows), reverse=True)
        broken_ids = {e["id"] for e in out["finished"] if e.get("overrides", {}).get("LR") == 0.0}
        assert rows[-1]["experiment_id"] in broken_ids
        assert rows[-1]["verdict"] == "worse"

        # nothing the agent reads says val_bpb: not the tools' descriptions or output schemas, not a result
        listed = await client.list_tools()
        assert "val_bpb" not in json.dumps([t.model_dump(mode="json") for t in listed.tools])
        assert "val_accuracy" in json.dumps([t.model_dump(mode="json") for t in listed.tools])
        for tool, args in (("wait_for_experiments", {"wave_id": wave["wave_id"], "detail": True}),
                           ("leaderboard", {"limit": 10}), ("fetch_results", {}),
                           ("get_experiment", {"experiment_id": broken["id"]}), ("session_digest", {}),
                           ("analyze_wave", {"wave_id": wave["wave_id"]})):
            res = await client.call_tool(tool, args)
            assert not res.is_error and "val_bpb" not in res.content[0].text, (tool, res.content[0].text[:500])
        verdict = (await ok(client, "wait_for_experiments", {"wave_id": wave["wave_id"], "detail": True}))
        assert any("mean_val_accuracy" in v for v in verdict["verdicts"])

        pic = await client.call_tool("plot_progress", {})
        assert not pic.is_error and png_of(pic).startswith(b"\x89PNG")
        assert "finished with val_accuracy" in pic.content[0].text

    with open(repo / ".autoresearch" / "results.tsv", newline="") as f:
        tsv = list(csv.DictReader(f, delimiter="\t"))
    assert list(tsv[0])[:5] == ["commit", "val_accuracy", "memory_gb", "status", "description"]
    exps = ledger_experiments(repo)
    by_id = {r["id"]: r for r in tsv}
    assert float(by_id[broken["id"]]["val_accuracy"]) == pytest.approx(
        (exps[broken["id"]].metrics.model_extra or {})["val_accuracy"], abs=1e-6)
    assert all(e.status == Status.done for e in exps.values())


def test_runner_rejects_a_change_to_any_harness_file(tmp_path: Path) -> None:
    """The runner alone: a run directory whose task lists two harness files; changing either one
    is a rejection that names it, and the run command never starts."""
    import json
    import sys

    from mcp_server.runtime import runner

    for changed in ("prepare.py", "utils.py"):
        d = tmp_path / changed
        d.mkdir()
        (d / "prepare.py").write_text("X = 1\n")
        (d / "utils.py").write_text("Y = 2\n")
        (d / "train.py").write_text("open('started', 'w').write('1')\nprint('---')\nprint('score: 1.0')\n")
        hashes = {n: runner.harness_hash(d / n) for n in ("prepare.py", "utils.py")}
        pin = runner.harness_pin(hashes)
        (d / runner.TASK_JSON).write_text(json.dumps({"harness": hashes, "run": ["python", "train.py"],
                                                      "metric": "score"}))
        for name in ("runner.py", "run_log.py"):
            (d / name).write_text((Path(runner.__file__).parent / name).read_text())
        ok_run = subprocess.run([sys.executable, "runner.py", "--expected-hash", pin, "--timeout", "30"], cwd=d,
                                capture_output=True, text=True, check=True)
        assert json.loads((d / "result.json").read_text())["status"] == "done", ok_run.stdout
        for stale in ("result.json", "started"):
            (d / stale).unlink()
        (d / changed).write_text((d / changed).read_text() + "# edited\n")
        subprocess.run([sys.executable, "runner.py", "--expected-hash", pin, "--timeout", "30"], cwd=d,
                       capture_output=True, text=True, check=True)
        result = json.loads((d / "result.json").read_text())
        assert result["status"] == "rejected" and f"{changed} was modified" in result["error"]
        assert not (d / "started").exists()


async def test_tool_descriptions_name_the_tasks_metric(tmp_path: Path) -> None:
    repo = digits_repo(tmp_path / "digits")
    async with stdio_session(serve_args(repo, tmp_path / "cache"), tmp_path / "server.log") as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert "ranked by val_accuracy" in (tools["leaderboard"].description or "")
    assert "A chart of val_accuracy" in (tools["plot_progress"].description or "")
    assert not any("val_bpb" in (t.description or "") for t in tools.values())
