"""The profile budgets come from the harness (prepare.py's PROFILES), read through the AST; the
defaults for a harness without PROFILES are held equal to the template's."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from mcp_server.domain.profiles import DEFAULT_BUDGETS_S, budgets_from_harness

TEMPLATE_PREPARE = Path(__file__).resolve().parent.parent / "train_template" / "prepare.py"


def _imported_profiles() -> dict:
    spec = importlib.util.spec_from_file_location("template_prepare", TEMPLATE_PREPARE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.PROFILES


def test_budgets_are_the_harness_own():
    profiles = _imported_profiles()
    assert budgets_from_harness(TEMPLATE_PREPARE) == {p: float(v["time_budget"]) for p, v in profiles.items()}


def test_the_defaults_equal_the_template():
    assert budgets_from_harness(TEMPLATE_PREPARE) == DEFAULT_BUDGETS_S


def test_a_harness_with_its_own_budgets_or_none(tmp_path):
    own = tmp_path / "prepare.py"
    own.write_text('PROFILES = {"gpu": dict(time_budget=600), "tiny": {"time_budget": 5.5}}\n')
    assert budgets_from_harness(own) == {"gpu": 600.0, "tiny": 5.5}
    bare = tmp_path / "bare.py"
    bare.write_text("print('no profiles here')\n")
    assert budgets_from_harness(bare) == DEFAULT_BUDGETS_S
    assert budgets_from_harness(tmp_path / "missing.py") == DEFAULT_BUDGETS_S
