"""The stager's hand-over to dispatch (scheduling/staging.py), with a real ledger and real
directories: what it exports ahead is only ever for an experiment still queued."""

from __future__ import annotations

import threading
from pathlib import Path

from mcp_server.domain.models import Experiment
from mcp_server.scheduling.staging import Stager, staged_dir
from mcp_server.store.ledger import Ledger


def test_an_experiment_dispatched_while_the_stager_looks_at_it_is_not_staged(tmp_path: Path) -> None:
    """The stager reads an experiment as queued; before it starts the export, a dispatch places
    it (begins the attempt, takes and releases the run directory). The stager must not export a
    run directory for that attempt afterwards: nothing would use it or remove it. The dispatch is
    made to land right after the stager's read, on purpose."""
    ledger = Ledger(tmp_path / "ledger.db")
    runs = tmp_path / "runs"
    ledger.insert_launch([Experiment(id="e0001", description="x", commit="c" * 40)])
    exported: list[Path] = []

    def stage(exp: Experiment, attempt: int, dest: Path) -> None:
        dest.mkdir(parents=True)
        exported.append(dest)

    stager = Stager(ledger, stage, runs, threading.Event(), positions=lambda: 1,
                    stats={"staged": 0, "staged_used": 0})
    real_get = ledger.get
    dispatched: list[str] = []

    def get_then_dispatch(eid: str):
        got = real_get(eid)
        if not dispatched:                       # the dispatch, right after the stager's first read
            run_dir = runs / eid / "a1"
            assert ledger.begin_attempt(eid, 1, "cpu-0", "CPU", 1, None, str(run_dir))
            assert not stager.take(eid, 1, run_dir)     # nothing staged yet: it builds its own
            stager.release(eid)
            dispatched.append(eid)
        return got
    ledger.get = get_then_dispatch               # type: ignore[method-assign]
    try:
        stager._stage_next()
        assert dispatched == ["e0001"]
        assert exported == [] and not staged_dir(runs, "e0001", 1).exists()
    finally:
        ledger.close()


def test_a_queued_experiment_is_staged_and_taken_by_its_dispatch(tmp_path: Path) -> None:
    """The ordinary path: the stager exports the next queued experiment's run directory, and the
    dispatch of that attempt moves it into place."""
    ledger = Ledger(tmp_path / "ledger.db")
    runs = tmp_path / "runs"
    ledger.insert_launch([Experiment(id="e0001", description="x", commit="c" * 40)])

    def stage(exp: Experiment, attempt: int, dest: Path) -> None:
        dest.mkdir(parents=True)
        (dest / "train.py").write_text("print('hi')\n")

    stats = {"staged": 0, "staged_used": 0}
    stager = Stager(ledger, stage, runs, threading.Event(), positions=lambda: 1, stats=stats)
    try:
        stager._stage_next()
        assert staged_dir(runs, "e0001", 1).is_dir() and stats["staged"] == 1
        run_dir = runs / "e0001" / "a1"
        assert ledger.begin_attempt("e0001", 1, "cpu-0", "CPU", 1, None, str(run_dir))
        assert stager.take("e0001", 1, run_dir)
        stager.release("e0001")
        assert (run_dir / "train.py").read_text() == "print('hi')\n"
        assert not staged_dir(runs, "e0001", 1).exists() and stats["staged_used"] == 1
    finally:
        ledger.close()
