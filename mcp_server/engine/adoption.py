"""Bringing an existing autoresearch repository to the fleet: `autoresearch-fleet init` (write its
task description, deciding everything from what is there) and `autoresearch-fleet import-results`
(load its earlier results.tsv into the ledger as history)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from mcp_server.domain import paths
from mcp_server.domain.config import TEMPLATE_DIR
from mcp_server.domain.errors import InvalidInput, NotFound
from mcp_server.domain.ids import GPU_TYPE
from mcp_server.domain.results_import import parse_results_tsv
from mcp_server.domain.task import SUPPORTED_EDIT, TASK_FILE, Task, load_task
from mcp_server.runtime.run_log import parse_result
from mcp_server.store.ledger import Ledger
from mcp_server.store.workspace import Workspace

#: metric names whose larger values are better (anything else: lower is better, like a loss)
_HIGHER = re.compile(r"acc|accuracy|auc|f1|score|reward|return|precision|recall|map\b|bleu|win", re.I)
_LOG_NAMES = ("run.log", "train.log", "log.txt")


def _metric_from_log(repo: Path) -> tuple[str, str] | None:
    """(metric key, where) from the newest run log's summary block: its first key."""
    logs = [p for p in repo.glob("*.log") if p.is_file()] + [repo / n for n in _LOG_NAMES if (repo / n).is_file()]
    for log in sorted(set(logs), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            text = log.read_text(encoding="utf-8", errors="replace")[-(1 << 20):]
        except OSError:
            continue
        lines = text.splitlines()
        last = max((i for i, ln in enumerate(lines) if ln.strip() == "---"), default=None)
        if last is None:
            continue
        block = parse_result("\n".join(lines[last:]))
        numeric = [k for k, v in block.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
        if numeric:
            return numeric[0], f"the summary block of {log.name}"
    return None


def _metric_from_tsv(repo: Path) -> tuple[str, str] | None:
    tsv = repo / "results.tsv"
    if not tsv.is_file():
        return None
    try:
        metric, _ = parse_results_tsv(tsv.read_text(encoding="utf-8").split("\n", 1)[0] + "\n")
    except (InvalidInput, OSError, UnicodeDecodeError):
        return None
    return metric, "the header of results.tsv"


def _budget(prepare: Path) -> dict[str, float] | None:
    """karpathy's prepare.py says `TIME_BUDGET = 300`: the gpu profile's budget."""
    try:
        tree = ast.parse(prepare.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return None
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "TIME_BUDGET" and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, int | float) and not isinstance(node.value.value, bool)
                and 0 < node.value.value <= 86400):
            return {"gpu": float(node.value.value), "cpu": 15.0}
    return None


def _has_main(path: Path) -> bool:
    try:
        return "__main__" in path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False


def init_task(repo: Path) -> tuple[Task, list[str], bool]:
    """Decide the task of the repository at `repo` and write it to autoresearch.toml (unless it
    has one: then it is read, checked and kept). Returns (task, what was decided and why, written)."""
    repo = Path(repo).expanduser().absolute()
    if not repo.is_dir():
        raise NotFound(f"{repo} is not a directory; give the path of your autoresearch repository.")
    if (repo / TASK_FILE).is_file():
        task = load_task(repo)
        return task, [f"{TASK_FILE} already exists and is valid; it was kept unchanged."], False
    if not (repo / SUPPORTED_EDIT).is_file():
        raise InvalidInput(f"{repo} has no {SUPPORTED_EDIT}: the fleet's tasks edit {SUPPORTED_EDIT} (karpathy's "
                           f"layout). Rename your training script to {SUPPORTED_EDIT}, then run init again.")
    why: list[str] = [f"edit: {SUPPORTED_EDIT} (the file the agent changes)"]
    prepare = repo / "prepare.py"
    if prepare.is_file():
        harness = ["prepare.py"]
        why.append("harness: prepare.py (karpathy's layout: the fixed data/evaluation file)")
    else:
        harness = sorted(p.name for p in repo.glob("*.py") if p.is_file() and p.name != SUPPORTED_EDIT)
        if not harness:
            raise InvalidInput(f"{repo} has no prepare.py and no other .py file to pin as the harness; a task needs "
                               "at least one fixed harness file (write the description by hand: docs/task.md).")
        why.append(f"harness: {', '.join(harness)} (no prepare.py: every other Python file at the root)")
    prep = ["python", "prepare.py"] if prepare.is_file() and _has_main(prepare) else None
    why.append(f"prepare: {' '.join(prep)} (run once per slot/cluster)" if prep
               else "prepare: none (prepare.py has no __main__ block)" if prepare.is_file() else "prepare: none")
    why.append(f"run: python {SUPPORTED_EDIT}")
    found = _metric_from_log(repo) or _metric_from_tsv(repo)
    name, where = found if found else ("val_bpb", "the default (no run log or results.tsv found)")
    direction = "higher" if _HIGHER.search(name) else "lower"
    why.append(f"metric: {name}, from {where}; {direction} is better"
               + (" (its name reads as a score)" if direction == "higher" else " (its name reads as a loss)"))
    budget = _budget(prepare) if prepare.is_file() else None
    if budget:
        why.append(f"budget: gpu {budget['gpu']:g} s (prepare.py's TIME_BUDGET), cpu 15 s")
    else:
        why.append("budget: from prepare.py's PROFILES, else gpu 300 s / cpu 15 s")
    task = Task.model_validate({"harness": harness, "prepare": prep, "run": ["python", SUPPORTED_EDIT],
                                "metric": {"name": name, "direction": direction}, "budget": budget,
                                "source": str(repo / TASK_FILE)})
    (repo / TASK_FILE).write_text(task.to_toml(), encoding="utf-8")
    return task, why, True


def import_results(tsv: Path, workspace: Path, gpu_type: str, tag: str = "default") -> tuple[str, int, int]:
    """Load a results.tsv into the workspace's ledger as imported history. Returns (metric column,
    rows new, rows already there). A malformed file is refused whole (InvalidInput naming the line)."""
    if not re.fullmatch(GPU_TYPE, gpu_type or ""):
        raise InvalidInput(f"--gpu-type must be a GPU type name such as 'H100' (what the runs ran on), "
                           f"got {gpu_type!r}.")
    try:
        text = Path(tsv).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InvalidInput(f"cannot read {tsv}: {e}") from None
    workspace = Path(workspace).expanduser().absolute()
    task = load_task(workspace)
    metric, rows = parse_results_tsv(text, task.metric.name if not task.is_default else None)
    if not task.is_default and metric != task.metric.name:
        raise InvalidInput(f"{tsv}'s metric column is {metric!r} but the task's metric is {task.metric.name!r}; "
                           "import a file of this task. Nothing was imported.")
    ws = Workspace(workspace, tag, TEMPLATE_DIR, harness=tuple(task.harness))
    try:
        def resolve(commit: str) -> tuple[str, str | None] | None:
            try:
                sha = ws.resolve_commit(commit)
            except (NotFound, InvalidInput):
                return None
            try:
                return sha, ws.code_hash_at(sha)
            except (NotFound, InvalidInput):
                return sha, None

        ledger = Ledger(paths.ledger_path(workspace))
        try:
            new = ledger.import_history(rows, metric, gpu_type, resolve)
            ledger.export_tsv(paths.results_tsv(workspace), metric)
        finally:
            ledger.close()
    finally:
        ws.close()
    return metric, len(new), len(rows) - len(new)


__all__ = ["import_results", "init_task"]
