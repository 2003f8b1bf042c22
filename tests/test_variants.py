"""Variants: module-level constants of train.py rewritten through the AST."""

from __future__ import annotations

import ast

import pytest

from mcp_server.domain.errors import FleetError, InvalidInput
from mcp_server.domain.variants import apply_overrides, describe, factorial, list_constants

# A small train.py written for these tests (the real template's constants may change).
TRAIN = '''"""A tiny train.py for tests."""
import math
import os as OS_MODULE

# model
DEPTH = 8  # number of layers
ASPECT_RATIO = 64
MATRIX_LR = 0.04   # Muon
TOTAL_BATCH_SIZE = 2**19
ADAM_BETAS = (0.8, 0.95)
WINDOW_PATTERN = "SSSL"
USE_COMPILE: bool = True
COMPILE_MODE = None
SCHEDULE = {
    "warmup": 0.0,   # fraction
    "warmdown": 0.5,
}
GREETING = "héllo wörld"; WARMDOWN_RATIO = 0.5
lowercase_thing = 3
DEVICE = os_device() if False else "cpu"
A = B = 1
STEPS = 10
STEPS += 1
for LOOPED in range(2):
    pass
GLOBAL_LATER = 1


def set_it():
    global GLOBAL_LATER
    GLOBAL_LATER = 2


def train():
    LOCAL_SHADOW = 5  # a function local, not a module constant
    return DEPTH * ASPECT_RATIO + LOCAL_SHADOW
'''


def module_values(source: str) -> dict:
    """Execute a rewritten test module in a fresh namespace (the module above is harmless)."""
    ns: dict = {"os_device": lambda: "cuda"}
    exec(compile(source, "train.py", "exec"), ns)
    return ns


# -- list_constants -----------------------------------------------------------------------------


def test_list_constants_finds_literal_upper_case_constants_in_order():
    consts = list_constants(TRAIN)
    assert list(consts) == [
        "DEPTH", "ASPECT_RATIO", "MATRIX_LR", "TOTAL_BATCH_SIZE", "ADAM_BETAS", "WINDOW_PATTERN",
        "USE_COMPILE", "COMPILE_MODE", "SCHEDULE", "GREETING", "WARMDOWN_RATIO",
    ]
    assert consts["TOTAL_BATCH_SIZE"] == 2**19  # arithmetic on number literals counts
    assert consts["ADAM_BETAS"] == (0.8, 0.95)
    assert consts["SCHEDULE"] == {"warmup": 0.0, "warmdown": 0.5}
    assert consts["COMPILE_MODE"] is None


def test_list_constants_excludes_non_literals_rebinds_locals_and_lowercase():
    consts = list_constants(TRAIN)
    for name in ["lowercase_thing", "DEVICE", "A", "B", "STEPS", "LOOPED", "GLOBAL_LATER", "LOCAL_SHADOW", "OS_MODULE"]:
        assert name not in consts


def test_list_constants_rejects_unparsable_source():
    with pytest.raises(InvalidInput, match="does not parse.*line 1"):
        list_constants("DEPTH = = 3\n")


# -- apply_overrides ----------------------------------------------------------------------------


def test_override_replaces_only_the_value_text():
    out = apply_overrides(TRAIN, {"DEPTH": 4, "MATRIX_LR": 0.02})
    expected = TRAIN.replace("DEPTH = 8  # number", "DEPTH = 4  # number").replace(
        "MATRIX_LR = 0.04   # Muon", "MATRIX_LR = 0.02   # Muon")
    assert out == expected
    assert module_values(out)["DEPTH"] == 4


def test_override_after_multibyte_text_on_the_same_line():
    # AST columns are UTF-8 byte offsets; a naive character slice would cut the wrong text.
    out = apply_overrides(TRAIN, {"WARMDOWN_RATIO": 0.25})
    assert 'GREETING = "héllo wörld"; WARMDOWN_RATIO = 0.25\n' in out
    assert list_constants(out)["GREETING"] == "héllo wörld"


def test_override_multiline_value_keeps_surrounding_text():
    out = apply_overrides(TRAIN, {"SCHEDULE": {"warmup": 0.1, "warmdown": 0.3}})
    assert "SCHEDULE = {'warmup': 0.1, 'warmdown': 0.3}\nGREETING" in out
    assert out.startswith(TRAIN[: TRAIN.index("SCHEDULE")])
    assert list_constants(out)["SCHEDULE"] == {"warmup": 0.1, "warmdown": 0.3}


def test_code_in_a_string_value_stays_a_string():
    payload = "__import__('os').system('id')"
    out = apply_overrides(TRAIN, {"WINDOW_PATTERN": payload})
    ns = module_values(out)  # executing the module only assigns the string
    assert ns["WINDOW_PATTERN"] == payload
    node = next(n for n in ast.parse(out).body if isinstance(n, ast.Assign) and n.targets[0].id == "WINDOW_PATTERN")
    assert isinstance(node.value, ast.Constant) and node.value.value == payload


def test_string_with_quotes_and_newlines_round_trips():
    tricky = 'a"b\'c\n"""\\x00' + "\x00"
    out = apply_overrides(TRAIN, {"WINDOW_PATTERN": tricky})
    assert list_constants(out)["WINDOW_PATTERN"] == tricky
    assert out.count("\n") == TRAIN.count("\n")  # the newline is escaped, not inserted


def test_int_and_float_may_replace_each_other():
    out = apply_overrides(TRAIN, {"DEPTH": 4.0, "MATRIX_LR": 1, "ASPECT_RATIO": 96.5})
    consts = list_constants(out)
    assert consts["DEPTH"] == 4 and type(consts["DEPTH"]) is int  # integral float -> int (range() needs it)
    assert consts["MATRIX_LR"] == 1 and type(consts["MATRIX_LR"]) is int
    assert consts["ASPECT_RATIO"] == 96.5


def test_list_replaces_tuple_and_keeps_it_a_tuple():
    out = apply_overrides(TRAIN, {"ADAM_BETAS": [0.9, 0.99]})
    assert "ADAM_BETAS = (0.9, 0.99)\n" in out
    assert list_constants(out)["ADAM_BETAS"] == (0.9, 0.99)


def test_none_constant_takes_any_value_and_annotated_bool_stays_bool():
    out = apply_overrides(TRAIN, {"COMPILE_MODE": "max-autotune", "USE_COMPILE": False})
    assert "COMPILE_MODE = 'max-autotune'\n" in out
    assert "USE_COMPILE: bool = False\n" in out


def test_power_expression_is_rewritten_as_a_number():
    out = apply_overrides(TRAIN, {"TOTAL_BATCH_SIZE": 2**18})
    assert "TOTAL_BATCH_SIZE = 262144\n" in out


def test_unchanged_value_leaves_bytes_identical():
    # Same value => same code => same code_hash as the control (a replicate, not a new variant).
    assert apply_overrides(TRAIN, {"TOTAL_BATCH_SIZE": 524288, "DEPTH": 8}) == TRAIN
    assert apply_overrides(TRAIN, {}) == TRAIN


def test_negative_values():
    out = apply_overrides(TRAIN, {"MATRIX_LR": -0.5})
    assert list_constants(out)["MATRIX_LR"] == -0.5


# -- rejected overrides ------------------------------------------------------------------------

REJECTED = [
    ({"DEPTH": "4; import os"}, "DEPTH is an int.*cannot replace it.*number"),
    ({"DEPTH": "__import__('os').system('id')"}, "DEPTH is an int"),
    ({"DEPHT": 4}, "Unknown constant 'DEPHT'.*Did you mean DEPTH.*Valid names: DEPTH, ASPECT_RATIO"),
    ({"depth": 4}, "UPPER_CASE.*Did you mean DEPTH"),
    ({"__builtins__": {}}, "Unknown constant '__builtins__'.*UPPER_CASE"),
    ({"lowercase_thing": 1}, "Unknown constant 'lowercase_thing'"),
    ({"LOCAL_SHADOW": 1}, "no module-level literal constant"),
    ({"DEVICE": "cuda"}, "DEVICE cannot be overridden: its value on line \\d+ is an expression"),
    ({"STEPS": 5}, "STEPS cannot be overridden: it is bound 2 times at module level"),
    ({"A": 2}, "chained assignment"),
    ({"GLOBAL_LATER": 3}, "bound 2 times"),
    ({"LOOPED": 3}, "Unknown constant"),
    ({"OS_MODULE": 3}, "Unknown constant"),
    ({"USE_COMPILE": 1}, "USE_COMPILE is a bool.*bool \\(true/false\\)"),
    ({"DEPTH": True}, "DEPTH is an int.*a bool"),
    ({"DEPTH": None}, "an int .*None"),
    ({"WINDOW_PATTERN": 3}, "WINDOW_PATTERN is a str"),
    ({"ADAM_BETAS": "0.9"}, "ADAM_BETAS is a tuple.*list"),
    ({"SCHEDULE": [1]}, "SCHEDULE is a dict"),
    ({"DEPTH": float("nan")}, "not a finite number"),
    ({"MATRIX_LR": float("inf")}, "not a finite number"),
    ({"WINDOW_PATTERN": "S" * 5000}, "5000 characters is too long.*limit 1000"),
    ({"DEPTH": 10**4000}, "far too large"),
    ({"ADAM_BETAS": [0.1] * 400}, "literal is \\d+ characters \\(limit 1000\\)"),
    ({"COMPILE_MODE": b"bytes"}, "bytes is not a literal value"),
    ({"COMPILE_MODE": {1, 2}}, "set is not a literal value"),
    ({"COMPILE_MODE": object()}, "object is not a literal value"),
    ({"COMPILE_MODE": [[[[[[1]]]]]]}, "nests deeper"),
    ({"COMPILE_MODE": {("t",): 1}}, "dict keys must be"),
    ({f"C{i}": i for i in range(40)}, "40 overrides given; at most 32"),
    ({3: 4}, "Override names must be strings"),
]


@pytest.mark.parametrize("overrides,message", REJECTED, ids=[str(i) for i in range(len(REJECTED))])
def test_rejected_overrides_raise_a_clear_error(overrides, message):
    with pytest.raises(FleetError, match=message):
        apply_overrides(TRAIN, overrides)


def test_rejection_is_all_or_nothing():
    # The first override is fine; the second is not: nothing is returned at all.
    with pytest.raises(InvalidInput, match="Unknown constant 'NOPE'"):
        apply_overrides(TRAIN, {"DEPTH": 4, "NOPE": 1})


def test_overrides_must_be_a_mapping():
    with pytest.raises(InvalidInput, match="object mapping constant names"):
        apply_overrides(TRAIN, [("DEPTH", 4)])  # type: ignore[arg-type]


def test_source_must_be_text_and_not_huge():
    with pytest.raises(InvalidInput, match="must be text"):
        apply_overrides(b"DEPTH = 1", {})  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="larger than"):
        apply_overrides("X = 1\n" * 200_000, {})


# -- factorial -------------------------------------------------------------------------------


def test_factorial_is_full_and_stable():
    cells = factorial({"DEPTH": [4, 8], "MATRIX_LR": [0.02, 0.04, 0.08]})
    assert cells == [
        {"DEPTH": 4, "MATRIX_LR": 0.02}, {"DEPTH": 4, "MATRIX_LR": 0.04}, {"DEPTH": 4, "MATRIX_LR": 0.08},
        {"DEPTH": 8, "MATRIX_LR": 0.02}, {"DEPTH": 8, "MATRIX_LR": 0.04}, {"DEPTH": 8, "MATRIX_LR": 0.08},
    ]
    assert factorial({"DEPTH": [4, 8], "MATRIX_LR": [0.02, 0.04, 0.08]}) == cells
    assert len(factorial({"A": [1, 2], "B": [1, 2], "C": [1, 2], "D": [1, 2]})) == 16


def test_factorial_cells_apply_to_train_py():
    for cell in factorial({"DEPTH": [4, 12], "WINDOW_PATTERN": ["L", "SSL"]}):
        consts = list_constants(apply_overrides(TRAIN, cell))
        assert {k: consts[k] for k in cell} == cell


def test_factorial_distinguishes_int_float_and_bool_levels():
    assert len(factorial({"X": [1, 1.0, True]})) == 3


FACTORIAL_REJECTED = [
    ({}, "non-empty object"),
    ([("DEPTH", [1])], "non-empty object"),
    ({"A": [1], "B": [1], "C": [1], "D": [1], "E": [1]}, "5 axes given; a wave has 1 to 4"),
    ({"DEPTH": list(range(9))}, "Axis DEPTH: give a list of 1 to 8 levels \\(got 9\\)"),
    ({"DEPTH": []}, "1 to 8 levels \\(got 0\\)"),
    ({"DEPTH": 4}, "1 to 8 levels \\(got int\\)"),
    ({"DEPTH": [4, 4]}, "level 4 is listed twice"),
    ({"depth": [4]}, "not a constant name"),
    ({"DEPTH": [float("nan")]}, "not a finite number"),
    ({"A": list(range(8)), "B": list(range(8)), "C": list(range(8))}, "8 x 8 x 8 = 512 cells; at most 64"),
]


@pytest.mark.parametrize("axes,message", FACTORIAL_REJECTED, ids=[str(i) for i in range(len(FACTORIAL_REJECTED))])
def test_factorial_rejects_bad_designs(axes, message):
    with pytest.raises(InvalidInput, match=message):
        factorial(axes)


def test_factorial_respects_max_cells_and_validates_it():
    with pytest.raises(InvalidInput, match="2 x 2 = 4 cells; at most 3"):
        factorial({"A": [1, 2], "B": [1, 2]}, max_cells=3)
    with pytest.raises(InvalidInput, match="max_cells must be a positive integer"):
        factorial({"A": [1]}, max_cells=0)


def test_describe():
    assert describe({"DEPTH": 4, "MATRIX_LR": 0.02}) == "DEPTH=4 MATRIX_LR=0.02"
    assert describe({"WINDOW_PATTERN": "SSL"}) == "WINDOW_PATTERN='SSL'"
    assert describe({}) == ""
    assert len(describe({"X": "y" * 500})) < 60
