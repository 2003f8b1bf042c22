"""Where a research workspace keeps its state: one home for every path under `.autoresearch/`.

    <workspace>/
      train.py, prepare.py         the task (git, branch autoresearch/<tag>)
      .autoresearch/               ignored by git
        ledger.db                  the SQLite ledger (WAL)
        results.tsv                export of the ledger (karpathy/autoresearch columns first)
        prepare.log                data preparation before the first local run
        runs/<exp>-a<n>/           one run directory per attempt (runtime/runner.py's files)
        skypilot/                  the SkyPilot backend's own state
        trackers.db                what each experiment tracker (MLflow, W&B) has received
        wandb/                     W&B's run files (offline mode: for `wandb sync`)
      results.tsv, progress.png    the person's copies, written by `autoresearch-fleet report` / the demo
"""

from __future__ import annotations

from pathlib import Path

STATE_DIR = ".autoresearch"
LEDGER_FILE = "ledger.db"
RESULTS_TSV = "results.tsv"
PREPARE_LOG = "prepare.log"
RUNS_DIR = "runs"
SKYPILOT_DIR = "skypilot"
PROGRESS_PNG = "progress.png"
TRACKERS_DB = "trackers.db"


def state_dir(workspace: Path) -> Path:
    return Path(workspace) / STATE_DIR


def ledger_path(workspace: Path) -> Path:
    return state_dir(workspace) / LEDGER_FILE


def results_tsv(workspace: Path) -> Path:
    return state_dir(workspace) / RESULTS_TSV


def runs_dir(workspace: Path) -> Path:
    return state_dir(workspace) / RUNS_DIR


def prepare_log(workspace: Path) -> Path:
    return state_dir(workspace) / PREPARE_LOG


def skypilot_dir(workspace: Path) -> Path:
    return state_dir(workspace) / SKYPILOT_DIR


def report_tsv(workspace: Path) -> Path:
    """The person's copy of results.tsv, at the workspace root (`autoresearch-fleet report`)."""
    return Path(workspace) / RESULTS_TSV


def report_png(workspace: Path) -> Path:
    return Path(workspace) / PROGRESS_PNG


def trackers_db(workspace: Path) -> Path:
    return state_dir(workspace) / TRACKERS_DB
