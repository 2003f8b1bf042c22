"""The session digest: what an agent that just lost its context needs to carry on, in at most
MAX_DIGEST_CHARS characters (~2,500 tokens) whatever the ledger's size. Pure function of the
experiments (and the waves, the budget figures and the metric): the same ledger gives the same
text, byte for byte (every list has a total order; no clock is read).

Sections, each capped with an "and N more" count: per GPU type the baseline and the best with
their seeds and noise; the kept chain in order (commit, what changed, effect +- noise, reason);
per train.py constant explored the levels tried, on which base code, and the best level; code
changes (not constants) and their verdicts; near misses worth more replicates; crash classes with
counts and one example id; what is live and when it should finish; the budget; the next step.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, Field

from mcp_server.domain.limits import MAX_DIGEST_CHARS
from mcp_server.domain.metric import Metric
from mcp_server.domain.models import FAILED, LIVE, Decision, Experiment, Status, Wave
from mcp_server.domain.numbers import fixed
from mcp_server.domain.tool_names import Tool

UNKNOWN_GPU = "unknown"
SIGMAS = 2.0
LINE = 170                    # characters per line at most
CAPS = {"gpu": 6, "kept": 24, "constants": 24, "levels": 8, "code": 10, "near": 6, "crash": 6, "live": 6}


class SessionDigest(BaseModel):
    text: str = Field(description="The digest, one fact per line.")
    chars: int
    experiments: int = Field(description="Experiments in the ledger it was built from.")
    next_step: str


class _G:
    """Finished runs of one code on one GPU type."""

    __slots__ = ("code", "first", "gpu", "kept", "members", "values")

    def __init__(self, gpu: str, code: str) -> None:
        self.gpu, self.code = gpu, code
        self.values: list[float] = []
        self.members: list[Experiment] = []
        self.kept = False
        self.first: Experiment | None = None

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return math.fsum(self.values) / len(self.values)


def _order(e: Experiment) -> tuple[float, str]:
    return (e.created_at, e.id)


def _clip(text: str, n: int = LINE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _value_text(v: Any) -> str:
    return _clip(json.dumps(v), 40)


def _more(n: int, what: str = "more") -> str:
    return f"  ... and {n} {what}"


def build_digest(experiments: Iterable[Experiment], waves: Iterable[Wave], metric: Metric, *,
                 noise: Mapping[str, float | None], gpu_hours: float, gpu_hour_budget: float | None,
                 time_budget_s: float) -> SessionDigest:
    exps = sorted(experiments, key=_order)
    values: dict[str, float | None] = {}
    groups: dict[tuple[str, str], _G] = {}
    parents: set[str] = set()
    for e in exps:
        if e.parent_code_hash:
            parents.add(e.parent_code_hash)
        v = values[e.id] = metric.value(e)
        if v is None:
            continue
        key = (e.ran_on_gpu or UNKNOWN_GPU, e.code_hash or f"<{e.id}>")
        g = groups.get(key)
        if g is None:
            g = groups[key] = _G(*key)
            g.first = e
        g.values.append(v)
        g.members.append(e)
        g.kept = g.kept or e.decision == Decision.keep
    by_gpu: dict[str, list[_G]] = {}
    for g in groups.values():
        by_gpu.setdefault(g.gpu, []).append(g)

    def rank(g: _G) -> tuple[float, float, str]:
        assert g.first is not None
        return (metric.sort_key(g.mean), *_order(g.first))

    def effect(e: Experiment) -> tuple[float, float | None, str] | None:
        """(delta vs the parent code's group, its standard error, verdict) on e's GPU type."""
        gpu = e.ran_on_gpu or UNKNOWN_GPU
        own = groups.get((gpu, e.code_hash or f"<{e.id}>"))
        ref = groups.get((gpu, e.parent_code_hash)) if e.parent_code_hash else None
        if own is None or ref is None or own is ref:
            return None
        delta = own.mean - ref.mean
        sd = noise.get(gpu)
        se = sd * math.sqrt(1 / own.n + 1 / ref.n) if sd is not None else None
        if se is None:
            verdict = "improvement?" if metric.gain(own.mean, ref.mean) > 0 else "worse?"
        elif abs(delta) <= SIGMAS * se:
            verdict = "within_noise"
        else:
            verdict = "improvement" if metric.gain(own.mean, ref.mean) > 0 else "worse"
        return delta, se, verdict

    def eff_text(e: Experiment) -> str:
        r = effect(e)
        if r is None:
            return "no same-GPU reference"
        delta, se, verdict = r
        return f"{delta:+.6f}" + (f" +- {se:.6f}" if se is not None else "") + f" {verdict}"

    out: list[str] = [f"SESSION DIGEST ({len(exps)} experiments; metric {metric.describe()}; "
                      f"budget {time_budget_s:g} s per run; compare only within one GPU type)"]

    # per GPU type ------------------------------------------------------------------------------
    out.append("== per GPU type: baseline and best ==")
    gpus = sorted(by_gpu, key=lambda t: (-sum(g.n for g in by_gpu[t]), t))
    for gpu in gpus[: CAPS["gpu"]]:
        gs = by_gpu[gpu]
        base_candidates = [g for g in gs if g.code in parents] or gs
        base = min(base_candidates, key=lambda g: _order(g.first))  # type: ignore[arg-type]
        best = min(gs, key=rank)
        sd = noise.get(gpu)
        seeds = lambda g: ",".join(str(m.seed) for m in sorted(g.members, key=_order)[:6]) + (  # noqa: E731
            "..." if g.n > 6 else "")
        assert base.first is not None and best.first is not None
        out.append(_clip(f"{gpu}: noise {fixed(sd)}; {sum(g.n for g in gs)} finished runs of {len(gs)} codes. "
                         f"baseline {base.first.id} {base.mean:.6f} (n={base.n}, seeds {seeds(base)}); "
                         f"best {best.first.id} {best.mean:.6f} (n={best.n}, seeds {seeds(best)}"
                         f"{', kept' if best.kept else ''}) delta {best.mean - base.mean:+.6f}", 260))
    if len(gpus) > CAPS["gpu"]:
        out.append(_more(len(gpus) - CAPS["gpu"], "more GPU types"))
    if not gpus:
        out.append("no finished experiment yet")

    # kept chain --------------------------------------------------------------------------------
    kept = [e for e in exps if e.decision == Decision.keep]
    out.append(f"== kept chain ({len(kept)}, in order) ==")
    shown = kept[-CAPS["kept"]:]
    if len(kept) > len(shown):
        out.append(_more(len(kept) - len(shown), "earlier keeps (oldest first; the latest are below)"))
    for e in shown:
        what = _label(e.overrides) or e.description
        why = f"; reason: {e.reason}" if e.reason else ""
        out.append(_clip(f"{e.id} {(e.commit or '')[:7]} [{e.ran_on_gpu or '?'}] {what}: {eff_text(e)}{why}"))
    if not kept:
        out.append("nothing kept yet")

    # constants explored ------------------------------------------------------------------------
    consts: dict[str, dict[str, Any]] = {}
    for e in exps:
        if not e.overrides:
            continue
        v = values[e.id]
        gpu = e.ran_on_gpu or UNKNOWN_GPU
        for name, val in e.overrides.items():
            c = consts.get(name)
            if c is None:
                c = consts[name] = {"levels": {}, "bases": set(), "runs": 0, "per": {}}
            k = _level_key(val)
            c["levels"].setdefault(k, val)
            c["bases"].add(e.parent_id or (f"code {e.parent_code_hash[:7]}" if e.parent_code_hash else "?"))
            c["runs"] += 1
            if v is not None:
                c["per"].setdefault(gpu, {}).setdefault(k, []).append(v)
    out.append(f"== constants explored ({len(consts)}) ==")
    names = sorted(consts)
    for name in names[: CAPS["constants"]]:
        c = consts[name]
        levels = sorted(c["levels"])   # (type name, value): numbers in order, types apart
        shown_levels = ", ".join(_value_text(c["levels"][k]) for k in levels[: CAPS["levels"]])
        if len(levels) > CAPS["levels"]:
            shown_levels += f", and {len(levels) - CAPS['levels']} more"
        best_txt = _best_level(c["per"], c["levels"], metric)
        bases = sorted(c["bases"])
        base_text = ", ".join(bases[:3]) + (f" +{len(bases) - 3}" if len(bases) > 3 else "")
        out.append(_clip(f"{name}: tried {shown_levels} ({c['runs']} runs; bases {base_text}); best {best_txt}"))
    if len(names) > CAPS["constants"]:
        out.append(_more(len(names) - CAPS["constants"], "more constants: " + ", ".join(names[CAPS["constants"]:])))

    # code changes (not constants) --------------------------------------------------------------
    changes: dict[tuple[str, str], Experiment] = {}
    for e in exps:
        if not e.overrides and e.code_hash and e.parent_code_hash and e.code_hash != e.parent_code_hash:
            changes.setdefault((e.code_hash, e.ran_on_gpu or UNKNOWN_GPU), e)
    out.append(f"== code changes, not constants ({len(changes)}) ==")
    ch = sorted(changes.values(), key=_order)
    for e in ch[-CAPS["code"]:]:
        st = f"failed ({e.status.value})" if values[e.id] is None else eff_text(e)
        out.append(_clip(f"{e.id} [{e.ran_on_gpu or e.gpu_type or '?'}] {e.description}: {st}"
                         + (f" ({e.decision.value})" if e.decision else "")))
    if len(ch) > CAPS["code"]:
        out.append(_more(len(ch) - CAPS["code"], "earlier"))

    # near misses -------------------------------------------------------------------------------
    near: list[tuple[float, Experiment, str]] = []
    for g in groups.values():
        face = g.first
        assert face is not None
        if g.kept or any(m.decision == Decision.discard for m in g.members):
            continue
        r = effect(face)
        if r is None:
            continue
        delta, se, verdict = r
        if se is None or se == 0:
            continue
        z = metric.gain(delta, 0.0) / se
        if verdict == "within_noise" and z >= 1.0:
            near.append((-z, face, f"{delta:+.6f} +- {se:.6f} (n={g.n}, {z:.1f} SE)"))
    near.sort(key=lambda t: (t[0], *_order(t[1])))
    out.append(f"== near misses worth more replicates ({len(near)}) ==")
    for _, e, txt in near[: CAPS["near"]]:
        out.append(_clip(f"{e.id} [{e.ran_on_gpu}] {_label(e.overrides) or e.description}: {txt}"))
    if len(near) > CAPS["near"]:
        out.append(_more(len(near) - CAPS["near"]))

    # crash classes -----------------------------------------------------------------------------
    classes: dict[tuple[str, str], list[Experiment]] = {}
    for e in exps:
        if e.status in FAILED:
            classes.setdefault((e.status.value, _error_class(e.error)), []).append(e)
    total_failed = sum(len(v) for v in classes.values())
    out.append(f"== failures ({total_failed} in {len(classes)} classes) ==")
    ordered = sorted(classes.items(), key=lambda kv: (-len(kv[1]), kv[0]))
    for (status, cls), members in ordered[: CAPS["crash"]]:
        out.append(_clip(f"{status} x{len(members)}: {cls} (e.g. {members[0].id})"))
    if len(ordered) > CAPS["crash"]:
        out.append(_more(len(ordered) - CAPS["crash"], "classes"))

    # live --------------------------------------------------------------------------------------
    live = [e for e in exps if e.status in LIVE]
    running = [e for e in live if e.status == Status.running]
    out.append(f"== live: {len(running)} running, {len(live) - len(running)} queued ==")
    ends = [e.started_at + time_budget_s for e in running if e.started_at is not None]
    if ends:
        out.append(f"running ones should finish by {_utc(max(ends))} (started + {time_budget_s:g} s budget)")
    live_waves: dict[str, int] = {}
    for e in live:
        live_waves[e.wave_id or "-"] = live_waves.get(e.wave_id or "-", 0) + 1
    wave_by_id = {w.id: w for w in waves}
    for wid, n in sorted(live_waves.items())[: CAPS["live"]]:
        w = wave_by_id.get(wid)
        hyp = w.design.get("hypothesis") if w else None
        out.append(_clip(f"{wid}: {n} live" + (f" - {w.description}" if w else "") + (f"; hypothesis: {hyp}"
                                                                                      if hyp else "")))
    if len(live_waves) > CAPS["live"]:
        out.append(_more(len(live_waves) - CAPS["live"], "waves"))

    # budget and next step ----------------------------------------------------------------------
    left = f"{gpu_hour_budget - gpu_hours:.2f} of {gpu_hour_budget:g}" if gpu_hour_budget is not None else "no limit"
    out.append(f"== budget: {gpu_hours:.2f} GPU-hours spent (finished attempts); left: {left} ==")
    step = _next_step(live, gpus, noise, near, groups, parents)
    out.append(f"== next step: {step}")

    text = "\n".join(out)
    if len(text) > MAX_DIGEST_CHARS:
        text = text[: MAX_DIGEST_CHARS - 40].rsplit("\n", 1)[0] + "\n... (digest clipped at its size bound)"
    return SessionDigest(text=text, chars=len(text), experiments=len(exps), next_step=step)


def _label(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"{k}={_value_text(v)}" for k, v in overrides.items())


_HEX = re.compile(r"0x[0-9a-f]+|\b\d+(\.\d+)?\b")


def _error_class(error: str | None) -> str:
    """The first line of an error with numbers blanked, so 'OOM at 31.2 GiB' and 'at 30.1 GiB' group."""
    if not error:
        return "(no error text)"
    line = next((ln for ln in error.splitlines() if ln.strip()), "")
    return _clip(_HEX.sub("N", line), 90)


def _level_key(v: Any) -> Any:
    """A hashable identity of a level that tells 1, 1.0 and True apart (cheap for scalars)."""
    if v is None or isinstance(v, (bool, int, float, str)):
        return (type(v).__name__, v)
    return ("json", json.dumps(v, sort_keys=True))


def _best_level(per: dict[str, dict[Any, list[float]]], shown: dict[Any, Any], metric: Metric) -> str:
    """Best level of a constant: on the GPU type with the most finished runs that set it, the level
    whose runs have the best mean."""
    if not per:
        return "n/a (no finished run)"
    gpu = min(per, key=lambda t: (-sum(len(v) for v in per[t].values()), t))
    levels = per[gpu]
    best = min(levels, key=lambda k: (metric.sort_key(math.fsum(levels[k]) / len(levels[k])), k))
    mean = math.fsum(levels[best]) / len(levels[best])
    return f"{_value_text(shown[best])} on {gpu} (mean {mean:.6f}, n={len(levels[best])})"


def _utc(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _next_step(live: list[Experiment], gpus: list[str], noise: Mapping[str, float | None],
               near: list[tuple[float, Experiment, str]], groups: Mapping[tuple[str, str], _G],
               parents: set[str]) -> str:
    if live:
        return (f"{len(live)} experiments are live: {Tool.WAIT_FOR_EXPERIMENTS}() and then {Tool.ANALYZE_WAVE} "
                "the wave they belong to.")
    if not gpus:
        return f"launch a baseline: {Tool.LAUNCH_EXPERIMENT}(description='baseline', replicates=3)."
    no_noise = [g for g in gpus if noise.get(g) is None]
    if no_noise:
        return (f"no noise floor on {', '.join(no_noise)}: launch replicates of the baseline "
                f"({Tool.LAUNCH_EXPERIMENT}(base='<baseline id>', replicates=3)) before judging anything.")
    if near:
        e = near[0][1]
        return (f"the nearest miss {e.id} may be real: {Tool.LAUNCH_EXPERIMENT}(base='{e.id}', replicates=3) "
                "(unused seeds are picked), then judge it again.")
    return (f"launch the next {Tool.LAUNCH_WAVE} from the kept code on the constants not yet explored "
            f"(or a code change), and read it with {Tool.ANALYZE_WAVE} when it finishes.")


__all__ = ["SessionDigest", "build_digest"]
