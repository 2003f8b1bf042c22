"""Adopting an existing autoresearch repo: `autoresearch-fleet init` (decides the task description
from what is there and says so) and `import-results` (an earlier results.tsv as history: marked
imported, commits linked, ranked but never a noise estimate, idempotent, all-or-nothing)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from mcp_harness import REPO, git, ledger_experiments
from own_tasks import karpathy_repo, make_repo

from mcp_server.domain import analysis
from mcp_server.domain.metric import Metric
from mcp_server.domain.task import load_task


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mcp_server.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=120)


def test_init_detects_karpathys_layout_and_the_metric_of_the_last_run_log(tmp_path: Path) -> None:
    repo = karpathy_repo(tmp_path / "theirs", with_toml=False)
    (repo / "prepare.py").write_text((repo / "prepare.py").read_text() + "\nTIME_BUDGET = 300\n")
    (repo / "run.log").write_text("step 1\n---\nval_accuracy:     0.91\ntraining_seconds: 300.0\n")
    before = git(repo, "status", "--porcelain")
    out = cli("init", str(repo))
    assert out.returncode == 0, out.stderr
    assert "metric: val_accuracy, from the summary block of run.log; higher is better" in out.stdout
    assert "harness: prepare.py" in out.stdout and "budget: gpu 300 s" in out.stdout
    task = load_task(repo)
    assert task.metric == Metric(name="val_accuracy", direction="higher")
    assert task.harness == ["prepare.py"] and task.prepare == ["python", "prepare.py"] and task.budget == {
        "gpu": 300.0, "cpu": 15.0}
    # only the description was added; nothing of the user's changed
    assert set(git(repo, "status", "--porcelain").splitlines()) == set(before.splitlines()) | {"?? autoresearch.toml"}
    again = cli("init", str(repo))
    assert again.returncode == 0 and "kept" in again.stdout


def test_init_without_a_log_defaults_to_val_bpb_and_refuses_a_repo_without_train_py(tmp_path: Path) -> None:
    repo = karpathy_repo(tmp_path / "plain", with_toml=False)
    assert cli("init", str(repo)).returncode == 0
    assert load_task(repo).metric == Metric(name="val_bpb", direction="lower")
    other = make_repo(tmp_path / "other", {"model.py": "x = 1\n"})
    out = cli("init", str(other))
    assert out.returncode == 1 and "has no train.py" in out.stderr
    assert not (other / "autoresearch.toml").exists()


TSV = (
    "commit\tval_rmse\tmemory_gb\tstatus\tdescription\n"
    "{c1}\t0.500000\t1.0\tkeep\tbaseline\n"
    "{c1}\t0.520000\t1.0\tdiscard\tbaseline again (repeated commit)\n"
    "{c2}\t0.450000\t1.1\tkeep\tdeeper trees\n"
    "{c2}\t0.450000\t1.1\tkeep\tdeeper trees\n"
    "abcdef1\t0.000000\t0.0\tcrash\tgone commit\n"
)


def _xgb_repo(tmp_path: Path) -> tuple[Path, str, str]:
    repo = karpathy_repo(tmp_path / "xgb", with_toml=False)
    (repo / "autoresearch.toml").write_text('harness = ["prepare.py", "utils.py"]\n'
                                            '[metric]\nname = "val_rmse"\ndirection = "lower"\n')
    c1 = git(repo, "rev-parse", "--short=7", "HEAD")
    (repo / "train.py").write_text((repo / "train.py").read_text().replace("STEPS = 60", "STEPS = 80"))
    git(repo, "-c", "user.name=a", "-c", "user.email=a@b", "commit", "-qam", "deeper")
    c2 = git(repo, "rev-parse", "--short=7", "HEAD")
    return repo, c1, c2


def test_import_results_links_commits_ranks_is_idempotent_and_never_a_noise_estimate(tmp_path: Path) -> None:
    repo, c1, c2 = _xgb_repo(tmp_path)
    tsv = tmp_path / "results.tsv"
    tsv.write_text(TSV.format(c1=c1, c2=c2))
    out = cli("import-results", str(tsv), "--workspace", str(repo), "--gpu-type", "H100")
    assert out.returncode == 0, out.stderr
    assert "imported 5 row(s)" in out.stdout and "metric val_rmse" in out.stdout
    again = cli("import-results", str(tsv), "--workspace", str(repo), "--gpu-type", "H100")
    assert again.returncode == 0 and "imported 0 row(s)" in again.stdout and "5 already" in again.stdout

    exps = ledger_experiments(repo)
    assert len(exps) == 5 and all(e.imported for e in exps.values())
    linked = [e for e in exps.values() if e.commit and len(e.commit) == 40]
    assert len(linked) == 4 and all(e.code_hash for e in linked)          # the repo has c1 and c2
    gone = next(e for e in exps.values() if e.status.value == "crash")
    assert gone.commit == "abcdef1" and gone.code_hash is None
    assert {(e.metrics.model_extra or {}).get("val_rmse") for e in exps.values() if e.status.value == "done"} == {
        0.5, 0.52, 0.45}

    metric = Metric(name="val_rmse", direction="lower")
    index = analysis.Index(exps.values(), metric)
    assert index.noise("H100") is None            # replicated groups, but imported: never a noise estimate
    board = index.leaderboard()
    rows = board.by_gpu_type["H100"]
    assert [r.val_bpb for r in rows] == [0.45, 0.51]      # c2's two rows, c1's two rows (mean)
    assert any("imported" in n for n in board.notes)
    tsv_out = (repo / ".autoresearch" / "results.tsv").read_text().splitlines()
    assert tsv_out[0].split("\t")[:5] == ["commit", "val_rmse", "memory_gb", "status", "description"]
    assert all(line.split("\t")[9] == "" for line in tsv_out[1:])    # seed column: unknown


def test_a_malformed_results_tsv_is_refused_with_its_line_and_nothing_imported(tmp_path: Path) -> None:
    repo, c1, c2 = _xgb_repo(tmp_path)
    bad = tmp_path / "bad.tsv"
    bad.write_text(TSV.format(c1=c1, c2=c2).replace(f"{c2}\t0.450000\t1.1\tkeep\tdeeper trees\n",
                                                    f"{c2}\tfast\t1.1\tkeep\tdeeper trees\n", 1))
    out = cli("import-results", str(bad), "--workspace", str(repo), "--gpu-type", "H100")
    assert out.returncode == 1 and "line 4" in out.stderr and "'fast' is not a number" in out.stderr
    assert ledger_experiments(repo) == {}
    short = tmp_path / "short.tsv"
    short.write_text("commit\tval_rmse\tstatus\tdescription\n" + f"{c1}\t0.5\tkeep\n")
    out = cli("import-results", str(short), "--workspace", str(repo), "--gpu-type", "H100")
    assert out.returncode == 1 and "line 2" in out.stderr
    assert ledger_experiments(repo) == {}


@pytest.mark.anyio
async def test_serve_before_init_is_told_to_init_and_init_then_serve_runs_the_task(tmp_path: Path) -> None:
    """A karpathy repo served as it is: the budget status says to describe it first; after `init`,
    the next start pins the task's harness (nothing ran yet) and a baseline finishes."""
    from mcp_harness import ok, serve_args, stdio_session

    repo = karpathy_repo(tmp_path / "theirs", with_toml=False)
    cache = tmp_path / "cache"
    async with stdio_session(serve_args(repo, cache), tmp_path / "server.log") as client:
        budget = await ok(client, "budget_status")
        assert any("autoresearch-fleet init" in n for n in budget["notes"]), budget["notes"]
    assert cli("init", str(repo)).returncode == 0
    (repo / "autoresearch.toml").write_text((repo / "autoresearch.toml").read_text().replace(
        'harness = ["prepare.py"]', 'harness = ["prepare.py", "utils.py"]'))
    async with stdio_session(serve_args(repo, cache), tmp_path / "server.log") as client:
        base = await ok(client, "launch_experiment", {"description": "baseline"})
        out = await ok(client, "wait_for_experiments", {"experiment_ids": [base["experiments"][0]["id"]],
                                                        "timeout_s": 300})
        assert out["finished"][0]["status"] == "done", out["finished"][0]
        assert out["finished"][0]["value"] is not None
