"""Engine decisions that must keep the ledger, git and the backend in agreement: a discard that
would contradict a keep, and the bookkeeping of a teardown that only partly succeeded.

Real git, SQLite, runner and local slots; train.py is a stand-in (SIMULATION: no model) that
prints a result in the contract's format at once, or waits for a GO file."""

from __future__ import annotations

import pytest
from engine_helpers import QUICK_TRAIN, WAITING_TRAIN, git, git_state, ledger_state, make_config, until

from mcp_server.backends.local.backend import LocalBackend
from mcp_server.domain.errors import Conflict, TeardownIncomplete
from mcp_server.domain.models import Decision, Status
from mcp_server.engine.facade import Engine


def test_discard_of_a_kept_experiment_is_refused_while_the_branch_holds_its_code(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache))
    (ws / "quick_a.py").write_text(QUICK_TRAIN.format(tag="", bpb=1.2))
    (ws / "quick_b.py").write_text(QUICK_TRAIN.format(tag="", bpb=1.1))
    a = eng.launch_experiment("stand-in a", source="quick_a.py")[0]
    b = eng.launch_experiment("stand-in b", source="quick_b.py")[0]
    res = eng.wait([a.id, b.id], timeout_s=300)
    assert {e.id: e.status for e in res.finished} == {a.id: Status.done, b.id: Status.done}
    kept = eng.keep(a.id)
    assert kept.experiment.decision == Decision.keep and git(ws, "rev-parse", "HEAD").strip() == a.commit

    before_git, before_ledger = git_state(ws), ledger_state(eng)
    with pytest.raises(Conflict) as refused:
        eng.discard(a.id)
    msg = str(refused.value)
    assert a.id in msg and a.commit[:12] in msg and "keep_experiment" in msg and "force=true" in msg
    assert git_state(ws) == before_git and ledger_state(eng) == before_ledger
    assert eng.get_experiment(a.id).decision == Decision.keep

    # once another keep has moved the branch off its code, the discard agrees with git
    eng.keep(b.id, force=True)                     # b does not descend from a: a reset
    assert git(ws, "rev-parse", "HEAD").strip() == b.commit
    assert eng.discard(a.id).experiment.decision == Decision.discard


class FakeTearableBackend(LocalBackend):
    """FAKE for an injected failure: local slots that `teardown` can "remove" (they are then
    listed as gone; the engine's cancel stops their runners), and whose `sky down` fails for the
    names in `fail` (TeardownIncomplete, as the SkyPilot backend raises it)."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.removed: set[str] = set()
        self.fail: set[str] = set()

    def clusters(self):
        return [c.model_copy(update={"state": "gone"}) if c.name in self.removed else c
                for c in super().clusters()]

    def teardown(self, names=None):
        targets = list(names) if names is not None else [c.name for c in super().clusters()]
        done = [n for n in targets if n not in self.fail and n not in self.removed]
        self.removed.update(done)
        failed = [n for n in targets if n in self.fail]
        if failed:
            raise TeardownIncomplete(f"Could not take down {', '.join(failed)}: injected failure. "
                                     f"Taken down: {', '.join(done) or 'nothing'}.", removed=done)
        return done


def test_partial_teardown_records_the_removed_cluster_and_reraises(tmp_path, cache, engines):
    ws = tmp_path / "research"
    config = make_config(ws, cache, cpu_slots=2)
    fake = FakeTearableBackend.from_config(config)
    eng = Engine(config, backend=fake)
    engines.engines.append(eng)          # closed (and its live experiments cancelled) after the test
    eng.start()
    go = tmp_path / "go"
    (ws / "waiting.py").write_text(WAITING_TRAIN.format(go=str(go)))
    exps = [eng.launch_experiment(f"waits {i}", source="waiting.py", seed=i)[0] for i in (1, 2)]
    until(lambda: {f.exp_id for f in eng.scheduler.in_flight().values()} == {e.id for e in exps}
           and len({f.cluster for f in eng.scheduler.in_flight().values()}) == 2,
          "both to run, one per slot", seconds=120.0)
    where = {f.exp_id: f.cluster for f in eng.scheduler.in_flight().values()}
    gone_slot, kept_slot = where[exps[0].id], where[exps[1].id]
    fake.fail = {kept_slot}

    with pytest.raises(TeardownIncomplete) as partial:
        eng.teardown_clusters([gone_slot, kept_slot])
    assert partial.value.removed == [gone_slot] and kept_slot in str(partial.value)
    # the cluster that went: gone in the ledger and the scheduler, its experiment cancelled
    states = {c.name: c.state for c in eng.ledger.clusters(include_gone=True)}
    assert states[gone_slot] == "gone" and states[kept_slot] == "up"
    assert {c.name: c.state for c in eng.scheduler.slots()}[gone_slot] == "gone"
    victim = eng.get_experiment(exps[0].id)
    assert victim.status == Status.cancelled and "its cluster was torn down" in (victim.error or "")
    # the survivor's experiment runs on to its result
    assert eng.get_experiment(exps[1].id).status == Status.running
    go.touch()
    res = eng.wait([exps[1].id], timeout_s=120)
    assert [e.status for e in res.finished] == [Status.done]


def test_a_discard_during_a_keep_of_the_same_experiment_waits_and_is_refused(tmp_path, cache, engines, monkeypatch):
    """keep moves the branch, then records the decision. A discard of the same experiment that
    arrives in between must not pass on what it read before the keep (the ledger would say
    discard while the branch holds the commit): it waits for the keep and is then refused. The
    keep is held, on purpose, while the branch has moved and the ledger not yet."""
    import threading

    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache))
    (ws / "quick_a.py").write_text(QUICK_TRAIN.format(tag="", bpb=1.2))
    a = eng.launch_experiment("stand-in a", source="quick_a.py")[0]
    assert [e.status for e in eng.wait([a.id], timeout_s=300).finished] == [Status.done]

    moved, go_on = threading.Event(), threading.Event()
    real_keep = eng.workspace.keep

    def held_keep(*args, **kw):
        out = real_keep(*args, **kw)
        moved.set()
        go_on.wait(30)
        return out
    monkeypatch.setattr(eng.workspace, "keep", held_keep)
    keeper = threading.Thread(target=eng.keep, args=(a.id,))
    keeper.start()
    assert moved.wait(30)
    refused: list[BaseException] = []

    def discard() -> None:
        try:
            eng.discard(a.id)
        except Conflict as exc:
            refused.append(exc)
    discarder = threading.Thread(target=discard)
    discarder.start()
    discarder.join(1.0)
    waited = discarder.is_alive()
    go_on.set()
    keeper.join(30)
    discarder.join(30)
    assert waited, "the discard did not wait for the keep in progress"
    assert refused and "was kept" in str(refused[0])
    assert eng.get_experiment(a.id).decision == Decision.keep
    assert git(ws, "rev-parse", "HEAD").strip() == a.commit
