"""Harness profiles: the size of the game (`gpu`: the real one; `cpu`: tiny, for machines with
no GPU). The harness (`prepare.py`) owns them in its `PROFILES` dict; the engine reads the
training budget from there, through the AST (importing the harness would import numpy and run
its module code)."""

from __future__ import annotations

import ast
from pathlib import Path

#: Budgets for a harness that declares no PROFILES (a user's own task, a test's stand-in).
#: tests/test_profiles.py holds this equal to the template's prepare.py.
DEFAULT_BUDGETS_S: dict[str, float] = {"gpu": 300.0, "cpu": 15.0}


def budgets_from_harness(prepare_py: Path) -> dict[str, float]:
    """profile -> training seconds, as `PROFILES[p]["time_budget"]` in prepare.py says; the
    defaults when the file declares no PROFILES (or cannot be parsed)."""
    try:
        tree = ast.parse(Path(prepare_py).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return dict(DEFAULT_BUDGETS_S)
    for node in tree.body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)
                and node.targets[0].id == "PROFILES" and isinstance(node.value, ast.Dict)):
            budgets: dict[str, float] = {}
            for key, value in zip(node.value.keys, node.value.values, strict=True):
                if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                    continue
                fields: dict[str, ast.expr] = {}
                if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "dict":
                    fields = {k.arg: k.value for k in value.keywords if k.arg}
                elif isinstance(value, ast.Dict):
                    fields = {k.value: v for k, v in zip(value.keys, value.values, strict=True)
                              if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                try:
                    budget = ast.literal_eval(fields["time_budget"])
                except (KeyError, ValueError):
                    continue
                if isinstance(budget, int | float) and not isinstance(budget, bool):
                    budgets[key.value] = float(budget)
            if budgets:
                return budgets
    return dict(DEFAULT_BUDGETS_S)
