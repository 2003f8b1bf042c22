"""The MCP tool names: a contract (skills, `.claude/settings.json`, tests and every error text
that names the next call use them). Registration uses this enum, and so do the engine's and the
backends' error texts, so a renamed tool cannot leave a stale hint behind
(tests/test_tool_names.py checks every tool named in a text of the package)."""

from __future__ import annotations

from enum import StrEnum


class Tool(StrEnum):
    # read-only
    GET_GPU_INFO = "get_gpu_info"
    LIST_CLUSTERS = "list_clusters"
    GET_EXPERIMENT = "get_experiment"
    FETCH_RESULTS = "fetch_results"
    LEADERBOARD = "leaderboard"
    BUDGET_STATUS = "budget_status"
    PLOT_PROGRESS = "plot_progress"
    ANALYZE_WAVE = "analyze_wave"
    SESSION_DIGEST = "session_digest"
    # acting
    PROVISION_CLUSTERS = "provision_clusters"
    TEARDOWN_CLUSTERS = "teardown_clusters"
    LAUNCH_EXPERIMENT = "launch_experiment"
    LAUNCH_WAVE = "launch_wave"
    PROMOTE = "promote"
    WAIT_FOR_EXPERIMENTS = "wait_for_experiments"
    CANCEL_EXPERIMENTS = "cancel_experiments"
    KEEP_EXPERIMENT = "keep_experiment"
    DISCARD_EXPERIMENT = "discard_experiment"

