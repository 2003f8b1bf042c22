"""Planning and writing launches: what `launch_experiment`, `launch_wave` and `promote` create.

A launch is validated and planned in full (`Planned`: one per experiment, with its code, seed,
reference and priority) before anything is written; `Launcher.write` then snapshots each
experiment's code as a commit on a hidden ref and inserts them (and their wave) into the ledger in
one transaction, removing the refs it made if that fails."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mcp_server.domain import variants
from mcp_server.domain.errors import Conflict, InvalidInput
from mcp_server.domain.ids import EXPERIMENT_ID_RE as EXP_ID
from mcp_server.domain.ids import format_exp_id, format_wave_id
from mcp_server.domain.limits import (
    DEFAULT_SEED,
    MAX_DESCRIPTION,
    MAX_PROMOTE,
    MAX_REPLICATES,
    MAX_SEED,
    MAX_WAVE_EXPERIMENTS,
    PROMOTION_PRIORITY,
    USER_PRIORITY,
)
from mcp_server.domain.models import LIVE, Experiment, Status, Wave
from mcp_server.domain.tool_names import Tool
from mcp_server.engine.checks import (
    Checks,
    check_bool,
    check_description,
    check_int,
    check_overrides,
    check_reason,
    short,
)
from mcp_server.store.ledger import Ledger
from mcp_server.store.workspace import Workspace

log = logging.getLogger("autoresearch.engine")


@dataclass
class Base:
    """The code a launch derives from."""

    source: str                  # text of train.py to apply overrides to
    parent_commit: str           # commit the snapshots are built on
    parent_id: str | None        # experiment that commit belongs to, if any
    label: str                   # for descriptions / wave design


@dataclass
class Planned:
    """One experiment a launch will create (validated, not yet written)."""

    description: str
    source: str
    overrides: dict[str, Any]
    seed: int
    base: Base
    parent_code_hash: str | None
    kind: str
    priority: int
    gpu_type: str | None
    parent_id: str | None = None
    code_hash: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    hypothesis: str | None = None


#: a prior run with one of these statuses already answered "what does this code do with this seed"
#: (a code failure repeats with the same seed); cancelled, lost and rejected runs never did
_ANSWERED = frozenset({Status.done, Status.queued, Status.running, Status.crash, Status.nan, Status.oom,
                       Status.timeout})


class LaunchPlanner:
    """Turns launch calls into queued experiments. `lock` serialises launches with each other and
    with keeps (the engine's launch lock); `all_experiments()` is the engine's cached list;
    `written(exps)` is called after a launch is in the ledger (the engine updates its cache and
    wakes the scheduler)."""

    def __init__(self, workspace: Workspace, ledger: Ledger, checks: Checks, *, harness_hash: str,
                 lock: threading.RLock, all_experiments: Callable[[], list[Experiment]],
                 written: Callable[[list[Experiment]], None], time_budget_s: float | None = None) -> None:
        self.time_budget_s = time_budget_s
        self.workspace = workspace
        self.ledger = ledger
        self.checks = checks
        self.harness_hash = harness_hash
        self.lock = lock
        self.all_experiments = all_experiments
        self.written = written

    # the code to derive from -----------------------------------------------------------------
    def resolve_base(self, *, source: Any = None, commit: Any = None, what: str = "commit") -> Base:
        """The code to derive from: an experiment id or commit, a workspace file, or the working train.py."""
        if source is not None and commit is not None:
            raise InvalidInput("Give either source (a file in the workspace) or commit (an experiment id or commit), "
                               "not both.")
        if commit is not None:
            if not isinstance(commit, str) or not commit.strip() or len(commit) > 200:
                raise InvalidInput(f"{what} must be an experiment id (e.g. 'e0042') or a commit sha/ref, "
                                   f"got {short(commit)}.")
            if EXP_ID.match(commit):
                exp = self.checks.experiment(commit, what)
                if not exp.commit:
                    raise Conflict(f"{commit} has no code snapshot to derive from.")
                return Base(self.workspace.file_at(exp.commit, "train.py"), exp.commit, exp.id, exp.id)
            sha = self.workspace.resolve_commit(commit)
            return Base(self.workspace.file_at(sha, "train.py"), sha, self.experiment_of_commit(sha), sha[:12])
        text = self.workspace.read_source(source)
        return Base(text, self.workspace.head_commit(), None, source or "train.py")

    def experiment_of_commit(self, sha: str) -> str | None:
        for e in self.all_experiments():
            if e.commit == sha:
                return e.id
        return None

    # the three kinds of launch ---------------------------------------------------------------
    def experiment(self, description: Any, overrides: Any, source: Any, commit: Any, gpu_type: Any,
                   replicates: Any, seed: Any, priority: Any, hypothesis: Any = None,
                   allow_rerun: Any = False) -> list[Experiment]:
        """See Engine.launch_experiment."""
        desc = check_description(description)
        hyp = check_reason(hypothesis, "hypothesis")
        rerun = check_bool("allow_rerun", allow_rerun)
        overrides = check_overrides(overrides)
        n = check_int("replicates", replicates, 1, MAX_REPLICATES)
        seed0 = DEFAULT_SEED if seed is None else check_int("seed", seed, 0, MAX_SEED - MAX_REPLICATES)
        prio = check_int("priority", priority, *USER_PRIORITY)
        gpu = self.checks.gpu_type(gpu_type)
        # replicates measure noise only on one GPU type: in a mixed fleet they all go to one
        chosen = self.checks.common_gpu_type() if gpu is None and n > 1 else None
        gpu = gpu or chosen
        with self.lock:
            base = self.resolve_base(source=source, commit=commit)
            text = variants.apply_overrides(base.source, overrides) if overrides else base.source
            code_hash = self.workspace.blob_sha(text)
            parent_hash = self.workspace.code_hash_at(base.parent_commit)
            label = variants.describe(overrides)
            prior = self.prior_runs(code_hash, gpu)
            if seed is None:
                seeds = self.unused_seeds(prior, n)
            else:
                seeds = [seed0 + k for k in range(n)]
                if not rerun:
                    self.refuse_rerun(prior, seeds, gpu)
            planned = []
            for s in seeds:
                d = desc if n == 1 else f"{desc} [seed {s}]"
                planned.append(Planned(d, text, overrides, s, base, parent_hash,
                                       "replicate" if n > 1 else "single", prio, gpu, code_hash=code_hash,
                                       hypothesis=hyp))
            wave = None
            if n > 1:
                wave = {"description": desc, "kind": "replicates",
                        "design": {"replicates": n, "seeds": seeds, "overrides": overrides,
                                   "label": label, "base": base.label, "gpu_type": gpu,
                                   "gpu_type_chosen": chosen is not None,
                                   **({"hypothesis": hyp} if hyp else {})}}
            exps, _ = self.write(planned, wave)
        return exps

    # no wasted reruns ------------------------------------------------------------------------
    def prior_runs(self, code_hash: str, gpu: str | None) -> list[Experiment]:
        """Runs of this exact code under this harness and budget on the GPU type a launch goes to
        (`gpu`; None = any slot: in a one-type fleet that type, else the runs that named no type)."""
        types = self.checks.gpu_types_available()
        sole = next(iter(types)) if len(types) == 1 else None
        out = []
        for e in self.all_experiments():
            if e.code_hash != code_hash or e.status not in _ANSWERED or e.harness_hash != self.harness_hash:
                continue
            if e.time_budget_s is not None and self.time_budget_s is not None and e.time_budget_s != self.time_budget_s:
                continue
            where = e.ran_on_gpu or e.gpu_type
            if gpu is not None:
                same = where is not None and where.lower() == gpu.lower()
            elif sole is not None:
                same = where is None or where.lower() == sole.lower()
            else:
                same = e.gpu_type is None
            if same:
                out.append(e)
        return out

    @staticmethod
    def unused_seeds(prior: list[Experiment], n: int) -> list[int]:
        """The n smallest seeds from DEFAULT_SEED up that no prior run of the code used."""
        used = {e.seed for e in prior}
        seeds: list[int] = []
        s = DEFAULT_SEED
        while len(seeds) < n and s <= MAX_SEED:
            if s not in used:
                seeds.append(s)
            s += 1
        return seeds

    @staticmethod
    def refuse_rerun(prior: list[Experiment], seeds: list[int], gpu: str | None) -> None:
        dup = sorted((e for e in prior if e.seed in seeds), key=lambda e: (e.created_at, e.id))
        if not dup:
            return
        first = dup[0]
        where = gpu or first.ran_on_gpu or first.gpu_type or "any slot"
        what = f"{first.status.value}" + (f", val_bpb {first.metrics.val_bpb:.6f}"
                                          if first.metrics.val_bpb is not None else "")
        others = f" (and {', '.join(e.id for e in dup[1:6])})" if len(dup) > 1 else ""
        raise Conflict(
            f"{first.id}{others} already ran this exact code with seed {first.seed} on {where} under the same harness "
            f"and budget ({what}): launching it again would repeat that run. Nothing was launched. Read it with "
            f"{Tool.GET_EXPERIMENT}(experiment_id='{first.id}'); for more replicates omit seed (seeds not yet used "
            "for this code on this GPU type are picked), or pass allow_rerun=true to run it again anyway.")

    def wave(self, description: Any, axes: Any, replicates: Any, include_control: Any, base: Any,
             gpu_type: Any, hypothesis: Any = None) -> Wave:
        """See Engine.launch_wave."""
        desc = check_description(description)
        hyp = check_reason(hypothesis, "hypothesis")
        n = check_int("replicates", replicates, 1, MAX_REPLICATES)
        control = check_bool("include_control", include_control)
        gpu = self.checks.gpu_type(gpu_type)
        # a wave is compared with its control: in a mixed fleet every run goes to one GPU type
        chosen = self.checks.common_gpu_type() if gpu is None else None
        gpu = gpu or chosen
        cells = variants.factorial(axes, max_cells=MAX_WAVE_EXPERIMENTS)
        total = (len(cells) + (1 if control else 0)) * n
        if total > MAX_WAVE_EXPERIMENTS:
            raise InvalidInput(
                f"This wave would launch ({len(cells)} cells{' + control' if control else ''}) x {n} replicates "
                f"= {total} "
                f"experiments; at most {MAX_WAVE_EXPERIMENTS} per wave. Use fewer levels or replicates, or split it.")
        with self.lock:
            b = self.resolve_base(commit=base, what="base")
            parent_hash = self.workspace.blob_sha(b.source)
            planned: list[Planned] = []
            seeds = [DEFAULT_SEED + k for k in range(n)]
            if control:
                for s in seeds:
                    d = f"{desc} [control]" + (f" [seed {s}]" if n > 1 else "")
                    planned.append(Planned(d, b.source, {}, s, b, parent_hash, "control", 0, gpu,
                                           code_hash=parent_hash, hypothesis=hyp))
            for cell in cells:
                text = variants.apply_overrides(b.source, cell)
                code_hash = self.workspace.blob_sha(text)
                for s in seeds:
                    d = f"{desc} [{variants.describe(cell)}]" + (f" [seed {s}]" if n > 1 else "")
                    planned.append(Planned(d, text, dict(cell), s, b, parent_hash, "factorial", 0, gpu,
                                           code_hash=code_hash, hypothesis=hyp))
            design = {"axes": axes, "cells": len(cells), "replicates": n, "seeds": seeds,
                      "include_control": control, "base": b.label, "gpu_type": gpu,
                      "gpu_type_chosen": chosen is not None, **({"hypothesis": hyp} if hyp else {})}
            _, wave = self.write(planned, {"description": desc, "kind": "factorial", "design": design})
        assert wave is not None
        return wave

    def promotion(self, experiment_ids: Any, gpu_type: Any, replicates: Any) -> Wave:
        """See Engine.promote."""
        ids = self.checks.experiment_ids(experiment_ids, max_n=MAX_PROMOTE)
        gpu = self.checks.gpu_type(gpu_type, required=True)
        n = check_int("replicates", replicates, 1, MAX_REPLICATES)
        exps = self.ledger.get_many(ids)
        not_done = [e for e in exps if e.status != Status.done]
        if not_done:
            raise Conflict("Only done experiments can be promoted: " + ", ".join(
                f"{e.id} is {e.status.value}" for e in not_done[:10]) + ". Nothing was launched.")
        seeds = [DEFAULT_SEED + k for k in range(n)]
        with self.lock:
            planned: list[Planned] = []
            chosen_hashes = {e.code_hash for e in exps}
            controls: list[dict[str, Any]] = []
            notes: list[str] = []
            parents_done: set[str] = set()
            everything = self.all_experiments()
            for e in exps:
                assert e.commit is not None  # every experiment is inserted with its snapshot's commit (launch)
                src = self.workspace.file_at(e.commit, "train.py")
                base = Base(src, e.parent_commit or e.commit, e.id, e.id)
                for s in seeds:
                    planned.append(Planned(f"{Tool.PROMOTE} {e.id} to {gpu}: {e.description}"[:MAX_DESCRIPTION] +
                                           (f" [seed {s}]" if n > 1 else ""), src, dict(e.overrides), s, base,
                                           e.parent_code_hash, "promotion", PROMOTION_PRIORITY, gpu,
                                           parent_id=e.id, code_hash=e.code_hash or self.workspace.blob_sha(src)))
                pch = e.parent_code_hash
                if not pch or pch in parents_done or pch in chosen_hashes:
                    continue
                parents_done.add(pch)
                have = sum(1 for x in everything if x.code_hash == pch and (
                    (x.status == Status.done and x.ran_on_gpu == gpu) or (x.status in LIVE and x.gpu_type == gpu)))
                if have >= n:
                    notes.append(f"parent code of {e.id} already has {have} runs on {gpu}: no extra control")
                    continue
                ref = next((x for x in everything if x.code_hash == pch and x.commit), None)
                if ref is not None:
                    assert ref.commit is not None  # picked above for having one
                    psrc = self.workspace.file_at(ref.commit, "train.py")
                    pcommit, pid = ref.parent_commit or ref.commit, ref.id
                elif e.parent_commit and self.workspace.code_hash_at(e.parent_commit) == pch:
                    psrc, pcommit, pid = self.workspace.file_at(e.parent_commit, "train.py"), e.parent_commit, None
                else:
                    notes.append(f"parent code of {e.id} not found: no control added")
                    continue
                pbase = Base(psrc, pcommit, pid, pid or pcommit[:12])
                for s in seeds[have:]:
                    planned.append(Planned(f"control for promotion to {gpu} (parent code of {e.id})" +
                                           (f" [seed {s}]" if n > 1 else ""), psrc, {}, s, pbase, pch, "control",
                                           PROMOTION_PRIORITY, gpu, parent_id=pid, code_hash=pch))
                controls.append({"parent_code_hash": pch, "of": e.id, "runs": n - have})
            design = {"experiments": ids, "gpu_type": gpu, "replicates": n, "seeds": seeds, "controls": controls,
                      "notes": notes}
            desc = f"{Tool.PROMOTE} {', '.join(ids)} to {gpu} x{n}"[:MAX_DESCRIPTION]
            _, wave = self.write(planned, {"description": desc, "kind": "promotion", "design": design})
        assert wave is not None
        return wave

    # writing ---------------------------------------------------------------------------------
    def write(self, planned: list[Planned], wave: dict[str, Any] | None) -> tuple[list[Experiment], Wave | None]:
        """Allocate ids, snapshot each experiment, insert them (and the wave) in one transaction.
        Called with every argument validated; on failure the refs created here are removed."""
        with self.lock:
            self.checks.capacity(len(planned))
            first = self.ledger.max_experiment_seq() + 1
            ids = [format_exp_id(first + i) for i in range(len(planned))]
            wave_obj = None
            now = time.time()
            if wave is not None:
                wave_obj = Wave(id=format_wave_id(self.ledger.max_wave_seq() + 1), description=wave["description"],
                                kind=wave["kind"], design=wave["design"], experiment_ids=ids, created_at=now)
            exps: list[Experiment] = []
            created: list[str] = []
            try:
                for eid, p in zip(ids, planned, strict=True):
                    msg = f"{eid}: {p.description}"
                    if p.overrides:
                        msg += "\n\noverrides: " + variants.describe(p.overrides)
                    sha = self.workspace.snapshot(eid, p.source, p.base.parent_commit, msg)
                    created.append(eid)
                    exps.append(Experiment(
                        id=eid, description=p.description, wave_id=wave_obj.id if wave_obj else None,
                        parent_id=p.parent_id if p.parent_id is not None else p.base.parent_id,
                        parent_commit=p.base.parent_commit, commit=sha, code_hash=p.code_hash,
                        parent_code_hash=p.parent_code_hash, harness_hash=self.harness_hash,
                        overrides=p.overrides, seed=p.seed, gpu_type=p.gpu_type, priority=p.priority,
                        status=Status.queued, created_at=now, hypothesis=p.hypothesis,
                        time_budget_s=self.time_budget_s))
                self.ledger.insert_launch(exps, {e.id: p.kind for e, p in zip(exps, planned, strict=True)}, wave_obj)
            except BaseException:
                for eid in created:
                    try:
                        self.workspace.drop_experiment_ref(eid)
                    except Exception:  # noqa: BLE001
                        log.exception("could not remove ref of %s", eid)
                raise
            self.written(exps)
        return exps, wave_obj
