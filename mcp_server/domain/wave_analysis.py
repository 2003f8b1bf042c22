"""What a factorial wave says: main effects, two-way interactions, cells vs the control, judged
against the measured noise floor and corrected for the number of comparisons. Pure functions.

Rules (the `factorial-waves` skill and the analyze_wave tool description repeat them):

* Per GPU type, never across types (the budget is fixed in wall-clock time, see `analysis`).
* A *cell* is one combination of the design's levels (its experiments' `overrides`); its value is
  the mean of its finished runs (`metric.value`). The control is the wave's runs with no overrides.
* Marginal mean of a level = the mean of the cell means of the cells with that level that have a
  result (least-squares means: every cell weighs the same). In a balanced design (every cell has
  the same number of finished runs) this is the plain mean of the runs at that level.
* Every number is a linear contrast of cell means, so its standard error is exact:
  SE = noise * sqrt(sum(c_k^2 / n_k)) (c_k: the contrast's weight on cell k, n_k: its runs).
  `noise` is the noise floor of the GPU type: the pooled std of every group of identical code with
  >= 2 finished runs there (the same rule as `analysis.Index.noise`), with its degrees of freedom.
* Effect of a level = its marginal mean - the marginal mean of the axis's reference level (the
  control's value of that constant when it is one of the levels, else the first level listed).
  Two-sided p-value from Student's t with the noise floor's degrees of freedom.
* Two families of comparisons per GPU type: the main effects (every non-reference level of every
  axis) and the cells vs the control. Each family is corrected with Holm's method (the numbers of
  `statsmodels.stats.multitest.multipletests(method="holm")`) at a family-wise error rate of ALPHA:
  with no real effect, the chance that a family shows any false 'improvement' is at most ALPHA.
* Interaction of two axes: the table of two-way marginal means, the deviation of each entry from
  additivity (m_ab - m_a - m_b + m), and a flag when the best level of one axis changes with the
  level of the other.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from itertools import combinations, product
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PlainSerializer
from scipy import special

from mcp_server.domain.errors import InvalidInput
from mcp_server.domain.metric import Metric
from mcp_server.domain.models import LIVE, Experiment, Wave
from mcp_server.domain.numbers import significant
from mcp_server.domain.tool_names import Tool

UNKNOWN_GPU = "unknown"
ALPHA = 0.05                     # family-wise error rate of each family of comparisons
#: P(one comparison looks like an improvement at 2 standard errors by chance): one tail of N(0, 1)
ONE_TAIL_2SE = float(special.ndtr(-2.0))
MAX_IDS_SHOWN = 3                # experiment ids listed per cell

def _seven(v: float) -> float:
    """Seven significant digits in JSON (tool results stay small; the models keep full precision)."""
    return significant(v, 7)


Num = Annotated[float, PlainSerializer(_seven, return_type=float, when_used="json")]

Judgement = Literal["reference", "improvement", "within_noise", "worse", "no_data", "no_noise_estimate"]


class LevelEffect(BaseModel):
    level: Any
    mean: Num | None = Field(None, description="Marginal mean of the metric over the cells with this level.")
    se: Num | None = Field(None, description="Standard error of that mean (noise floor and runs behind it).")
    runs: int = Field(0, description="Finished runs behind the mean.")
    delta: Num | None = Field(None, description="mean - mean of the reference level (metric units).")
    delta_se: Num | None = None
    p_value: Num | None = Field(None, description="Two-sided, uncorrected.")
    p_holm: Num | None = Field(None, description="Holm-corrected over the wave's main-effect levels.")
    verdict: Judgement


class AxisEffects(BaseModel):
    axis: str
    reference_level: Any = Field(description="The level effects are measured against.")
    reference_is_control: bool = Field(description="True when it is the control's (base code's) value.")
    levels: list[LevelEffect]
    best_level: Any = Field(None, description="Level with the best marginal mean.")


class Interaction(BaseModel):
    axes: tuple[str, str]
    row_levels: list[Any] = Field(description="Levels of the first axis (table rows).")
    col_levels: list[Any] = Field(description="Levels of the second axis (table columns).")
    means: list[list[Num | None]] = Field(description="Two-way marginal means, rows x columns.")
    deviation: list[list[Num | None]] = Field(
        description="Deviation from additivity per entry: m_ab - m_a - m_b + m (0 = no interaction).")
    deviation_se: Num | None = Field(None, description="Standard error of a deviation (the largest over the "
                                       "entries; in a balanced design they are all equal).")
    largest_deviation: Num | None = None
    beyond_noise: bool | None = Field(None, description="Largest |deviation| beyond the noise "
                                      "(Bonferroni over the (rows-1)(cols-1) independent entries).")
    best_row_by_col: list[Any] = Field(description="Best level of the first axis at each level of the second.")
    best_col_by_row: list[Any] = Field(description="Best level of the second axis at each level of the first.")
    best_level_changes: bool = Field(description="The best level of one axis depends on the other's level.")


class CellResult(BaseModel):
    overrides: dict[str, Any]
    mean: Num | None = None
    runs: int = Field(0, description="Finished runs.")
    failed: int = Field(0, description="Runs that ended without a result (crash, oom, nan, ...).")
    live: int = Field(0, description="Runs still queued or running.")
    experiment_ids: list[str] = Field(default_factory=list)
    delta: Num | None = Field(None, description="mean - control mean (metric units).")
    delta_se: Num | None = None
    p_value: Num | None = None
    p_holm: Num | None = Field(None, description="Holm-corrected over the wave's cells.")
    verdict: Judgement


class BestCombination(BaseModel):
    overrides: dict[str, Any] = Field(description="The best level of every axis, by main effects.")
    ran: bool = Field(description="Whether this combination is one of the wave's cells with a result.")
    mean: Num | None = Field(None, description="Its cell mean, when it ran.")
    predicted_mean: Num | None = Field(None, description="Additive prediction from the main effects.")


class GpuWaveAnalysis(BaseModel):
    gpu_type: str
    noise: Num | None = Field(None, description="Noise floor on this GPU type (pooled std of replicated code).")
    noise_dof: int = Field(0, description="Degrees of freedom of the noise floor.")
    control: CellResult | None = None
    axes: list[AxisEffects]
    interactions: list[Interaction]
    cells: list[CellResult]
    best_cell: CellResult | None = None
    best_combination: BestCombination | None = None
    balanced: bool = Field(description="Every cell has the same number of finished runs (and the control ran).")
    crashed_cells: list[dict[str, Any]] = Field(
        default_factory=list, description="Cells with no result at all: overrides, statuses, one experiment id.")
    chance: str = Field(description="How many 'improvements' chance alone would give here.")
    expected_false_improvements: float = Field(
        description="Upper bound on the false 'improvement' verdicts per wave if nothing really changed "
        "(ALPHA per family of comparisons).")
    uncorrected_false_improvements: float = Field(
        description="What judging every comparison alone at 2 standard errors would give by chance.")
    notes: list[str] = Field(default_factory=list)


class WaveAnalysis(BaseModel):
    wave_id: str
    description: str
    metric: str = Field(description="The metric and which direction is better.")
    method: str = Field(description="How the verdicts account for the number of comparisons.")
    by_gpu_type: dict[str, GpuWaveAnalysis]
    live: int = Field(0, description="Experiments of the wave still queued or running (the analysis is partial).")
    notes: list[str] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------
# noise


def pooled_noise(experiments: Iterable[Experiment], metric: Metric) -> dict[str, tuple[float, int]]:
    """Per GPU type: (pooled std of the metric, degrees of freedom) over the groups of identical
    code with >= 2 finished runs, imported history left out (the rule of `analysis.Index.noise`).
    Types without any are absent."""
    groups: dict[tuple[str, str], list[float]] = {}
    for e in experiments:
        v = metric.value(e)
        if v is None or e.code_hash is None or e.imported:    # imported history: seeds unknown, no noise estimate
            continue
        groups.setdefault((e.ran_on_gpu or UNKNOWN_GPU, e.code_hash), []).append(v)
    sq: dict[str, list[float]] = {}
    dof: dict[str, int] = {}
    for (gpu, _), vals in groups.items():
        if len(vals) >= 2:
            m = math.fsum(vals) / len(vals)
            sq.setdefault(gpu, []).append(math.fsum((v - m) ** 2 for v in vals))
            dof[gpu] = dof.get(gpu, 0) + len(vals) - 1
    return {gpu: (math.sqrt(math.fsum(sq[gpu]) / dof[gpu]), dof[gpu]) for gpu in dof}


# ------------------------------------------------------------------------------------------
# helpers


def _key(v: Any) -> str:
    """Identity of a level that tells 1, 1.0 and True apart (and survives a JSON round trip)."""
    return json.dumps(v, sort_keys=True) + ":" + type(v).__name__


def _gpu(e: Experiment) -> str:
    return e.ran_on_gpu or e.gpu_type or UNKNOWN_GPU


class _Cell:
    __slots__ = ("_mean", "failed", "ids", "levels", "live", "statuses", "values")

    def __init__(self, levels: tuple[str, ...]) -> None:
        self.levels = levels
        self.values: list[float] = []
        self.ids: list[str] = []
        self.failed = self.live = 0
        self.statuses: list[str] = []
        self._mean: float | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        """Computed once (call it only after every run was added)."""
        if self._mean is None:
            self._mean = math.fsum(self.values) / len(self.values)
        return self._mean


class _Contrast:
    """sum_k c_k * mean_k over cells, with its exact variance factor sum_k c_k^2 / n_k."""

    def __init__(self, weights: dict[tuple[str, ...], float]) -> None:
        self.w = {k: c for k, c in weights.items() if c != 0.0}

    def value(self, cells: Mapping[tuple[str, ...], _Cell]) -> float:
        return math.fsum(c * cells[k].mean for k, c in self.w.items())

    def se(self, cells: Mapping[tuple[str, ...], _Cell], noise: float | None) -> float | None:
        if noise is None:
            return None
        return noise * math.sqrt(math.fsum(c * c / cells[k].n for k, c in self.w.items()))

    def __sub__(self, other: _Contrast) -> _Contrast:
        w = dict(self.w)
        for k, c in other.w.items():
            w[k] = w.get(k, 0.0) - c
        return _Contrast(w)

    def __add__(self, other: _Contrast) -> _Contrast:
        w = dict(self.w)
        for k, c in other.w.items():
            w[k] = w.get(k, 0.0) + c
        return _Contrast(w)


def _mean_of(keys: list[tuple[str, ...]]) -> _Contrast:
    return _Contrast({k: 1.0 / len(keys) for k in keys}) if keys else _Contrast({})


def _p_value(delta: float, se: float | None, dof: int) -> float | None:
    if se is None:
        return None
    if se == 0.0:
        return 0.0 if delta != 0.0 else 1.0
    t = abs(delta) / se
    # the distributions' survival functions as ufuncs (scipy.stats.t.sf is ~100x slower per call)
    return float(2.0 * (special.stdtr(dof, -t) if dof > 0 else special.ndtr(-t)))


def _holm(pvals: list[float]) -> tuple[list[bool], list[float]]:
    """Holm's step-down correction: (rejected at ALPHA, adjusted p-values), in the order given.

    The same numbers as `statsmodels.stats.multitest.multipletests(pvals, method="holm")`
    (tests/test_wave_analysis.py checks it), written out because that function runs a full
    `gc.collect()` on every call (statsmodels 0.14-0.15), which costs ~0.1 s in a server holding
    10k experiments."""
    k = len(pvals)
    order = sorted(range(k), key=lambda i: pvals[i])
    adjusted = [0.0] * k
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (k - rank) * pvals[i]))
        adjusted[i] = running
    return [a <= ALPHA for a in adjusted], adjusted


def _judge(metric: Metric, delta: float, rejected: bool) -> Judgement:
    if not rejected:
        return "within_noise"
    return "improvement" if metric.gain(delta, 0.0) > 0 else "worse"


# ------------------------------------------------------------------------------------------
# the analysis


def analyze_wave(wave: Wave, experiments: Iterable[Experiment], metric: Metric,
                 noise: Mapping[str, tuple[float, int]], control_levels: Mapping[str, Any] | None = None,
                 ) -> WaveAnalysis:
    """Analyse a factorial wave. `experiments`: the wave's experiments (any status); `noise`: per
    GPU type (noise floor, degrees of freedom), e.g. `pooled_noise(every experiment, metric)`;
    `control_levels`: the base code's value of each axis constant (None when unknown)."""
    if wave.kind != "factorial":
        raise InvalidInput(
            f"{wave.id} is a {wave.kind} wave, not a factorial one: it has no axes to analyse. Its verdicts are in "
            f"{Tool.WAIT_FOR_EXPERIMENTS}(wave_id='{wave.id}') and {Tool.LEADERBOARD}.")
    axes_raw = wave.design.get("axes")
    if not isinstance(axes_raw, dict) or not axes_raw:
        raise InvalidInput(f"{wave.id} has no axes in its design; nothing to analyse. {Tool.LEADERBOARD} ranks it.")
    axes: dict[str, list[Any]] = {str(a): list(levels) for a, levels in axes_raw.items()}
    names = list(axes)
    keyed = {a: [_key(v) for v in axes[a]] for a in names}
    value_of = {a: dict(zip(keyed[a], axes[a], strict=True)) for a in names}
    controls = control_levels or {}

    exps = [e for e in experiments if e.wave_id == wave.id or e.id in set(wave.experiment_ids)]
    live = sum(1 for e in exps if e.status in LIVE)
    by_gpu: dict[str, list[Experiment]] = {}
    for e in exps:
        if e.status in LIVE and not (e.ran_on_gpu or e.gpu_type):
            continue        # not on a slot yet and no type asked for: counted in `live` only
        by_gpu.setdefault(_gpu(e), []).append(e)
    out: dict[str, GpuWaveAnalysis] = {}
    notes: list[str] = []
    for gpu in sorted(by_gpu):
        out[gpu] = _analyze_gpu(gpu, by_gpu[gpu], names, axes, keyed, value_of, controls, metric, noise.get(gpu))
    if len(out) > 1:
        notes.append(f"The wave ran on {', '.join(out)}: each type is analysed on its own (not comparable).")
    if live:
        notes.append(f"{live} experiment{'s are' if live != 1 else ' is'} still queued or running: this is partial. "
                     f"{Tool.WAIT_FOR_EXPERIMENTS}(wave_id='{wave.id}') first for the full picture.")
    if not out:
        notes.append("No experiment of the wave has run yet.")
    method = (f"Holm's step-down correction per family of comparisons (main-effect levels; cells vs the "
              f"control), family-wise error {ALPHA:g}, two-sided t-tests with the noise floor's degrees of freedom.")
    return WaveAnalysis(wave_id=wave.id, description=wave.description, metric=metric.describe(), method=method,
                        by_gpu_type=out, live=live, notes=notes)


def _analyze_gpu(gpu: str, exps: list[Experiment], names: list[str], axes: dict[str, list[Any]],
                 keyed: dict[str, list[str]], value_of: dict[str, dict[str, Any]], controls: Mapping[str, Any],
                 metric: Metric, noise_dof: tuple[float, int] | None) -> GpuWaveAnalysis:
    noise, dof = noise_dof if noise_dof is not None else (None, 0)
    notes: list[str] = []
    cells: dict[tuple[str, ...], _Cell] = {}
    for combo in product(*(keyed[a] for a in names)):
        cells[combo] = _Cell(combo)
    control = _Cell(())
    stray = 0
    for e in sorted(exps, key=lambda x: (x.created_at, x.id)):
        if not e.overrides:
            cell: _Cell | None = control
        else:
            k = tuple(_key(e.overrides.get(a)) for a in names)
            cell = cells.get(k) if set(e.overrides) == set(names) else None
        if cell is None:
            stray += 1
            continue
        v = metric.value(e)
        cell.statuses.append(e.status.value)
        if e.status in LIVE:
            cell.live += 1
        elif v is None:
            cell.failed += 1
        else:
            cell.values.append(v)
            cell.ids.append(e.id)
        if v is None and e.status not in LIVE:
            cell.ids.append(e.id)
    if stray:
        notes.append(f"{stray} experiment(s) of the wave match no cell of the design (ignored).")

    def label(k: tuple[str, ...]) -> dict[str, Any]:
        return {a: value_of[a][lk] for a, lk in zip(names, k, strict=True)}

    have = {k: c for k, c in cells.items() if c.n}
    counts = {c.n for c in cells.values()}
    balanced = len(counts) == 1 and 0 not in counts and (control.n > 0 or not control.statuses)
    crashed = [{"overrides": label(k), "statuses": sorted(set(c.statuses)), "experiment_id": c.ids[0]}
               for k, c in cells.items() if c.n == 0 and c.failed and not c.live]
    missing = [k for k, c in cells.items() if c.n == 0]
    if not balanced:
        if missing:
            notes.append(f"Unbalanced design: {len(missing)} of {len(cells)} cells have no result "
                         f"({len(crashed)} crashed/failed entirely). Marginal means average over the cells that "
                         "ran, so an axis's levels are compared over different mixes of the other axes: treat its "
                         "effects with care, or relaunch the missing cells.")
        else:
            notes.append(f"Unbalanced design: cells have {min(counts)} to {max(counts)} finished runs; marginal "
                         "means weigh every cell equally (least-squares means) and the standard errors follow.")
    if noise is None:
        notes.append(f"No noise floor on {gpu} yet (no code has >= 2 finished runs there): effects are shown "
                     "without standard errors or verdicts. Launch replicates (e.g. of the control) to measure it.")
    elif noise == 0.0:
        notes.append(f"Replicates on {gpu} were identical (noise 0): the seed may change nothing there.")

    # main effects --------------------------------------------------------------------------
    axis_rows: list[AxisEffects] = []
    me_slots: list[tuple[LevelEffect, float]] = []   # (row, p) for Holm
    marg: dict[str, dict[str, _Contrast]] = {}
    for i, a in enumerate(names):
        marg[a] = {lk: _mean_of([k for k in have if k[i] == lk]) for lk in keyed[a]}
        ref_is_control = a in controls and _key(controls[a]) in marg[a]
        ref = _key(controls[a]) if ref_is_control else keyed[a][0]
        rows: list[LevelEffect] = []
        best: tuple[float, Any] | None = None
        for lk in keyed[a]:
            c = marg[a][lk]
            if not c.w:
                rows.append(LevelEffect(level=value_of[a][lk], verdict="no_data"))
                continue
            mean = c.value(have)
            runs = sum(have[k].n for k in c.w)
            if best is None or metric.better(mean, best[0]):
                best = (mean, value_of[a][lk])
            row = LevelEffect(level=value_of[a][lk], mean=mean, se=c.se(have, noise), runs=runs,
                              verdict="reference" if lk == ref else "no_noise_estimate")
            if lk != ref and marg[a][ref].w:
                d = c - marg[a][ref]
                row.delta = d.value(have)
                row.delta_se = d.se(have, noise)
                row.p_value = _p_value(row.delta, row.delta_se, dof)
                if row.p_value is not None:
                    me_slots.append((row, row.p_value))
            elif lk != ref:
                row.verdict = "no_data"
            rows.append(row)
        axis_rows.append(AxisEffects(axis=a, reference_level=value_of[a][ref], reference_is_control=ref_is_control,
                                     levels=rows, best_level=best[1] if best else None))
    rej, corr = _holm([p for _, p in me_slots])
    for (row, _), r, pc in zip(me_slots, rej, corr, strict=True):
        row.p_holm = pc
        assert row.delta is not None
        row.verdict = _judge(metric, row.delta, r)

    # two-way interactions ------------------------------------------------------------------
    inters: list[Interaction] = []
    grand = _mean_of(list(have))
    for (i, a), (j, b) in combinations(enumerate(names), 2):
        if len(keyed[a]) < 2 or len(keyed[b]) < 2:
            continue
        means: list[list[float | None]] = []
        devs: list[list[float | None]] = []
        se_max: float | None = None
        largest: tuple[float, float | None] | None = None
        for la in keyed[a]:
            mrow: list[float | None] = []
            drow: list[float | None] = []
            for lb in keyed[b]:
                ks = [k for k in have if k[i] == la and k[j] == lb]
                if not ks:
                    mrow.append(None)
                    drow.append(None)
                    continue
                m_ab = _mean_of(ks)
                mrow.append(m_ab.value(have))
                dev = m_ab - marg[a][la] - marg[b][lb] + grand
                dv, ds = dev.value(have), dev.se(have, noise)
                drow.append(dv)
                if ds is not None:
                    se_max = ds if se_max is None else max(se_max, ds)
                if largest is None or abs(dv) > abs(largest[0]):
                    largest = (dv, ds)
            means.append(mrow)
            devs.append(drow)
        best_row_by_col = [_best_index(metric, [means[r][c] for r in range(len(keyed[a]))], axes[a])
                           for c in range(len(keyed[b]))]
        best_col_by_row = [_best_index(metric, means[r], axes[b]) for r in range(len(keyed[a]))]
        changes = (len({_key(x) for x in best_row_by_col if x is not None}) > 1
                   or len({_key(x) for x in best_col_by_row if x is not None}) > 1)
        beyond = None
        if largest is not None and largest[1] is not None:
            p = _p_value(largest[0], largest[1], dof)
            m_ind = (len(keyed[a]) - 1) * (len(keyed[b]) - 1)
            beyond = p is not None and p * m_ind < ALPHA
        inters.append(Interaction(
            axes=(a, b), row_levels=axes[a], col_levels=axes[b], means=means, deviation=devs, deviation_se=se_max,
            largest_deviation=largest[0] if largest else None, beyond_noise=beyond,
            best_row_by_col=best_row_by_col, best_col_by_row=best_col_by_row, best_level_changes=changes))
        if changes:
            notes.append(f"{a} x {b}: the best level of one changes with the other's level "
                         f"({'beyond' if beyond else 'within'} the noise): judge the cells, not the main "
                         "effects alone.")

    # cells vs control ----------------------------------------------------------------------
    cell_rows: list[CellResult] = []
    slots: list[tuple[CellResult, float]] = []
    cmean = control.mean if control.n else None
    for ck, cl in cells.items():
        crow = CellResult(overrides=label(ck), runs=cl.n, failed=cl.failed, live=cl.live,
                         experiment_ids=cl.ids[:MAX_IDS_SHOWN],
                         verdict="no_data" if not cl.n else "no_noise_estimate")
        if cl.n:
            crow.mean = cl.mean
            if cmean is not None:
                crow.delta = cl.mean - cmean
                if noise is not None:
                    crow.delta_se = noise * math.sqrt(1.0 / cl.n + 1.0 / control.n)
                    crow.p_value = _p_value(crow.delta, crow.delta_se, dof)
                    assert crow.p_value is not None
                    slots.append((crow, crow.p_value))
            else:
                crow.verdict = "no_data"
        cell_rows.append(crow)
    rej, corr = _holm([p for _, p in slots])
    for (crow, _), rj, pc in zip(slots, rej, corr, strict=True):
        crow.p_holm = pc
        assert crow.delta is not None
        crow.verdict = _judge(metric, crow.delta, rj)
    ctrl_row = None
    if control.statuses:
        ctrl_row = CellResult(overrides={}, mean=cmean, runs=control.n, failed=control.failed, live=control.live,
                              experiment_ids=control.ids[:MAX_IDS_SHOWN],
                              verdict="reference" if control.n else "no_data")
        if not control.n and not control.live:
            notes.append("The control has no result: cells are not compared with it (main effects still are).")
    else:
        notes.append("The wave has no control (include_control=false): cells are compared with each other only.")

    done_cells = [r for r in cell_rows if r.mean is not None]
    best_cell = None
    if done_cells:
        best_cell = done_cells[0]
        for dc in done_cells[1:]:
            assert dc.mean is not None and best_cell.mean is not None
            if metric.better(dc.mean, best_cell.mean):
                best_cell = dc
    best_combo = None
    if all(ax.best_level is not None for ax in axis_rows) and have:
        best_levels = {ax.axis: ax.best_level for ax in axis_rows}
        bk = tuple(_key(best_levels[a]) for a in names)
        predicted = grand.value(have) + math.fsum(
            marg[a][_key(best_levels[a])].value(have) - grand.value(have) for a in names)
        ran = bk in have
        best_combo = BestCombination(overrides=best_levels, ran=ran, mean=have[bk].mean if ran else None,
                                     predicted_mean=predicted)
        if not ran:
            notes.append(f"The best combination by main effects ({_label(best_levels)}) was not run (or failed): "
                         f"launch it with replicates to confirm the additive prediction {predicted:.6g}.")

    m, k_cells = len(me_slots), len(slots)
    families = (1 if m else 0) + (1 if k_cells else 0)
    bound = ALPHA * families
    uncorrected = (m + k_cells) * ONE_TAIL_2SE
    if noise is None:
        chance = "No noise floor: no verdicts, so no chance statement (launch replicates to measure the noise)."
    else:
        chance = (f"If nothing really changed, chance alone would give at most {bound:.2g} false 'improvement' "
                  f"verdicts in this analysis (Holm: at most {ALPHA:g} per family: {m} main-effect levels, {k_cells} "
                  f"cells vs control). Judging each at 2 standard errors without correction would give about "
                  f"{uncorrected:.2f}.")
    return GpuWaveAnalysis(
        gpu_type=gpu, noise=noise, noise_dof=dof, control=ctrl_row, axes=axis_rows, interactions=inters,
        cells=cell_rows, best_cell=best_cell, best_combination=best_combo, balanced=balanced, crashed_cells=crashed,
        chance=chance, expected_false_improvements=bound if noise is not None else 0.0,
        uncorrected_false_improvements=uncorrected, notes=notes)


def _best_index(metric: Metric, values: list[float | None], levels: list[Any]) -> Any:
    best: tuple[float, Any] | None = None
    for v, lvl in zip(values, levels, strict=True):
        if v is not None and (best is None or metric.better(v, best[0])):
            best = (v, lvl)
    return best[1] if best else None


def _label(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={v!r}" for k, v in overrides.items())


def improvements(result: WaveAnalysis) -> int:
    """How many 'improvement' verdicts the analysis gives (main-effect levels and cells)."""
    n = 0
    for g in result.by_gpu_type.values():
        n += sum(1 for ax in g.axes for lv in ax.levels if lv.verdict == "improvement")
        n += sum(1 for c in g.cells if c.verdict == "improvement")
    return n


__all__ = ["ALPHA", "AxisEffects", "CellResult", "GpuWaveAnalysis", "Interaction", "LevelEffect", "WaveAnalysis",
           "improvements", "pooled_noise"]
