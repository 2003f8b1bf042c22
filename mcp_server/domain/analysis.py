"""What results mean: noise floors, verdicts and leaderboards, per GPU type. Pure functions, no I/O.

Rules (the skills and tool descriptions repeat them; change them together):

* Results are only ever compared within one GPU type (`Experiment.ran_on_gpu`, the type of the
  slot the run actually used). A fixed wall-clock budget lets a faster GPU take more steps, so
  an H200 result is not comparable with an H100 one. An experiment that finished without a
  known GPU type is grouped under "unknown".
* A *group* is the finished experiments with the same (ran_on_gpu, code_hash): identical code on
  the same GPU type. Its members differ only by seed: they are replicates, and the group's
  value is their mean.
* Values and directions are the task's metric (`Metric`: val_bpb, lower is better, for the built-in
  template); "val_bpb" below stands for it, and "lower" for "better". Imported history
  (`Experiment.imported`) is ranked but never counts towards a noise floor.
* Noise floor of a GPU type = pooled standard deviation of val_bpb over all its groups that
  have >= 2 finished replicates: sqrt(sum of squared deviations from each group's mean /
  sum of (n_group - 1)). One run of the same code has roughly this spread between seeds.
* Verdict of a target vs its reference (the same-GPU group of its parent's code, i.e. the
  unmodified control), with delta = mean(target group) - mean(reference group):
      threshold = 2 * noise * sqrt(1/n_target + 1/n_reference)   (about two standard errors)
      delta < -threshold -> improvement;  delta > threshold -> worse;  else -> within_noise.
  Without a noise estimate the verdict falls back to the sign of delta and says that seed
  noise was not accounted for (launch replicates of the baseline to measure it).
* Leaderboard reference per GPU type: the best (lowest mean) group containing a kept
  experiment; if nothing was kept there, the baseline: the group of the earliest finished
  experiment whose code is the parent of other experiments (the control); failing that, the
  group of the earliest finished experiment on that GPU type.

`Index` holds the grouped state of a set of experiments and is updated one experiment at a time
(`put`), so the engine keeps one per workspace and answers a verdict in O(1) and a leaderboard in
O(groups) after a change, instead of regrouping every experiment per call. Its answers are exactly
those of rebuilding it from scratch (sums are exact `math.fsum`s and every choice has a total
order), which the functions `verdicts`, `leaderboard` and `noise_floor` do.

(Over 400 lines on purpose: the rules above and the one `Index` that implements them read best
in one place; the result models and the text rendering are small.)
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable
from typing import Any, Literal

from pydantic import BaseModel, Field

from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.limits import MAX_IDS_PER_ROW, MAX_LEADERBOARD_ROWS
from mcp_server.domain.metric import DEFAULT_METRIC, Metric
from mcp_server.domain.models import LIVE, Decision, Experiment
from mcp_server.domain.tool_names import Tool

UNKNOWN_GPU = "unknown"
SIGMAS = 2.0            # width of the "within noise" band, in standard errors of the difference


class Verdict(BaseModel):
    experiment_id: str
    gpu_type: str | None
    val_bpb: float | None = Field(None, description="This experiment's own val_bpb.")
    reference_id: str | None = Field(None, description="Same-GPU-type baseline/control it is compared with.")
    delta: float | None = Field(
        None, description="mean val_bpb of its group - mean of the reference group (negative = better when lower "
                          "is better, as for val_bpb; see `metric`).")
    noise: float | None = Field(None, description="Noise floor (pooled std of replicated groups) on this GPU type.")
    verdict: Literal["improvement", "within_noise", "worse", "reference", "no_reference", "failed", "pending"] = Field(
        description=f"'reference' = a control: the same code as its reference (the word {Tool.LEADERBOARD} uses).")
    note: str = ""
    # additions beyond the first stub
    mean_val_bpb: float | None = Field(None, description="Mean val_bpb over its replicates (same code, same GPU type).")
    replicates: int = Field(0, description="Finished runs averaged into mean_val_bpb.")
    reference_val_bpb: float | None = Field(None, description="Mean val_bpb of the reference group.")
    reference_replicates: int = 0
    threshold: float | None = Field(None, description="|delta| at or below this is within noise.")
    metric: str | None = Field(None, description="The metric the values are (the task's), e.g. 'val_bpb (lower is "
                               "better)'; the val_bpb fields hold this metric's values.")


class LeaderboardRow(BaseModel):
    rank: int
    experiment_id: str = Field(description="First finished experiment of the group (its description is shown).")
    description: str
    val_bpb: float = Field(description="Mean over the group's replicates.")
    delta: float | None
    verdict: str = Field(description="reference | improvement | within_noise | worse")
    seeds: int = Field(1, description="Replicates averaged into val_bpb.")
    std: float | None = None
    decision: str | None = None
    num_steps: int | None = None
    # additions beyond the first stub
    code_hash: str | None = None
    experiment_ids: list[str] = Field(default_factory=list, description=f"Up to {MAX_IDS_PER_ROW} ids of the group.")


class Leaderboard(BaseModel):
    by_gpu_type: dict[str, list[LeaderboardRow]]
    noise_floor: dict[str, float | None]
    notes: list[str] = Field(default_factory=list)
    reference: dict[str, str] = Field(default_factory=dict,
                                      description="GPU type -> experiment id the deltas are measured against.")
    metric: str | None = Field(None, description="The metric the values are (the task's), e.g. 'val_bpb (lower is "
                               "better)'; the rows' val_bpb field holds this metric's mean.")


# ------------------------------------------------------------------------------------------
# grouping


class _Group:
    """Finished runs of one code on one GPU type. Statistics are computed once, on demand, and
    again only after a member is added or removed."""

    __slots__ = ("gpu", "code_hash", "members", "values", "n_kept", "n_discarded", "n_imported", "first", "_first_key",
                 "_stats")

    def __init__(self, gpu: str, code_hash: str | None) -> None:
        self.gpu, self.code_hash = gpu, code_hash
        self.members: list[Experiment] = []
        self.values: list[float] = []
        self.n_kept = self.n_discarded = self.n_imported = 0
        self.first: Experiment | None = None  # earliest created member: the group's face
        self._first_key: tuple[float, str] | None = None
        self._stats: tuple[float, float] | None = None

    def add(self, e: Experiment, value: float) -> None:
        key = (e.created_at, e.id)
        if self._first_key is None or key < self._first_key:
            self.first, self._first_key = e, key
        self.members.append(e)
        self.values.append(value)
        self.n_imported += e.imported
        if e.decision == Decision.keep:
            self.n_kept += 1
        elif e.decision == Decision.discard:
            self.n_discarded += 1
        self._stats = None

    def remove(self, exp_id: str) -> None:
        i = next(i for i, m in enumerate(self.members) if m.id == exp_id)
        m = self.members.pop(i)
        del self.values[i]
        self.n_imported -= m.imported
        if m.decision == Decision.keep:
            self.n_kept -= 1
        elif m.decision == Decision.discard:
            self.n_discarded -= 1
        if self.first is m:
            self.first = min(self.members, key=_order) if self.members else None
            self._first_key = _order(self.first) if self.first is not None else None
        self._stats = None

    @property
    def kept(self) -> bool:
        return self.n_kept > 0

    @property
    def discarded(self) -> bool:
        return self.n_discarded > 0

    @property
    def n(self) -> int:
        return len(self.values)

    def _compute(self) -> tuple[float, float]:
        if self._stats is None:
            m = math.fsum(self.values) / len(self.values)
            self._stats = (m, math.fsum((v - m) ** 2 for v in self.values))
        return self._stats

    @property
    def mean(self) -> float:
        return self._compute()[0]

    def sq_dev(self) -> float:
        return self._compute()[1]

    @property
    def std(self) -> float | None:
        return math.sqrt(self.sq_dev() / (self.n - 1)) if self.n >= 2 else None

    @property
    def order(self) -> tuple[float, str]:
        return self._first_key  # type: ignore[return-value]

    def rank_key(self, metric: Metric = DEFAULT_METRIC) -> tuple[float, float, str]:
        return (metric.sort_key(self.mean), *self.order)

    def noise_sq_dev(self) -> tuple[float, int]:
        """Squared deviations from the mean and degrees of freedom over the members measured here
        (imported history has unknown seeds: it never counts as a noise estimate)."""
        if not self.n_imported:
            return self.sq_dev(), self.n - 1
        vals = [v for m, v in zip(self.members, self.values, strict=True) if not m.imported]
        if len(vals) < 2:
            return 0.0, 0
        mean = math.fsum(vals) / len(vals)
        return math.fsum((v - mean) ** 2 for v in vals), len(vals) - 1

    def ordered_members(self) -> list[Experiment]:
        return sorted(self.members, key=_order)


def gpu_of(e: Experiment) -> str:
    return e.ran_on_gpu or UNKNOWN_GPU


def _order(e: Experiment) -> tuple[float, str]:
    return (e.created_at, e.id)


def _group_key(e: Experiment) -> tuple[str, str]:
    """(gpu type, code hash). An experiment without a code hash forms a group of its own (its code
    is unknown)."""
    code = e.code_hash
    return (e.ran_on_gpu or UNKNOWN_GPU, code if code is not None else f"<no code hash: {e.id}>")


def _signature(e: Experiment) -> tuple[Any, ...]:
    """Every field of an experiment that the index's answers (and the per-GPU-type throughput of
    done runs, which the engine caches with `Index.version`) depend on. Of a live experiment only
    its parent code and that it is live count (so a dispatch, queued -> running, changes nothing)."""
    if e.status in LIVE:
        return (True, e.parent_code_hash)
    return (False, e.status, e.ran_on_gpu, e.code_hash, e.parent_code_hash, e.decision, e.created_at,
            e.description, e.metrics.__dict__, e.metrics.model_extra, e.imported)


def _pooled_noise(groups: Iterable[_Group]) -> float | None:
    sq: list[float] = []
    dof = 0
    for g in groups:
        if g.n >= 2:
            dev, n = g.noise_sq_dev()
            if n:
                sq.append(dev)
                dof += n
    return math.sqrt(math.fsum(sq) / dof) if dof else None


def noise_floor(experiments: Iterable[Experiment], gpu_type: str, metric: Metric = DEFAULT_METRIC) -> float | None:
    """Pooled std of val_bpb over the groups on `gpu_type` with >= 2 finished replicates
    (None when there are none: launch replicates of the baseline to measure it)."""
    return Index(experiments, metric).noise(gpu_type)


#: what a delta means against its reference (the comparing subset of Verdict.verdict)
Comparison = Literal["improvement", "within_noise", "worse"]


def _classify(delta: float, noise: float | None, n_t: int, n_r: int,
              metric: Metric = DEFAULT_METRIC) -> tuple[Comparison, float | None]:
    """`delta` = target mean - reference mean; better or worse as the metric's direction says."""
    gain = -delta if metric.lower_is_better else delta
    if noise is None:
        return ("improvement" if gain > 0 else "worse" if gain < 0 else "within_noise"), None
    threshold = SIGMAS * noise * math.sqrt(1.0 / n_t + 1.0 / n_r)
    if gain > threshold:
        return "improvement", threshold
    if gain < -threshold:
        return "worse", threshold
    return "within_noise", threshold


def _no_noise_note(gpu: str) -> str:
    return (
        f"No noise estimate on {gpu} yet (no code has >= 2 finished seeds there), so this verdict ignores "
        "seed noise: launch replicates of the baseline (e.g. replicates=3) to measure it."
    )


# ------------------------------------------------------------------------------------------
# the index


def check_leaderboard_args(gpu_type: Any, limit: Any) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LEADERBOARD_ROWS:
        raise InvalidInput(f"limit must be an integer from 1 to {MAX_LEADERBOARD_ROWS}, got {limit!r}.")
    if gpu_type is not None and not isinstance(gpu_type, str):
        raise InvalidInput(f"gpu_type must be a GPU type name such as 'H100' (or omitted for all), got {gpu_type!r}.")


def _decision(g: _Group) -> str | None:
    if g.kept:
        return Decision.keep.value
    return Decision.discard.value if g.discarded else None


def _mean_steps(g: _Group) -> int | None:
    steps = [m.metrics.num_steps for m in g.members if m.metrics.num_steps is not None]
    return round(sum(steps) / len(steps)) if steps else None


def _bump(counts: dict[Any, int], key: Any, by: int) -> None:
    n = counts.get(key, 0) + by
    if n:
        counts[key] = n
    else:
        counts.pop(key, None)


class Index:
    """The grouped state of a set of experiments (one version of each id): groups by (GPU type,
    code hash), noise floor per GPU type (cached until one of its groups changes), the parent code
    hashes, and counts of live and unranked experiments.

    `put(e)` adds an experiment or replaces the version indexed under its id; `version` grows by
    one whenever a put changes a field the answers depend on (a queued -> running move does not).
    Not thread-safe: the caller serialises `put` with the reads."""

    def __init__(self, experiments: Iterable[Experiment] = (), metric: Metric = DEFAULT_METRIC) -> None:
        #: what is compared and which direction is better (the task's metric)
        self.metric = metric
        self._value = metric.value
        self.version = 0
        self._exps: dict[str, Experiment] = {}
        self._groups: dict[tuple[str, str], _Group] = {}
        self._by_gpu: dict[str, dict[tuple[str, str], _Group]] = {}
        self._parents: dict[str, int] = {}               # parent code hash -> experiments derived from it
        self._live = 0
        self._unranked: dict[tuple[str, str], int] = {}  # (gpu type, status) -> terminal runs without val_bpb
        self._noise: dict[str, float | None] = {}
        for e in experiments:
            self.put(e)

    def __len__(self) -> int:
        return len(self._exps)

    def get(self, exp_id: str) -> Experiment | None:
        return self._exps.get(exp_id)

    # -- updates -------------------------------------------------------------------------------
    def put(self, e: Experiment) -> bool:
        """Index `e` (replacing the version with its id). True if an answer may have changed."""
        old = self._exps.get(e.id)
        if old is e:
            return False
        changed = old is None or _signature(old) != _signature(e)
        if old is not None:
            self._remove(old)
        self._exps[e.id] = e
        self._add(e)
        if changed:
            self.version += 1
        return changed

    def _add(self, e: Experiment) -> None:
        if e.parent_code_hash is not None:
            _bump(self._parents, e.parent_code_hash, 1)
        v = self._value(e)
        if v is None:
            if e.status in LIVE:
                self._live += 1
            else:
                _bump(self._unranked, (gpu_of(e), e.status.value), 1)
            return
        key = _group_key(e)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(key[0], e.code_hash)
            self._by_gpu.setdefault(key[0], {})[key] = g
        g.add(e, v)
        self._noise.pop(key[0], None)

    def _remove(self, e: Experiment) -> None:
        if e.parent_code_hash is not None:
            _bump(self._parents, e.parent_code_hash, -1)
        if self._value(e) is None:
            if e.status in LIVE:
                self._live -= 1
            else:
                _bump(self._unranked, (gpu_of(e), e.status.value), -1)
            return
        key = _group_key(e)
        g = self._groups[key]
        g.remove(e.id)
        if not g.n:
            del self._groups[key]
            by = self._by_gpu[key[0]]
            del by[key]
            if not by:
                del self._by_gpu[key[0]]
        self._noise.pop(key[0], None)

    # -- answers -------------------------------------------------------------------------------
    def noise(self, gpu_type: str) -> float | None:
        """Pooled std of val_bpb over the groups on `gpu_type` with >= 2 finished replicates
        (None when there are none: launch replicates of the baseline to measure it)."""
        if gpu_type not in self._noise:
            gs = self._by_gpu.get(gpu_type)
            self._noise[gpu_type] = _pooled_noise(gs.values()) if gs else None
        return self._noise[gpu_type]

    def verdicts(self, targets: Iterable[Experiment]) -> list[Verdict]:
        """One verdict per target, against the same-GPU group of its parent's code (see module doc).
        A target is judged as given (it need not be the version indexed)."""
        return [self.verdict(t) for t in targets]

    def verdict(self, t: Experiment) -> Verdict:
        groups = self._groups
        gpu = gpu_of(t) if t.ran_on_gpu else t.gpu_type
        metric = self.metric
        base: dict[str, Any] = dict(experiment_id=t.id, gpu_type=gpu, val_bpb=metric.raw(t),
                                    metric=metric.describe())
        if t.status in LIVE:
            return Verdict(**base, verdict="pending", note=f"Status {t.status.value}: no result yet; wait for it.")
        if self._value(t) is None:
            why = f": {t.error}" if t.error else ""
            return Verdict(**base, verdict="failed", note=f"Status {t.status.value}{why}. No {metric.name} to compare.")
        gpu = gpu_of(t)
        base["gpu_type"] = gpu
        own = groups.get((gpu, t.code_hash)) if t.code_hash is not None else None
        n_t = own.n if own else 1
        mean_t = own.mean if own else float(metric.raw(t))  # type: ignore[arg-type]
        base.update(mean_val_bpb=mean_t, replicates=n_t, noise=self.noise(gpu))

        if t.parent_code_hash is None:
            return Verdict(**base, verdict="no_reference",
                           note="It has no parent code to compare with (a baseline). Launch variants of it, "
                                "or replicates to measure noise.")
        ref = groups.get((gpu, t.parent_code_hash))
        if ref is None:
            elsewhere = sorted(g for g in self._by_gpu if (g, t.parent_code_hash) in groups)
            if elsewhere:
                note = (
                    f"Its parent code has no finished run on {gpu}; it has on: {', '.join(elsewhere)}. Results on "
                    f"different GPU types are not comparable (a faster GPU fits more steps in the same time budget), "
                    f"so no verdict: run the parent on {gpu} too (launch it as a control, or {Tool.PROMOTE} it)."
                )
            else:
                note = (
                    "Its parent code has no finished run on any GPU type: launch the unmodified parent as a control "
                    f"({Tool.LAUNCH_WAVE} include_control=true, or {Tool.LAUNCH_EXPERIMENT} with no changes)."
                )
            return Verdict(**base, verdict="no_reference", note=note)

        delta = mean_t - ref.mean
        comparison, threshold = _classify(delta, base["noise"], n_t, ref.n, metric)
        label: Literal["improvement", "within_noise", "worse", "reference"] = comparison
        notes: list[str] = []
        if t.code_hash == t.parent_code_hash:
            label, delta = "reference", 0.0
            notes.append("This is a control: same code as its parent (its own reference), so no change.")
        elif base["noise"] is None:
            notes.append(_no_noise_note(gpu))
        elif base["noise"] == 0.0:
            notes.append(f"Replicates on {gpu} were identical (noise 0): "
                         "the seed may not change anything on this GPU type.")
        if label == "improvement" and n_t == 1 and t.code_hash != t.parent_code_hash:
            notes.append(f"Single seed: confirm with replicates (or {Tool.PROMOTE}) before keeping.")
        assert ref.first is not None
        return Verdict(
            **base, verdict=label, delta=delta, threshold=threshold,
            reference_id=ref.first.id, reference_val_bpb=ref.mean, reference_replicates=ref.n,
            note=" ".join(notes),
        )

    def _reference_group(self, gs: list[_Group]) -> tuple[_Group, str]:
        kept = [g for g in gs if g.kept]
        if kept:
            return min(kept, key=lambda g: g.rank_key(self.metric)), "best kept"
        parents = self._parents
        controls = [g for g in gs if g.code_hash is not None and g.code_hash in parents]
        if controls:
            return min(controls, key=lambda g: g.order), "baseline (the parent/control code)"
        return min(gs, key=lambda g: g.order), "first result"

    def leaderboard(self, gpu_type: str | None = None, limit: int = 20) -> Leaderboard:
        """Groups of identical code ranked by mean val_bpb, separately per GPU type (see module doc)."""
        check_leaderboard_args(gpu_type, limit)
        notes: list[str] = []
        all_types = sorted(self._by_gpu)
        if gpu_type is not None:
            wanted = {t.lower(): t for t in all_types}.get(gpu_type.lower())
            if wanted is None:
                notes.append(
                    f"No finished experiments on {gpu_type}. "
                    f"GPU types with results: {', '.join(all_types) or 'none yet'}."
                )
                return Leaderboard(by_gpu_type={}, noise_floor={}, notes=notes, metric=self.metric.describe())
            types = [wanted]
        else:
            types = all_types
            if len(all_types) > 1:
                notes.append(
                    f"{' and '.join(all_types)} results are ranked separately and are not comparable: the time budget "
                    f"is fixed, so a faster GPU fits more steps. Compare within one type; {Tool.PROMOTE} to a type to "
                    "compare there."
                )

        table: dict[str, list[LeaderboardRow]] = {}
        noise_floor_by_type: dict[str, float | None] = {}
        reference_ids: dict[str, str] = {}
        for gpu in types:
            gs = list(self._by_gpu[gpu].values())
            noise = self.noise(gpu)
            noise_floor_by_type[gpu] = noise
            ref, why = self._reference_group(gs)
            assert ref.first is not None
            reference_ids[gpu] = ref.first.id
            notes.append(f"{gpu}: deltas are vs {ref.first.id} "
                         f"({why}, mean of {ref.n} seed{'s' if ref.n != 1 else ''}).")
            if noise is None:
                notes.append(f"{gpu}: no noise estimate (no code has >= 2 finished seeds); verdicts go by sign only. "
                             "Launch replicates of the baseline to measure it.")
            ranked = heapq.nsmallest(limit, gs, key=lambda g: g.rank_key(self.metric))
            if not any(g is ref for g in ranked):
                notes.append(f"{gpu}: the reference {ref.first.id} ranks below the top {limit}.")
            rows = []
            for rank, g in enumerate(ranked, start=1):
                if g is ref:
                    delta, verdict = 0.0, "reference"
                else:
                    delta = g.mean - ref.mean
                    verdict, _ = _classify(delta, noise, g.n, ref.n, self.metric)
                first = g.first
                assert first is not None
                rows.append(LeaderboardRow(
                    rank=rank, experiment_id=first.id, description=first.description, val_bpb=g.mean,
                    delta=delta, verdict=verdict, seeds=g.n, std=g.std, decision=_decision(g),
                    num_steps=_mean_steps(g), code_hash=g.code_hash,
                    experiment_ids=[m.id for m in g.ordered_members()[:MAX_IDS_PER_ROW]],
                ))
            table[gpu] = rows

        # Say what is not on the board, so nothing is hidden.
        unranked: dict[str, int] = {}
        for (gpu, status), n in self._unranked.items():
            if gpu_type is None or gpu.lower() == gpu_type.lower():
                unranked[status] = unranked.get(status, 0) + n
        if unranked:
            parts = ", ".join(f"{n} {s}" for s, n in sorted(unranked.items()))
            notes.append(f"Not ranked (no {self.metric.name}): {parts}.")
        live = self._live
        if live:
            notes.append(f"{live} experiment{'s are' if live != 1 else ' is'} still queued or running.")
        if any(g.n_imported for gpu in types for g in self._by_gpu[gpu].values()):
            notes.append("Rows include imported history (import-results): seeds unknown, "
                         "never used as a noise estimate.")
        return Leaderboard(by_gpu_type=table, noise_floor=noise_floor_by_type, notes=notes, reference=reference_ids,
                           metric=self.metric.describe())


# ------------------------------------------------------------------------------------------
# one-shot functions (an index built for the call)


def verdicts(experiments: Iterable[Experiment], targets: list[Experiment],
             metric: Metric = DEFAULT_METRIC) -> list[Verdict]:
    """One verdict per target, against the same-GPU group of its parent's code (see module doc)."""
    return Index(experiments, metric).verdicts(targets)


def leaderboard(experiments: Iterable[Experiment], gpu_type: str | None = None, limit: int = 20,
                metric: Metric = DEFAULT_METRIC) -> Leaderboard:
    """Groups of identical code ranked by mean metric (best first), separately per GPU type (see module doc)."""
    check_leaderboard_args(gpu_type, limit)
    return Index(experiments, metric).leaderboard(gpu_type, limit)


def leaderboard_text(board: Leaderboard) -> str:
    """The leaderboard as a terminal table, one block per GPU type (cli report, the demo)."""
    lines: list[str] = []
    for gpu, rows in board.by_gpu_type.items():
        noise = board.noise_floor.get(gpu)
        lines.append(f"\n== {gpu}  (noise floor {'n/a' if noise is None else f'{noise:.5f}'}) ==")
        name = (board.metric or DEFAULT_METRIC.name).split(" ")[0]
        lines.append(f"{'rank':>4}  {'id':<6} {name[:9]:>9} {'delta':>9} {'seeds':>5}  {'verdict':<13} "
                     f"{'decision':<8} description")
        for r in rows:
            delta = "" if r.delta is None else f"{r.delta:+.5f}"
            lines.append(f"{r.rank:>4}  {r.experiment_id:<6} {r.val_bpb:>9.5f} {delta:>9} {r.seeds:>5}  "
                         f"{r.verdict:<13} {(r.decision or ''):<8} {r.description[:60]}")
    lines += [f"note: {note}" for note in board.notes]
    return "\n".join(lines)
