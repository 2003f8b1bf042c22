"""The person's view: a read-only live dashboard of a research session in the browser.

`data` answers from the ledger (JSON), `app` serves the page and the JSON endpoints (GET only),
`static/` is the page itself (vanilla JS and CSS, no CDN). See docs/architecture.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from mcp_server.surface.dashboard.app import LOOPBACK_HOSTS, PREFIX, routes, standalone_app
from mcp_server.surface.dashboard.data import DashboardData


def engine_data(get_engine: Callable[[], Any]) -> Callable[[], DashboardData | None]:
    """A data getter over the server's engine (None until it has started): one DashboardData per
    engine, following the engine's experiment cache."""
    made: dict[int, DashboardData] = {}

    def get() -> DashboardData | None:
        engine = get_engine()
        if engine is None:
            return None
        data = made.get(id(engine))
        if data is None:
            made.clear()
            data = made[id(engine)] = DashboardData(
                engine.ledger, engine.workspace.path, cache=engine.cache, metric=engine.metric,
                gpu_hour_budget=engine.config.gpu_hour_budget, max_concurrent=engine.config.max_concurrent,
                notes=lambda: list(engine.budget_status().notes))
        return data
    return get


__all__ = ["LOOPBACK_HOSTS", "PREFIX", "DashboardData", "engine_data", "routes", "standalone_app"]
