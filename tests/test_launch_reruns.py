"""No wasted reruns and reasons on record (launch_planning, decisions): real git, SQLite, runner
and local CPU slots; train.py is a stand-in (SIMULATION: no model) that prints a result in the
contract's format at once."""

from __future__ import annotations

import csv

import pytest
from engine_helpers import QUICK_TRAIN, ledger_state, make_config

from mcp_server.domain.errors import Conflict, InvalidInput
from mcp_server.domain.models import Decision, Status


def test_a_rerun_of_the_same_code_and_seed_is_refused_and_replicates_pick_unused_seeds(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache))
    (ws / "quick.py").write_text(QUICK_TRAIN.format(tag="a", bpb=1.2))
    first = eng.launch_experiment("stand-in", source="quick.py", hypothesis="the stand-in   prints 1.2 ")[0]
    assert first.id == "e0001" and first.seed == 42 and first.hypothesis == "the stand-in prints 1.2"
    res = eng.wait([first.id], timeout_s=300)
    assert res.finished[0].status == Status.done and res.finished[0].ran_on_gpu == "CPU"

    before = ledger_state(eng)
    for gpu in ("CPU", None):           # named, or any slot of this one-type fleet
        with pytest.raises(Conflict) as refused:
            eng.launch_experiment("again", commit="e0001", seed=42, gpu_type=gpu)
        msg = str(refused.value)
        assert "e0001" in msg and "seed 42" in msg and "allow_rerun=true" in msg and "omit seed" in msg
    with pytest.raises(Conflict, match="e0001"):       # the same code from the working tree is the same code
        eng.launch_experiment("again", source="quick.py", seed=42)
    assert ledger_state(eng) == before                 # nothing was written

    # replicates of that code (an experiment id, no overrides) pick seeds it has not used
    reps = eng.launch_experiment("more seeds", commit="e0001", replicates=3)
    assert [e.seed for e in reps] == [43, 44, 45] and {e.code_hash for e in reps} == {first.code_hash}
    more = eng.launch_experiment("more seeds", source="quick.py", replicates=2)   # live ones count as used
    assert [e.seed for e in more] == [46, 47]
    assert eng.get_wave(reps[0].wave_id).design["seeds"] == [43, 44, 45]
    # other code is not a rerun; asking explicitly is allowed
    other = eng.launch_experiment("other", source="quick.py", overrides=None, seed=42, allow_rerun=True)[0]
    assert other.seed == 42 and other.code_hash == first.code_hash
    eng.cancel([e.id for e in reps + more] + [other.id])

    with pytest.raises(InvalidInput, match="hypothesis is .* characters"):
        eng.launch_experiment("too long", source="quick.py", hypothesis="x" * 400)
    with pytest.raises(InvalidInput, match="hypothesis must be one line"):
        eng.launch_experiment("two lines", source="quick.py", hypothesis="one\ntwo")


def test_keeping_within_noise_needs_a_reason_and_reasons_are_on_record(tmp_path, cache, engines):
    ws = tmp_path / "research"
    eng = engines.make(make_config(ws, cache))
    (ws / "a.py").write_text(QUICK_TRAIN.format(tag="a", bpb=1.2))
    (ws / "b.py").write_text(QUICK_TRAIN.format(tag="b: same number, other code", bpb=1.2))
    a = eng.launch_experiment("stand-in a", source="a.py", replicates=2)
    eng.wait([e.id for e in a], timeout_s=300)
    kept = eng.keep(a[0].id, reason="the first stand-in")
    assert kept.experiment.reason == "the first stand-in" and kept.experiment.decision == Decision.keep
    # b's reference is a's code now (the branch head): equal numbers, a noise floor of 0 -> within_noise
    b = eng.launch_experiment("stand-in b", source="b.py", hypothesis="b is no better")[0]
    eng.wait([b.id], timeout_s=300)
    assert eng.verdicts([b.id])[0].verdict == "within_noise"
    before = ledger_state(eng)
    with pytest.raises(Conflict) as refused:
        eng.keep(b.id)
    assert "within_noise" in str(refused.value) and "reason=" in str(refused.value)
    assert ledger_state(eng) == before
    out = eng.keep(b.id, reason="simpler code, same loss")
    assert out.within_noise and out.verdict == "within_noise"
    got = eng.get_experiment(b.id)
    assert got.reason == "simpler code, same loss" and got.hypothesis == "b is no better"
    d = eng.discard(a[1].id, reason="a replicate, superseded")
    assert d.experiment.reason == "a replicate, superseded"
    # a control's verdict says 'reference', as the leaderboard does
    assert eng.verdicts([a[1].id])[0].verdict in ("reference", "no_reference")

    tsv = eng.export_results(tmp_path / "results.tsv")
    rows = {r["id"]: r for r in csv.DictReader(tsv.open(), delimiter="\t")}
    assert rows[b.id]["reason"] == "simpler code, same loss" and rows[b.id]["hypothesis"] == "b is no better"
    digest = eng.session_digest().text
    assert "simpler code, same loss" in digest and b.id in digest
