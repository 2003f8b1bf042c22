"""The engine's research memory: `analyze_wave` (the statistics of a factorial wave) and
`session_digest` (what an agent that lost its context needs), both read-only and cached until
the ledger changes (the experiment cache's `changes` counter), like the leaderboard."""

from __future__ import annotations

import logging
from typing import Any

from mcp_server.domain import variants
from mcp_server.domain.digest import SessionDigest, build_digest
from mcp_server.domain.metric import Metric
from mcp_server.domain.wave_analysis import WaveAnalysis, analyze_wave, pooled_noise
from mcp_server.engine.parts import EngineParts

_MAX_CACHED_WAVES = 64
log = logging.getLogger("autoresearch.engine")


class ResearchMixin(EngineParts):
    metric: Metric
    #: key -> (the experiment cache's `changes` when computed, the answer); the facade creates it
    _research_cache: dict[Any, tuple[int, Any]]

    def _research_cached(self, key: Any) -> tuple[int, Any | None]:
        hit = self._research_cache.get(key)
        return hit if hit is not None else (-1, None)

    def _noise_of(self, changes: int) -> dict[str, tuple[float, int]]:
        """The noise floor per GPU type with its degrees of freedom, as of `changes` or later."""
        at, noise = self._research_cached("noise")
        if at >= changes and noise is not None:
            return noise
        now, exps = self.cache.snapshot()
        noise = pooled_noise(exps, self.metric)
        self._research_cache["noise"] = (now, noise)
        return noise

    def analyze_wave(self, wave_id: str) -> WaveAnalysis:
        """Main effects, two-way interactions and cells vs the control of a factorial wave, per GPU
        type, against the noise floor, Holm-corrected (see domain/wave_analysis). The answer is
        shared with later calls until the ledger changes: copy it before editing it."""
        wave = self.checks.wave(wave_id)
        changes, mine = self.cache.some(wave.experiment_ids)
        at, hit = self._research_cached(("wave", wave.id))
        if at == changes and hit is not None:
            return hit
        result = analyze_wave(wave, mine, self.metric, self._noise_of(changes),
                              control_levels=self._control_levels(wave.id, mine))
        if len(self._research_cache) > _MAX_CACHED_WAVES:
            self._research_cache.clear()
        self._research_cache[("wave", wave.id)] = (changes, result)
        return result

    def _control_levels(self, wave_id: str, exps: list[Any]) -> dict[str, Any] | None:
        """The base code's constants: the wave's control snapshot's train.py (None without one;
        read from git once per wave: a snapshot never changes)."""
        control = next((e for e in exps if not e.overrides and e.commit), None)
        if control is None:
            return None
        _, known = self._research_cached(("control", wave_id))
        if known is not None:
            return known
        try:
            levels = variants.list_constants(self.workspace.file_at(control.commit, "train.py"))
            self._research_cache[("control", wave_id)] = (0, levels)
            return levels
        except Exception:  # noqa: BLE001 - without the base's values, effects are vs each axis's first level
            log.warning("could not read the control's constants of %s", control.id, exc_info=True)
            return None

    def session_digest(self) -> SessionDigest:
        """The session in at most ~2,500 tokens, from the ledger (see domain/digest)."""
        changes, exps = self.cache.snapshot()
        at, hit = self._research_cached("digest")
        if at == changes and hit is not None:
            return hit.model_copy()
        noise = {g: v[0] for g, v in self._noise_of(changes).items()}
        usage = self.ledger.usage()
        digest = build_digest(exps, self.ledger.waves(), self.metric, noise=noise, gpu_hours=usage["gpu_hours"],
                              gpu_hour_budget=self.config.gpu_hour_budget, time_budget_s=self.time_budget_s)
        self._research_cache["digest"] = (changes, digest)
        return digest.model_copy()
