"""Helpers shared by the engine's real-run tests (test_engine.py, test_recovery.py).

Everything here is real: git repositories, SQLite, the runner, LocalBackend, train.py on the
cpu profile. Runs are kept short with config.time_budget_s."""

from __future__ import annotations

import contextlib
import hashlib
import json
import subprocess
import time
from pathlib import Path
from typing import Any

from mcp_server.domain.config import FleetConfig
from mcp_server.domain.models import LIVE
from mcp_server.engine.facade import Engine
from mcp_server.runtime import runner

REPO = Path(__file__).resolve().parent.parent
TEMPLATE = REPO / "train_template"


def make_config(workspace: Path, cache_dir: Path, **kw: Any) -> FleetConfig:
    base = dict(workspace=workspace, tag="test", profile="cpu", time_budget_s=2.0, timeout_grace_s=90.0,
                cpu_slots=2, cache_dir=cache_dir, max_attempts=3)
    base.update(kw)
    return FleetConfig(**base)


class EngineBox:
    """Engines created by a test; on teardown every live experiment is cancelled (no strays)."""

    def __init__(self) -> None:
        self.engines: list[Engine] = []

    def make(self, config: FleetConfig, start: bool = True) -> Engine:
        eng = Engine(config)
        self.engines.append(eng)
        if start:
            eng.start()
        return eng

    def cleanup(self) -> None:
        for eng in self.engines:
            try:
                live = [e.id for e in eng.ledger.all_experiments(statuses=[s.value for s in LIVE])]
                if live:
                    if not eng._started:
                        eng.start()
                    eng.cancel(live)
            except Exception:  # noqa: BLE001
                pass
            with contextlib.suppress(Exception):
                eng.close()
            with contextlib.suppress(Exception):
                eng.workspace.close()


def progress_log() -> tuple[list[tuple[int, int, str]], Any]:
    seen: list[tuple[int, int, str]] = []
    # one entry per finished experiment (heartbeats, which name no experiment, are left out)
    return seen, lambda p: seen.append((p.done, p.total, p.message)) if p.experiment_id else None


def git(ws: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(ws), *args], check=True, capture_output=True, text=True).stdout


def git_state(ws: Path) -> dict[str, Any]:
    """Everything a bad call must not change in git: refs, HEAD, index and working tree."""
    files = {}
    for p in sorted(ws.rglob("*")):
        rel = p.relative_to(ws)
        if rel.parts[0] in (".git", ".autoresearch") or not p.is_file():
            continue
        files[str(rel)] = hashlib.sha256(p.read_bytes()).hexdigest()
    return {
        "refs": git(ws, "for-each-ref", "--format=%(objectname) %(refname)"),
        "head": git(ws, "symbolic-ref", "HEAD") + git(ws, "rev-parse", "HEAD"),
        "status": git(ws, "status", "--porcelain", "--untracked-files=all"),
        "index": git(ws, "ls-files", "--stage"),
        "files": files,
        "objects": git(ws, "count-objects", "-v"),
    }


def ledger_state(eng: Engine) -> dict[str, Any]:
    return {"counts": eng.ledger.row_counts(), "dump": eng.ledger.dump()}


def _pid_alive(pid: int, start_time: int | None) -> bool:
    state = runner.proc_state(pid)
    if state in (None, "Z", "X"):
        return False
    return start_time is None or runner.proc_start_time(pid) == start_time


def job_pids(eng: Engine) -> list[tuple[str, int, int | None]]:
    """(what, pid, start time) of every runner and train.py process any attempt ever started."""
    out = []
    conn = eng.ledger._conn()
    for exp_id, attempt, handle, run_dir in conn.execute(
            "SELECT experiment_id, attempt, handle, run_dir FROM attempts"):
        if handle:
            ref = json.loads(handle).get("backend_ref", {})
            if isinstance(ref.get("pid"), int):
                out.append((f"{exp_id}/a{attempt} runner", ref["pid"], ref.get("start_time")))
        pid_file = Path(run_dir) / runner.TRAIN_PID_FILE
        if pid_file.is_file():
            info = json.loads(pid_file.read_text())
            out.append((f"{exp_id}/a{attempt} train.py", info["pid"], info.get("start_time")))
    return out


def assert_no_strays(eng: Engine, timeout: float = 15.0) -> None:
    """No runner or train.py process started for this workspace is still alive (by PID)."""
    deadline = time.monotonic() + timeout
    while True:
        alive = [(what, pid) for what, pid, st in job_pids(eng) if _pid_alive(pid, st)]
        if not alive or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not alive, f"stray processes: {alive}"


def assert_one_terminal_each(eng: Engine, ids: list[str]) -> None:
    """Each experiment: terminal, its log on disk, exactly one terminal event, one result."""
    conn = eng.ledger._conn()
    for eid in ids:
        e = eng.get_experiment(eid)
        assert e.status not in LIVE, (eid, e.status)
        assert e.log_path and Path(e.log_path).is_file(), (eid, e.log_path)
        kinds = [ev["kind"] for ev in eng.ledger.events(eid)]
        terminal = [k for k in kinds if k in ("finished", "cancelled", "timeout")]
        if e.status.value == "lost":
            assert not terminal
        else:
            assert len(terminal) == 1, (eid, kinds)
        closed = conn.execute("SELECT COUNT(*) FROM attempts WHERE experiment_id=? AND outcome IS NOT NULL "
                              "AND outcome != 'lost'", (eid,)).fetchone()[0]
        assert closed == (0 if e.status.value == "lost" else 1), (eid, closed)
        assert conn.execute("SELECT COUNT(*) FROM attempts WHERE experiment_id=? AND outcome IS NULL",
                            (eid,)).fetchone()[0] == 0


#: A train.py that waits until the file `go` exists (format with go=path), then reports val_bpb 1.1:
#: lets a test hold a run on its slot for as long as it needs to look at the others.
WAITING_TRAIN = '''\
import os, time
while not os.path.exists({go!r}):
    time.sleep(0.05)
print("---")
print("val_bpb:          1.100000")
print('RESULT_JSON: {{"val_bpb": 1.1, "num_steps": 1}}', flush=True)
'''


#: A train.py stand-in (SIMULATION: no model) that reports val_bpb {bpb} at once, in the contract's
#: format; {tag} is a comment that makes otherwise equal code differ (format with tag=, bpb=).
QUICK_TRAIN = '''\
# {tag}
print("---")
print("val_bpb:          {bpb:.6f}")
print('RESULT_JSON: {{"val_bpb": {bpb}, "num_steps": 1}}', flush=True)
'''


def until(cond, what: str, seconds: float = 180.0) -> None:
    """Poll `cond` until true; fail with `what` after a generous deadline (no timed assertions)."""
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def blocked_on_a_lock(pid: int) -> bool:
    """Is `pid` blocked waiting for a file lock? (/proc/locks lists waiters as '-> FLOCK ...')."""
    for line in Path("/proc/locks").read_text().splitlines():
        parts = line.split()
        if "->" in parts and len(parts) > parts.index("->") + 4 and parts[parts.index("->") + 4] == str(pid):
            return True
    return False
